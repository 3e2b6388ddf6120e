"""Time Chinchilla approach 3: the full 4,500-start grid plus 1,000 bootstrap refits on 250 points.

    python benchmarks/bench_fit.py            # the default fit (grid pruned by objective value)
    python benchmarks/bench_fit.py --full     # also L-BFGS from every one of the 4,500 starts

Target (issue 3): at most 10 s on 2 cores. The points are drawn from a known law
(tests/analysis_fakes.py) with 1% lognormal noise. The default fit includes the Huber delta matched
to the residual scale and the sensitivity checks; benchmarks/bench_trust.py times those with the
audit and the comparison of two sweeps.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from analysis_fakes import ChinchillaLaw, random_grid_points  # noqa: E402

from analysis import chinchilla  # noqa: E402
from analysis.fit import fit_chinchilla  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=250)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also run L-BFGS from all 4,500 starts")
    args = parser.parse_args()

    law = ChinchillaLaw()
    points = random_grid_points(law, args.points, seed=0)
    ln_n, ln_d, ln_l = (np.log(points[c].to_numpy(float)) for c in ("n_params", "tokens", "val_loss"))
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cpus, "
          f"{args.points} points, {len(chinchilla.HOFFMANN_GRID)} starts, {args.bootstrap} bootstrap refits")

    start = time.perf_counter()
    values = chinchilla.grid_objective(chinchilla.HOFFMANN_GRID, ln_n, ln_d, ln_l)
    grid_s = time.perf_counter() - start
    candidates = chinchilla.refine_candidates(chinchilla.HOFFMANN_GRID, values, 8)
    start = time.perf_counter()
    chinchilla.lbfgs(chinchilla.HOFFMANN_GRID[candidates], ln_n, ln_d, ln_l)
    refine_s = time.perf_counter() - start
    print(f"  objective at all 4500 starts: {grid_s:.3f} s; L-BFGS from the {len(candidates)} kept: {refine_s:.3f} s")

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fit = fit_chinchilla(points, approach=3, bootstrap=args.bootstrap)
        times.append(time.perf_counter() - start)
    print(f"fit_chinchilla(approach=3, bootstrap={args.bootstrap}): "
          f"best {min(times):.2f} s, median {np.median(times):.2f} s over {args.repeats} runs")
    print(f"  alpha = {fit.params['alpha']:.4f} (true {law.alpha}), beta = {fit.params['beta']:.4f} "
          f"(true {law.beta}), a = {fit.params['a']:.4f} [{fit.intervals['a'][0]:.4f}, {fit.intervals['a'][1]:.4f}] "
          f"(true {law.a:.4f})")
    if args.full:
        start = time.perf_counter()
        full = fit_chinchilla(points, approach=3, bootstrap=0, n_refine=None)
        print(f"L-BFGS from every start (no pruning, no bootstrap): {time.perf_counter() - start:.2f} s; "
              f"objective {full.quality['huber_objective']:.10g} vs pruned {fit.quality['huber_objective']:.10g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
