"""GPU check: train a 100M-class GPT for about a minute and print tokens/s and MFU.

    python benchmarks/gpu_check.py                      # 12 x 768 (GPT-2 small shape, 85M non-embedding), bf16
    python benchmarks/gpu_check.py --attention xla      # the einsum attention instead of cuDNN's
    python benchmarks/gpu_check.py --smoke              # a tiny model for a few seconds (checks the script on a CPU)

It uses the runner's own pieces (scaling/training/step.py: the jitted, sharded, donated train step; the
stdlib data source; the exact FLOP count; the peak table of scaling/hardware.py), on every local
device with the fsdp preset. The compile step is not timed. MFU = achieved model FLOP/s (this
project's exact count: attention and output layer included) / peak FLOP/s of the devices; the
6ND-based figure is printed too for comparison with papers that use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="timed training, after compilation")
    p.add_argument("--attention", choices=("dot_product_attention", "xla"), default="dot_product_attention")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="compute dtype")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per device per micro-step")
    p.add_argument("--smoke", action="store_true", help="a tiny model for a few seconds")
    args = p.parse_args()

    import jax
    import numpy as np

    from scaling import data as data_mod
    from scaling import hardware
    from scaling.training import sharding as shd
    from scaling.training import step as tr
    from scaling.config import DataConfig, MeshConfig, ModelConfig, OptimConfig, RunSpec, TrainConfig
    from scaling.flops import param_counts, training_flops_per_token
    from scaling.training.run import enable_compilation_cache

    enable_compilation_cache()
    if args.smoke:
        model = ModelConfig(n_layer=2, d_model=64, n_head=2, d_ff=256, vocab_size=256, seq_len=64)
        batch_tokens, seconds = 64 * 16, min(args.seconds, 5.0)
    else:
        model = ModelConfig(n_layer=12, d_model=768, n_head=12, d_ff=3072, vocab_size=256, seq_len=1024)
        batch_tokens, seconds = 1024 * 128, args.seconds
    n_dev = jax.device_count()
    per_device = batch_tokens // model.seq_len // n_dev
    micro = min(args.micro_batch, per_device)
    spec = RunSpec(sweep="gpu-check", grid="kaplan", model=model, data=DataConfig(), optim=OptimConfig(lr=6e-4),
                   train=TrainConfig(tokens=batch_tokens * 100_000, batch_tokens=batch_tokens, micro_batch=micro,
                                     compute_dtype=args.dtype, attention=args.attention),
                   mesh=MeshConfig("fsdp"))
    mesh = shd.make_mesh(spec.mesh)
    program = tr.build_program(spec, mesh)
    source = data_mod.open_source("stdlib")
    batcher = data_mod.Batcher(source.train, model.seq_len, spec.batch_size, 0)
    share, n_shares, local_shards = shd.process_share(mesh)
    shape = (program.n_micro, spec.batch_size // program.n_micro, model.seq_len + 1)

    def batch(step):
        local = tr.micro_batches(batcher.batch(step, share, n_shares), local_shards, program.n_micro)
        return tr.to_global(local, shd.batch_sharding(mesh), shape)

    counts = param_counts(**dataclasses.asdict(model))
    flops_per_token = training_flops_per_token(**dataclasses.asdict(model))
    peak = hardware.peak_flops(args.dtype, n_devices=n_dev)
    print(f"devices: {n_dev} x {jax.devices()[0].device_kind} ({jax.default_backend()}); peak "
          f"{peak.flops_per_second:.3g} FLOP/s ({peak.source})")
    print(f"model: {model.n_layer} x {model.d_model}, {counts.n_params_nonembed / 1e6:.1f}M non-embedding parameters; "
          f"batch {batch_tokens} tokens = {spec.batch_size} x {model.seq_len}, {program.n_micro} micro-batches; "
          f"{args.dtype} compute, attention {args.attention}")

    params = program.init_params()
    opt_state = program.init_opt_state(params)
    t0 = time.perf_counter()
    params, opt_state, metrics = program.train_step(params, opt_state, batch(0))
    first_loss = float(metrics["loss"])
    print(f"compile + first step: {time.perf_counter() - t0:.1f} s, loss {first_loss:.3f}")

    step, start = 1, time.perf_counter()
    while time.perf_counter() - start < seconds:
        params, opt_state, metrics = program.train_step(params, opt_state, batch(step))
        step += 1
        if step % 10 == 0:
            jax.block_until_ready(metrics)  # keep the host at most 10 steps ahead
    loss = float(metrics["loss"])  # waits for the last step
    elapsed = time.perf_counter() - start
    tokens_per_second = (step - 1) * batch_tokens / elapsed
    mfu = tokens_per_second * flops_per_token / peak.flops_per_second
    mfu_6nd = tokens_per_second * 6 * counts.n_params_nonembed / peak.flops_per_second
    print(f"{step - 1} steps in {elapsed:.1f} s: {tokens_per_second:,.0f} tokens/s, "
          f"{tokens_per_second * flops_per_token / 1e12:.1f} TFLOP/s, MFU {mfu:.1%} (6ND: {mfu_6nd:.1%}); "
          f"loss {first_loss:.3f} -> {loss:.3f}")
    if not np.isfinite(loss):
        print("loss is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
