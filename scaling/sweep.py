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
    ATTENTION, DTYPES, LAUNCHERS, MESH_AXES, MESH_PRESETS, SCHEDULES, SOURCES, ConfigError, DataConfig,
    MeshConfig, MeshError, ModelConfig, OptimConfig, RayConfig, RunSpec, SamplingConfig, SlurmConfig,
    SyntheticConfig, TasksConfig, TaskSpec, TrainConfig,
)
from scaling.flops import param_counts, training_flops_per_token

BYTE_VOCAB = 256
_MISSING = object()

# Upper bounds on settings that the parent or a run allocates for before training starts, so that
# a typo (1e9 for 1e3) is refused up front instead of exhausting memory. Each is far above what a
# scaling sweep uses.
MAX_SEQ_LEN = 1 << 16
MAX_EVAL_POINTS = 10_000
MAX_EVAL_SEQUENCES = 1 << 20
MAX_PROBE_ITEMS = 100_000
MAX_PROMPTS = 4096
MAX_BEAM = 64


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: str
    out_dir: str
    launcher: str
    max_parallel: int
    runs: tuple[RunSpec, ...]
    branch: bool = False  # [schedule] branch: WSD runs that differ only in D share a trunk (scaling/branch.py)
    slurm: SlurmConfig = dataclasses.field(default_factory=SlurmConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    # Local launcher: runs that differ only in seed or scalar hyper-parameters train together in one
    # process, at most `pack_size` at once (scaling/pack.py).
    pack: bool = False
    pack_size: int = 8

    def devices_per_run(self, launcher: str | None = None) -> int | None:
        """The devices one run gets under `launcher` (default: the sweep's), where the sweep file says:
        slurm: nodes x gpus_per_node; ray: the task's GPUs. None for local (ask JAX)."""
        launcher = launcher or self.launcher
        if launcher == "slurm":
            return self.slurm.devices_per_run()
        if launcher == "ray":
            return self.ray.devices_per_run()
        return None

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

    def int(self, k, default=_MISSING, *, min=None, max=None) -> int:
        return _as_int(self, k, self.raw(k, default), min, max)

    def float(self, k, default=_MISSING, *, min=None, max=None, min_open=False, max_open=False) -> float:
        return _as_float(self, k, self.raw(k, default), min, max, min_open, max_open)

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

    def optional(self, k, read):
        """`read(k)` if the key is present, else None (for settings whose default is "not given")."""
        self.used.add(k)
        return read(k) if k in self.data else None

    def sub(self, k, default=_MISSING) -> "_Table":
        return _Table(self.file, self.key(k), self.raw(k, {} if default is _MISSING else default))

    def finish(self):
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.error(extra[0], f"unknown key (known here: {', '.join(sorted(self.used)) or 'none'})")


def _as_int(t: _Table, k, v, min, max=None) -> int:
    # TOML writes 1e6 as a float; accept any integral number, reject bools and fractions.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise t.error(k, f"expected an integer, got {v!r}")
    v = int(v)
    if min is not None and v < min:
        raise t.error(k, f"expected an integer >= {min}, got {v}")
    if max is not None and v > max:
        raise t.error(k, f"expected an integer <= {max:,}, got {v:,}")
    return v


def _as_float(t: _Table, k, v, min, max, min_open, max_open=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise t.error(k, f"expected a number, got {v!r}")
    v = float(v)
    if min is not None and (v < min or (min_open and v == min)):
        raise t.error(k, f"expected a number {'>' if min_open else '>='} {min}, got {v}")
    if max is not None and (v > max or (max_open and v == max)):
        raise t.error(k, f"expected a number {'<' if max_open else '<='} {max}, got {v}")
    return v


def _folder_name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder's name inside results/, or None."""
    if not name.strip():
        return "expected a non-empty name"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a control character (newline, tab, ...) in the name"
    if "/" in name or "\\" in name:
        return "a path separator in the name"
    if name in (".", "..") or name.startswith("."):
        return "a name that starts with '.'"
    return None


def _unique(t: _Table, key: str, values: list, show=repr) -> None:
    """A list whose entries must differ (grid axes: a repeated entry would be the same run twice)."""
    for i, v in enumerate(values):
        first = values.index(v)
        if first < i:
            raise t.error(f"{key}[{i}]", f"repeats {t.key(f'{key}[{first}]')} ({show(v)}): each grid point is one run; "
                          "expected distinct values (use [sweep] seeds for repeats)")


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
    problem = _folder_name_problem(name)
    if problem:
        raise sw.error("name", f"{problem} (the name is a folder: expected letters, digits, '-', '_' or '.', "
                       f"got {name!r})")
    out_dir = sw.str("out_dir", f"results/{name}")
    if not out_dir.strip():
        raise sw.error("out_dir", "expected a non-empty folder")
    seeds = _int_list(sw, "seeds", min=0) if "seeds" in sw.data else [0]
    _unique(sw, "seeds", seeds)
    launcher = sw.str("launcher", "local", choices=LAUNCHERS)
    max_parallel = sw.int("max_parallel", 1, min=1)
    pack = sw.bool("pack", False)
    pack_size = sw.int("pack_size", 8, min=1)
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
    seq_len = d.int("seq_len", 128, min=2, max=MAX_SEQ_LEN)
    val_fraction = d.float("val_fraction", 0.02, min=0.0, max=0.5, min_open=True)
    data_seed = d.int("data_seed", 0, min=0)
    synthetic = _synthetic(d, source)
    tasks = _tasks(d, source, seq_len)
    d.finish()
    data_base = base_dir
    _check_data(file, source, paths, dtype, vocab_size, data_base)
    data = DataConfig(source=source, paths=paths, dtype=dtype, val_fraction=val_fraction, data_seed=data_seed,
                      base_dir=data_base, synthetic=synthetic, tasks=tasks)

    m = root.sub("model")
    rule = _ShapeRule(head_dim=m.int("head_dim", 32, min=1), ffn_ratio=m.float("ffn_ratio", 4.0, min=0, min_open=True),
                      aspect_ratio=m.float("aspect_ratio", 32.0, min=0, min_open=True), vocab_size=vocab_size,
                      seq_len=seq_len, tie_embeddings=m.bool("tie_embeddings", True))
    m.finish()

    o = root.sub("optimizer")
    optim_kw = dict(lr=o.float("lr", 3e-3, min=0, min_open=True), weight_decay=o.float("weight_decay", 0.1, min=0),
                    # Adam's moment averages need beta < 1: at 1 they never move from zero (Kingma & Ba 2015).
                    beta1=o.float("beta1", 0.9, min=0, max=1, max_open=True),
                    beta2=o.float("beta2", 0.95, min=0, max=1, max_open=True),
                    eps=o.float("eps", 1e-8, min=0, min_open=True), grad_clip=o.float("grad_clip", 1.0, min=0))
    o.finish()
    s = root.sub("schedule")
    optim_kw.update(schedule=s.str("kind", "cosine", choices=SCHEDULES), warmup=s.float("warmup", 0.05, min=0, max=1),
                    decay=s.float("decay", 0.2, min=0, max=1), min_lr_ratio=s.float("min_lr_ratio", 0.1, min=0, max=1))
    if optim_kw["warmup"] + (optim_kw["decay"] if optim_kw["schedule"] == "wsd" else 0) > 1:
        raise s.error("decay", "warmup + decay must be at most 1 (fractions of the run)")
    branch = s.bool("branch", False)
    s.finish()

    t = root.sub("train")
    batch_tokens = t.int("batch_tokens", 8192, min=1)
    if batch_tokens % seq_len:
        raise t.error("batch_tokens", f"{batch_tokens} is not a multiple of data.seq_len={seq_len}")
    train_kw = dict(
        batch_tokens=batch_tokens, micro_batch=t.int("micro_batch", 0, min=0),
        eval_points=t.int("eval_points", 16, min=1, max=MAX_EVAL_POINTS),
        eval_sequences=t.int("eval_sequences", 64, min=1, max=MAX_EVAL_SEQUENCES),
        checkpoint_every=t.int("checkpoint_every", 200, min=0), keep_checkpoints=t.bool("keep_checkpoints", False),
        label_smoothing=t.float("label_smoothing", 0.0, min=0, max=1),
        entropy_coef=t.float("entropy_coef", 0.0),
        param_dtype=t.str("param_dtype", "float32", choices=DTYPES),
        compute_dtype=t.str("compute_dtype", "float32", choices=DTYPES),
        attention=t.str("attention", "xla", choices=ATTENTION),
    )
    t.finish()

    mesh = _mesh(root.sub("mesh"))
    slurm = _slurm(root.sub("slurm"))
    ray = _ray(root.sub("ray"))

    axes = _axes(root.sub("axes"), optim_kw, train_kw)
    sampling = _sampling(root, seq_len, vocab_size)

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
                       train=TrainConfig(tokens=tokens, **t_kw), mesh=mesh, seed=seed, flops_budget=budget,
                       sampling=sampling)
        if spec.run_id not in seen:
            seen.add(spec.run_id)
            runs.append(spec)
    if branch and pack:
        raise ConfigError(file, "schedule.branch", "not both branch = true and [sweep] pack = true (a packed "
                                                   "trunk writes no branch seeds): choose one")
    if branch:
        from scaling.branch import share_warmup
        runs = share_warmup(runs, file)
    sweep = SweepConfig(name=name, path=file, out_dir=out_dir, launcher=launcher, max_parallel=max_parallel,
                        runs=tuple(runs), branch=branch, slurm=slurm, ray=ray, pack=pack, pack_size=pack_size)
    check_devices(sweep, device_count)
    return sweep


def _mesh(t: _Table) -> MeshConfig:
    preset = t.str("preset", "dp", choices=MESH_PRESETS)
    size = t.int("size", -1, min=-1)
    if size == 0:
        raise t.error("size", "expected a positive device count or -1 (all devices)")
    axes = {}
    for axis in ("data", "fsdp", "tensor"):
        value = t.optional(axis, lambda k: t.int(k, min=-1))
        if value is None:
            continue
        if axis not in MESH_AXES[preset]:
            raise t.error(axis, f"the {preset} preset has no {axis} axis (its axes: {', '.join(MESH_AXES[preset])}; "
                          'preset = "fsdp_tp" has data, fsdp and tensor)')
        if value == 0:
            raise t.error(axis, "expected a positive axis size or -1 (the rest of the devices)")
        axes[axis] = value
    rest = [a for a, v in axes.items() if v == -1]
    if len(rest) > 1:
        raise t.error(rest[1], f"only one axis may be -1 (the rest of the devices), got {' and '.join(rest)}")
    t.finish()
    return MeshConfig(preset=preset, size=size, **axes)


def _slurm(t: _Table) -> SlurmConfig:
    def text(k):
        value = t.str(k)
        if not value.strip():
            raise t.error(k, "expected a non-empty string")
        return value

    setup = t.raw("setup", [])
    if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
        raise t.error("setup", f"expected a list of shell lines (strings), got {setup!r}")
    cfg = SlurmConfig(
        partition=t.optional("partition", text), account=t.optional("account", text), qos=t.optional("qos", text),
        constraint=t.optional("constraint", text), nodes=t.int("nodes", 1, min=1),
        gpus_per_node=t.int("gpus_per_node", 0, min=0),
        cpus_per_task=t.optional("cpus_per_task", lambda k: t.int(k, min=1)),
        mem_gb=t.optional("mem_gb", lambda k: t.float(k, min=0, min_open=True)),
        time_min=t.int("time_min", 60, min=1), max_timeouts=t.int("max_timeouts", 3, min=0),
        signal_delay_s=t.int("signal_delay_s", 120, min=0), setup=tuple(setup),
        folder=t.optional("folder", text))
    if cfg.signal_delay_s >= cfg.time_min * 60:
        raise t.error("signal_delay_s", f"must be shorter than the time limit ({cfg.time_min} min)")
    t.finish()
    return cfg


def _ray(t: _Table) -> RayConfig:
    address = t.str("address", "auto")
    if not address.strip():
        raise t.error("address", 'expected a cluster address such as "auto" or "ray://head:10001"')
    cfg = RayConfig(address=address, num_cpus=t.float("num_cpus", 1.0, min=0),
                    num_gpus=t.float("num_gpus", 0.0, min=0))
    t.finish()
    return cfg


def check_devices(sweep: SweepConfig, device_count: int | None) -> None:
    """Every run is at least one batch long; and, given the device count one run will get, the mesh
    fits it, the batch and the micro-batch split over it, the split matrices divide. Raises ConfigError."""
    check_runs(sweep.path, sweep.runs, device_count)


def check_runs(file: str, specs, device_count: int | None) -> None:
    """check_devices for some runs (`file`: the sweep file, for the error)."""
    for spec in specs:
        _check_run(file, spec, device_count)


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
        _unique(t, f'"{key}"', values)
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
        key = "models"
        out = [rule.explicit(_Table(t.file, t.key(f"models[{i}]"), m)) for i, m in enumerate(t.list("models"))]
    else:
        key, out = "n_params", []
        for i, target in enumerate(_int_list(t, "n_params")):
            try:
                out.append(rule.from_target(target))
            except ValueError as e:
                raise t.error(f"n_params[{i}]", str(e)) from None
    # Two entries of one shape (written twice, or with its defaults spelled out, or two targets that
    # the shape rule resolves alike) would be one run: say so rather than merge them.
    _unique(t, key, out, show=lambda m: f"the shape n_layer={m.n_layer}, d_model={m.d_model}, n_head={m.n_head}, "
            f"d_ff={m.d_ff}")
    return out


def _kaplan_grid(t: _Table, rule: _ShapeRule):
    models = _models(t, rule)
    tokens = _int_list(t, "tokens")
    _unique(t, "tokens", tokens, show=lambda v: f"{v:,} tokens")
    t.finish()
    return [("kaplan", m, d, None) for m in models for d in tokens]


def _isoflop_grid(t: _Table, rule: _ShapeRule, batch_tokens: int):
    """For each budget C and model size N: D = C / (exact training FLOPs per token), rounded to whole
    steps. Sizes outside the tokens-per-parameter window or under min_steps are left out of that budget."""
    budgets = _float_list(t, "budgets")
    _unique(t, "budgets", budgets, show=lambda v: f"{v:.4g} FLOPs")
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
    t, m = spec.train, spec.model
    b = spec.batch_size
    if spec.steps < 1:
        raise ConfigError(file, "grid.tokens", f"{t.tokens} tokens is less than one batch of {t.batch_tokens} (run {spec.run_id})")
    if device_count is None:
        return
    try:
        sizes = spec.mesh.axis_sizes(device_count)
    except MeshError as e:
        raise ConfigError(file, f"mesh.{e.axis}", str(e)) from None
    # The tensor axis holds copies of the batch: rows split over data x fsdp only.
    shards = sizes.get("data", 1) * sizes.get("fsdp", 1)
    if b % shards:
        raise ConfigError(file, "train.batch_tokens", f"a batch of {b} sequences does not split over {shards} devices")
    per_device = b // shards
    if t.micro_batch and per_device % t.micro_batch:
        raise ConfigError(file, "train.micro_batch", f"{t.micro_batch} does not divide the per-device batch of "
                          f"{per_device} sequences")
    fsdp, tensor = sizes.get("fsdp", 1), sizes.get("tensor", 1)
    fsdp_key = "mesh.fsdp" if spec.mesh.fsdp is not None else "mesh.size"
    if fsdp > 1 and m.d_model % fsdp:
        raise ConfigError(file, fsdp_key, f"fsdp over {fsdp} devices needs d_model divisible by {fsdp} "
                          f"(run {spec.run_id} has d_model={m.d_model})")
    if tensor > 1 and (m.n_head % tensor or m.d_ff % tensor):
        raise ConfigError(file, "mesh.tensor", f"tensor parallelism over {tensor} devices splits heads and MLP units: "
                          f"n_head and d_ff must be divisible by {tensor} (run {spec.run_id} has n_head={m.n_head}, "
                          f"d_ff={m.d_ff})")


# ----------------------------------------------------------------------------------------------
# Science instruments: [data.synthetic], [data.tasks], [sampling] (sweeps/README.md)


def _synthetic(d: _Table, source: str) -> SyntheticConfig | None:
    if "synthetic" not in d.data:
        d.used.add("synthetic")
        return SyntheticConfig() if source == "synthetic" else None
    if source != "synthetic":
        raise d.error("synthetic", f'settings for source = "synthetic", but source = {source!r}')
    from scaling.synthetic import check_config
    t = d.sub("synthetic")
    default = SyntheticConfig()
    cfg = SyntheticConfig(
        seed=t.int("seed", default.seed, min=0), components=t.int("components", default.components, min=1),
        zipf_exponent=t.float("zipf_exponent", default.zipf_exponent, min=0),
        alphabet=t.int("alphabet", default.alphabet, min=2),
        orders=tuple(_int_list(t, "orders")) if "orders" in t.data else default.orders,
        concentration=t.float("concentration", default.concentration, min=0, min_open=True),
        end_prob=t.float("end_prob", default.end_prob, min=0, max=1, min_open=True),
        train_tokens=t.int("train_tokens", default.train_tokens, min=1000),
        val_tokens=t.int("val_tokens", default.val_tokens, min=1000))
    t.used.add("orders")
    for key, message in check_config(cfg):
        raise t.error(key, message)
    t.finish()
    return cfg


_TASK_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _tasks(d: _Table, source: str, seq_len: int) -> TasksConfig | None:
    d.used.add("tasks")
    if "tasks" not in d.data:
        return None
    from scaling.tasks import TASKS, max_document_tokens
    t = d.sub("tasks")
    if source == "tokens":
        raise t.error("rate", 'task documents are bytes: they mix only into a byte-level source '
                      '("stdlib", "text" or "synthetic")')
    default = TasksConfig()
    settings = dict(rate=t.float("rate", default.rate, min=0, max=0.9, min_open=True),
                    heldout_fraction=t.float("heldout_fraction", default.heldout_fraction, min=0, max=0.9,
                                             min_open=True),
                    probe_items=t.int("probe_items", default.probe_items, min=1, max=MAX_PROBE_ITEMS),
                    seed=t.int("seed", default.seed, min=0))
    specs = []
    for name in [k for k, v in t.data.items() if isinstance(v, dict)]:
        if not set(name) <= _TASK_NAME_CHARS:
            raise t.error(name, "a task name is lowercase letters, digits and _ (it names record columns)")
        tt = t.sub(name)
        kind = tt.str("kind", name if name in TASKS else _MISSING, choices=tuple(TASKS))
        weight = tt.float("weight", 1.0, min=0, min_open=True)
        cls = TASKS[kind]
        params = {}
        for key, value in cls.PARAMS.items():
            read = {bool: tt.bool, int: tt.int, float: tt.float, str: tt.str}[type(value)]
            params[key] = read(key, value)
        for key, message in cls(**params).check():
            raise tt.error(key, message)
        tt.finish()
        spec = TaskSpec(name=name, kind=kind, weight=weight, params=tuple(sorted(params.items())))
        need = max_document_tokens(spec)
        if need > seq_len:
            raise tt.error("kind", f"a {kind} document takes up to {need} tokens, more than data.seq_len={seq_len}")
        specs.append(spec)
    if not specs:
        raise t.error("rate", "no tasks: add a table per task, e.g. [data.tasks.addition]")
    t.finish()
    return TasksConfig(tasks=tuple(specs), **settings)


def _sampling(root: _Table, seq_len: int, vocab_size: int) -> SamplingConfig | None:
    root.used.add("sampling")
    if "sampling" not in root.data:
        return None
    t = root.sub("sampling")
    default = SamplingConfig()
    cfg = SamplingConfig(
        prompts=t.int("prompts", default.prompts, min=1, max=MAX_PROMPTS),
        prompt_tokens=t.int("prompt_tokens", default.prompt_tokens, min=1),
        new_tokens=t.int("new_tokens", default.new_tokens, min=1),
        temperature=t.float("temperature", default.temperature, min=0, min_open=True),
        top_k=t.int("top_k", default.top_k, min=1), top_p=t.float("top_p", default.top_p, min=0, max=1, min_open=True),
        beam=t.int("beam", default.beam, min=1, max=MAX_BEAM), seed=t.int("seed", default.seed, min=0))
    if cfg.prompt_tokens + cfg.new_tokens > seq_len:
        raise t.error("new_tokens", f"prompt_tokens + new_tokens = {cfg.prompt_tokens + cfg.new_tokens} is more than "
                      f"data.seq_len={seq_len}")
    if cfg.top_k > vocab_size:
        raise t.error("top_k", f"{cfg.top_k} is more than the vocabulary ({vocab_size} tokens)")
    t.finish()
    return cfg
