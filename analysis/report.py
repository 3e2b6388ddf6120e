"""`scaling report RESULTS_DIR`: one self-contained HTML page of a sweep, to open or share.

    scaling report results/kaplan [--bootstrap N] [--output PATH]    # writes results/kaplan/report.html
    scaling report results                                          # a report in every results/<sweep>/

The page holds what `scaling table` prints (the runs, every fit with its 95% interval, the fits
against known answers, the emergence transitions), every figure of `<sweep>/figures/` (what
`make plots` draws; drawn first when the folder has none) embedded as base64 PNG, and the runs'
provenance from their config.json (versions, git commit, host, devices). No script, no stylesheet
or font from elsewhere: it opens offline. Deterministic: nothing in it but the records, so
rebuilding it from the same records gives the same bytes (no build date).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from analysis import tables
from analysis.cli import UsageError, _fragile, _one_line, _sweep_fits
from analysis.emergence import probe_tasks, transitions
from analysis.fit_result import DEFAULT_BOOTSTRAP
from analysis.make_plots import sweep_dirs, sweep_figures
from analysis.records import load_history, load_runs, one_line_warnings
from analysis.truth import compare_with_truth

REPORT_FILE = "report.html"
# Provenance fields of config.json shown per sweep (the runner writes them, scaling/training/run.py).
PROVENANCE = ("git_commit", "host", "device_kind", "n_devices", "mesh", "process_count", "data_content_hash")

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; white-space: nowrap; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-family: monospace; color: #555; }
.note { color: #8a5a00; }
"""


def report_html(sweep_dir: str | Path, bootstrap: int = DEFAULT_BOOTSTRAP) -> str:
    """The report of the records under `sweep_dir` (one sweep's folder), as an HTML document.
    Raises ValueError when the folder holds no runs."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    if runs.empty:
        raise ValueError(f"no runs under {sweep_dir} (expected {sweep_dir}/runs/<run_id>/summary.parquet)")
    history = load_history(sweep_dir)
    names = sorted(runs["sweep"].dropna().unique()) if "sweep" in runs else []
    title = ", ".join(names) or sweep_dir.name
    statuses = Counter(runs["status"].fillna("unknown")) if "status" in runs else Counter({"unknown": len(runs)})
    parts = [f"<h1>Sweep {_e(title)}</h1>",
             f"<p>{len(runs)} runs ({_e(', '.join(f'{k} {v}' for k, v in sorted(statuses.items())))}), "
             f"records in <code>{_e(sweep_dir.name)}/runs/</code>; intervals from {bootstrap} bootstrap "
             "replicates.</p>",
             "<h2>Runs</h2>", html_table(tables.runs_frame(runs))]
    parts += _fits_section(runs, history, bootstrap)
    parts += _transitions_section(runs, bootstrap)
    parts += _figures_section(sweep_dir / "figures")
    parts += _provenance_section(sweep_dir)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>Sweep {_e(title)}: scaling report</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")


def write_report(sweep_dir: str | Path, bootstrap: int = DEFAULT_BOOTSTRAP, output: str | Path | None = None) -> Path:
    """Write the report (default `<sweep_dir>/report.html`, through a temp name); returns its path."""
    sweep_dir = Path(sweep_dir)
    path = Path(output) if output is not None else sweep_dir / REPORT_FILE
    text = report_html(sweep_dir, bootstrap)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _fits_section(runs: pd.DataFrame, history: pd.DataFrame, bootstrap: int) -> list[str]:
    try:
        sweep_fits = _sweep_fits(runs, history, None, None, bootstrap)
    except (UsageError, ValueError) as exc:
        return ["<h2>Fits</h2>", f"<p class=\"note\">No fit: {_e(_one_line(exc))}</p>"]
    parts = ["<h2>Fits</h2>"]
    truths = []
    for sweep, fits in sweep_fits:
        if len(sweep_fits) > 1:
            parts.append(f"<h3>{_e(sweep)}</h3>")
        frame = tables.fits_frame(fits)
        shown = frame[["law", "parameter", "value"]].copy()
        shown["95% interval"] = [tables.interval_text(lo, hi, "md") for lo, hi in zip(frame["ci_low"], frame["ci_high"])]
        shown["points"], shown["N"] = frame["n_points"], frame["N"]
        parts.append(html_table(shown))
        parts += [f"<p class=\"note\">{_e(fit.law)} is fragile: {_e(reason)}</p>"
                  for fit in fits for reason in _fragile(fit)]
        sweep_runs = runs if sweep is None else runs.loc[runs["sweep"] == sweep]
        try:
            truths.append(compare_with_truth(fits, sweep_runs).drop(columns=["truth_column"]))
        except ValueError:  # no known answer in these records
            pass
    if truths:
        parts += ["<h2>Fits against the known answers</h2>", html_table(pd.concat(truths, ignore_index=True))]
    return parts


def _transitions_section(runs: pd.DataFrame, bootstrap: int) -> list[str]:
    """Where each probed task's metrics cross halfway from chance to their best (analysis.emergence)."""
    if not probe_tasks(runs):
        return []
    complete = runs.loc[runs["status"] == "complete"] if "status" in runs else runs
    frame = transitions(complete, n_boot=bootstrap)
    if frame.empty:
        return []
    frame = frame[["task", "metric", "chance", "threshold", "x", "ci_low", "ci_high", "crossed_fraction", "censored"]]
    frame = frame.rename(columns={"x": "n_params at transition", "ci_low": "90% low", "ci_high": "90% high",
                                  "crossed_fraction": "resamples crossing", "censored": "already past at smallest"})
    return ["<h2>Transitions</h2>", html_table(frame)]


def _figures_section(folder: Path) -> list[str]:
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        return ["<h2>Figures</h2>", "<p class=\"note\">No figures: run <code>make plots</code>.</p>"]
    parts = ["<h2>Figures</h2>"]
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<figure id=\"{_e(png.stem)}\"><img alt=\"{_e(png.stem)}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{_e(png.stem)}</figcaption></figure>")
    return parts


def provenance(sweep_dir: str | Path) -> pd.DataFrame:
    """What the runs were made with, from their config.json: one row per (field, value) with the
    number of runs that have it, so a sweep made on two machines or two commits shows both."""
    counts: Counter = Counter()
    for config_file in sorted(Path(sweep_dir).glob("runs/*/config.json")):
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError):  # a damaged file: the runs table already flags the run
            continue
        for field in PROVENANCE:
            if field in config:
                counts[(field, str(config[field]))] += 1
        for package, version in sorted((config.get("versions") or {}).items()):
            counts[(package, str(version))] += 1
    rows = [{"field": field, "value": value, "runs": n} for (field, value), n in counts.items()]
    return pd.DataFrame(rows, columns=["field", "value", "runs"])


def _provenance_section(sweep_dir: Path) -> list[str]:
    frame = provenance(sweep_dir)
    if frame.empty:
        return ["<h2>Provenance</h2>", "<p class=\"note\">No provenance in the runs' config.json.</p>"]
    return ["<h2>Provenance</h2>", html_table(frame)]


def html_table(frame: pd.DataFrame) -> str:
    """A DataFrame as an HTML table; numbers as `scaling table` shows them (4 significant digits)."""
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns]
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(f"<td{NUM if n else ''}>{_e(tables.cell_text(v, 'html'))}</td>" for v, n in zip(row, numeric))
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


NUM = ' class="num"'  # right-aligned numeric cells


def _e(text) -> str:
    return html.escape(str(text))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as the other analysis commands (argparse prints the usage too)
        raise UsageError(message)


def report_command(argv: list[str]) -> int:
    parser = _Parser(prog="scaling report", description="Write one self-contained HTML page of a sweep: its runs, "
                                                        "fits with intervals, transitions, figures and provenance.")
    parser.add_argument("results_dir", help="a sweep's results folder (results/<sweep>), or a parent of several "
                                            "(a report in each)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help=f"bootstrap replicates for the fits' 95%% intervals (default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--output", "-o", metavar="PATH",
                        help=f"where to write it (default RESULTS_DIR/{REPORT_FILE}; one sweep only)")
    with one_line_warnings():
        try:
            args = parser.parse_args(argv)
            if args.bootstrap < 0:
                raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
            root = Path(args.results_dir)
            if not root.is_dir():
                raise UsageError(f"no results folder at {root}")
            folders = [folder for folder in sweep_dirs(root) if not load_runs(folder).empty]
            if not folders:
                raise UsageError(f"no runs under {root} (expected {root}/runs/<run_id>/summary.parquet)")
            if args.output and len(folders) > 1:
                raise UsageError(f"--output names one file, and {root} holds {len(folders)} sweeps")
            for folder in folders:
                if not any((folder / "figures").glob("*.png")):  # a sweep of one's own: its figures first
                    sweep_figures(folder, bootstrap=args.bootstrap)
                print(write_report(folder, args.bootstrap, args.output))
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        except (UsageError, ValueError, FileNotFoundError, OSError) as exc:
            print(f"{parser.prog}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
    return 0
