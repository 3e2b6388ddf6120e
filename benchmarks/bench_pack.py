"""Aggregate training throughput of K small models trained one after another (each with its lone
program, as `scaling sweep` does without `pack`) and packed into one vmapped program (`pack = true`).

The K models share a shape and differ in seed and learning rate. Both variants run the same steps
on the same batches, host data loading included; compilation is timed separately and excluded.
The variants alternate for `--rounds` rounds in this one process, so a machine whose load changes
affects both alike; the ratio is of the medians over rounds.

    python benchmarks/bench_pack.py                     # 4 x L1-d32, seq 64, batch 4096 tokens
    python benchmarks/bench_pack.py --n-layer 2 --d-model 32 --steps 30 --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import numpy as np

from scaling.launch import cpu
from scaling import data as data_mod
from scaling.training import sharding as shd
from scaling.training import step as tr
from scaling.bench import bench_spec
from scaling.flops import param_counts
from scaling.training.pack import build_packed_program


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--n-layer", type=int, default=1)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    base = bench_spec(args.n_layer, args.d_model, args.head_dim, seq_len=args.seq_len,
                      batch_tokens=args.batch_tokens, steps=args.steps * (args.rounds + 1))
    specs = [dataclasses.replace(base, seed=k, optim=dataclasses.replace(base.optim, lr=1e-3 * (k + 1)))
             for k in range(args.members)]
    counts = param_counts(**dataclasses.asdict(base.model))
    cpu.configure(specs)  # the CPU devices a sweep's process gets: one per core (scaling/launch/cpu.py)
    mesh = shd.make_mesh(base.mesh)
    source = data_mod.open_source("stdlib")
    batcher = data_mod.Batcher(source.train, base.model.seq_len, base.batch_size, 0)
    tokens_per_step = base.batch_size * base.model.seq_len
    sharding = shd.batch_sharding(mesh)

    def batch(program, s):
        shape = (program.n_micro, base.batch_size // program.n_micro, base.model.seq_len + 1)
        return tr.to_global(tr.micro_batches(batcher.batch(s), mesh.size, program.n_micro), sharding, shape)

    def run(program, state, first_step, n):
        params, opt_state = state
        for s in range(first_step, first_step + n):
            params, opt_state, metrics = program.train_step(params, opt_state, batch(program, s))
            np.asarray(metrics["loss"])  # a run reads every step's loss (one per member)
        jax.block_until_ready(params)
        return params, opt_state

    t0 = time.perf_counter()
    lone = [tr.build_program(s, mesh) for s in specs]
    lone_state = []
    for program in lone:
        params = program.init_params()
        lone_state.append(run(program, (params, program.init_opt_state(params)), 0, 1))
    compile_lone = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed = build_packed_program(specs, mesh)
    packed_state = run(packed, packed.init_state(), 0, 1)
    compile_packed = time.perf_counter() - t0

    seconds = {"one after another": [], "packed": []}
    for r in range(args.rounds):
        first = 1 + r * args.steps
        t0 = time.perf_counter()
        lone_state = [run(program, state, first, args.steps) for program, state in zip(lone, lone_state)]
        seconds["one after another"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        packed_state = run(packed, packed_state, first, args.steps)
        seconds["packed"].append(time.perf_counter() - t0)

    tokens = args.members * args.steps * tokens_per_step
    m = base.model
    print(f"{args.members} models L{m.n_layer}-d{m.d_model} (N = {counts.n_params_nonembed:,} non-embedding, "
          f"{counts.n_params:,} in all), seq {m.seq_len}, batch {tokens_per_step} tokens; {args.steps} steps per "
          f"model per round, {args.rounds} rounds; {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
    print(f"compile: {compile_lone:.1f} s for {args.members} lone programs, {compile_packed:.1f} s for the packed one")
    print(f"{'variant':<18} {'round seconds':>28} {'aggregate tokens/s':>20}")
    rate = {}
    for name, times in seconds.items():
        rate[name] = tokens / statistics.median(times)
        print(f"{name:<18} {' '.join(f'{t:6.2f}' for t in times):>28} {rate[name]:>20,.0f}")
    print(f"packed / one after another: {rate['packed'] / rate['one after another']:.2f}x")


if __name__ == "__main__":
    main()
