"""`scaling` command line: sweep, run, status, bench, fit, table.

User mistakes print one line on stderr and exit with status 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from scaling.config import ConfigError

USAGE_ERROR = 2


def _fail(message: str) -> int:
    print(f"scaling: {message}", file=sys.stderr)
    return USAGE_ERROR


def _console():
    from rich.console import Console
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _device_count() -> int:
    import jax
    return jax.device_count()


def _load(path: str, only: list[str] | None = None):
    from scaling.sweep import load_sweep
    sweep = load_sweep(path, device_count=_device_count())
    runs = sweep.select(only) if only else sweep.runs
    if not runs:
        raise ConfigError(path, "", f"no run matches --only {' '.join(only)}")
    return sweep, runs


def cmd_sweep(args) -> int:
    sweep, runs = _load(args.sweep, args.only)
    if args.dry_run:
        _print_plan(sweep, runs)
        return 0
    from scaling.launch import run_local
    t0 = time.perf_counter()
    report = run_local(sweep, runs, max_parallel=args.max_parallel, quiet=args.quiet)
    for line in report.lines():
        print(line)
    print(f"sweep {sweep.name}: {len(runs)} runs in {time.perf_counter() - t0:.1f} s; records in {sweep.out_dir}")
    return 1 if report.failed else 0


def _print_plan(sweep, runs) -> None:
    import dataclasses

    from rich.table import Table

    from scaling.flops import param_counts
    from scaling.hardware import peak_flops
    from scaling.launch import run_flops
    peak = peak_flops("float32")
    # An assumed utilisation for the time estimate; `scaling bench` measures the real one.
    assumed_mfu = 0.15
    table = Table(title=f"{sweep.name}: {len(runs)} runs -> {sweep.out_dir}")
    for col in ("run_id", "grid", "n_layer", "d_model", "n_head", "d_ff", "N (non-embed)", "D (tokens)", "steps",
                "FLOPs", "est. time"):
        table.add_column(col, justify="left" if col in ("run_id", "grid") else "right")
    total_s = 0.0
    for spec in runs:
        m = spec.model
        n = param_counts(**dataclasses.asdict(m)).n_params_nonembed
        flops = run_flops(spec)
        seconds = flops / (peak.flops_per_second * assumed_mfu)
        total_s += seconds
        table.add_row(spec.run_id, spec.grid, str(m.n_layer), str(m.d_model), str(m.n_head), str(m.d_ff), f"{n:,}",
                      f"{spec.steps * spec.batch_size * m.seq_len:.3g}", str(spec.steps), f"{flops:.3g}",
                      f"{seconds:.0f} s")
    console = _console()
    console.print(table)
    console.print(f"total {sum(map(run_flops, runs)):.3g} FLOPs, about {total_s / 60:.1f} min at {assumed_mfu:.0%} "
                  f"MFU of {peak.flops_per_second:.3g} FLOP/s ({peak.source}) with one run at a time")


def cmd_run(args) -> int:
    from scaling.run import run_and_record
    sweep, _ = _load(args.sweep)
    matches = [s for s in sweep.runs if s.run_id == args.run_id]
    if not matches:
        return _fail(f"{args.sweep}: --run-id: no run {args.run_id!r} in this sweep (see --dry-run)")
    spec = matches[0]
    if args.progress == "jsonl":
        from scaling.launch import die_with_parent
        die_with_parent()

        def on_step(event):
            print(json.dumps({"event": "step", **event}), flush=True)
        result = run_and_record(spec, sweep.out_dir, on_step=on_step)
        print(json.dumps({"event": "done", "status": result["status"], "error": result.get("error")}), flush=True)
    else:
        from rich.progress import Progress
        with Progress() as progress:
            task = progress.add_task(spec.run_id, total=spec.steps)

            def on_step(event):
                progress.update(task, completed=event["step"],
                                description=f"{spec.run_id} loss {event['loss']:.3f}")
            result = run_and_record(spec, sweep.out_dir, on_step=on_step)
        print(f"{result['status']} {spec.run_id}" + (f": {result['error']}" if result.get("error") else ""))
    return 0 if result["status"] in ("complete", "diverged") else 1


def cmd_status(args) -> int:
    import pyarrow.parquet as pq
    from rich.table import Table
    root = Path(args.results)
    summaries = sorted(root.glob("runs/*/summary.parquet")) or sorted(root.glob("*/runs/*/summary.parquet"))
    if not summaries:
        return _fail(f"{root}: no runs found (expected {root}/runs/<run_id>/summary.parquet)")
    table = Table(title=str(root))
    for col in ("run", "N (non-embed)", "D (tokens)", "step", "status", "val loss", "tokens/s", "MFU", "wall"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    counts: dict[str, int] = {}
    for path in summaries:
        try:
            r = pq.read_table(path).to_pylist()[0]
        except Exception:  # noqa: BLE001 - a damaged file is shown, not fatal
            table.add_row(path.parent.name, "", "", "", "unreadable", "", "", "", "")
            continue
        if r["status"] == "running" and _lock_is_free(path.parent):
            r["status"] = "interrupted"  # no process holds the run's lock: rerun the sweep to resume it
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        fmt = lambda v, f: "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)
        table.add_row(r["run_id"], fmt(r.get("n_params_nonembed"), ","), fmt(r.get("target_tokens"), ".3g"),
                      fmt(r.get("step"), "d"), r["status"] + (f" ({r['error']})" if r.get("error") else ""),
                      fmt(r.get("val_loss"), ".4f"), fmt(r.get("tokens_per_second"), ",.0f"), fmt(r.get("mfu"), ".1%"),
                      fmt(r.get("wall_seconds"), ".1f") + ("s" if r.get("wall_seconds") is not None else ""))
    console = _console()
    console.print(table)
    console.print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def _lock_is_free(run_path: Path) -> bool:
    from scaling.records import RunLock
    lock = RunLock(run_path)
    if lock.acquire():
        lock.release()
        return True
    return False


def cmd_bench(args) -> int:
    from scaling.bench import main as bench_main
    return bench_main(args)


def _analysis(name: str, argv: list[str]) -> int:
    from analysis import cli
    return getattr(cli, name)(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling", description="Scaling-law experiment runner.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="train every run of a sweep file")
    s.add_argument("sweep", help="sweep file (TOML)")
    s.add_argument("--dry-run", action="store_true", help="list the runs (shape, N, D, FLOPs, estimated time)")
    s.add_argument("--only", action="append", metavar="PATTERN",
                   help="run a subset: a glob over key=value labels or run ids, e.g. 'd_model=128*' (repeat to AND)")
    s.add_argument("--max-parallel", type=int, default=None, help="runs at once (default: the sweep file's)")
    s.add_argument("--quiet", "-q", action="store_true", help="plain log lines instead of progress bars")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("run", help="train one run of a sweep (what a launcher calls)")
    r.add_argument("sweep")
    r.add_argument("--run-id", required=True)
    r.add_argument("--progress", choices=("rich", "jsonl"), default="rich")
    r.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="a table of a results folder's runs")
    st.add_argument("results")
    st.set_defaults(func=cmd_status)

    b = sub.add_parser("bench", help="tokens/s and MFU of a few model sizes on this machine")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--seq-len", type=int, default=128)
    b.add_argument("--batch-tokens", type=int, default=8192)
    b.set_defaults(func=cmd_bench)

    for name in ("fit", "table"):
        a = sub.add_parser(name, help=f"fitted laws / runs as a table (see `scaling {name} -h`)", add_help=False)
        a.add_argument("rest", nargs=argparse.REMAINDER)
        a.set_defaults(func=lambda args, n=name: _analysis(f"{n}_command", args.rest))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
