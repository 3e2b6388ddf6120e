"""Time the mixing of task documents into a source (scaling/data/tasks.py `mix`), what a cold cache
pays once per tasks table before a task sweep's first run, against another revision's, side by side.

    python benchmarks/bench_mix.py                        # sweeps/scratchpad.toml's tasks, 4 MB of source
    python benchmarks/bench_mix.py --baseline HEAD~1 --mb 31 --rounds 1

Each side runs in its own process on the same slice of the cached standard-library source (its
train split, prepared first if the cache lacks it), rounds interleaved; it prints the seconds of
each round, the process's peak memory and a hash of the mixed stream, which must agree between the
sides: the change being timed may not change the data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def worker(sweep: str) -> None:
    import hashlib
    import resource
    import time

    import numpy as np

    from scaling.data import tasks
    from scaling.sweep import load_sweep

    cfg = load_sweep(sweep).runs[0].data.tasks
    stream = np.load(sys.stdin.readline().strip())
    start = time.perf_counter()
    mixed, n_docs = tasks.mix(stream, cfg, "train", "bench")
    print(json.dumps({"seconds": time.perf_counter() - start, "documents": n_docs,
                      "sha256": hashlib.sha256(mixed.tobytes()).hexdigest()[:16],
                      "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=str(REPO / "sweeps" / "scratchpad.toml"))
    p.add_argument("--mb", type=float, default=4.0, help="megabytes of source to mix into (the whole split is 31)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline", metavar="REV", help="also time this git revision's mix, interleaved")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.sweep)
    args.sweep = str(Path(args.sweep).resolve())  # the workers run in their own trees
    import numpy as np

    import bench_step
    from scaling.data.sources import open_source
    from scaling.sweep import load_sweep

    spec = load_sweep(args.sweep).runs[0]
    train = open_source(spec.data.source).train  # the source alone, before any task is mixed in
    n = min(int(args.mb * 1e6), train.size)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "stream.npy", np.asarray(train[:n]))
        sides = {"this tree": REPO}
        if args.baseline:
            sides[f"baseline {args.baseline}"] = bench_step.extract(args.baseline, Path(tmp) / "baseline")
        print(f"mixing {len(spec.data.tasks.tasks)} tasks at rate {spec.data.tasks.rate} "
              f"into {n / 1e6:.1f} MB of source ({args.sweep})")
        for r in range(args.rounds):
            for name, src in sides.items():
                out = subprocess.run([sys.executable, __file__, "--worker", "--sweep", args.sweep],
                                     input=str(Path(tmp) / "stream.npy") + "\n", capture_output=True, text=True,
                                     cwd=src, env={**os.environ, "PYTHONPATH": str(src)}, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"round {r + 1}  {name:<24} {result['seconds']:7.1f} s  {result['documents']:,} documents  "
                      f"stream {result['sha256']}  peak memory {result['peak_gb']:.1f} GB", flush=True)


if __name__ == "__main__":
    main()
