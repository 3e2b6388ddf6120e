"""One training run of benchmarks/torch_gpt.py's GPT from start to finish, as a PyTorch trainer
that a shell loop calls once per grid point would do it: build the model, train every step, score
the validation windows at the run's evaluation steps, print one JSON line.

    python benchmarks/race_torch.py RUN.npz [--compile] [--threads N]

RUN.npz is written by benchmarks/race.py from one run of a `scaling sweep` (its spec.json): the
model's shape, the batch of every step (the project's own Batcher, in its order), the learning rate
of every step (the project's schedule, warm-up and cool-down included), AdamW's settings, the
validation windows the project scores and the steps it scores them at. The initial weights are
torch's own draws from the same distributions (torch.manual_seed(seed)): like another seed of the
same run, not the project's draws. Imports nothing of scaling, so it needs no JAX.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from torch_gpt import GPT, load_params, make_optimizer

EVAL_CHUNK = 64  # validation windows scored per forward pass


def evaluate(model, windows: np.ndarray) -> float:
    """Mean next-token cross-entropy (nats) over every target of `windows` [n, seq_len + 1]."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), EVAL_CHUNK):
            w = torch.from_numpy(windows[i:i + EVAL_CHUNK]).long()
            logits = model(w[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += w[:, 1:].numel()
    return total / count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="npz written by benchmarks/race.py")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default mode)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's own)")
    args = p.parse_args()
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    d = np.load(args.data)
    torch.manual_seed(int(d["seed"]))
    model = GPT(**json.loads(str(d["model"])))
    given = {k[len("param:"):]: d[k] for k in d.files if k.startswith("param:")}
    if given:  # race.py --same-init: the project's own initial weights
        load_params(model, given)
    optim = {k: float(d[k]) for k in ("weight_decay", "beta1", "beta2", "eps")}
    lr = d["lr"]
    optim["lr"] = lr
    grad_clip = float(d["grad_clip"])
    opt = make_optimizer(model, optim)
    forward = torch.compile(model) if args.compile else model
    batches, windows = d["batches"], d["val_windows"]
    eval_steps = set(int(s) for s in d["eval_steps"])
    vocab = model.wte.weight.shape[0]
    curve = {}
    for k in range(len(batches)):
        tokens = torch.from_numpy(batches[k]).long()
        for group in opt.param_groups:
            group["lr"] = float(lr[k])
        logits = forward(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if k + 1 in eval_steps:
            curve[k + 1] = evaluate(forward, windows)
    final = curve.get(len(batches))
    if final is None:
        final = evaluate(forward, windows)
    print(json.dumps({"val_loss": final, "train_loss": float(loss.detach()), "steps": len(batches), "curve": curve,
                      "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
