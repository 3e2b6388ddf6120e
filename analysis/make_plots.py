"""`python -m analysis.make_plots [RESULTS_ROOT] [--bootstrap N]` (what `make plots` runs): every figure of every sweep.

For each `RESULTS_ROOT/<sweep>/` with a `runs/` folder (or RESULTS_ROOT itself, if it is one),
the figures its records support are written to `<sweep>/figures/` as PNG and PDF:

    learning_curves                      always
    kaplan_figure1, kaplan_residuals     runs of a Kaplan grid (grid == "kaplan", or no flops_budget)
    kaplan_grid                          the same, with several data sizes: every (N, D) end point and L(N, D)
    kaplan_audit                         the same: L(N, D) fitted on the smaller two thirds of the runs
                                         (by FLOPs), predicting the rest (analysis.audit)
    isoflop, chinchilla_approach3,       runs with an IsoFLOP budget (flops_budget)
    chinchilla_residuals
    chinchilla_audit                     the same: approach 3 fitted below the largest budget, predicting it
    chinchilla_e_profile                 the same: approach 3's objective over a fixed E, leave one shape out
    emergence_<task>                     runs with probe columns (probe/<task>/<metric>), one per task
    emergence_training_<task>            the same against training step and tokens, one line per run
    confidence                           runs that record val_entropy and val_ece, at 2+ model sizes
    eval_sets                            runs with evaluation sets (val/<set>/loss): loss and ECE per set
                                         against N (analysis.evalset_figures)
    reliability                          runs with calibration tables (calibration.parquet)
    truth                                runs on a source whose answers are known (val_loss_optimal):
                                         every fitted E and exponent against its truth
                                         (analysis.truth; a Kaplan grid is also fitted by approach 3)
    loss_vs_epochs                       runs with repeated data (epochs > 1 somewhere): loss against epochs at
                                         fixed compute with the data-constrained law (analysis.data_constrained)

and, where two or more sweeps know their answers, RESULTS_ROOT/figures/known_answers: all of them
in one figure (do the fitted exponents move with the true ones?).

From records only, deterministically: fixed bootstrap seeds, the Agg backend, and no dates in the
files' metadata. A figure the data cannot support is skipped with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import plots  # noqa: E402
from analysis.audit import audit_with_fit  # noqa: E402
from analysis.chinchilla import fit_chinchilla  # noqa: E402
from analysis.data_constrained import fit_data_constrained  # noqa: E402
from analysis.emergence import load_calibration, probe_tasks  # noqa: E402
from analysis.evalset_figures import eval_set_names, eval_sets_figure  # noqa: E402
from analysis.fit_result import DEFAULT_BOOTSTRAP  # noqa: E402
from analysis.grid_figures import kaplan_grid  # noqa: E402
from analysis.kaplan import fit_kaplan  # noqa: E402
from analysis.records import load_history, load_runs, one_line_warnings  # noqa: E402
from analysis.truth import compare_with_truth, has_known_floor  # noqa: E402
from analysis.truth_figures import truth_figure  # noqa: E402
from analysis.repeat_figures import epochs_figure  # noqa: E402
from analysis.tuning import RULE_FILE, tuning_figure  # noqa: E402

PNG_DPI = 150
# No creation date (PDF) and no version string (PNG): the same records give the same bytes.
PDF_METADATA = {"CreationDate": None, "Producer": None, "Creator": None}
PNG_METADATA = {"Software": None}


def sweep_dirs(root: Path) -> list[Path]:
    if (root / "runs").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "runs").is_dir())


def save(fig, folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    png, pdf = folder / f"{name}.png", folder / f"{name}.pdf"
    fig.savefig(png, dpi=PNG_DPI, metadata=PNG_METADATA)
    fig.set_layout_engine("none")  # keep the layout the PNG solved: the PDF has the same size in inches
    fig.savefig(pdf, metadata=PDF_METADATA)
    return [png, pdf]


def sweep_figures(sweep_dir: Path, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                  truths: list[pd.DataFrame] | None = None) -> list[Path]:
    """Write every figure the sweep's records support; returns the files written. A sweep whose
    answers are known appends its analysis.truth table (with a `sweep` column) to `truths`."""
    runs, history = (_main_stage(f) for f in (load_runs(sweep_dir), load_history(sweep_dir)))
    out = sweep_dir / "figures"
    written: list[Path] = []
    tune = sweep_dir / "tune" / RULE_FILE
    if tune.exists():  # `scaling tune`'s runs and rule: their own figure, never in the grid's
        tuned = load_runs(sweep_dir / "tune")
        written.extend(save(tuning_figure(tuned[tuned["status"] == "complete"], json.loads(tune.read_text())),
                            out, "lr_tuning"))
    if runs.empty:
        print(f"{sweep_dir}: no runs, no figures", file=sys.stderr)
        return written
    curves = history if not history.empty else runs

    def attempt(name, make):
        try:
            written.extend(save(make(), out, name))
        except ValueError as exc:
            print(f"{sweep_dir}: skipped {name}: {' '.join(str(exc).split())}", file=sys.stderr)

    # An IsoFLOP sweep's curves are read against compute (each budget ends on one vertical line).
    isoflop_only = bool(_isoflop_mask(runs).all())
    attempt("learning_curves", lambda: plots.learning_curves(curves, x="flops" if isoflop_only else "tokens",
                                                             param_count="all" if isoflop_only else "nonembed"))

    kaplan_ids = runs.loc[_kaplan_mask(runs), "run_id"]
    if len(kaplan_ids):
        kaplan_curves = curves.loc[curves["run_id"].isin(kaplan_ids)]
        kaplan = {}

        def kaplan_fits():
            if "fits" not in kaplan:
                kaplan["fits"] = fit_kaplan(kaplan_curves, bootstrap=bootstrap, seed=seed)
            return kaplan["fits"]

        attempt("kaplan_figure1", lambda: plots.kaplan_figure1(kaplan_curves, kaplan_fits()))
        attempt("kaplan_residuals", lambda: plots.residuals(kaplan_fits()))
        attempt("kaplan_grid", lambda: kaplan_grid(kaplan_curves, kaplan_fits()))
        attempt("kaplan_audit", lambda: plots.audit_figure(*audit_with_fit(kaplan_curves, law="kaplan",
                                                                           bootstrap=bootstrap, seed=seed)))
        if has_known_floor(runs):
            kaplan_runs = runs.loc[runs["run_id"].isin(kaplan_ids)]
            attempt("truth", lambda: _truth(sweep_dir, kaplan_runs, truths, [
                *kaplan_fits().values(), fit_chinchilla(kaplan_runs, approach=3, bootstrap=bootstrap, seed=seed)]))

    iso_ids = runs.loc[_isoflop_mask(runs), "run_id"]
    if len(iso_ids):
        iso_runs = runs.loc[runs["run_id"].isin(iso_ids)]
        iso_curves = curves.loc[curves["run_id"].isin(iso_ids)]
        fits = {}
        for approach, data in ((1, iso_curves), (2, iso_runs), (3, iso_runs)):
            try:
                fits[approach] = fit_chinchilla(data, approach=approach, bootstrap=bootstrap, seed=seed)
            except ValueError as exc:
                print(f"{sweep_dir}: no Chinchilla approach {approach}: {' '.join(str(exc).split())}",
                      file=sys.stderr)
        attempt("isoflop", lambda: plots.isoflop(iso_runs, list(fits.values())))
        if 3 in fits:
            attempt("chinchilla_approach3", lambda: plots.chinchilla_fit(fits[3]))
        if fits:
            attempt("chinchilla_residuals", lambda: plots.residuals([fits[k] for k in sorted(fits)]))
        attempt("chinchilla_audit", lambda: plots.audit_figure(*audit_with_fit(iso_runs, law="chinchilla",
                                                                               bootstrap=bootstrap, seed=seed)))
        if 3 in fits:
            attempt("chinchilla_e_profile", lambda: plots.e_profile_figure(fits[3]))
        if fits and has_known_floor(iso_runs):
            attempt("truth", lambda: _truth(sweep_dir, iso_runs, truths, list(fits.values())))

    for task in probe_tasks(curves):
        attempt(f"emergence_{task}", lambda task=task: plots.emergence_figure(curves, task))
        attempt(f"emergence_training_{task}", lambda task=task: plots.emergence_figure(curves, task,
                                                                                        xs=("step", "tokens")))
    final = runs.loc[runs["status"] == "complete"] if "status" in runs else runs
    if {"val_entropy", "val_ece"} <= set(final) and final["val_entropy"].notna().any() \
            and final["n_params"].nunique() > 1:
        attempt("confidence", lambda: plots.confidence_figure(final.dropna(subset=["val_entropy", "val_ece"])))
    if eval_set_names(final):
        attempt("eval_sets", lambda: eval_sets_figure(final))
    calibration = load_calibration(sweep_dir)
    if not calibration.empty:
        attempt("reliability", lambda: plots.reliability_figure(calibration, runs))
    if "epochs" in runs and (pd.to_numeric(runs["epochs"], errors="coerce") > 1).any():
        attempt("loss_vs_epochs", lambda: epochs_figure(final, _data_constrained_fit(final, bootstrap, seed, sweep_dir)))
    return written


def _truth(sweep_dir: Path, runs: pd.DataFrame, truths: list | None, fits):
    table = compare_with_truth(fits, runs).assign(sweep=sweep_dir.name)
    if truths is not None:
        truths.append(table)
    return truth_figure(table)


def _data_constrained_fit(runs: pd.DataFrame, bootstrap: int, seed: int, sweep_dir: Path):
    """The law to draw beside the points, or None (the points alone) where the runs cannot support it."""
    try:
        return fit_data_constrained(runs, bootstrap=bootstrap, seed=seed)
    except ValueError as exc:
        print(f"{sweep_dir}: loss_vs_epochs without the fitted law: {' '.join(str(exc).split())}", file=sys.stderr)
        return None


def _main_stage(frame: pd.DataFrame) -> pd.DataFrame:
    """The grid's own records: learning-rate tuning runs (`stage` tune) left out."""
    if frame.empty or "stage" not in frame:
        return frame
    return frame[frame["stage"].fillna("main") != "tune"].reset_index(drop=True)


def _isoflop_mask(runs: pd.DataFrame) -> pd.Series:
    if "flops_budget" not in runs:
        return pd.Series(False, index=runs.index)
    return pd.Series(np.isfinite(pd.to_numeric(runs["flops_budget"], errors="coerce")), index=runs.index)


def _kaplan_mask(runs: pd.DataFrame) -> pd.Series:
    if "grid" in runs and runs["grid"].notna().any():
        return runs["grid"] == "kaplan"
    return ~_isoflop_mask(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.make_plots",
                                     description="Regenerate every figure of every results/<sweep>/.")
    parser.add_argument("results_root", nargs="?", default="results")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help=f"bootstrap replicates behind the intervals in legends (default {DEFAULT_BOOTSTRAP})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    root = Path(args.results_root)
    if not root.is_dir():
        print(f"make_plots: error: no results folder at {root}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(), one_line_warnings():
        warnings.simplefilter("default")
        truths: list[pd.DataFrame] = []
        for sweep_dir in sweep_dirs(root):
            for path in sweep_figures(sweep_dir, bootstrap=args.bootstrap, truths=truths):
                print(path)
        if len(truths) > 1:  # several known-answer sweeps: one figure of them all
            for path in save(truth_figure(pd.concat(truths, ignore_index=True)), root / "figures", "known_answers"):
                print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
