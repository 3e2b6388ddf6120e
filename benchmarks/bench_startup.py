"""Cold and warm start-up of a sweep: `python benchmarks/bench_startup.py [SWEEP]` (default sweeps/smoke.toml).

Runs `scaling sweep SWEEP -q` three times as a user would, each into a fresh results folder:

  cold          a fresh cache folder (SCALING_CACHE_DIR): nothing compiled, no data split, no peak
                probe; what a newcomer's first sweep costs
  cold compile  the data and the peak probe cached, the XLA compilation cache empty: the cost of
                compiling alone
  warm          everything cached by the runs before: a rerun, or a new sweep of the same shapes

and prints each one's wall time (the whole command, process start to exit), the sum of the runs'
own wall_seconds, and warm against cold. Every variant trains the same runs to the same losses
(checked: the final losses must agree exactly).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def sweep_once(sweep: Path, cwd: Path, cache: Path) -> tuple[float, dict]:
    out = cwd / "results"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "SCALING_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(sweep), "-q"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rows = {}
    for path in sorted(out.glob("*/runs/*/summary.parquet")):
        row = pq.read_table(path).to_pylist()[0]
        rows[row["run_id"]] = row
    return wall, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="?", default="sweeps/smoke.toml")
    parser.add_argument("--repeats", type=int, default=2, help="warm runs to time (the best is reported too)")
    args = parser.parse_args(argv)
    sweep = Path(args.sweep).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        results = {}
        results["cold"] = sweep_once(sweep, tmp, cache)
        shutil.rmtree(cache / "xla")
        results["cold compile"] = sweep_once(sweep, tmp, cache)
        for i in range(args.repeats):
            results[f"warm {i + 1}"] = sweep_once(sweep, tmp, cache)
    losses = {name: {k: r["val_loss"] for k, r in rows.items()} for name, (_, rows) in results.items()}
    same = all(v == losses["cold"] for v in losses.values())
    print(f"{sweep.name}: {len(losses['cold'])} runs; final losses identical in every variant: {same}")
    print(f"  {'variant':<14} {'command wall s':>14} {'sum of run walls s':>19}")
    for name, (wall, rows) in results.items():
        print(f"  {name:<14} {wall:14.1f} {sum(r['wall_seconds'] for r in rows.values()):19.1f}")
    cold = results["cold"][0]
    warm = min(w for name, (w, _) in results.items() if name.startswith("warm"))
    print(f"  cold / warm (best warm): {cold / warm:.2f}x; cold compile / warm: {results['cold compile'][0] / warm:.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
