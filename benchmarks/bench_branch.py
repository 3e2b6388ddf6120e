"""Time WSD branching: one model, a D-axis of 5 sizes over one decade, trained as one branched group.

    python benchmarks/bench_branch.py                 # L2-d32, seq 64, 4096-token batches, D up to 4M
    python benchmarks/bench_branch.py --max-tokens 1e6 --model L1-d32

Target (the efficiency issue): the branched group costs at most 1.6x the largest run alone. Both are
timed end to end through the local launcher (`scaling sweep`: one process per run, as a user runs
them, one run at a time). Each branch is a process of its own, so its fixed cost (JAX import,
compiling its train step: about 5 s of CPU here) counts against it; at smaller D that share grows
(2.1M tokens measured 1.65x of CPU time, 4M tokens, kaplan.toml's D, 1.59x). Then each branch's final validation loss is compared with its own spec
trained alone (the same computation: equal up to float noise, bitwise on CPU), and with the
un-branched spec (warmup a fraction of its own run rather than of the longest), which shows what
sharing the warmup changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# This checkout's package, not an installed one (the launcher's run processes start in the current
# folder: run from the repository root).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SWEEP = """
[sweep]
name = "bench-branch"
out_dir = "{out}"
[data]
seq_len = 64
[model]
head_dim = 16
[optimizer]
lr = 3e-3
[schedule]
kind = "wsd"
warmup = 0.05
decay = 0.2
branch = {branch}
[train]
batch_tokens = 4096
eval_points = 16
eval_sequences = 64
[grid]
models = [{{ n_layer = {n_layer}, d_model = {d_model} }}]
tokens = [{tokens}]
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="L2-d32", help="LN-dM, a shape of sweeps/kaplan.toml")
    parser.add_argument("--max-tokens", type=float, default=4e6, help="the largest D (kaplan.toml's)")
    parser.add_argument("--keep", action="store_true", help="keep the records (printed folder)")
    args = parser.parse_args()
    n_layer, d_model = (int(x) for x in args.model.lstrip("L").split("-d"))
    batch = 4096
    top = int(args.max_tokens) // batch
    tokens = [int(round(top * f)) * batch for f in np.geomspace(0.1, 1.0, 5)]

    from scaling.sweep.branch_plan import plan as branch_plan
    from scaling.launch.local import run_local
    from scaling.training.run import train_run
    from scaling.sweep.reader import load_sweep

    root = Path(tempfile.mkdtemp(prefix="bench-branch-"))

    def sweep_file(name: str, branch: bool, toks: list[int]):
        path = root / f"{name}.toml"
        path.write_text(SWEEP.format(out=root / name, branch=str(branch).lower(), n_layer=n_layer, d_model=d_model,
                                     tokens=", ".join(map(str, toks))))
        return load_sweep(path)

    import jax
    print(f"python {platform.python_version()}, jax {jax.__version__}, {os.cpu_count()} cpus; "
          f"{args.model}, seq 64, batch {batch} tokens, WSD decay 0.2, warmup 0.05")
    print("D-axis (tokens):", ", ".join(f"{t:.3g}" for t in tokens))

    branched = sweep_file("branched", True, tokens)
    # The comparison runs below train in this process: give it the CPU devices that run_local
    # gives its run processes (one per core, scaling/launch/cpu.py), so that "alone" is bitwise comparable.
    from scaling.launch import cpu
    cpu.configure(branched.runs)
    plan = branch_plan(branched.runs)
    trunk = max(branched.runs, key=lambda s: s.steps)
    alone = sweep_file("alone", False, tokens[-1:])
    assert alone.runs[0].run_id == trunk.run_id  # the trunk is the largest run, unchanged

    def timed(sweep) -> tuple[float, float]:
        """Wall seconds, and CPU seconds of the run processes (user + system: what the runs cost,
        whatever else shares the machine)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        report = run_local(sweep, sweep.runs, max_parallel=1, quiet=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert not report.failed, report.failed
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    # The largest run alone first: it also warms the data cache that both share.
    wall_alone, cpu_alone = timed(alone)
    wall_branched, cpu_branched = timed(branched)
    trained = sum(plan.trained_steps(s) for s in branched.runs)
    full = sum(s.steps for s in branched.runs)
    print(f"\n{'':28} {'wall s':>8} {'CPU s':>8}")
    print(f"(a) branched group, 5 runs: {wall_branched:8.1f} {cpu_branched:8.1f}   ({trained} steps trained; "
          f"5 independent runs train {full})")
    print(f"(b) largest run alone:      {wall_alone:8.1f} {cpu_alone:8.1f}   ({trunk.steps} steps)")
    print(f"    ratio (a)/(b):          {wall_branched / wall_alone:7.2f}x {cpu_branched / cpu_alone:7.2f}x  "
          f"(target <= 1.6x)")

    import pyarrow.parquet as pq

    def final(out, run_id) -> dict:
        return pq.read_table(Path(out) / "runs" / run_id / "summary.parquet").to_pylist()[0]

    print("\n(c) each branch's final val loss next to its spec trained alone, and the un-branched spec "
          "(warmup = 5% of its own steps):")
    print(f"{'D (tokens)':>12} {'steps':>6} {'branch at':>9} {'branched':>10} {'alone':>10} {'diff':>9} "
          f"{'un-branched':>11} {'diff':>9}")
    for b in plan.of_trunk(trunk.run_id):
        spec = b.spec
        train_run(spec, root / "independent")
        plain = dataclasses.replace(spec, optim=dataclasses.replace(spec.optim, warmup_steps=None))
        train_run(plain, root / "unbranched")
        got = final(branched.out_dir, spec.run_id)
        ref = final(root / "independent", spec.run_id)["val_loss"]
        unb = final(root / "unbranched", plain.run_id)["val_loss"]
        assert got["branched_from"] == trunk.run_id and got["branch_step"] == b.step
        print(f"{spec.train.tokens:12.3g} {spec.steps:6d} {b.step:9d} {got['val_loss']:10.5f} {ref:10.5f} "
              f"{got['val_loss'] - ref:9.2e} {unb:11.5f} {got['val_loss'] - unb:+9.4f}")
    if args.keep:
        print(f"\nrecords in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
