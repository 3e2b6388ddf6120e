"""Run specifications: frozen, validated dataclasses, one per grid point of a sweep.

A `RunSpec` is everything that decides what a training run computes. Its `run_id` is a stable
hash of the parts that change the science (shape, data, optimizer, schedule, tokens, seed,
objective, precision), so a rerun of the same sweep finds its own folder. Execution details that
do not change the losses beyond float noise (mesh, micro-batch, checkpoint interval) are kept out
of the hash: the same run can resume on a different machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field


class ConfigError(Exception):
    """A user mistake in a sweep file: one line naming the file, the key path and what was expected."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = str(file), key, message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


SCHEDULES = ("cosine", "wsd", "constant")
DTYPES = ("float32", "bfloat16", "float16")
MESH_PRESETS = ("dp", "fsdp")
SOURCES = ("stdlib", "text", "tokens")
LAUNCHERS = ("local",)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture only (GPT-2 style pre-LN decoder); see scaling/model.py."""

    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    vocab_size: int
    seq_len: int
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass(frozen=True)
class DataConfig:
    source: str = "stdlib"
    paths: tuple[str, ...] = ()
    dtype: str = "uint16"
    val_fraction: float = 0.02
    data_seed: int = 0
    base_dir: str = "."


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping; the schedule's warmup and decay are fractions of the run."""

    lr: float = 3e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    schedule: str = "cosine"
    warmup: float = 0.05
    decay: float = 0.2
    min_lr_ratio: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    tokens: int
    batch_tokens: int
    micro_batch: int = 0
    eval_points: int = 16
    eval_sequences: int = 64
    checkpoint_every: int = 200
    keep_checkpoints: bool = False
    label_smoothing: float = 0.0
    entropy_coef: float = 0.0
    param_dtype: str = "float32"
    compute_dtype: str = "float32"

    def batch_size(self, seq_len: int) -> int:
        """Global batch in sequences."""
        return self.batch_tokens // seq_len

    def steps(self, seq_len: int) -> int:
        return self.tokens // (self.batch_size(seq_len) * seq_len)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh. `dp`: params replicated, batch split over `data`. `fsdp`: params and batch
    split over `fsdp`. A size of -1 takes every device."""

    preset: str = "dp"
    size: int = -1


# Fields that do not enter run_id: they change how a run executes, not what it computes.
_EXECUTION_ONLY = {"mesh", "sweep", "train.micro_batch", "train.checkpoint_every", "train.keep_checkpoints",
                   "data.base_dir"}


@dataclass(frozen=True)
class RunSpec:
    sweep: str
    grid: str  # "kaplan" (N x D grid) or "isoflop"
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    mesh: MeshConfig = field(default_factory=MeshConfig)
    seed: int = 0
    flops_budget: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def batch_size(self) -> int:
        return self.train.batch_size(self.model.seq_len)

    @property
    def steps(self) -> int:
        return self.train.steps(self.model.seq_len)

    @property
    def run_id(self) -> str:
        science = self.to_dict()
        for dotted in _EXECUTION_ONLY:
            node = science
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node[p]
            node.pop(leaf, None)
        digest = hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:8]
        m = self.model
        return f"L{m.n_layer}-d{m.d_model}-t{_short(self.train.tokens)}-s{self.seed}-{digest}"

    def labels(self) -> dict[str, str]:
        """`key=value` labels that `--only` patterns match against."""
        m, t, o = self.model, self.train, self.optim
        out = {
            "n_layer": m.n_layer, "d_model": m.d_model, "n_head": m.n_head, "d_ff": m.d_ff,
            "tokens": t.tokens, "seed": self.seed, "lr": o.lr, "grid": self.grid,
            "label_smoothing": t.label_smoothing, "entropy_coef": t.entropy_coef,
        }
        if self.flops_budget is not None:
            out["budget"] = f"{self.flops_budget:.3g}"
        return {k: str(v) for k, v in out.items()}


def _short(x: float) -> str:
    """1000000 -> '1e6', 3000000 -> '3e6', 2500000 -> '2.5e6'."""
    if x <= 0:
        return str(x)
    exp = int(math.floor(math.log10(x)))
    mant = x / 10**exp
    return f"{mant:.3g}e{exp}"
