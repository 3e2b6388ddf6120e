"""`scaling fit`, `scaling table` and `scaling compare`: fitted laws, runs, extrapolation audits and
compute multipliers as markdown, CSV or LaTeX.

    scaling fit RESULTS_DIR [--law kaplan|chinchilla] [--approach 1|2|3] [--bootstrap N] [--format md|csv|latex]
    scaling fit RESULTS_DIR --law kaplan|chinchilla --holdout-flops C    # the extrapolation audit
    scaling table RESULTS_DIR [--format md|csv|latex] [--bootstrap N]
    scaling compare A_DIR B_DIR [--bootstrap N] [--format md|csv|latex]   # B's compute multiplier over A

The `scaling` console script calls `fit_command(argv)` / `table_command(argv)` / `compare_command(argv)`.
A user's mistake (a missing folder, no runs, too few points for a law) prints one line to stderr and
returns 2. RESULTS_DIR may be one sweep's folder or a parent of several; each sweep is fitted on its
own. Each of compare's folders must hold one sweep.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import tables
from analysis.audit import audit_with_fit
from analysis.chinchilla import fit_chinchilla
from analysis.data_constrained import fit_data_constrained
from analysis.comparison import compare
from analysis.emergence import probe_tasks, seed_spread, transitions
from analysis.fit_result import DEFAULT_BOOTSTRAP, Fit
from analysis.kaplan import fit_kaplan
from analysis.truth import compare_with_truth, has_known_floor
from analysis.conventions import fit_conventions, side_by_side
from analysis.records import load_history, load_runs, one_line_warnings


class UsageError(Exception):
    """A mistake in the command line or the data: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message over several lines and exits
        raise UsageError(message)


def fit_command(argv: list[str]) -> int:
    parser = _Parser(prog="scaling fit", description="Fit Kaplan or Chinchilla scaling laws to a results folder "
                                                     "and print them as a table.")
    parser.add_argument("results_dir", help="a sweep's results folder, or a parent of several")
    parser.add_argument("--law", choices=["kaplan", "chinchilla", "data-constrained"], default=None,
                        help="default: chinchilla for a sweep of IsoFLOP runs, data-constrained (Muennighoff et al. "
                             "2023) for one with repeated data, kaplan otherwise")
    parser.add_argument("--approach", type=int, choices=[1, 2, 3],
                        help="Chinchilla approach (default: every approach the data supports)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help=f"bootstrap replicates for the 95%% intervals (default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--format", default="md", choices=list(tables.FORMATS))
    parser.add_argument("--holdout-flops", type=float, metavar="C",
                        help="audit instead: fit on the runs with training FLOPs below C and predict the others "
                             "(Chinchilla: approach 3; Kaplan: the joint L(N, D))")
    parser.add_argument("--conventions", action="store_true",
                        help="each law under both parameter counts (non-embedding, all) and both compute counts "
                             "(6ND, exact) side by side, the law's own marked *")
    return _run(parser, argv, _fit)


def compare_command(argv: list[str]) -> int:
    parser = _Parser(prog="scaling compare", description="The compute multiplier of sweep B over sweep A: the "
                                                         "compute A needs to reach B's loss, over B's compute, at "
                                                         "each of B's budgets and overall (Chinchilla approach 3).")
    parser.add_argument("a_dir", help="the baseline sweep's results folder (A); FOLDER:COLUMN=VALUE takes only "
                                      "its runs whose COLUMN is VALUE (e.g. results/mine:recipe=raw)")
    parser.add_argument("b_dir", help="the new sweep's results folder (B), or FOLDER:COLUMN=VALUE")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help=f"bootstrap replicates of each fit for the 95%% intervals (default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--format", default="md", choices=list(tables.FORMATS))
    return _run(parser, argv, _compare)


def table_command(argv: list[str]) -> int:
    parser = _Parser(prog="scaling table", description="Print the runs of a results folder and the laws they "
                                                       "support as markdown, CSV or LaTeX.")
    parser.add_argument("results_dir", help="a sweep's results folder, or a parent of several")
    parser.add_argument("--format", default="md", choices=list(tables.FORMATS))
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help=f"bootstrap replicates for the fits' 95%% intervals (default {DEFAULT_BOOTSTRAP})")
    return _run(parser, argv, _table)


def _run(parser: _Parser, argv, command) -> int:
    with one_line_warnings():
        try:
            args = parser.parse_args(argv)
            if args.bootstrap < 0:
                raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
            print(command(args), end="")
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        except (UsageError, ValueError, FileNotFoundError) as exc:
            print(f"{parser.prog}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _records(results_dir: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = load_runs(results_dir)
    if runs.empty:
        raise UsageError(f"no runs under {results_dir} (expected <sweep>/runs/<run_id>/summary.parquet)")
    return runs, load_history(results_dir)


def _by_sweep(frame: pd.DataFrame) -> dict:
    if frame.empty or "sweep" not in frame:
        return {None: frame}
    return dict(iter(frame.groupby("sweep", sort=True)))


def _law_of(runs: pd.DataFrame) -> str:
    if "epochs" in runs and (pd.to_numeric(runs["epochs"], errors="coerce") > 1).any():
        return "data-constrained"
    budgets = pd.to_numeric(runs["flops_budget"], errors="coerce") if "flops_budget" in runs else pd.Series([])
    return "chinchilla" if np.isfinite(budgets).any() else "kaplan"


def _fits_for(law: str, runs: pd.DataFrame, history: pd.DataFrame, approaches, bootstrap: int) -> list[Fit]:
    """Fits of one sweep. Approaches not asked for by name are skipped when the data cannot
    support them; one asked for by name that fails raises."""
    curves = history if not history.empty else runs
    if law == "data-constrained":
        return [fit_data_constrained(runs, bootstrap=bootstrap)]
    if law == "kaplan":
        fits = list(fit_kaplan(curves, bootstrap=bootstrap).values())
        if has_known_floor(runs):  # a known-answer source: the law with an irreducible term too
            fits.append(fit_chinchilla(runs, approach=3, bootstrap=bootstrap))
        return fits
    fits, errors = [], []
    for approach in approaches or (1, 2, 3):
        try:
            fits.append(fit_chinchilla(curves if approach == 1 else runs, approach=approach, bootstrap=bootstrap))
        except ValueError as exc:
            if approaches:
                raise
            errors.append(f"approach {approach}: {_one_line(exc)}")
    if not fits:
        raise UsageError("; ".join(errors))
    return fits


def _sweep_fits(runs, history, law, approaches, bootstrap) -> list[tuple[str | None, list[Fit]]]:
    """[(sweep, fits)] for every sweep that can be fitted (law None: chosen per sweep). With one
    sweep its error is the command's; with several, a failing sweep is a warning."""
    sweeps, histories = _by_sweep(runs), _by_sweep(history)
    out, problems = [], []
    for sweep, sweep_runs in sweeps.items():
        sweep_law = law or _law_of(sweep_runs)
        try:
            out.append((sweep, _fits_for(sweep_law, sweep_runs, histories.get(sweep, pd.DataFrame()),
                                         approaches, bootstrap)))
        except (UsageError, ValueError) as exc:
            if len(sweeps) == 1:
                raise
            problems.append(f"{sweep}: {_one_line(exc)}")
    for problem in problems:
        print(f"warning: no fit for {problem}", file=sys.stderr)
    if not out:
        raise UsageError("no sweep could be fitted: " + "; ".join(problems))
    return out


def _fits_text(sweep_fits, format: str) -> str:
    if format == "csv":
        frames = []
        for sweep, fits in sweep_fits:
            frame = tables.fits_frame(fits)
            if sweep is not None:
                frame.insert(0, "sweep", sweep)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True).to_csv(index=False)
    parts = []
    for sweep, fits in sweep_fits:
        if len(sweep_fits) > 1:
            parts.append(f"% {sweep}\n" if format == "latex" else f"### {sweep}\n\n")
        parts.append(tables.fits_table(fits, format))
        notes = [f"{fit.law} is fragile: {reason}" for fit in fits for reason in _fragile(fit)]
        parts.append("".join(f"% {n}\n" for n in notes) if format == "latex"
                     else "".join(f"\n> {n}\n" for n in notes))
    return "".join(parts)


def _fit(args) -> str:
    if args.law in ("kaplan", "data-constrained") and args.approach:
        raise UsageError("--approach applies to --law chinchilla only")
    runs, history = _records(args.results_dir)
    if args.law is None and (args.holdout_flops is not None or args.conventions or args.approach):
        args.law = _law_of(runs)
        if args.law != "chinchilla" and args.approach:
            raise UsageError("--approach applies to --law chinchilla only (these runs have no IsoFLOP budget)")
    if args.law == "data-constrained" and (args.holdout_flops is not None or args.conventions):
        raise UsageError("--holdout-flops and --conventions apply to --law kaplan or chinchilla")
    if args.holdout_flops is not None:
        return _audit_text(runs, history, args)
    if args.conventions:
        return _conventions_text(runs, history, args)
    approaches = (args.approach,) if args.approach else None
    return _fits_text(_sweep_fits(runs, history, args.law, approaches, args.bootstrap), args.format)


def _conventions_text(runs: pd.DataFrame, history: pd.DataFrame, args) -> str:
    """`fit_conventions` of every sweep: Kaplan's laws on the learning curves where there are any,
    Chinchilla's approach (3 unless asked) on the runs."""
    parts, sweeps, histories = [], _by_sweep(runs), _by_sweep(history)
    for sweep, sweep_runs in sweeps.items():
        curves = histories.get(sweep, pd.DataFrame())
        records = curves if args.law == "kaplan" and not curves.empty else sweep_runs
        frame = fit_conventions(records, args.law, approach=args.approach or 3, bootstrap=args.bootstrap)
        if args.format == "csv":
            parts.append(tables.render(frame.assign(**({"sweep": sweep} if sweep is not None else {})), "csv"))
            continue
        title = f"### {sweep}\n\n" if len(sweeps) > 1 else ""
        parts.append(title + side_by_side(frame, args.format)
                     + "\n* the law's own convention (Kaplan et al. 2020: non-embedding N, C = 6ND; Hoffmann et "
                       "al. 2022: all parameters, FLOPs with attention and embeddings). Tokens are bytes here.\n")
    return "\n".join(parts)


def _audit_text(runs: pd.DataFrame, history: pd.DataFrame, args) -> str:
    """The extrapolation audit of every sweep (one failing among several is a warning)."""
    if args.approach not in (None, 3):
        raise UsageError(f"--holdout-flops audits a loss law: approach 3, not {args.approach}")
    if not args.holdout_flops > 0:
        raise UsageError(f"--holdout-flops must be > 0, got {args.holdout_flops}")
    sweeps, histories = _by_sweep(runs), _by_sweep(history)
    parts, frames, problems = [], [], []
    for sweep, sweep_runs in sweeps.items():
        curves = histories.get(sweep, pd.DataFrame())
        records = curves if args.law == "kaplan" and not curves.empty else sweep_runs
        try:
            audit, fit = audit_with_fit(records, law=args.law, holdout_flops=args.holdout_flops,
                                        bootstrap=args.bootstrap)
        except ValueError as exc:
            if len(sweeps) == 1:
                raise
            problems.append(f"{sweep}: {_one_line(exc)}")
            continue
        if args.format == "csv":
            frames.append(audit.assign(**({"sweep": sweep} if sweep is not None else {})))
            continue
        parts.append(_one_audit_text(sweep if len(sweeps) > 1 else None, audit, fit, args.format))
    for problem in problems:
        print(f"warning: no audit for {problem}", file=sys.stderr)
    if not frames and not parts:
        raise UsageError("no sweep could be audited: " + "; ".join(problems))
    if args.format == "csv":
        return tables.render(pd.concat(frames, ignore_index=True), "csv")
    return "\n".join(parts)


def _one_audit_text(sweep, audit: pd.DataFrame, fit: Fit, format: str) -> str:
    attrs = audit.attrs
    loss = audit.columns[4]
    shown = audit[["run_id", "flops", "N", "tokens", loss, "predicted"]].copy()
    shown["95% interval"] = [tables.interval_text(lo, hi, format) for lo, hi in zip(audit["lower"], audit["upper"])]
    percent = "\\%" if format == "latex" else "%"  # preformatted cells are not escaped
    shown["error"] = [f"{100 * e:+.1f}{percent}" for e in audit["error"]]
    shown = shown.rename(columns={"N": attrs["N"]})
    head = (f"Extrapolation audit: {fit.law} fitted on the {attrs['n_train']} runs below "
            f"{attrs['holdout_flops']:.3g} FLOPs, predicting the {attrs['n_holdout']} at or above it")
    inside = int(audit["inside"].sum())
    summary = (f"median |error| = {attrs['median_abs_error']:.1%}; {inside} of {len(audit)} held-out runs "
               f"({attrs['coverage']:.0%}) inside their 95% prediction interval")
    notes = [summary] + [f"the fit below the split is fragile: {r}" for r in _fragile(fit)]
    table = tables.render(shown, format, preformatted=("95% interval", "error"))
    if format == "latex":
        return f"% {head}\n{table}" + "".join(f"% {n}\n" for n in notes)
    title = f"### {sweep}\n\n" if sweep is not None else ""
    return f"{title}{head}\n\n{table}\n" + "".join(f"{n}\n" for n in notes)


def _fragile(fit: Fit) -> list[str]:
    return fit.sensitivity.fragile_reasons(fit) if fit.sensitivity is not None else []


def _selector(text: str) -> tuple[str, tuple[str, str] | None]:
    """"FOLDER:COLUMN=VALUE" -> (FOLDER, (COLUMN, VALUE)); a plain folder (or one that exists as
    written) -> (FOLDER, None)."""
    head, sep, tail = text.rpartition(":")
    if not sep or "=" not in tail or Path(text).exists():
        return text, None
    column, _, value = tail.partition("=")
    return head, (column, value)


def _compare(args) -> str:
    sweeps = []
    for folder in (args.a_dir, args.b_dir):
        folder, selector = _selector(folder)
        runs, _ = _records(folder)
        names = sorted(runs["sweep"].dropna().unique()) if "sweep" in runs else []
        if len(names) > 1:
            raise UsageError(f"{folder} holds several sweeps ({', '.join(names)}): pass one sweep's folder")
        name = names[0] if names else str(folder)
        if selector:
            column, value = selector
            if column not in runs:
                raise UsageError(f"{folder}: no column {column!r} in its records (from {folder}:{column}={value})")
            runs = runs.loc[runs[column].astype(str) == value]
            if runs.empty:
                raise UsageError(f"{folder}: no run has {column} = {value!r}")
            name = f"{name}:{column}={value}"
        sweeps.append((name, runs))
    (name_a, runs_a), (name_b, runs_b) = sweeps
    if args.bootstrap < 2:
        raise UsageError(f"--bootstrap must be >= 2 for the multiplier's interval, got {args.bootstrap}")
    result = compare(runs_a, runs_b, bootstrap=args.bootstrap, names=(name_a, name_b))
    frame = result.to_frame()
    if args.format == "csv":
        return tables.render(frame, "csv")
    shown = pd.DataFrame({"budget C": frame["budget_label"], f"loss of {name_b}": frame["loss_b"],
                          f"compute {name_a} needs": frame["compute_a"], "multiplier": frame["multiplier"],
                          "95% interval": [tables.interval_text(lo, hi, args.format)
                                           for lo, hi in zip(frame["lower"], frame["upper"])]})
    head = (f"Compute multiplier of {name_b} over {name_a}: the compute {name_a} needs to reach {name_b}'s "
            f"loss, over {name_b}'s compute (Chinchilla approach 3 fits, C = 6ND)")
    lo, hi = result.interval
    summary = f"{name_b} is worth {result.multiplier:.3g}x {name_a}'s compute [{lo:.3g}, {hi:.3g}] (95%)"
    table = tables.render(shown, args.format, preformatted=("95% interval", "budget C"))
    if args.format == "latex":
        return f"% {head}\n{table}% {summary}\n"
    return f"{head}\n\n{table}\n{summary}\n"


def _table(args) -> str:
    """The runs table, then the fits each sweep supports (a sweep with none is a warning)."""
    runs, history = _records(args.results_dir)
    runs_text = tables.runs_table(runs, args.format)
    try:
        sweep_fits = _sweep_fits(runs, history, None, None, args.bootstrap)
        fits_text = _fits_text(sweep_fits, args.format)
    except (UsageError, ValueError) as exc:
        print(f"warning: no fits: {_one_line(exc)}", file=sys.stderr)
        sweep_fits, fits_text = [], ""
    truth_text = _truth_text(runs, sweep_fits, args.format)
    transitions_text = _transitions_text(runs, args.format, args.bootstrap, history)
    if args.format == "md":
        return (f"## Runs\n\n{runs_text}" + (f"\n## Fits\n\n{fits_text}" if fits_text else "")
                + (f"\n## Fits against the known answers\n\n{truth_text}" if truth_text else "")
                + (f"\n## Transitions\n\n{transitions_text}" if transitions_text else ""))
    return runs_text + "".join("\n" + t for t in (fits_text, truth_text, transitions_text) if t)


def _truth_text(runs: pd.DataFrame, sweep_fits, format: str = "md") -> str:
    """For a sweep on a source whose answers are known (val_loss_optimal; true_exponent_data and
    true_exponent_params): every fitted parameter with a truth, its error and whether its interval
    covers it (analysis.truth.compare_with_truth)."""
    parts = []
    for sweep, fits in sweep_fits:
        sweep_runs = runs if sweep is None else runs.loc[runs["sweep"] == sweep]
        try:
            frame = compare_with_truth(fits, sweep_runs)
        except ValueError:  # no known answer in these records
            continue
        frame = frame.drop(columns=["truth_column"])
        if sweep is not None:
            frame.insert(0, "sweep", sweep)
        parts.append(tables.render(frame, format))
    return "".join(parts)


def _transitions_text(runs: pd.DataFrame, format: str, bootstrap: int, history: pd.DataFrame | None = None) -> str:
    """Where each probed task's metrics cross halfway from chance to their best (analysis.emergence):
    across model sizes (one row per task and metric), then along training: the step at which each
    run's exact match crosses, with an interval from the binomial noise of its items."""
    if not probe_tasks(runs):
        return ""
    complete = runs.loc[runs["status"] == "complete"] if "status" in runs else runs
    frame = transitions(complete, n_boot=bootstrap)
    parts = []
    if not frame.empty:
        frame = frame[["task", "metric", "chance", "threshold", "x", "ci_low", "ci_high", "crossed_fraction",
                       "censored"]]
        parts.append(tables.render(frame.rename(columns={"x": "n_params at transition", "ci_low": "90% low",
                                                         "ci_high": "90% high", "crossed_fraction": "resamples crossing",
                                                         "censored": "already past at smallest"}), format))
    if history is not None and not history.empty and "step" in history:
        curves = history.loc[history["run_id"].isin(complete["run_id"])]
        along = transitions(curves, x="step", metrics=("exact_match",), by="run_id", n_boot=bootstrap)
        if not along.empty:
            crossed = along.loc[np.isfinite(along["x"].to_numpy(float))]
            if len(crossed):
                shown = crossed[["run_id", "task", "chance", "threshold", "x", "ci_low", "ci_high", "between_low",
                                 "between_high", "censored"]]
                parts.append("" if not parts or format == "csv" else "\n")
                parts.append(tables.render(shown.rename(columns={"x": "step at transition", "ci_low": "90% low",
                                                                 "ci_high": "90% high", "between_low": "after eval at",
                                                                 "between_high": "before eval at",
                                                                 "censored": "already past at first eval"}), format))
            note = (f"exact match along training: {len(crossed)} of {len(along)} (run, task) pairs cross halfway "
                    "from chance to 1; the interval is the items' binomial noise, and the crossing lies between the "
                    "two evaluations named (the step between them is interpolated)")
            parts.append(f"% {note}\n" if format == "latex" else f"\n{note}\n")
            spread = seed_spread(along)
            if not spread.empty:
                parts.append("" if format == "csv" else "\n")
                parts.append(tables.render(spread.rename(columns={
                    "steps": "steps at transition", "mean": "mean step", "sd": "seed sd", "range": "seed range",
                    "item_interval": "mean 90% item interval"}), format))
                note = ("across seeds: the steps at which the seeds of one cell cross, and their spread, beside the "
                        "width of one run's interval from its items: the seed's share of the uncertainty")
                parts.append(f"% {note}\n" if format == "latex" else f"\n{note}\n")
    return "".join(parts)
