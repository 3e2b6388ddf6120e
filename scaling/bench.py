"""`scaling bench`: step time, tokens/s, achieved FLOP/s and MFU of a few model sizes on this machine.

FLOPs are this project's exact count (scaling/flops.py); the peak is the device table's or, on a
CPU, the measured matmul peak (scaling/hardware.py). Compile time is excluded: the first steps warm
up, then `steps` steps are timed end to end (host data loading included, as in a real run).
"""

from __future__ import annotations

import dataclasses
import time

from scaling.config import DataConfig, MeshConfig, ModelConfig, OptimConfig, RunSpec, TrainConfig

# (n_layer, d_model, head_dim) from a few thousand to a few million non-embedding parameters.
DEFAULT_SHAPES = [(1, 32, 16), (2, 64, 16), (4, 128, 32), (6, 256, 64)]


def bench_spec(n_layer: int, d_model: int, head_dim: int, *, seq_len: int, batch_tokens: int, steps: int,
               micro_batch: int = 0) -> RunSpec:
    model = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // head_dim, d_ff=4 * d_model,
                        vocab_size=256, seq_len=seq_len)
    return RunSpec(sweep="bench", grid="kaplan", model=model, data=DataConfig(), optim=OptimConfig(),
                   train=TrainConfig(tokens=batch_tokens * (steps + 3), batch_tokens=batch_tokens,
                                     micro_batch=micro_batch), mesh=MeshConfig())


def measure(spec: RunSpec, steps: int, warmup: int = 3) -> dict:
    import jax

    from scaling import data as data_mod
    from scaling import hardware
    from scaling.training import sharding as shd
    from scaling.training import step as tr
    from scaling.flops import param_counts, training_flops_per_token

    source = data_mod.open_source("stdlib")
    batcher = data_mod.Batcher(source.train, spec.model.seq_len, spec.batch_size, 0)
    mesh = shd.make_mesh(spec.mesh)
    program = tr.build_program(spec, mesh)
    params = program.init_params()
    opt_state = program.init_opt_state(params)
    shape = (program.n_micro, spec.batch_size // program.n_micro, spec.model.seq_len + 1)
    sharding = shd.batch_sharding(mesh)

    def step(params, opt_state, s):
        local = tr.micro_batches(batcher.batch(s), mesh.size, program.n_micro)
        return program.train_step(params, opt_state, tr.to_global(local, sharding, shape))

    def steps_from(first, n):
        # As a run does (scaling/training/run.py): step k's loss is read while step k+1 runs, never more
        # than two steps in flight (deep queues can deadlock XLA:CPU's in-process all-reduce).
        nonlocal params, opt_state
        pending = None
        for s in range(first, first + n):
            params, opt_state, metrics = step(params, opt_state, s)
            if pending is not None:
                float(pending["loss"])
            pending = metrics
        jax.block_until_ready(metrics)

    t0 = time.perf_counter()
    steps_from(0, warmup)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    steps_from(warmup, steps)
    elapsed = time.perf_counter() - t0
    tokens = steps * spec.batch_size * spec.model.seq_len
    flops = training_flops_per_token(**dataclasses.asdict(spec.model)) * tokens
    peak = hardware.peak_flops(spec.train.compute_dtype, n_devices=mesh.size)
    return {"n_layer": spec.model.n_layer, "d_model": spec.model.d_model, "n_head": spec.model.n_head,
            "n_params_nonembed": param_counts(**dataclasses.asdict(spec.model)).n_params_nonembed,
            "step_ms": 1e3 * elapsed / steps, "tokens_per_second": tokens / elapsed,
            "gflops_per_second": flops / elapsed / 1e9, "mfu": flops / elapsed / peak.flops_per_second,
            "warmup_s": compile_s, "peak_flops": peak.flops_per_second, "peak_source": peak.source}


def main(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from scaling.launch import cpu
    specs = [bench_spec(n_layer, d_model, head_dim, seq_len=args.seq_len, batch_tokens=args.batch_tokens,
                        steps=args.steps) for n_layer, d_model, head_dim in DEFAULT_SHAPES]
    cpu.configure(specs)  # a CPU as a sweep's run sees it: one device per core
    import jax
    rows = [measure(spec, args.steps) for spec in specs]
    console = Console()
    console = console if console.is_terminal else Console(width=160)
    table = Table(title=f"scaling bench: {jax.devices()[0].device_kind} x{jax.device_count()}, seq_len "
                        f"{args.seq_len}, batch {args.batch_tokens} tokens, {args.steps} timed steps, float32")
    for col in ("n_layer", "d_model", "n_head", "N (non-embed)", "step ms", "tokens/s", "GFLOP/s", "MFU",
                "warm-up s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["n_layer"]), str(r["d_model"]), str(r["n_head"]), f"{r['n_params_nonembed']:,}",
                      f"{r['step_ms']:.1f}", f"{r['tokens_per_second']:,.0f}", f"{r['gflops_per_second']:.1f}",
                      f"{r['mfu']:.1%}", f"{r['warmup_s']:.1f}")
    console.print(table)
    console.print(f"peak {rows[0]['peak_flops'] / 1e9:.1f} GFLOP/s ({rows[0]['peak_source']}); FLOPs: exact matmul "
                  "count, training = 3 x forward (scaling/flops.py)")
    return 0
