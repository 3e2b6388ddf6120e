"""Training tokens/s of this project's train step against the same GPT in PyTorch, eager and compiled.

    python benchmarks/bench_torch.py --torch-python /path/to/venv/bin/python
    python benchmarks/bench_torch.py --shapes L1-d16,L4-d96 --steps 20 --rounds 5
    python benchmarks/bench_torch.py --baseline HEAD     # and another commit's train step beside them

The PyTorch model (benchmarks/torch_gpt.py) is scaling/model.py's architecture written again:
pre-LN, GELU MLP, learned positions, tied embedding, the same initialisation, AdamW with decoupled
weight decay on matrices only, clipping at 1.0, the project's learning-rate schedule. Its parameter
count is checked against scaling/flops.py's for every shape, and it starts from the project's own
initial weights, so the losses at step 0 (near ln 256 = 5.545 at this initialisation) and after
the timed steps must agree: the comparison is of one computation.

Three workers per shape, each in its own process (benchmarks/bench_step.py's protocol):

    project         the train step as a run uses it: one JAX device per core (scaling/launch/cpu.py),
                    the batch split over them, 256-token micro-batches accumulated inside the step
                    (scaling/training/step.py), step k's loss read while step k+1 runs
    torch eager     torch.set_num_threads(--threads, default the cores this process may use)
    torch compile   torch.compile(model), default mode; compilation happens in the warm-up
    baseline REV    with `--baseline REV`: the project worker again, on that revision's scaling/
                    (extracted with `git archive`), so a change to the step is measured before and
                    after, against torch, in one invocation

Every worker trains on the same batches (the stdlib corpus's first batches, written by the project
worker to a file the torch workers read) and warms up for 3 steps, not timed. The parent then asks
each worker in turn for `--steps` timed steps, `--rounds` times, so a busy machine's load does not
favour one of them, and prints the best and median round's tokens/s and the ratio of the project's
best to the best torch variant's. float32 throughout; 4,096 tokens a step, vocabulary 256.

torch is not a dependency of the project (it is the optional `bench` extra); it may live in another
environment, named by `--torch-python`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_step
from bench_step import REPO, ask, load, start

BATCH_TOKENS = 4096
WARMUP_STEPS = 3  # the workers' (torch_gpt.py's too)
N_BATCHES = 64  # distinct batches, cycled through
TORCH_WORKER = Path(__file__).with_name("torch_gpt.py")
# name: (n_layer, d_model, head_dim, seq_len). The kaplan sweep's smallest and largest (its
# settings: head_dim 16, seq 64), two wider models at seq 256, and one of 19.3M non-embedding
# parameters at seq 512.
SHAPES = {"L1-d16": (1, 16, 16, 64), "L4-d96": (4, 96, 16, 64), "L4-d256": (4, 256, 64, 256),
          "L6-d512": (6, 512, 64, 256), "L8-d448": (8, 448, 64, 512)}


def spec_of(shape: str, steps: int):
    """The bench run spec of `shape`, `steps` long in all (warm-up included)."""
    from scaling.bench import bench_spec
    n_layer, d_model, head_dim, seq_len = SHAPES[shape]
    return bench_spec(n_layer, d_model, head_dim, seq_len=seq_len, batch_tokens=BATCH_TOKENS,
                      steps=steps - WARMUP_STEPS)


def project_worker(shape: str, steps: int, data: Path) -> None:
    """This project's train step, which also writes what the torch workers train on to `data`: the
    batches, the initial parameters, the optimizer's settings and each step's learning rate."""
    spec = spec_of(shape, steps)
    bench_step._cpu_devices(spec)
    import numpy as np

    from scaling import data as data_mod
    from scaling.flops import param_counts
    from scaling.training import step as tr

    batcher = data_mod.Batcher(data_mod.open_source("stdlib").train, spec.model.seq_len, spec.batch_size, 0)
    batches = np.stack([batcher.batch(k) for k in range(min(steps, N_BATCHES))])
    run, program, state = bench_step.train_loop(spec, lambda k: batches[k % len(batches)])
    params = {f"param:{k}": np.asarray(v) for k, v in state["params"].items()}  # before the first step donates them
    n_params = sum(v.size for v in params.values())
    assert n_params == param_counts(**dataclasses.asdict(spec.model)).n_params, (n_params, shape)
    o = spec.optim
    lr = np.asarray(tr.lr_schedule(o, spec.steps)(np.arange(spec.steps)), np.float32)
    np.savez(data, batches=batches, lr=lr, weight_decay=o.weight_decay, beta1=o.beta1, beta2=o.beta2, eps=o.eps,
             grad_clip=o.grad_clip, **params)
    t0 = time.perf_counter()
    loss0 = run(1)
    run(WARMUP_STEPS - 1)
    print(json.dumps({"compile_s": time.perf_counter() - t0, "loss0": loss0, "n_params": n_params,
                      "devices": program.mesh.size, "n_micro": program.n_micro}), flush=True)
    bench_step.serve(run)


def torch_works(python: str) -> bool:
    return subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0


def main() -> int:
    from scaling.flops import param_counts
    from scaling.launch.cpu import cores_available

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {list(SHAPES)}")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and worker")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=cores_available(),
                   help="torch.set_num_threads (default: the cores this process may use)")
    p.add_argument("--torch-python", default="python", help="an interpreter with torch (default: python)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile worker")
    p.add_argument("--baseline", metavar="REV", help="also time this git revision's train step, interleaved")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    total = WARMUP_STEPS + args.rounds * args.steps
    if args.worker:
        project_worker(args.worker, total, Path(args.data))
        return 0
    if not torch_works(args.torch_python):
        p.error(f"`{args.torch_python} -c 'import torch'` fails: name an interpreter with torch, --torch-python")
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        p.error(f"unknown shapes {sorted(unknown)}; known: {list(SHAPES)}")

    print(f"bench_torch: float32, {BATCH_TOKENS} tokens a step, vocabulary 256, {args.steps} timed steps x "
          f"{args.rounds} rounds after {WARMUP_STEPS} warm-up steps; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        baseline_src = bench_step.extract(args.baseline, Path(tmp) / "baseline") if args.baseline else None
        for shape in args.shapes.split(","):
            spec = spec_of(shape, total)
            m = spec.model
            counts = param_counts(**dataclasses.asdict(m))
            tokens_per_step = spec.batch_size * m.seq_len
            print(f"\n{shape}: n_layer {m.n_layer}, d_model {m.d_model}, n_head {m.n_head}, seq {m.seq_len}, "
                  f"{spec.batch_size} rows; N {counts.n_params_nonembed:,} non-embedding, {counts.n_params:,} "
                  "total", flush=True)
            data = Path(tmp) / f"{shape}.npz"
            script = str(Path(__file__).resolve())
            workers = {"project": start(REPO, shape, [sys.executable, script, "--worker", shape, "--data",
                                                      str(data)] + sys.argv[1:])}
            if baseline_src is not None:
                workers[f"baseline {args.baseline}"] = start(
                    baseline_src, shape, [sys.executable, script, "--worker", shape, "--data",
                                          str(Path(tmp) / f"{shape}-baseline.npz")] + sys.argv[1:])
            model = json.dumps({k: getattr(m, k) for k in ("n_layer", "d_model", "n_head", "d_ff", "vocab_size",
                                                           "seq_len")})
            torch_argv = [args.torch_python, str(TORCH_WORKER), "--model", model, "--data", str(data), "--threads",
                          str(args.threads)]
            for name, extra in (("torch eager", []), ("torch compile", ["--compile"]))[:1 if args.no_compile else 2]:
                workers[name] = start(REPO, shape, torch_argv + extra)
                assert workers[name][1]["n_params"] == counts.n_params, (name, workers[name][1]["n_params"])
            meta = {name: info for name, (_, info) in workers.items()}
            t = meta["torch eager"]
            print(f"  threads: project {meta['project']['devices']} JAX CPU devices (one per core), "
                  f"{meta['project']['n_micro']} micro-batches a step; torch {t['torch']} "
                  f"set_num_threads {t['threads']}, interop {t['interop_threads']}", flush=True)
            print("  loss at step 0, same weights and batch: " + ", ".join(f"{n} {i['loss0']:.5f}"
                  for n, i in meta.items()) + f" (ln 256 = {math.log(256):.5f})", flush=True)

            times = {name: [] for name in workers}
            for _ in range(args.rounds):
                for name, (proc, _) in workers.items():
                    times[name].append(ask(proc, str(args.steps)))
            for proc, _ in workers.values():
                proc.stdin.close()
                proc.wait()
            best = {}
            for name, rounds in times.items():
                walls = [r["wall"] for r in rounds]
                best[name] = tokens_per_step / min(walls)
                print(f"  {name:14s} tokens/s best {best[name]:10,.0f} median "
                      f"{tokens_per_step / statistics.median(walls):10,.0f}   cpu ms/step "
                      f"{1e3 * min(r['cpu'] for r in rounds):8.2f}   warm-up {meta[name]['compile_s']:6.1f} s   "
                      f"loss after {WARMUP_STEPS + args.rounds * args.steps} steps {rounds[-1]['loss']:.5f}",
                      flush=True)
            fastest = max((n for n in best if n.startswith("torch")), key=best.get)
            for other in [fastest] + [n for n in best if n.startswith("baseline")]:
                per_round = [theirs["wall"] / ours["wall"] for ours, theirs in zip(times["project"], times[other])]
                print(f"  project / {other}: {best['project'] / best[other]:.2f}x (best rounds), "
                      f"{statistics.median(per_round):.2f}x (median of per-round ratios)", flush=True)
    print(f"\n{load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
