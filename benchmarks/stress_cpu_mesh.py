"""Many train steps on the CPU's one-device-per-core mesh, with a chosen number of steps in flight.

    python benchmarks/stress_cpu_mesh.py                    # 20,000 steps of L1-d16, as a run steps
    python benchmarks/stress_cpu_mesh.py --in-flight 50     # the deep queue that deadlocks XLA:CPU

Why it exists (benchmarks/NOTES.md, "One device per core"): with jax 0.10.2 on 2 cores and 2 CPU
devices, dispatching steps far ahead of the host (reading a loss only every 50 steps) killed the
process within 3,000 steps: XLA:CPU's in-process all-reduce waited 40 s for the other device and
aborted ("Termination timeout for `all reduce RendezvousKey...`"). The code before the one-device-
per-core change deadlocked the same way when given 2 devices. A run reads step k's loss while step
k+1 runs (scaling/training/run.py, scaling/training/pack.py), never more than two steps in flight, and ran 20,000
steps this way without a stall. Rerun this after a JAX upgrade; the process either prints "ok" or
aborts with XLA's message after 40 s of no progress.
"""

from __future__ import annotations

import argparse
import time

from scaling.launch import cpu
from scaling.bench import bench_spec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="L1-d16", help="LN-dM, seq 64, head_dim 16")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--in-flight", type=int, default=2, help="steps dispatched before the oldest loss is read")
    args = p.parse_args()
    n_layer, d_model = (int(x) for x in args.model.lstrip("L").split("-d"))
    spec = bench_spec(n_layer, d_model, 16, seq_len=64, batch_tokens=4096, steps=args.steps)
    cpu.configure([spec])

    import jax

    from scaling import data as data_mod
    from scaling.training import sharding as shd
    from scaling.training import step as tr

    mesh = shd.make_mesh(spec.mesh)
    program = tr.build_program(spec, mesh)
    params = program.init_params()
    opt_state = program.init_opt_state(params)
    batcher = data_mod.Batcher(data_mod.open_source("stdlib").train, 64, spec.batch_size, 0)
    shape = (program.n_micro, spec.batch_size // program.n_micro, 65)
    sharding = shd.batch_sharding(mesh)
    batches = [tr.to_global(tr.micro_batches(batcher.batch(s), mesh.size, program.n_micro), sharding, shape)
               for s in range(8)]
    print(f"{args.model}: {mesh.size} CPU device(s), {args.steps} steps, {args.in_flight} in flight", flush=True)
    t0, queue = time.perf_counter(), []
    for s in range(args.steps):
        params, opt_state, metrics = program.train_step(params, opt_state, batches[s % 8])
        queue.append(metrics)
        if len(queue) >= args.in_flight:
            float(queue.pop(0)["loss"])
    jax.block_until_ready(metrics)
    print(f"ok: {args.steps} steps in {time.perf_counter() - t0:.1f} s, final loss {float(metrics['loss']):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
