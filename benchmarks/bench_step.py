"""Train-step speed (MFU) of the kaplan sweep's smallest and largest models, with a matmul ceiling.

    python benchmarks/bench_step.py                      # this checkout, L1-d16 and L4-d96
    python benchmarks/bench_step.py --baseline f231ae3   # and the same steps of another commit,
                                                         # measured interleaved with this one
    python benchmarks/bench_step.py --ceiling            # also each model matmul timed alone

Settings are the kaplan sweep's (sweeps/kaplan.toml): seq_len 64, 4096 tokens per step, head_dim
16, vocabulary 256, float32, one device. MFU = exact training FLOPs (scaling/flops.py) / wall time
/ the cached CPU matmul peak (scaling/hardware.py), the same figures `scaling bench` and the
records use.

Each variant (this checkout, and `--baseline REV` extracted with `git archive` into a temporary
folder) runs in its own worker process: it compiles its train step once, then the parent asks the
workers in turn for `--steps` timed steps, `--rounds` times. Interleaving keeps a busy machine's
load from favouring one variant; the table shows the best and the median round. Batches are made
on the host inside the timed loop, as in a real run.

Because this machine's speed drifts (a shared VM: the 2048^3 matmul probe has read from 100 to 307
GFLOP/s on the same host in one day), a probe process also measures the matmul peak once per round,
right before the round, with the probe of scaling/hardware.py at 2048^3 (best of 5). The second
MFU column divides each round's step time by that round's peak: the MFU of the step under the
conditions it ran in. The first divides by the cached peak, as the records do.

`--ceiling` times every matmul of one training step (forward, and the two backward matmuls per
forward matmul, with the model's shapes) alone, back to back in one jitted function: the best MFU
XLA's matmuls of these shapes allow on this machine, whatever the code around them does.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAPLAN = {"seq_len": 64, "batch_tokens": 4096, "head_dim": 16}
SHAPES = {"L1-d16": (1, 16), "L4-d96": (4, 96)}


def _tree() -> Path:
    return Path(os.environ.get("PYTHONPATH", REPO))


def _module(new: str, old: str):
    """A module of the tree under test by its path in this layout, or in the flat layout that commits
    before the sub-packages (scaling/training/, scaling/launch/, ...) had."""
    flat = not (_tree() / "scaling" / "training").is_dir()
    return importlib.import_module(old if flat else new)


def _cpu_devices(spec) -> None:
    """Give the worker the CPU devices a sweep's run gets (one per core that the batch splits over,
    scaling/launch/cpu.py), before JAX starts. Older commits have no such module: one device."""
    if not any((_tree() / "scaling" / p).exists() for p in ("cpu.py", "launch/cpu.py")):
        return  # (the editable install would otherwise lend this checkout's module to an old tree)
    _module("scaling.launch.cpu", "scaling.cpu").configure([spec])


# --- worker: one variant, one model ----------------------------------------------------------------


def train_loop(spec, batch):
    """This project's train step as a run drives it (scaling/training/run.py), on the devices the
    process was given: `batch(step)` gives the step's [rows, S+1] tokens, split into the program's
    micro-batches and each device's share. Returns (run, program, state): `run(n)` trains n steps
    and returns the last one's loss; `state` holds the step count, parameters and optimizer state."""
    import jax

    shd = _module("scaling.training.sharding", "scaling.sharding")
    tr = _module("scaling.training.step", "scaling.train")

    mesh = shd.make_mesh(spec.mesh)
    program = tr.build_program(spec, mesh)
    params = program.init_params()
    shape_mbs = (program.n_micro, spec.batch_size // program.n_micro, spec.model.seq_len + 1)
    sharding = shd.batch_sharding(mesh)
    state = {"step": 0, "params": params, "opt": program.init_opt_state(params)}

    def run(n):
        # As a run does: step k's loss is read while step k+1 runs. (Queueing many steps ahead can
        # deadlock XLA:CPU's in-process all-reduce on a multi-device CPU mesh: benchmarks/NOTES.md,
        # "One device per core".)
        p, o, pending = state["params"], state["opt"], None
        for _ in range(n):
            local = tr.micro_batches(batch(state["step"]), mesh.size, program.n_micro)
            p, o, metrics = program.train_step(p, o, tr.to_global(local, sharding, shape_mbs))
            if pending is not None:
                float(pending["loss"])
            pending = metrics
            state["step"] += 1
        jax.block_until_ready(metrics)
        state["params"], state["opt"] = p, o
        return float(metrics["loss"])

    return run, program, state


def worker(shape: str) -> None:
    n_layer, d_model = SHAPES[shape]
    from scaling.bench import bench_spec
    spec = bench_spec(n_layer, d_model, KAPLAN["head_dim"], seq_len=KAPLAN["seq_len"],
                      batch_tokens=KAPLAN["batch_tokens"], steps=1000)
    _cpu_devices(spec)
    import dataclasses

    from scaling import data as data_mod
    from scaling import hardware
    from scaling.flops import training_flops_per_token

    batcher = data_mod.Batcher(data_mod.open_source("stdlib").train, spec.model.seq_len, spec.batch_size, 0)
    run, program, _ = train_loop(spec, batcher.batch)
    mesh = program.mesh
    t0 = time.perf_counter()
    run(3)
    compile_s = time.perf_counter() - t0
    flops_per_step = training_flops_per_token(**dataclasses.asdict(spec.model)) * spec.batch_size * spec.model.seq_len
    peak = hardware.peak_flops("float32", n_devices=mesh.size)
    print(json.dumps({"compile_s": compile_s, "flops_per_step": flops_per_step, "peak": peak.flops_per_second,
                      "peak_source": peak.source, "devices": mesh.size}), flush=True)
    serve(run)


def serve(run) -> None:
    """Answer each line `n` on stdin with the wall and CPU seconds per step of `run(n)` (n more
    steps) and the loss it returns."""
    for line in sys.stdin:
        n = int(line)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = run(n)
        print(json.dumps({"wall": (time.perf_counter() - t0) / n, "cpu": (time.process_time() - c0) / n,
                          "loss": loss}), flush=True)


def probe_worker() -> None:
    """Answers each line on stdin with the CPU probe of scaling/hardware.py at its first size
    (2048^3 float32, best of 5), measured then and never cached."""
    from scaling import hardware
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"peak": hardware._measure_matmul_peak("float32", sizes=(2048,)).flops_per_second}),
              flush=True)


# --- ceiling: the step's matmuls alone ----------------------------------------------------------------


def matmul_ceiling(n_layer: int, d_model: int) -> dict:
    """Every matmul of one training step, alone: forward x @ w and, for the backward, dy @ w^T and
    x^T @ dy, for the dense layers, the logits and attention's batched QK^T / PV (one device, XLA
    splitting each matmul over the cores)."""
    import jax
    import jax.numpy as jnp

    from scaling import hardware

    tokens, s, k = KAPLAN["batch_tokens"], KAPLAN["seq_len"], KAPLAN["head_dim"]
    b, h, d, f, v = tokens // s, d_model // k, d_model, 4 * d_model, 256
    dense = [(d, 3 * d), (d, d), (d, f), (f, d)] * n_layer + [(d, v)]
    key = jax.random.key(0)
    xs = {n: jax.random.normal(key, (tokens, n), jnp.float32) for n in {i for i, _ in dense} | {o for _, o in dense}}
    ws = [jax.random.normal(key, (i, o), jnp.float32) * 0.02 for i, o in dense]
    qkv = jax.random.normal(key, (b, h, s, k), jnp.float32)
    att = jax.random.normal(key, (b, h, s, s), jnp.float32)

    def dense_only(xs, ws):
        out = []
        for (i, o), w in zip(dense, ws):
            out += [xs[i] @ w, xs[o] @ w.T, xs[i].T @ xs[o]]
        return out

    def attention_only(qkv, att):
        out = []
        for _ in range(n_layer):  # forward QK^T and PV, each with its two backward matmuls
            out += [jnp.einsum("bhqk,bhsk->bhqs", qkv, qkv), jnp.einsum("bhqs,bhsk->bhqk", att, qkv),
                    jnp.einsum("bhqs,bhsk->bhqk", att, qkv), jnp.einsum("bhqs,bhqk->bhsk", att, qkv),
                    jnp.einsum("bhqs,bhsk->bhqk", att, qkv), jnp.einsum("bhqk,bhsk->bhqs", qkv, qkv)]
        return out

    def best(fn, *args, reps=7):
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
        return min(times)

    flops_dense = sum(3 * 2 * tokens * i * o for i, o in dense)
    flops_att = n_layer * 3 * 2 * (2 * b * h * s * s * k)
    t_dense, t_att = best(dense_only, xs, ws), best(attention_only, qkv, att)
    peak = hardware.peak_flops("float32").flops_per_second
    return {"dense_mfu": flops_dense / t_dense / peak, "attention_mfu": flops_att / t_att / peak,
            "all_mfu": (flops_dense + flops_att) / (t_dense + t_att) / peak, "dense_ms": 1e3 * t_dense,
            "attention_ms": 1e3 * t_att}


# --- parent ----------------------------------------------------------------------------------------


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "scaling"], cwd=REPO, check=True,
                             capture_output=True).stdout
    into.mkdir(parents=True)
    tar_path = into / "src.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into


def start(src: Path, shape: str, argv: list[str] | None = None) -> tuple[subprocess.Popen, dict]:
    """A worker process for `shape` with `src` as its tree (default command: this script's worker)
    and the first line it answers (after its warm-up)."""
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(argv or [sys.executable, __file__, "--worker", shape], cwd=src, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return proc, json.loads(proc.stdout.readline())


def ask(proc: subprocess.Popen, line: str) -> dict:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", metavar="REV", help="also time this git revision's train step, interleaved")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {list(SHAPES)}")
    p.add_argument("--steps", type=int, default=0, help="timed steps per round (default: ~1 s worth)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ceiling", action="store_true", help="also time the step's matmuls alone")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "probe":
        probe_worker()
        return 0
    if args.worker:
        worker(args.worker)
        return 0

    variants = {"this checkout": REPO}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=REPO, check=True,
                                 capture_output=True, text=True).stdout.strip()
            variants = {f"baseline {rev}": extract(args.baseline, Path(tmp) / "baseline"), **variants}
        print(f"bench_step: kaplan settings {KAPLAN}, float32; {load()}", flush=True)
        for shape in args.shapes.split(","):
            workers = {name: start(src, shape) for name, src in variants.items()}
            probe, _ = start(REPO, "probe")
            info = next(iter(workers.values()))[1]
            steps = args.steps or max(2, round(1.0 / (info["flops_per_step"] / (0.15 * info["peak"]))))
            times = {name: [] for name in workers}
            peaks = []
            for _ in range(args.rounds):
                peaks.append(ask(probe, "peak")["peak"])
                for name, (proc, _) in workers.items():
                    times[name].append({**ask(proc, str(steps)), "peak": peaks[-1]})
            probe.stdin.close()
            probe.wait()
            for name, (proc, meta) in workers.items():
                proc.stdin.close()
                proc.wait()
                walls = [t["wall"] for t in times[name]]
                best, median = min(walls), statistics.median(walls)
                mfu = lambda t: meta["flops_per_step"] / t / meta["peak"]
                round_mfu = [meta["flops_per_step"] / t["wall"] / t["peak"] for t in times[name]]
                print(f"{shape:7s} {name:18s} {meta['devices']} dev  step ms best {1e3 * best:7.2f} median {1e3 * median:7.2f}   "
                      f"MFU best {mfu(best):6.1%} median {mfu(median):6.1%}   "
                      f"vs round peak best {max(round_mfu):6.1%} median {statistics.median(round_mfu):6.1%}   "
                      f"cpu ms/step {1e3 * min(t['cpu'] for t in times[name]):7.2f}   "
                      f"compile+3 steps {meta['compile_s']:.1f} s   loss {times[name][-1]['loss']:.4f}", flush=True)
            print(f"{shape:7s} matmul peak measured before each round: " + " ".join(f"{p / 1e9:.0f}" for p in peaks)
                  + " GFLOP/s", flush=True)
            if len(workers) == 2:
                (a, ta), (b, tb) = times.items()
                ratio = statistics.median(x["wall"] / y["wall"] for x, y in zip(ta, tb))
                print(f"{shape:7s} speed-up of {b} over {a}: {ratio:.2f}x (median of per-round ratios)")
            if args.ceiling:
                n_layer, d_model = SHAPES[shape]
                c = matmul_ceiling(n_layer, d_model)
                print(f"{shape:7s} matmul ceiling: dense layers alone {c['dense_mfu']:.1%} of peak "
                      f"({c['dense_ms']:.2f} ms), attention's batched matmuls alone {c['attention_mfu']:.1%} "
                      f"({c['attention_ms']:.2f} ms), all matmuls {c['all_mfu']:.1%}", flush=True)
            print(f"        {load()}; peak {info['peak'] / 1e9:.1f} GFLOP/s ({info['peak_source']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
