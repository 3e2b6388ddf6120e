"""Time the checks that say how far to trust a fit, on 250 points with 1,000 bootstrap replicates.

    python benchmarks/bench_trust.py                 # fit + sensitivity, audit, intervals, compare
    python benchmarks/bench_trust.py --repeats 1

Target (issue 17): all of it in at most 10 s on 2 cores. The points are drawn from a known law
(tests/analysis_fakes.py) with 1% lognormal noise; the compared sweep is the same law worth 1.5x
compute, so the multiplier printed should be near 1.5.

    fit + sensitivity   fit_chinchilla(approach=3, bootstrap=1000): the matched Huber delta, the
                        bootstrap, the fit at the paper's delta, the E profile, leave-one-out
    audit               extrapolation_audit on the same points, holding out the top quarter by FLOPs
    intervals           fit.predict(..., interval=True) at all 250 points
    compare             analysis.compare of two 250-point sweeps (two fits, no sensitivity checks)
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

from analysis import compare  # noqa: E402
from analysis.fit import extrapolation_audit, fit_chinchilla  # noqa: E402

TARGET_SECONDS = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=250)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    law = ChinchillaLaw()
    points = random_grid_points(law, args.points, seed=0)
    better = random_grid_points(law.with_compute_multiplier(1.5), args.points, seed=1)
    holdout = float(np.quantile(points["flops"], 0.75))
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}, {args.points} points, {args.bootstrap} bootstrap replicates")

    steps = {
        "fit + sensitivity": lambda: fit_chinchilla(points, approach=3, bootstrap=args.bootstrap),
        "audit": lambda: extrapolation_audit(points, holdout_flops=holdout, bootstrap=args.bootstrap),
        "intervals": lambda: results["fit + sensitivity"].predict(points["n_params"], points["tokens"],
                                                                   interval=True),
        "compare": lambda: compare(points, better, bootstrap=args.bootstrap),
    }
    times = {name: [] for name in steps}
    results = {}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            results[name] = step()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"  {name:<18} best {min(values):6.2f} s   median {np.median(values):6.2f} s")
    best_total = sum(min(v) for v in times.values())
    median_total = sum(float(np.median(v)) for v in times.values())
    verdict = "within" if median_total <= TARGET_SECONDS else "OVER"
    print(f"all of the above: best {best_total:.2f} s, median {median_total:.2f} s over {args.repeats} runs "
          f"({verdict} the {TARGET_SECONDS:.0f} s target)")

    fit, audit, comparison = results["fit + sensitivity"], results["audit"], results["compare"]
    sensitivity = fit.sensitivity
    print(f"  fit: E = {fit.params['E']:.3f} (true {law.E}), a = {fit.params['a']:.4f} (true {law.a:.4f}), "
          f"delta {fit.settings['huber_delta']:.4f}; E identified: {sensitivity.e_identified}, "
          f"fragile: {fit.fragile}")
    print(f"  audit: {audit.attrs['n_holdout']} held out, median |error| {audit.attrs['median_abs_error']:.2%}, "
          f"coverage {audit.attrs['coverage']:.0%}")
    print(f"  compare: {comparison.multiplier:.3f}x [{comparison.interval[0]:.3f}, {comparison.interval[1]:.3f}] "
          f"(true 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
