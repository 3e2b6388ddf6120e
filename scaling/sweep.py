"""Sweep files (TOML) -> validated, immutable run specs.

The whole file is checked before anything runs; the first mistake raises `ConfigError` naming the
file, the key path and what was expected. `sweeps/README.md` is the reference for every key.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.config import (
    DTYPES, LAUNCHERS, MESH_PRESETS, SCHEDULES, SOURCES, ConfigError, DataConfig, MeshConfig,
    ModelConfig, OptimConfig, RunSpec, TrainConfig,
)
from scaling.flops import param_counts, training_flops_per_token

BYTE_VOCAB = 256
_MISSING = object()


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: str
    out_dir: str
    launcher: str
    max_parallel: int
    runs: tuple[RunSpec, ...]

    def select(self, patterns: list[str]) -> tuple[RunSpec, ...]:
        """Runs matching every pattern; a pattern is an fnmatch glob over `key=value` labels or the run_id."""
        def hit(spec: RunSpec, pat: str) -> bool:
            labels = [f"{k}={v}" for k, v in spec.labels().items()] + [spec.run_id]
            return any(fnmatch.fnmatchcase(lab, pat) for lab in labels)
        return tuple(s for s in self.runs if all(hit(s, p) for p in patterns))


class _Table:
    """Typed reads from one TOML table, remembering which keys were used so leftovers are errors."""

    def __init__(self, file: str, prefix: str, data: Any):
        self.file, self.prefix = file, prefix
        if not isinstance(data, dict):
            raise ConfigError(file, prefix, f"expected a table, got {type(data).__name__}")
        self.data, self.used = data, set()

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def error(self, k: str, msg: str) -> ConfigError:
        return ConfigError(self.file, self.key(k), msg)

    def raw(self, k: str, default=_MISSING):
        self.used.add(k)
        if k in self.data:
            return self.data[k]
        if default is _MISSING:
            raise self.error(k, "is required")
        return default

    def int(self, k, default=_MISSING, *, min=None) -> int:
        return _as_int(self, k, self.raw(k, default), min)

    def float(self, k, default=_MISSING, *, min=None, max=None, min_open=False) -> float:
        return _as_float(self, k, self.raw(k, default), min, max, min_open)

    def str(self, k, default=_MISSING, *, choices=None) -> str:
        v = self.raw(k, default)
        if not isinstance(v, str):
            raise self.error(k, f"expected a string, got {v!r}")
        if choices and v not in choices:
            raise self.error(k, f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    def bool(self, k, default=_MISSING) -> bool:
        v = self.raw(k, default)
        if not isinstance(v, bool):
            raise self.error(k, f"expected true or false, got {v!r}")
        return v

    def list(self, k, default=_MISSING) -> list:
        v = self.raw(k, default)
        if not isinstance(v, list):
            raise self.error(k, f"expected a list, got {v!r}")
        if not v:
            raise self.error(k, "expected a non-empty list")
        return v

    def sub(self, k, default=_MISSING) -> "_Table":
        return _Table(self.file, self.key(k), self.raw(k, {} if default is _MISSING else default))

    def finish(self):
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.error(extra[0], f"unknown key (known here: {', '.join(sorted(self.used)) or 'none'})")


def _as_int(t: _Table, k, v, min) -> int:
    # TOML writes 1e6 as a float; accept any integral number, reject bools and fractions.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise t.error(k, f"expected an integer, got {v!r}")
    v = int(v)
    if min is not None and v < min:
        raise t.error(k, f"expected an integer >= {min}, got {v}")
    return v


def _as_float(t: _Table, k, v, min, max, min_open) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise t.error(k, f"expected a number, got {v!r}")
    v = float(v)
    if min is not None and (v < min or (min_open and v == min)):
        raise t.error(k, f"expected a number {'>' if min_open else '>='} {min}, got {v}")
    if max is not None and v > max:
        raise t.error(k, f"expected a number <= {max}, got {v}")
    return v


def _int_list(t: _Table, k, *, min=1) -> list[int]:
    return [_as_int(t, f"{k}[{i}]", v, min) for i, v in enumerate(t.list(k))]


def _float_list(t: _Table, k) -> list[float]:
    return [_as_float(t, f"{k}[{i}]", v, 0.0, None, True) for i, v in enumerate(t.list(k))]


@dataclass(frozen=True)
class _ShapeRule:
    head_dim: int
    ffn_ratio: float
    aspect_ratio: float
    vocab_size: int
    seq_len: int
    tie_embeddings: bool

    def explicit(self, t: _Table) -> ModelConfig:
        n_layer = t.int("n_layer", min=1)
        d_model = t.int("d_model", min=1)
        n_head = t.int("n_head", max(1, d_model // self.head_dim), min=1)
        if d_model % n_head:
            raise t.error("n_head", f"{n_head} does not divide d_model={d_model} (expected a divisor of d_model)")
        d_ff = t.int("d_ff", int(round(self.ffn_ratio * d_model)), min=1)
        t.finish()
        return self.make(n_layer, d_model, n_head, d_ff)

    def make(self, n_layer, d_model, n_head=None, d_ff=None) -> ModelConfig:
        return ModelConfig(n_layer=n_layer, d_model=d_model, n_head=n_head or d_model // self.head_dim,
                           d_ff=d_ff or int(round(self.ffn_ratio * d_model)), vocab_size=self.vocab_size,
                           seq_len=self.seq_len, tie_embeddings=self.tie_embeddings)

    def from_target(self, target: int) -> ModelConfig:
        """The shape with about `target` non-embedding parameters: for each depth, the width (a multiple
        of head_dim) whose count is nearest in log; of those, the depth whose d_model/n_layer is nearest
        the aspect ratio (Kaplan et al. 2020 Sec. 3.1: loss depends weakly on shape at fixed N)."""
        best = None
        for n_layer in range(1, 129):
            widths = [self.make(n_layer, self.head_dim * k) for k in range(1, 257)]
            m = min(widths, key=lambda c: abs(math.log(self._nonembed(c) / target)))
            size_err = abs(math.log(self._nonembed(m) / target))
            if size_err > math.log(1.25):
                continue
            score = abs(math.log(m.d_model / m.n_layer / self.aspect_ratio))
            if best is None or score < best[0]:
                best = (score, m)
        if best is None:
            raise ValueError(f"no shape with head_dim={self.head_dim} within 25% of {target} parameters")
        return best[1]

    @staticmethod
    def _nonembed(m: ModelConfig) -> int:
        return param_counts(**dataclasses.asdict(m)).n_params_nonembed


def load_sweep(path: str | Path, *, device_count: int | None = None) -> SweepConfig:
    """Parse and validate a sweep file in full. Raises ConfigError on the first mistake."""
    path = Path(path)
    file = str(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(file, "", "no such file") from None
    except OSError as e:
        raise ConfigError(file, "", f"cannot read the file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(file, "", f"not UTF-8 text (byte {e.start}); a sweep file is TOML") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib's message already carries "(at line L, column C)".
        raise ConfigError(file, "", f"TOML syntax error: {e}") from None
    root = _Table(file, "", doc)
    base_dir = str(path.resolve().parent.parent) if path.parent.name == "sweeps" else str(Path.cwd())

    sw = root.sub("sweep")
    name = sw.str("name", path.stem)
    if not name.strip():
        raise sw.error("name", "expected a non-empty name")
    out_dir = sw.str("out_dir", f"results/{name}")
    if not out_dir.strip():
        raise sw.error("out_dir", "expected a non-empty folder")
    seeds = _int_list(sw, "seeds", min=0) if "seeds" in sw.data else [0]
    launcher = sw.str("launcher", "local", choices=LAUNCHERS)
    max_parallel = sw.int("max_parallel", 1, min=1)
    sw.finish()

    d = root.sub("data")
    source = d.str("source", "stdlib", choices=SOURCES)
    paths = d.raw("paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise d.error("paths", f"expected a list of strings (files or globs), got {paths!r}")
    paths = tuple(paths)
    if source in ("text", "tokens") and not paths:
        raise d.error("paths", f"expected at least one path for source = {source!r}")
    dtype = d.str("dtype", "uint16", choices=("uint16", "uint32"))
    vocab_size = d.int("vocab_size", BYTE_VOCAB if source != "tokens" else _MISSING, min=2)
    if source != "tokens" and vocab_size != BYTE_VOCAB:
        raise d.error("vocab_size", f"the bytes tokenizer has 256 tokens, got {vocab_size}")
    seq_len = d.int("seq_len", 128, min=2)
    val_fraction = d.float("val_fraction", 0.02, min=0.0, max=0.5, min_open=True)
    data_seed = d.int("data_seed", 0, min=0)
    d.finish()
    data_base = base_dir
    _check_data(file, source, paths, dtype, vocab_size, data_base)
    data = DataConfig(source=source, paths=paths, dtype=dtype, val_fraction=val_fraction, data_seed=data_seed,
                      base_dir=data_base)

    m = root.sub("model")
    rule = _ShapeRule(head_dim=m.int("head_dim", 32, min=1), ffn_ratio=m.float("ffn_ratio", 4.0, min=0, min_open=True),
                      aspect_ratio=m.float("aspect_ratio", 32.0, min=0, min_open=True), vocab_size=vocab_size,
                      seq_len=seq_len, tie_embeddings=m.bool("tie_embeddings", True))
    m.finish()

    o = root.sub("optimizer")
    optim_kw = dict(lr=o.float("lr", 3e-3, min=0, min_open=True), weight_decay=o.float("weight_decay", 0.1, min=0),
                    beta1=o.float("beta1", 0.9, min=0, max=1), beta2=o.float("beta2", 0.95, min=0, max=1),
                    eps=o.float("eps", 1e-8, min=0, min_open=True), grad_clip=o.float("grad_clip", 1.0, min=0))
    o.finish()
    s = root.sub("schedule")
    optim_kw.update(schedule=s.str("kind", "cosine", choices=SCHEDULES), warmup=s.float("warmup", 0.05, min=0, max=1),
                    decay=s.float("decay", 0.2, min=0, max=1), min_lr_ratio=s.float("min_lr_ratio", 0.1, min=0, max=1))
    if optim_kw["warmup"] + (optim_kw["decay"] if optim_kw["schedule"] == "wsd" else 0) > 1:
        raise s.error("decay", "warmup + decay must be at most 1 (fractions of the run)")
    s.finish()

    t = root.sub("train")
    batch_tokens = t.int("batch_tokens", 8192, min=1)
    if batch_tokens % seq_len:
        raise t.error("batch_tokens", f"{batch_tokens} is not a multiple of data.seq_len={seq_len}")
    train_kw = dict(
        batch_tokens=batch_tokens, micro_batch=t.int("micro_batch", 0, min=0),
        eval_points=t.int("eval_points", 16, min=1), eval_sequences=t.int("eval_sequences", 64, min=1),
        checkpoint_every=t.int("checkpoint_every", 200, min=0), keep_checkpoints=t.bool("keep_checkpoints", False),
        label_smoothing=t.float("label_smoothing", 0.0, min=0, max=1),
        entropy_coef=t.float("entropy_coef", 0.0),
        param_dtype=t.str("param_dtype", "float32", choices=DTYPES),
        compute_dtype=t.str("compute_dtype", "float32", choices=DTYPES),
    )
    t.finish()

    me = root.sub("mesh")
    mesh = MeshConfig(preset=me.str("preset", "dp", choices=MESH_PRESETS), size=me.int("size", -1, min=-1))
    if mesh.size == 0:
        raise me.error("size", "expected a positive device count or -1 (all devices)")
    me.finish()

    axes = _axes(root.sub("axes"), optim_kw, train_kw)

    grids: list[tuple[str, ModelConfig, int, float | None]] = []
    if "grid" in root.data:
        grids += _kaplan_grid(root.sub("grid"), rule)
    if "isoflop" in root.data:
        grids += _isoflop_grid(root.sub("isoflop"), rule, batch_tokens)
    root.finish()
    if not grids:
        raise ConfigError(file, "grid", "the sweep has no runs: add a [grid] table (models x tokens) or an [isoflop] table")

    runs, seen = [], set()
    for (kind, model, tokens, budget), overrides, seed in itertools.product(grids, axes, seeds):
        o_kw = {**optim_kw, **{k: v for k, v in overrides.items() if k in optim_kw}}
        if o_kw["schedule"] == "wsd" and o_kw["warmup"] + o_kw["decay"] > 1:
            raise ConfigError(file, "schedule.decay", "warmup + decay must be at most 1 for the wsd schedule "
                              "(fractions of the run; wsd is chosen in [axes])")
        t_kw = {**train_kw, **{k: v for k, v in overrides.items() if k in train_kw}}
        spec = RunSpec(sweep=name, grid=kind, model=model, data=data, optim=OptimConfig(**o_kw),
                       train=TrainConfig(tokens=tokens, **t_kw), mesh=mesh, seed=seed, flops_budget=budget)
        if spec.run_id not in seen:
            seen.add(spec.run_id)
            runs.append(spec)
    for spec in runs:
        _check_run(file, spec, device_count)
    return SweepConfig(name=name, path=file, out_dir=out_dir, launcher=launcher, max_parallel=max_parallel,
                       runs=tuple(runs))


_AXIS_KEYS = {"optimizer.lr": ("lr", "float"), "optimizer.weight_decay": ("weight_decay", "float"),
              "schedule.kind": ("schedule", "str"), "train.label_smoothing": ("label_smoothing", "float"),
              "train.entropy_coef": ("entropy_coef", "float")}
# (min, max, min_open) of each float axis: the same bounds as the key it overrides.
_AXIS_BOUNDS = {"lr": (0, None, True), "weight_decay": (0, None, False), "label_smoothing": (0, 1, False),
                "entropy_coef": (None, None, False)}


def _axes(t: _Table, optim_kw, train_kw) -> list[dict]:
    """Extra sweep axes, e.g. `[axes]  "optimizer.lr" = [1e-3, 3e-3]`, crossed with every grid point."""
    lists = []
    for key in list(t.data):
        if key not in _AXIS_KEYS:
            raise t.error(key, f"unknown sweep axis (known: {', '.join(_AXIS_KEYS)})")
        name, kind = _AXIS_KEYS[key]
        values = t.list(key)
        if kind == "float":
            values = [_as_float(t, f'"{key}"[{i}]', v, *_AXIS_BOUNDS[name]) for i, v in enumerate(values)]
        elif not all(isinstance(v, str) and v in SCHEDULES for v in values):
            raise t.error(key, f"expected a list of {', '.join(SCHEDULES)}")
        lists.append([(name, v) for v in values])
    t.finish()
    return [dict(combo) for combo in itertools.product(*lists)] if lists else [{}]


def _models(t: _Table, rule: _ShapeRule) -> list[ModelConfig]:
    if ("models" in t.data) == ("n_params" in t.data):
        raise ConfigError(t.file, t.key("models"), "give exactly one of `models` (shapes) or `n_params` (targets)")
    if "models" in t.data:
        return [rule.explicit(_Table(t.file, t.key(f"models[{i}]"), m)) for i, m in enumerate(t.list("models"))]
    out = []
    for i, target in enumerate(_int_list(t, "n_params")):
        try:
            out.append(rule.from_target(target))
        except ValueError as e:
            raise t.error(f"n_params[{i}]", str(e)) from None
    return out


def _kaplan_grid(t: _Table, rule: _ShapeRule):
    models = _models(t, rule)
    tokens = _int_list(t, "tokens")
    t.finish()
    return [("kaplan", m, d, None) for m in models for d in tokens]


def _isoflop_grid(t: _Table, rule: _ShapeRule, batch_tokens: int):
    """For each budget C and model size N: D = C / (exact training FLOPs per token), rounded to whole
    steps. Sizes outside the tokens-per-parameter window or under min_steps are left out of that budget."""
    budgets = _float_list(t, "budgets")
    models = _models(t, rule)
    min_steps = t.int("min_steps", 20, min=1)
    window = t.raw("tokens_per_param", [1.0, 1e4])
    numbers = isinstance(window, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in window)
    if not numbers or len(window) != 2 or not 0 < window[0] < window[1]:
        raise t.error("tokens_per_param", f"expected [low, high] with 0 < low < high, got {window!r}")
    t.finish()
    out = []
    for i, c in enumerate(budgets):
        fitting = []
        for m in models:
            steps = int(c / training_flops_per_token(**dataclasses.asdict(m)) // batch_tokens)
            n = param_counts(**dataclasses.asdict(m)).n_params_nonembed
            fits = steps >= min_steps and window[0] <= steps * batch_tokens / n <= window[1]
            if fits and all(m != other for other, _ in fitting):
                fitting.append((m, steps * batch_tokens))
        if len(fitting) < 3:
            smallest = min(models, key=lambda m: training_flops_per_token(**dataclasses.asdict(m)))
            need = min_steps * batch_tokens * training_flops_per_token(**dataclasses.asdict(smallest))
            raise t.error(f"budgets[{i}]", f"budget {c:.3g} FLOPs fits only {len(fitting)} distinct model size(s) "
                          f"(need >= 3 for an IsoFLOP profile; the smallest model needs >= {need:.3g} FLOPs for "
                          f"{min_steps} steps within tokens_per_param {window})")
        out += [("isoflop", m, d, c) for m, d in fitting]
    return out


def _check_data(file, source, paths, dtype, vocab_size, base_dir):
    from scaling.data import DataError, check_source
    try:
        check_source(source, paths=paths, dtype=dtype, vocab_size=vocab_size, base_dir=base_dir)
    except DataError as e:
        raise ConfigError(file, "data.paths", str(e)) from None


def _check_run(file: str, spec: RunSpec, device_count: int | None) -> None:
    t = spec.train
    b = spec.batch_size
    if spec.steps < 1:
        raise ConfigError(file, "grid.tokens", f"{t.tokens} tokens is less than one batch of {t.batch_tokens} (run {spec.run_id})")
    if device_count is not None:
        size = device_count if spec.mesh.size == -1 else spec.mesh.size
        if size > device_count or device_count % size:
            raise ConfigError(file, "mesh.size", f"{size} devices do not divide the {device_count} available")
        if b % size:
            raise ConfigError(file, "train.batch_tokens", f"a batch of {b} sequences does not split over {size} devices")
        per_device = b // size
        if t.micro_batch and per_device % t.micro_batch:
            raise ConfigError(file, "train.micro_batch", f"{t.micro_batch} does not divide the per-device batch of "
                              f"{per_device} sequences")
        if spec.mesh.preset == "fsdp" and spec.model.d_model % size:
            raise ConfigError(file, "mesh.size", f"fsdp over {size} devices needs d_model divisible by {size}")
