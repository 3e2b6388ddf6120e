"""Sweep files (TOML) -> validated, immutable run specs.

The whole file is checked before anything runs; the first mistake raises `ConfigError` naming the
file, the key path and what was expected. `sweeps/README.md` is the reference for every key.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from scaling.config import (
    ATTENTION, DTYPES, LAUNCHERS, MESH_AXES, MESH_PRESETS, SCHEDULES, SOURCES, ConfigError, DataConfig,
    MeshConfig, MeshError, ModelConfig, OptimConfig, RayConfig, RunSpec, SlurmConfig, TrainConfig,
)
from scaling.sweep.grids import ShapeRule, isoflop_grid, kaplan_grid
from scaling.sweep.instruments import read_sampling, read_synthetic, read_tasks
from scaling.sweep.table import (BYTE_VOCAB, MAX_EVAL_POINTS, MAX_EVAL_SEQUENCES, MAX_SEQ_LEN, MISSING, Table,
                                 as_float, folder_name_problem, int_list, unique)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: str
    out_dir: str
    launcher: str
    max_parallel: int
    runs: tuple[RunSpec, ...]
    branch: bool = False  # [schedule] branch: WSD runs that differ only in D share a trunk (scaling/sweep/branch_plan.py)
    slurm: SlurmConfig = dataclasses.field(default_factory=SlurmConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    # Local launcher: runs that differ only in seed or scalar hyper-parameters train together in one
    # process, at most `pack_size` at once (scaling/training/pack.py).
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
    root = Table(file, "", doc)
    base_dir = str(path.resolve().parent.parent) if path.parent.name == "sweeps" else str(Path.cwd())

    sw = root.sub("sweep")
    name = sw.str("name", path.stem)
    problem = folder_name_problem(name)
    if problem:
        raise sw.error("name", f"{problem} (the name is a folder: expected letters, digits, '-', '_' or '.', "
                       f"got {name!r})")
    out_dir = sw.str("out_dir", f"results/{name}")
    if not out_dir.strip():
        raise sw.error("out_dir", "expected a non-empty folder")
    seeds = int_list(sw, "seeds", min=0) if "seeds" in sw.data else [0]
    unique(sw, "seeds", seeds)
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
    vocab_size = d.int("vocab_size", BYTE_VOCAB if source != "tokens" else MISSING, min=2)
    if source != "tokens" and vocab_size != BYTE_VOCAB:
        raise d.error("vocab_size", f"the bytes tokenizer has 256 tokens, got {vocab_size}")
    seq_len = d.int("seq_len", 128, min=2, max=MAX_SEQ_LEN)
    val_fraction = d.float("val_fraction", 0.02, min=0.0, max=0.5, min_open=True)
    data_seed = d.int("data_seed", 0, min=0)
    synthetic = read_synthetic(d, source)
    tasks = read_tasks(d, source, seq_len)
    d.finish()
    data_base = base_dir
    _check_data(file, source, paths, dtype, vocab_size, data_base)
    data = DataConfig(source=source, paths=paths, dtype=dtype, val_fraction=val_fraction, data_seed=data_seed,
                      base_dir=data_base, synthetic=synthetic, tasks=tasks)

    m = root.sub("model")
    rule = ShapeRule(head_dim=m.int("head_dim", 32, min=1), ffn_ratio=m.float("ffn_ratio", 4.0, min=0, min_open=True),
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
    sampling = read_sampling(root, seq_len, vocab_size)

    grids: list[tuple[str, ModelConfig, int, float | None]] = []
    if "grid" in root.data:
        grids += kaplan_grid(root.sub("grid"), rule)
    if "isoflop" in root.data:
        grids += isoflop_grid(root.sub("isoflop"), rule, batch_tokens)
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
        from scaling.sweep.branch_plan import share_warmup
        runs = share_warmup(runs, file)
    sweep = SweepConfig(name=name, path=file, out_dir=out_dir, launcher=launcher, max_parallel=max_parallel,
                        runs=tuple(runs), branch=branch, slurm=slurm, ray=ray, pack=pack, pack_size=pack_size)
    check_devices(sweep, device_count)
    return sweep


def _mesh(t: Table) -> MeshConfig:
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


def _slurm(t: Table) -> SlurmConfig:
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


def _ray(t: Table) -> RayConfig:
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


def _axes(t: Table, optim_kw, train_kw) -> list[dict]:
    """Extra sweep axes, e.g. `[axes]  "optimizer.lr" = [1e-3, 3e-3]`, crossed with every grid point."""
    lists = []
    for key in list(t.data):
        if key not in _AXIS_KEYS:
            raise t.error(key, f"unknown sweep axis (known: {', '.join(_AXIS_KEYS)})")
        name, kind = _AXIS_KEYS[key]
        values = t.list(key)
        unique(t, f'"{key}"', values)
        if kind == "float":
            values = [as_float(t, f'"{key}"[{i}]', v, *_AXIS_BOUNDS[name]) for i, v in enumerate(values)]
        elif not all(isinstance(v, str) and v in SCHEDULES for v in values):
            raise t.error(key, f"expected a list of {', '.join(SCHEDULES)}")
        lists.append([(name, v) for v in values])
    t.finish()
    return [dict(combo) for combo in itertools.product(*lists)] if lists else [{}]


def _check_data(file, source, paths, dtype, vocab_size, base_dir):
    from scaling.data.sources import DataError, check_source
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


