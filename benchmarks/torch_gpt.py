"""scaling/model.py's GPT in PyTorch, and the worker that times its training step for
benchmarks/bench_torch.py. It runs under an interpreter that has torch and numpy (the `bench`
extra) and imports nothing of scaling, so it needs no JAX.

The same computation as this project's run, piece by piece:

    pre-LN blocks      LayerNorm (eps 1e-5, gain and bias) before attention and before the MLP
    attention          fused qkv projection [q | k | v] with bias, causal softmax over heads of
                       size D / H, scaled by 1/sqrt(K); output projection with bias
    MLP                D -> F -> D with biases, GELU in its tanh form (jax.nn.gelu's default)
    positions          learned, [S, D]
    output head        tied: the logits are ln_f(x) @ wte^T
    initialisation     N(0, 0.02); the two residual projections N(0, 0.02 / sqrt(2 L)); positions
                       N(0, 0.01); biases 0, LayerNorm gains 1 (GPT-2, nanoGPT)
    optimizer          AdamW, decoupled weight decay on matrices only (>= 2-D: kernels and both
                       embeddings), global-norm clipping at 1.0, the learning rate of each step
                       given by the parent (the project's schedule)

torch's Linear keeps its weight as [out, in], the transpose of Flax's kernel; `load_params` turns
the project's initial parameters (its flat `blocks/0/qkv/kernel` names) into this module's, so that
both frameworks start from the same weights and their losses can be compared step by step.

    python benchmarks/torch_gpt.py --model '{"n_layer": 1, ...}' --data FILE.npz [--compile]

The worker warms up (3 steps; torch.compile's compilation happens there), prints one JSON line,
then answers each line `n` on stdin with the wall and CPU seconds per step of n more steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench_step import serve  # stdlib only: no JAX in this interpreter

INIT_STD = 0.02  # scaling/model.py
POSITION_STD = 0.01
LAYER_NORM_EPS = 1e-5


class Block(nn.Module):
    def __init__(self, n_layer: int, d_model: int, n_head: int, d_ff: int):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)
        self.fc = nn.Linear(d_model, d_ff)
        self.fc_proj = nn.Linear(d_ff, d_model)
        resid_std = INIT_STD / math.sqrt(2 * n_layer)
        for layer, std in ((self.qkv, INIT_STD), (self.proj, resid_std), (self.fc, INIT_STD),
                           (self.fc_proj, resid_std)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x_bsd):
        b, s, d = x_bsd.shape
        q, k, v = (t.view(b, s, self.n_head, d // self.n_head).transpose(1, 2)
                   for t in self.qkv(self.ln1(x_bsd)).split(d, dim=-1))
        y_bhsk = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x_bsd = x_bsd + self.proj(y_bhsk.transpose(1, 2).reshape(b, s, d))
        return x_bsd + self.fc_proj(F.gelu(self.fc(self.ln2(x_bsd)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer: int, d_model: int, n_head: int, d_ff: int, vocab_size: int, seq_len: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        nn.init.normal_(self.wte.weight, std=INIT_STD)
        nn.init.normal_(self.wpe.weight, std=POSITION_STD)
        self.blocks = nn.ModuleList(Block(n_layer, d_model, n_head, d_ff) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)

    def forward(self, tokens_bs):
        x_bsd = self.wte(tokens_bs) + self.wpe(torch.arange(tokens_bs.shape[1], device=tokens_bs.device))
        for block in self.blocks:
            x_bsd = block(x_bsd)
        return self.ln_f(x_bsd) @ self.wte.weight.T


def load_params(model: GPT, flat: dict) -> None:
    """Copy the project's parameters (flat names, Flax layouts) into `model`."""
    names = {"wte/embedding": "wte.weight", "wpe/embedding": "wpe.weight", "ln_f/scale": "ln_f.weight",
             "ln_f/bias": "ln_f.bias"}
    for i in range(len(model.blocks)):
        for ln in ("ln1", "ln2"):
            names[f"blocks/{i}/{ln}/scale"] = f"blocks.{i}.{ln}.weight"
            names[f"blocks/{i}/{ln}/bias"] = f"blocks.{i}.{ln}.bias"
        for dense in ("qkv", "proj", "fc", "fc_proj"):
            names[f"blocks/{i}/{dense}/kernel"] = f"blocks.{i}.{dense}.weight"
            names[f"blocks/{i}/{dense}/bias"] = f"blocks.{i}.{dense}.bias"
    ours = dict(model.named_parameters())
    if set(names.values()) != set(ours) or set(names) != set(flat):
        raise ValueError(f"parameter names differ: {sorted(set(flat) ^ set(names))}")
    with torch.no_grad():
        for theirs, mine in names.items():
            value = torch.from_numpy(np.asarray(flat[theirs]))
            ours[mine].copy_(value.T if theirs.endswith("/kernel") else value)


def make_optimizer(model: GPT, optim: dict) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) decaying matrices only, as scaling/training/step.py does."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim["lr"][0], betas=(optim["beta1"], optim["beta2"]), eps=optim["eps"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="JSON: n_layer, d_model, n_head, d_ff, vocab_size, seq_len")
    p.add_argument("--data", required=True, help="npz written by bench_torch's project worker")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default mode)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = np.load(args.data)
    batches = data["batches"]
    optim = {k: float(data[k]) for k in ("weight_decay", "beta1", "beta2", "eps", "grad_clip")}
    optim["lr"] = data["lr"]
    model = GPT(**json.loads(args.model))
    load_params(model, {k[len("param:"):]: data[k] for k in data.files if k.startswith("param:")})
    forward = torch.compile(model) if args.compile else model
    opt = make_optimizer(model, optim)
    vocab = model.wte.weight.shape[0]
    step = 0

    def run(n):
        nonlocal step
        for _ in range(n):
            tokens = torch.from_numpy(batches[step % len(batches)]).long()
            for group in opt.param_groups:
                group["lr"] = float(optim["lr"][min(step, len(optim["lr"]) - 1)])
            logits = forward(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if optim["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim["grad_clip"])
            opt.step()
            step += 1
        return float(loss)

    t0 = time.perf_counter()
    loss0 = run(1)
    run(2)
    print(json.dumps({"compile_s": time.perf_counter() - t0, "loss0": loss0,
                      "n_params": sum(p.numel() for p in model.parameters()),
                      "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                      "torch": torch.__version__}), flush=True)
    serve(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
