"""Scheduling and ETA of a local sweep with max_parallel > 1: `python benchmarks/bench_schedule.py`.

Trains a small sweep (4 shapes x 2 data sizes on the standard-library source, a few minutes on
two cores) into a temporary folder with the local launcher, `--workers` runs at once (default 2),
and prints:

  - the launch order (longest first, by FLOPs) and each run's wall time;
  - the sweep's wall time next to total work / workers (the sum of run walls over the workers: the
    best any order could do without splitting a run) and the longest run alone (a lower bound too);
  - the ETA the progress display showed at 25%, 50% and 75% of the real wall time, as a predicted
    end time against the real one (the issue's bar: within 20% by the half-way point).

Options: --workers N, --scale F (multiplies every run's tokens), --keep DIR (keep the records).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """
[sweep]
name = "bench-schedule"
out_dir = "{out}"
max_parallel = {workers}

[data]
source = "stdlib"
seq_len = 64

[model]
head_dim = 16

[train]
batch_tokens = 4096
eval_points = 8
eval_sequences = 128
checkpoint_every = 0

[grid]
models = [
  {{ n_layer = 1, d_model = 16 }},
  {{ n_layer = 1, d_model = 32 }},
  {{ n_layer = 2, d_model = 48 }},
  {{ n_layer = 3, d_model = 64 }},
]
tokens = [{t1:.0f}, {t2:.0f}]
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep", default=None, help="write the records here instead of a temporary folder")
    args = parser.parse_args(argv)

    import pyarrow.parquet as pq

    from scaling.launch.local import run_local
    from scaling.launch.report import pending_runs, run_flops, SweepReport
    from scaling.sweep.reader import load_sweep

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp) / "records"
        path = Path(tmp) / "bench-schedule.toml"
        path.write_text(SWEEP.format(out=out, workers=args.workers, t1=5e5 * args.scale, t2=1.5e6 * args.scale))
        sweep = load_sweep(path)
        order = pending_runs(sweep, sweep.runs, SweepReport())
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        report = run_local(sweep, sweep.runs, max_parallel=args.workers, quiet=True,
                           on_eta=lambda elapsed, remaining: samples.append((elapsed, remaining)))
        wall = time.monotonic() - t0
        if report.failed:
            print(f"failed runs: {report.failed}", file=sys.stderr)
            return 1
        walls = {}
        for spec in order:
            row = pq.read_table(out / "runs" / spec.run_id / "summary.parquet").to_pylist()[0]
            walls[spec.run_id] = row["wall_seconds"]

    print(f"\n{len(order)} runs, {args.workers} at once, launch order (longest first):")
    print(f"  {'run_id':<28} {'FLOPs':>9} {'wall s':>7}")
    for spec in order:
        print(f"  {spec.run_id:<28} {run_flops(spec):9.3g} {walls[spec.run_id]:7.1f}")
    work = sum(walls.values())
    bound = max(work / args.workers, max(walls.values()))
    print(f"\nsweep wall time          {wall:7.1f} s")
    print(f"total work / workers     {work / args.workers:7.1f} s   (sum of run walls {work:.1f} s; "
          f"run walls are measured inside each process, start-up excluded)")
    print(f"longest run alone        {max(walls.values()):7.1f} s")
    print(f"wall / max(both bounds)  {wall / bound:7.2f}")
    print("\nETA shown by the progress display, as a predicted end against the real end:")
    print(f"  {'at':>8} {'elapsed s':>10} {'ETA s':>8} {'predicted end s':>16} {'real end s':>11} {'error':>7}")
    for fraction in (0.25, 0.5, 0.75):
        target = fraction * wall
        elapsed, remaining = min(samples, key=lambda s: abs(s[0] - target))
        predicted = elapsed + remaining
        error = (predicted - wall) / (wall - elapsed) if wall > elapsed else float("nan")
        print(f"  {fraction:>7.0%} {elapsed:10.1f} {remaining:8.1f} {predicted:16.1f} {wall:11.1f} "
              f"{error:+7.1%}")
    print("  (error: predicted minus real remaining time, over the real remaining time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
