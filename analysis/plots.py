"""Figures of scaling laws. Every function takes records (and fits) and returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure`, not pyplot: nothing is registered in pyplot's
global state (no leaks in loops, no GUI backend needed); a notebook shows them with `display(fig)`
and `fig.savefig(...)` writes them. Loss axes are in nats per token, compute in FLOPs; axes that
span decades are logarithmic, as in the papers' figures.

    kaplan_figure1(history, fits)     Kaplan et al. 2020 Fig. 1: loss against compute, data, parameters
    learning_curves(history)          loss against tokens, coloured by model size
    isoflop(runs, fits)               Hoffmann et al. 2022 Fig. 3: IsoFLOP profiles, N_opt(C), D_opt(C)
    chinchilla_fit(fit)               approach 3: observed vs predicted, loss contours with the frontier
    residuals(fits)                   ln(observed / predicted) against each input of each fit

Where the records come from a source with a known distribution (`val_loss_optimal`), loss panels
draw that true floor as a dashed line. The emergence and confidence figures live in
`analysis.emergence` and are re-exported here:

    emergence_figure(history, task)   a task's exact match beside its target log-prob, against
                                      FLOPs, parameters and validation loss, with chance
    confidence_figure(runs)           final predictive entropy and ECE against model size
    reliability_figure(calibration)   reliability diagrams (15 confidence bins)

loss and ECE on each evaluation set against N (`eval_sets_figure`) in `analysis.evalset_figures`;

the Kaplan grid's own figure lives in `analysis.grid_figures` (it draws with this module's styles):

    kaplan_grid(history, fits)        loss against D per size and against N per data size: every end
                                      point, the seeds of a cell, and L(N, D) through them

and the figures that say how far to trust a fit live in `analysis.trust_figures`, also re-exported:

    audit_figure(audit, fit)          an extrapolation audit: observed against predicted held-out runs
    e_profile_figure(fit)             approach 3's objective over a fixed E; leave-one-group-out refits
    compare_figure(comparison)        one sweep's compute multiplier over another, per budget
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogFormatter

from analysis.fit_result import Fit, FitSet, as_fit_list
from analysis.emergence import confidence_figure, emergence_figure, reliability_figure  # noqa: F401
from analysis.trust_figures import audit_figure, compare_figure, e_profile_figure  # noqa: F401
from analysis.select import final_rows, is_history, param_column, run_status

LOSS_LABEL = "Validation loss (nats/token)"
PARAM_LABELS = {"n_params_nonembed": "Parameters N (non-embedding)", "n_params": "Parameters N (all)"}
COMPUTE_LABELS = {"flops": "Compute C (training FLOPs, exact count)",
                  "flops_6nd": "Compute C = 6ND (FLOPs)", "flops_budget": "Compute budget C (FLOPs)"}
X_LABELS = {"tokens": "Training tokens D", "step": "Step", **COMPUTE_LABELS}
FIT_COLOR = "#d62728"
SIZE_CMAP = "viridis"
BUDGET_CMAP = "plasma"
TEX_NAMES = {"alpha": r"\alpha", "beta": r"\beta", "alpha_N": r"\alpha_N", "alpha_D": r"\alpha_D",
             "alpha_C": r"\alpha_C", "N_c": "N_c", "D_c": "D_c", "C_c": "C_c", "x_c": "x_c",
             "a_opt": "a", "k_N": "k_N", "k_D": "k_D"}
FORMULAS = {"L(N)": r"$L=(N_c/N)^{\alpha_N}$", "L(D)": r"$L=(D_c/D)^{\alpha_D}$",
            "L(C_min)": r"$L=(C_c/C)^{\alpha_C}$",
            "L(N,D)": r"$L=[(N_c/N)^{\alpha_N/\alpha_D}+D_c/D]^{\alpha_D}$",
            "Chinchilla approach 3": r"$L=E+A/N^{\alpha}+B/D^{\beta}$"}


# ---------------------------------------------------------------------------------------------
# Kaplan et al. 2020, Figure 1

def kaplan_figure1(records: pd.DataFrame, fits: FitSet | None = None, *, loss: str = "val_loss") -> Figure:
    """Loss against compute (every learning curve faint, the frontier and its fit bold), against
    dataset size and against parameters, each with its fitted law. `fits` defaults to
    `fit_kaplan(records, bootstrap=0)`."""
    if fits is None:
        from analysis.kaplan import fit_kaplan
        fits = fit_kaplan(records, loss=loss, bootstrap=0)
    any_fit = next(iter(fits.values()))
    n_col, c_col = any_fit.settings["N"], any_fit.settings["C"]
    complete = records.loc[run_status(records) == "complete"] if "status" in records else records
    final = final_rows(complete)
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_c, ax_d, ax_n = fig.subplots(1, 3, sharey=True)
    norm = _size_norm(records[n_col])

    if is_history(complete):
        for _, run in complete.groupby("run_id"):
            run = run.sort_values("step")
            ax_c.plot(run[c_col], run[loss], color=colormaps[SIZE_CMAP](norm(run[n_col].iloc[0])),
                      alpha=0.35, lw=0.8)
    else:
        ax_c.scatter(final[c_col], final[loss], c=final[n_col], cmap=SIZE_CMAP, norm=norm, s=12, alpha=0.5)
    _law_panel(ax_c, fits, "L(C_min)", "C", "frontier (compute-efficient)")
    ax_c.set_xlabel(COMPUTE_LABELS.get(c_col, c_col))
    ax_c.set_title("Compute")

    envelope = "L(D)" in fits and "envelope" in fits["L(D)"].settings.get("point_source", "")
    if envelope:  # one data size: L(D) was read off the learning curves, so draw them
        for _, run in complete.groupby("run_id"):
            run = run.sort_values("step")
            ax_d.plot(run["tokens"], run[loss], color=colormaps[SIZE_CMAP](norm(run[n_col].iloc[0])),
                      alpha=0.35, lw=0.8)
    else:
        ax_d.scatter(final["tokens"], final[loss], c=final[n_col], cmap=SIZE_CMAP, norm=norm, s=14, alpha=0.45,
                     label="every run (colour: N)")
    _law_panel(ax_d, fits, "L(D)", "D",
               "best over models at each token count" if envelope else "best run per data size")
    ax_d.set_xlabel("Dataset size D (tokens)")
    ax_d.set_title("Dataset size")

    ax_n.scatter(final[n_col], final[loss], c=final[n_col], cmap=SIZE_CMAP, norm=norm, s=14, alpha=0.45,
                 label="every run")
    _law_panel(ax_n, fits, "L(N)", "N", "best run per model size")
    ax_n.set_xlabel(PARAM_LABELS.get(n_col, n_col))
    ax_n.set_title("Parameters")

    for ax in (ax_c, ax_d, ax_n):
        _log_x(ax)
        _log_loss_axis(ax)
        ax.grid(True, which="major", alpha=0.3)
    ax_c.set_ylabel(LOSS_LABEL)
    fig.colorbar(_size_mappable(norm), ax=[ax_c, ax_d, ax_n], label=PARAM_LABELS.get(n_col, n_col), pad=0.01)
    fig.suptitle("Loss against compute, data and parameters (after Kaplan et al. 2020, Fig. 1)")
    return fig


def _law_panel(ax, fits, name: str, x: str, points_label: str) -> None:
    if name not in fits:
        reason = getattr(fits, "skipped", {}).get(name, "not fitted")
        ax.text(0.5, 0.04, f"{name} not fitted: {reason}", transform=ax.transAxes, ha="center", va="bottom",
                fontsize=7, wrap=True, color="0.3")
        return
    fit = fits[name]
    ax.scatter(fit.data[x], fit.data["L"], color="black", s=22, zorder=3, label=points_label)
    grid = _log_span(fit.data[x], pad=1.5)
    ax.plot(grid, fit.predict(grid), color=FIT_COLOR, lw=2, ls="--", zorder=4, label=law_label(fit))
    ax.legend(fontsize=8, loc="upper right")


# ---------------------------------------------------------------------------------------------
# Learning curves

def learning_curves(history: pd.DataFrame, *, x: str = "tokens", loss: str = "val_loss",
                    param_count: str = "nonembed") -> Figure:
    """Every run's loss against tokens (or "flops", "flops_6nd", "step"), coloured by model size."""
    n_col = param_column(param_count)
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    norm = _size_norm(history[n_col])
    status = run_status(history) if "status" in history else pd.Series("complete", index=history.index)
    for run_id, run in history.groupby("run_id", sort=True):
        run = run.sort_values("step")
        finite = run[x].gt(0) & np.isfinite(run[loss])
        failed = status.loc[run.index[0]] != "complete"
        ax.plot(run.loc[finite, x], run.loc[finite, loss], lw=1.1, alpha=0.8, ls=":" if failed else "-",
                color=colormaps[SIZE_CMAP](norm(run[n_col].iloc[0])))
    optimal = _optimal_line(ax, history)
    if (status != "complete").any():
        ax.plot([], [], color="0.4", ls=":", label="not complete (diverged, failed or running)")
    if optimal or (status != "complete").any():
        ax.legend(fontsize=8)
    _log_x(ax)
    _log_loss_axis(ax)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(f"Learning curves ({history['run_id'].nunique()} runs)")
    ax.grid(True, which="major", alpha=0.3)
    fig.colorbar(_size_mappable(norm), ax=ax, label=PARAM_LABELS.get(n_col, n_col))
    return fig


# ---------------------------------------------------------------------------------------------
# Hoffmann et al. 2022, Figure 3

def isoflop(runs: pd.DataFrame, fits=None, *, loss: str = "val_loss") -> Figure:
    """IsoFLOP profiles with their parabolas and minima, next to N_opt(C) and D_opt(C) with the
    fitted lines of every Chinchilla fit given. Parabolas come from an approach 2 fit; when
    `fits` holds none, one is made (bootstrap=0)."""
    from analysis.chinchilla import fit_chinchilla
    fits = [] if fits is None else as_fit_list(fits)
    by_approach = {f.settings.get("approach"): f for f in fits}
    if 2 not in by_approach:
        try:
            by_approach[2] = fit_chinchilla(runs, approach=2, loss=loss, bootstrap=0)
        except ValueError:
            pass  # too few convex profiles for approach 2: draw the profiles and the other optima
    fit2 = by_approach.get(2)
    n_col = next(iter(by_approach.values())).settings["N"] if by_approach else "n_params"
    final = final_rows(runs)
    final = final.loc[np.isfinite(final["flops_budget"].to_numpy(float)) & np.isfinite(final[loss])]
    if "status" in final:
        final = final.loc[final["status"] == "complete"]
    budgets = np.sort(final["flops_budget"].unique())
    norm = LogNorm(budgets.min(), budgets.max() * (1.0001 if len(budgets) == 1 else 1))
    cmap = ListedColormap(colormaps[BUDGET_CMAP](np.linspace(0, 0.85, 256)))  # no pale yellow

    fig = Figure(figsize=(15.5, 4.6), layout="constrained")
    fig.get_layout_engine().set(wspace=0.08)  # room between the budget colour bar and the next panel
    ax_p, ax_n, ax_d = fig.subplots(1, 3)
    parabolas = fit2.data.set_index("C") if fit2 is not None else pd.DataFrame()
    for budget in budgets:
        color = cmap(norm(budget))
        group = final.loc[final["flops_budget"] == budget].sort_values(n_col)
        ax_p.scatter(group[n_col], group[loss], color=color, s=20)
        if budget in parabolas.index:
            row = parabolas.loc[budget]
            ln_n = np.linspace(row["ln_N_lo"], row["ln_N_hi"], 100)
            x = ln_n - row["ln_N_center"]
            ax_p.plot(np.exp(ln_n), row["c0"] + row["c1"] * x + row["c2"] * x * x, color=color, lw=1.3)
            ax_p.scatter([row["N_opt"]], [parabola_min(row)], marker="*", s=140, color=color,
                         edgecolor="black", zorder=4)
    _optimal_line(ax_p, final)
    ax_p.scatter([], [], s=20, color="0.5", label="final loss of a run")
    if len(parabolas):
        ax_p.plot([], [], color="0.5", label="parabola in ln N")
        ax_p.scatter([], [], marker="*", s=100, color="white", edgecolor="black", label="its minimum")
    _log_x(ax_p)
    ax_p.set_xlabel(PARAM_LABELS.get(n_col, n_col))
    ax_p.set_ylabel(f"Final {LOSS_LABEL[0].lower()}{LOSS_LABEL[1:]}")
    ax_p.set_title("IsoFLOP profiles")
    ax_p.legend(fontsize=7, loc="upper center")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax_p, pad=0.01)
    bar.set_label("IsoFLOP budget C (FLOPs)")
    if len(budgets) <= 8:
        bar.set_ticks(budgets, labels=[_sci_text(b) for b in budgets])
        bar.minorticks_off()

    c_grid = _log_span(budgets, pad=1.6)
    styles = {1: ("tab:blue", "s"), 2: ("black", "o"), 3: ("tab:green", "^")}
    for approach, fit in sorted(by_approach.items(), key=lambda kv: kv[0] or 0):
        color, marker = styles.get(approach, ("tab:gray", "x"))
        if approach == 3:
            points = approach3_isoflop_optima(fit, final, n_col)
            if len(points) < 2:
                continue
            c, n_opt, d_opt = points["C"], points["N_opt"], points["D_opt"]
            slope_n = np.polyfit(np.log(c), np.log(n_opt), 1)
            slope_d = np.polyfit(np.log(c), np.log(d_opt), 1)
            line_n = np.exp(np.polyval(slope_n, np.log(c_grid)))
            line_d = np.exp(np.polyval(slope_d, np.log(c_grid)))
            label_n = f"approach 3 (minimum of L(N,D) along each budget): $N_{{opt}}\\propto C^{{{slope_n[0]:.3f}}}$"
            label_d = f"approach 3: $D_{{opt}}\\propto C^{{{slope_d[0]:.3f}}}$"
            a_ci = fit.intervals["a"]
            if np.isfinite(a_ci[0]):
                label_n += f"\n  fit's a = {fit.params['a']:.3f} [{a_ci[0]:.3f}, {a_ci[1]:.3f}] (C = 6ND)"
        else:
            c, n_opt, d_opt = fit.data["C"], fit.data["N_opt"], fit.data["D_opt"]
            line_n, line_d = fit.predict(c_grid)
            label_n = f"approach {approach}: " + _allocation_label(fit, "a", "N")
            label_d = f"approach {approach}: " + _allocation_label(fit, "b", "D")
        small = approach == 1 and len(c) > 20  # approach 1 has one point per FLOP level
        for ax, y, line, label in ((ax_n, n_opt, line_n, label_n), (ax_d, d_opt, line_d, label_d)):
            ax.scatter(c, y, color=color, marker=marker, s=6 if small else 36, alpha=0.35 if small else 0.9,
                       zorder=3)
            ax.plot(c_grid, line, color=color, lw=1.6, ls="--" if approach == 1 else "-", label=label)
    for ax, what in ((ax_n, r"Optimal parameters $N_{opt}$"), (ax_d, r"Optimal tokens $D_{opt}$")):
        _log_x(ax)
        ax.set_yscale("log")
        ax.set_xlabel(COMPUTE_LABELS["flops_budget"])
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    ax_n.set_ylabel(r"$N_{opt}$: " + PARAM_LABELS.get(n_col, n_col))
    ax_d.set_ylabel(r"$D_{opt}$: training tokens")
    ax_n.set_title(r"Compute-optimal model size $N_{opt}(C)$")
    ax_d.set_title(r"Compute-optimal data $D_{opt}(C)$")
    fig.suptitle("IsoFLOP analysis (after Hoffmann et al. 2022, Fig. 3)")
    return fig


def parabola_min(row) -> float:
    x = np.log(row["N_opt"]) - row["ln_N_center"]
    return row["c0"] + row["c1"] * x + row["c2"] * x * x


def approach3_isoflop_optima(fit: Fit, runs: pd.DataFrame, n_col: str) -> pd.DataFrame:
    """For each IsoFLOP budget, the N (and D) minimising the approach 3 law along that budget's
    curve: D as a function of N interpolated from the budget's runs (ln D linear in ln N), so C is
    in the records' own FLOP count, comparable with approaches 1 and 2."""
    out = []
    for budget, group in runs.groupby("flops_budget"):
        ln_n = np.log(group[n_col].to_numpy(float))
        ln_d = np.log(group["tokens"].to_numpy(float))
        if np.unique(ln_n).size < 2:
            continue
        slope, intercept = np.polyfit(ln_n, ln_d, 1)
        grid = np.linspace(ln_n.min() - 1.5, ln_n.max() + 1.5, 600)
        values = fit.predict(np.exp(grid), np.exp(intercept + slope * grid))
        best = int(np.argmin(values))
        if 0 < best < len(grid) - 1:
            out.append({"C": budget, "N_opt": np.exp(grid[best]), "D_opt": np.exp(intercept + slope * grid[best])})
    return pd.DataFrame(out, columns=["C", "N_opt", "D_opt"])


# ---------------------------------------------------------------------------------------------
# Approach 3

def chinchilla_fit(fit: Fit) -> Figure:
    """Observed against predicted loss, and loss contours over (N, D) with the data and the
    efficient frontier N_opt(C), D_opt(C) (C = 6ND)."""
    data = fit.data
    predicted = fit.predict(data["N"], data["D"])
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    ax_o, ax_c = fig.subplots(1, 2)
    norm = _size_norm(data["N"])
    ax_o.scatter(predicted, data["L"], c=data["N"], cmap=SIZE_CMAP, norm=norm, s=18, edgecolor="none")
    lims = [min(predicted.min(), data["L"].min()) / 1.03, max(predicted.max(), data["L"].max()) * 1.03]
    ax_o.plot(lims, lims, color=FIT_COLOR, lw=1.5, ls="--", label="observed = predicted\n" + law_label(fit))
    ax_o.set_xlim(lims)
    ax_o.set_ylim(lims)
    _log_x(ax_o)
    ax_o.set_yscale("log")
    for axis in (ax_o.xaxis, ax_o.yaxis):
        axis.set_major_formatter(LogFormatter())
        axis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
    ax_o.set_xlabel("Predicted loss (nats/token)")
    ax_o.set_ylabel(f"Observed {LOSS_LABEL[0].lower()}{LOSS_LABEL[1:]}")
    ax_o.set_title(f"{fit.law}: observed against predicted ({fit.n_points} runs)")
    ax_o.legend(fontsize=8, loc="upper left")
    ax_o.grid(True, which="both", alpha=0.2)
    fig.colorbar(_size_mappable(norm), ax=ax_o, label=f"Parameters N ({fit.settings.get('N', 'N')})")

    n_grid = _log_span(data["N"], pad=2.0, num=160)
    d_grid = _log_span(data["D"], pad=2.0, num=160)
    nn, dd = np.meshgrid(n_grid, d_grid)
    surface = fit.predict(nn, dd)
    levels = np.geomspace(surface.min(), np.percentile(surface, 97), 14)
    filled = ax_c.contourf(nn, dd, surface, levels=levels, cmap="viridis_r", extend="max")
    lines = ax_c.contour(nn, dd, surface, levels=levels[::2], colors="white", linewidths=0.6, alpha=0.7)
    ax_c.clabel(lines, fmt="%.2f", fontsize=7)
    ax_c.scatter(data["N"], data["D"], s=10, color="white", edgecolor="black", linewidth=0.4, label="runs")
    c_lo, c_hi = 6 * n_grid[0] * d_grid[0], 6 * n_grid[-1] * d_grid[-1]
    c_line = np.geomspace(c_lo, c_hi, 200)
    n_opt, d_opt = fit.optimal_allocation(c_line)
    inside = (n_opt >= n_grid[0]) & (n_opt <= n_grid[-1]) & (d_opt >= d_grid[0]) & (d_opt <= d_grid[-1])
    ax_c.plot(n_opt[inside], d_opt[inside], color=FIT_COLOR, lw=2.2,
              label=f"efficient frontier: $N_{{opt}}\\propto C^{{{fit.params['a']:.3f}}}$, "
                    f"$D_{{opt}}\\propto C^{{{fit.params['b']:.3f}}}$")
    budgets = np.sort(data["flops_budget"].dropna().unique()) if "flops_budget" in data else []
    budgets = budgets if len(budgets) else np.geomspace(c_lo * 10, c_hi / 10, 4)
    for i, c in enumerate(budgets):
        ax_c.plot(n_grid, c / (6 * n_grid), color="0.85", lw=0.8, ls=":", label="IsoFLOP lines (C = 6ND)" if i == 0 else None)
    ax_c.set_xlim(n_grid[0], n_grid[-1])
    ax_c.set_ylim(d_grid[0], d_grid[-1])
    _log_x(ax_c)
    ax_c.set_yscale("log")
    ax_c.set_xlabel(f"Parameters N ({fit.settings.get('N', 'N')})")
    ax_c.set_ylabel("Training tokens D")
    ax_c.set_title("Predicted loss over (N, D)")
    ax_c.legend(fontsize=8, loc="upper right")
    fig.colorbar(filled, ax=ax_c, label="Predicted loss (nats/token)")
    return fig


# ---------------------------------------------------------------------------------------------
# Residuals

def residuals(fits) -> Figure:
    """ln(observed / predicted) against every input of every fit (a Fit, a FitSet or a list)."""
    fits = as_fit_list(fits)
    panels = [(fit, name) for fit in fits for name in fit.inputs]
    n_cols = min(3, len(panels))
    n_rows = int(np.ceil(len(panels) / n_cols))
    fig = Figure(figsize=(4.8 * n_cols, 3.6 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    for ax, (fit, name) in zip(axes, panels):
        x = fit.data[name]
        for col in [c for c in fit.data.columns if c.startswith("residual")]:
            label = {"residual": None, "residual_N_opt": r"$N_{opt}$", "residual_D_opt": r"$D_{opt}$"}[col]
            ax.scatter(x, fit.data[col], s=14, alpha=0.7, label=label)
        ax.axhline(0, color="black", lw=0.8)
        _log_x(ax)
        ax.set_xlabel(_input_label(fit, name))
        ax.set_ylabel("ln(observed / predicted)")
        ax.set_title(f"{fit.law}: rmse {fit.quality.get('rmse_log', fit.quality.get('rmse_log_N_opt', np.nan)):.3g}",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        if len(fit.data.filter(like="residual").columns) > 1:
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Residuals in log space")
    return fig


def _input_label(fit: Fit, name: str) -> str:
    if name == "N":
        return PARAM_LABELS.get(fit.settings.get("N"), "Parameters N")
    if name == "D":
        return "Training tokens D"
    if name == "C":
        return COMPUTE_LABELS.get(fit.settings.get("C"), "Compute C (FLOPs)")
    return name


# ---------------------------------------------------------------------------------------------
# Labels and axes

def law_label(fit: Fit) -> str:
    """The fitted law and its parameters with 95% intervals, for a legend (mathtext)."""
    head = FORMULAS.get(fit.law, fit.formula)
    derived = {"Chinchilla approach 3": ("a", "b"), "L(N,D)": ("alpha_C",)}.get(fit.law, ())
    shown = [k for k in fit.params if k not in derived]
    parts = []
    for name in shown:
        value = fit.params[name]
        lo, hi = fit.intervals[name]
        text = f"${TEX_NAMES.get(name, name)}$={_num(value)}"
        if np.isfinite(lo) and name.startswith(("alpha", "beta", "a")):
            text += f" [{_num(lo)}, {_num(hi)}]"
        parts.append(text)
    lines = [head]
    for i in range(0, len(parts), 3):
        lines.append(", ".join(parts[i:i + 3]))
    return "\n".join(lines)


def _allocation_label(fit: Fit, exponent: str, what: str) -> str:
    lo, hi = fit.intervals[exponent]
    text = f"${what}_{{opt}}\\propto C^{{{fit.params[exponent]:.3f}}}$"
    return text + (f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else "")


def _num(value: float) -> str:
    if value == 0 or not np.isfinite(value):
        return f"{value:g}"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    exponent = int(np.floor(np.log10(abs(value))))
    return f"${value / 10 ** exponent:.2f}\\times10^{{{exponent}}}$"


def _sci_text(value: float) -> str:
    exponent = int(np.floor(np.log10(value)))
    mantissa = value / 10 ** exponent
    return f"$10^{{{exponent}}}$" if abs(mantissa - 1) < 1e-6 else f"${mantissa:.2g}\\times10^{{{exponent}}}$"


def _log_span(values, pad: float = 1.0, num: int = 200) -> np.ndarray:
    values = np.asarray(values, float)
    return np.geomspace(values.min() / pad, values.max() * pad, num)


def _size_norm(sizes) -> LogNorm:
    sizes = np.asarray(sizes, float)
    sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
    lo, hi = sizes.min(), sizes.max()
    return LogNorm(lo, hi if hi > lo else lo * 1.0001)


def _size_mappable(norm):
    return ScalarMappable(norm=norm, cmap=SIZE_CMAP)


def _optimal_line(ax, frame: pd.DataFrame) -> bool:
    """The source's own cross-entropy on the validation tokens (a synthetic source's true floor),
    dashed, when the records have it. Runs of one sweep score the same windows: their mean is drawn."""
    if "val_loss_optimal" not in frame:
        return False
    values = pd.to_numeric(frame["val_loss_optimal"], errors="coerce").dropna()
    if values.empty:
        return False
    ax.axhline(float(values.mean()), ls="--", color="0.35", lw=1.1,
               label=f"true optimal loss {values.mean():.3f} (source's cross-entropy)")
    return True


def _log_x(ax) -> None:
    """A log x axis; past half a decade only the powers of ten are labelled, so tick labels never collide."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(LogFormatterSciNotation(minor_thresholds=(0.5, 0.25)))


def _log_loss_axis(ax) -> None:
    """A log loss axis labelled with plain numbers: losses span less than a decade, where the
    default formatter labels only powers of ten (often none at all)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
