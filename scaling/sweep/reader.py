"""Sweep files (TOML) -> validated, immutable run specs.

The whole file is checked before anything runs; the first mistake raises `ConfigError` naming the
file, the key path and what was expected. `sweeps/README.md` is the reference for every key.

Every config checks its own values on construction and takes its defaults from its dataclass fields
(scaling/config.py); this module says which TOML key is which field and adds the key path to a
refusal. Checked here, because they need several configs, the file system or the devices:
batch_tokens a multiple of data.seq_len, vocab_size against the source, data paths that exist, every
run at least one batch long, and the mesh, batch and micro-batch against the devices a run gets
(`check_devices`). The grids check their own lists (scaling/sweep/grids.py: distinct entries, a
budget that fits three sizes); scaling/sweep/instruments.py what needs the task registry or the model.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from scaling.config import (
    LAUNCHERS, TRACKERS, ConfigError, ConfigValueError, DataConfig, MeshConfig, MeshError, OptimConfig, RayConfig,
    RunSpec, SlurmConfig, TrainConfig,
)
from scaling.config_checks import check, choice, entries, field_default, field_types, flag, instance, integer, text
from scaling.sweep.evalsets import read_eval
from scaling.sweep.grids import BYTE_VOCAB, ShapeRule, grid_points
from scaling.sweep.instruments import read_facts, read_sampling, read_synthetic, read_tasks
from scaling.sweep.recipes import check_recipes, data_recipe, lookup, read_recipes
from scaling.sweep.table import Settings, Table, folder_name_problem, from_toml, int_list, unique
from scaling.sweep.replicate import ReplicateConfig, replicas
from scaling.sweep.repetition import resolve_unique_tokens
from scaling.sweep.tuning import TuneConfig, tuned_runs


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: str
    out_dir: str
    runs: tuple[RunSpec, ...]
    launcher: str = "local"
    max_parallel: int = 1
    branch: bool = False  # [schedule] branch: WSD runs that differ only in D share a trunk (scaling/sweep/branch_plan.py)
    slurm: SlurmConfig = dataclasses.field(default_factory=SlurmConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    # Local launcher: runs that differ only in seed or scalar hyper-parameters train together in one
    # process, at most `pack_size` at once (scaling/training/pack.py).
    pack: bool = False
    pack_size: int = 8
    # [tune] (scaling/sweep/tuning.py): the learning rates `scaling tune` tries per size; and whether
    # the runs take their lr from the rule it saved (`[optimizer] lr = "tuned"`).
    tune: TuneConfig | None = None
    lr_tuned: bool = False
    # [replicate] (scaling/sweep/replicate.py): more seeds at chosen runs, or at each budget's minimum.
    replicate: ReplicateConfig | None = None
    # Evaluation rows also go to an experiment tracker (scaling/training/tracker.py); every run's spec
    # carries it, outside its run_id.
    tracker: str = "none"
    tracker_project: str = "scaling"

    def __post_init__(self):
        check(self, name=text())
        problem = folder_name_problem(self.name)
        if problem:
            raise ConfigValueError("name", f"{problem} (the name is a folder: expected letters, digits, '-', '_' or "
                                   f"'.', got {self.name!r})")
        check(self, path=text(), out_dir=text("expected a non-empty folder"), runs=entries(instance(RunSpec)),
              launcher=choice(LAUNCHERS), max_parallel=integer(ge=1), branch=flag, slurm=instance(SlurmConfig),
              ray=instance(RayConfig), pack=flag, pack_size=integer(ge=1), tune=instance(TuneConfig, optional=True),
              lr_tuned=flag, replicate=instance(ReplicateConfig, optional=True), tracker=choice(TRACKERS),
              tracker_project=text("expected a project name"))
        if self.branch and self.pack:
            raise ConfigValueError("branch", "not both branch = true and [sweep] pack = true (a packed trunk writes "
                                   "no branch seeds): choose one")

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


def load_sweep(path: str | Path, *, device_count: int | None = None, for_tuning: bool = False,
               overrides=(), out_dir: str | None = None) -> SweepConfig:
    """Parse and validate a sweep file in full. Raises ConfigError on the first mistake.

    `lr = "tuned"` takes each run's learning rate from the rule `scaling tune` saved; `for_tuning`
    (what `scaling tune` reads the file with, before there is a rule) leaves them at the default.
    `overrides`: `KEY=VALUE` strings (the command line's `--set`), each setting one dotted key of the
    file before it is read, so they are checked exactly as the file's keys are (`set_keys`).
    `out_dir` (the command line's `--out`) replaces `[sweep] out_dir`."""
    path = Path(path)
    overrides = tuple(overrides)
    data = set_keys(_parse(path), overrides, str(path))
    if out_dir is not None:
        set_keys(data, [f"sweep.out_dir={json.dumps(str(out_dir))}"], str(path))
    root = Table(str(path), "", data)
    sweep, seeds = _sweep_settings(root.sub("sweep"), path)
    recipes = read_recipes(root)
    data, data_settings, rule = _data_and_shape_rule(root, _base_dir(path), recipes)
    lr_tuned = _takes_tuned_lr(root)
    optim, optim_settings, branch = _optim(root.sub("optimizer"), root.sub("schedule"))
    tune = root.sub("tune").config(TuneConfig) if "tune" in root.data else None
    replicate = _replicate(root, seeds)
    if lr_tuned and "optimizer.lr" in root.data.get("axes", {}):
        raise ConfigError(root.file, 'axes."optimizer.lr"', 'not with optimizer.lr = "tuned": the rule gives each '
                          "size its learning rate")
    train, train_settings = _train(root.sub("train"), rule.seq_len)
    mesh, slurm, ray = (root.sub(k).config(cls) for k, cls in (("mesh", MeshConfig), ("slurm", SlurmConfig),
                                                                ("ray", RayConfig)))
    axes = _axes(root.sub("axes"), {"optim": (optim, optim_settings), "train": (train, train_settings),
                                    "data": (data, data_settings)}, recipes)
    sampling = read_sampling(root, rule.seq_len, rule.vocab_size)
    evals = read_eval(root, data, rule.vocab_size)
    grids = grid_points(root, rule, train.batch_tokens)
    root.finish()
    if not grids:
        raise ConfigError(root.file, "grid", "the sweep has no runs: add a [grid] table (models x tokens) or an "
                          "[isoflop] table")
    shared = dict(sweep=sweep.values["name"], data=data, mesh=mesh, sampling=sampling, eval=evals,
                  **{k: sweep.values[k] for k in ("tracker", "tracker_project") if k in sweep.values})
    runs = _runs(root.file, shared, optim, train, grids, axes, seeds)
    check_recipes(root.file, runs)
    runs = resolve_unique_tokens(root.file, runs)
    if overrides:
        runs = tuple(dataclasses.replace(spec, overrides=overrides) for spec in runs)
    if lr_tuned and not for_tuning:
        runs = tuned_runs(root.file, sweep.values["out_dir"], runs)
    config = (sweep | branch).build(SweepConfig, path=root.file, runs=runs, slurm=slurm, ray=ray, tune=tune,
                                    lr_tuned=lr_tuned, replicate=replicate)
    if config.branch:
        from scaling.sweep.branch_plan import share_warmup
        config = dataclasses.replace(config, runs=tuple(share_warmup(list(config.runs), config.path)))
    if replicate is not None and not for_tuning:
        # After the shared warmup is fixed: a replica is its run with another seed and nothing else.
        config = dataclasses.replace(config, runs=config.runs + tuple(replicas(config.runs, replicate, config.out_dir)))
    check_devices(config, device_count)
    return config


def _replicate(root: Table, seeds: list[int]) -> ReplicateConfig | None:
    if "replicate" not in root.data:
        return None
    table = root.sub("replicate")
    table.used.update({"seeds", "at"})
    at = table.raw("at")
    config = Settings(table.file, table.prefix, {"seeds": tuple(int_list(table, "seeds", ge=0)),
                                                 "at": at if isinstance(at, str) else tuple(table.list("at"))},
                      {"seeds": table.key("seeds"), "at": table.key("at")}).build(ReplicateConfig)
    table.finish()
    again = sorted(set(config.seeds) & set(seeds))
    if again:
        raise table.error("seeds", f"seed(s) {again} are already every run's ([sweep] seeds = {seeds}): expected "
                          "other seeds")
    if config.at == "minima" and "isoflop" not in root.data:
        raise table.error("at", '"minima" are the least-loss runs of IsoFLOP budgets: expected an [isoflop] table, '
                          "or a list of patterns")
    return config


def set_keys(data: dict, overrides, file: str) -> dict:
    """The file's tables with each `KEY=VALUE` applied: KEY a dotted path (`optimizer.lr`,
    `grid.tokens`), VALUE read as TOML (`1e-3`, `[1e6, 2e6]`, `true`, `"wsd"`), or as a plain string
    where it is not TOML (`schedule.kind=wsd`). Raises ConfigError naming `--set` or the key."""
    for given in overrides:
        key, eq, value = given.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not eq or not key or not all(parts):
            raise ConfigError(file, "--set", f"expected KEY=VALUE with a dotted KEY such as optimizer.lr=1e-3, got "
                              f"{given!r}")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()
        node = data
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(file, ".".join(parts[:i + 1]), f"is not a table, so --set {key} cannot set a key "
                                  "in it")
        node[parts[-1]] = parsed
    return data


def _takes_tuned_lr(root: Table) -> bool:
    """Whether `[optimizer] lr = "tuned"`; the key is then taken out of the table, which reads numbers."""
    optimizer = root.data.get("optimizer")
    if not isinstance(optimizer, dict) or optimizer.get("lr") != "tuned":
        return False
    root.data["optimizer"] = {k: v for k, v in optimizer.items() if k != "lr"}
    return True


def _parse(path: Path) -> dict:
    file = str(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(file, "", "no such file") from None
    except OSError as e:
        raise ConfigError(file, "", f"cannot read the file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(file, "", f"not UTF-8 text (byte {e.start}); a sweep file is TOML") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib's message already carries "(at line L, column C)".
        raise ConfigError(file, "", f"TOML syntax error: {e}") from None


def _base_dir(path: Path) -> str:
    """What relative data paths are relative to: the project of a file in sweeps/, else the working folder."""
    return str(path.resolve().parent.parent) if path.parent.name == "sweeps" else str(Path.cwd())


def _sweep_settings(table: Table, path: Path) -> tuple[Settings, list[int]]:
    """[sweep]: the SweepConfig's own keys (checked now: the name names every run), and the seeds."""
    settings = table.values(SweepConfig, ("name", "out_dir", "launcher", "max_parallel", "pack", "pack_size",
                                             "tracker", "tracker_project"))
    name = settings.values.setdefault("name", path.stem)
    settings.values.setdefault("out_dir", f"results/{name}")
    table.used.add("seeds")
    seeds = int_list(table, "seeds", ge=0) if "seeds" in table.data else [field_default(RunSpec, "seed")]
    unique(table, "seeds", seeds)
    table.finish()
    settings.build(SweepConfig, path=table.file, runs=())
    return settings, seeds


def _data_and_shape_rule(root: Table, base_dir: str, recipes) -> tuple[DataConfig, Settings, ShapeRule]:
    """[data] and [model]: the data (and the settings it was read from), and the rule that makes the
    models (data.vocab_size and data.seq_len are every model's)."""
    data_table, model_table = root.sub("data"), root.sub("model")
    data_settings = data_table.values(DataConfig, ("source", "paths", "dtype", "val_fraction", "data_seed",
                                                   "unique_tokens"))
    rule_settings = (data_table.values(ShapeRule, ("vocab_size", "seq_len"))
                     | model_table.values(ShapeRule, ("head_dim", "ffn_ratio", "aspect_ratio", "tie_embeddings")))
    model_table.finish()
    rule = rule_settings.build(ShapeRule)
    source = data_settings.values.get("source", field_default(DataConfig, "source"))
    synthetic = read_synthetic(data_table, source)
    facts = read_facts(data_table, source)
    tasks = read_tasks(data_table, rule.seq_len)
    recipe = data_recipe(data_table, recipes)
    data_table.finish()
    data = data_settings.build(DataConfig, base_dir=base_dir, synthetic=synthetic, facts=facts, tasks=tasks,
                               recipe=recipe)
    # The tokenizer is the source's: bytes, or the token files' own vocabulary.
    if data.source == "tokens" and "vocab_size" not in data_table.data:
        vocab_size = _prepared_vocab_size(root.file, data)  # a folder of `scaling prepare` says
        if vocab_size is None:
            raise data_table.error("vocab_size", "is required for a bare .bin file (a folder written by "
                                   "`scaling prepare` gives its own)")
        rule = dataclasses.replace(rule, vocab_size=vocab_size)
    if data.source != "tokens" and rule.vocab_size != BYTE_VOCAB:
        raise data_table.error("vocab_size", f"the bytes tokenizer has 256 tokens, got {rule.vocab_size}")
    _check_data(root.file, data, rule.vocab_size)
    return data, data_settings, rule


def _optim(optimizer_table: Table, schedule_table: Table) -> tuple[OptimConfig, Settings, Settings]:
    """[optimizer] and [schedule] make one OptimConfig (schedule.kind is its `schedule`); [schedule]
    branch is the SweepConfig's."""
    settings = (optimizer_table.values(OptimConfig, ("lr", "weight_decay", "beta1", "beta2", "eps", "grad_clip"))
                | schedule_table.values(OptimConfig, ("schedule", "warmup", "decay", "min_lr_ratio"),
                                        rename={"schedule": "kind"}))
    branch = schedule_table.values(SweepConfig, ("branch",))
    optimizer_table.finish()
    schedule_table.finish()
    return settings.build(OptimConfig), settings, branch


# [train] batch_tokens when the file leaves it out (TrainConfig has no default: every run states its batch).
BATCH_TOKENS = 8192


def _train(table: Table, seq_len: int) -> tuple[TrainConfig, Settings]:
    settings = table.values(TrainConfig, [f.name for f in dataclasses.fields(TrainConfig) if f.name != "tokens"])
    settings.values.setdefault("batch_tokens", BATCH_TOKENS)
    table.finish()
    # Each grid point sets its own tokens; one stands in so that [train] is checked before the grids use it.
    train = settings.build(TrainConfig, tokens=1)
    if train.batch_tokens % seq_len:
        raise table.error("batch_tokens", f"{train.batch_tokens} is not a multiple of data.seq_len={seq_len}")
    return train, settings


# The [axes] keys: which config each one varies ("optim", "train" or "data"), and its field there.
AXES = {"optimizer.lr": ("optim", "lr"), "optimizer.weight_decay": ("optim", "weight_decay"),
        "schedule.kind": ("optim", "schedule"), "train.label_smoothing": ("train", "label_smoothing"),
        "train.entropy_coef": ("train", "entropy_coef"), "data.unique_tokens": ("data", "unique_tokens"),
        "data.recipe": ("data", "recipe")}


def _axes(table: Table, bases: dict[str, tuple], recipes) -> list[dict[str, dict]]:
    """Extra sweep axes, e.g. `[axes]  "optimizer.lr" = [1e-3, 3e-3]`, crossed with every grid point:
    one {"optim": {field: value}, "train": {...}, "data": {...}} per combination. Each value is checked by the config
    it varies: the sweep's own (`bases`: the config and its Settings) with that one value in it. A recipe is
    given by name (`recipes`: the [recipes.<name>] tables)."""
    lists = []
    for key in list(table.data):
        if key not in AXES:
            raise table.error(key, f"unknown sweep axis (known: {', '.join(AXES)})")
        part, name = AXES[key]
        config, settings = bases[part]
        values = table.list(key)
        unique(table, f'"{key}"', values)
        if key == "data.recipe":
            values = [lookup(table.file, table.key(f'"{key}"[{i}]'), v, recipes) for i, v in enumerate(values)]
        values = [from_toml(v, field_types(type(config))[name]) for v in values]
        for i, value in enumerate(values):
            where = table.key(f'"{key}"[{i}]')
            try:
                dataclasses.replace(config, **{name: value})
            except ConfigValueError as e:
                if e.field == name:
                    raise ConfigError(table.file, where, e.message) from None
                raise settings.error(e, f"{e.message}, with {where} = {value!r}") from None
        lists.append([(part, name, v) for v in values])
    table.finish()
    combinations = []
    for combination in itertools.product(*lists):
        overrides = {"optim": {}, "train": {}, "data": {}}
        for part, name, value in combination:
            overrides[part][name] = value
        combinations.append(overrides)
    return combinations


def _runs(file: str, shared: dict, optim: OptimConfig, train: TrainConfig, grids, axes, seeds) -> tuple[RunSpec, ...]:
    """Every grid point x axis combination x seed; two that resolve alike are one run."""
    runs = {}
    for (kind, model, tokens, budget), overrides, seed in itertools.product(grids, axes, seeds):
        try:
            spec = RunSpec(grid=kind, model=model, optim=dataclasses.replace(optim, **overrides["optim"]),
                           train=dataclasses.replace(train, tokens=tokens, **overrides["train"]), seed=seed,
                           flops_budget=budget, **{**shared, "data": dataclasses.replace(shared["data"],
                                                                                         **overrides["data"])})
        except ConfigValueError as e:  # each axis value passed alone: two of them together are refused
            raise ConfigError(file, "axes", str(e)) from None
        runs.setdefault(spec.run_id, spec)
    return tuple(runs.values())


def check_devices(sweep: SweepConfig, device_count: int | None) -> None:
    """Every run is at least one batch long; and, given the device count one run will get, the mesh
    fits it, the batch and the micro-batch split over it, the split matrices divide. Raises ConfigError."""
    check_runs(sweep.path, sweep.runs, device_count)


def check_runs(file: str, specs, device_count: int | None) -> None:
    """check_devices for some runs (`file`: the sweep file, for the error)."""
    for spec in specs:
        _check_run(file, spec, device_count)


def _prepared_vocab_size(file: str, data: DataConfig) -> int | None:
    from scaling.data.sources import DataError, prepared_vocab_size
    try:
        return prepared_vocab_size(data.paths, data.base_dir)
    except DataError as e:
        raise ConfigError(file, "data.paths", str(e)) from None


def _check_data(file: str, data: DataConfig, vocab_size: int) -> None:
    from scaling.data.sources import DataError, check_source
    try:
        check_source(data.source, paths=data.paths, dtype=data.dtype, vocab_size=vocab_size, base_dir=data.base_dir)
    except DataError as e:
        raise ConfigError(file, "data.paths", str(e)) from None


def _check_run(file: str, spec: RunSpec, device_count: int | None) -> None:
    train, model, batch = spec.train, spec.model, spec.batch_size
    if spec.steps < 1:
        raise ConfigError(file, "grid.tokens", f"{train.tokens} tokens is less than one batch of {train.batch_tokens} "
                          f"(run {spec.run_id})")
    if device_count is None:
        return
    try:
        sizes = spec.mesh.axis_sizes(device_count)
    except MeshError as e:
        raise ConfigError(file, f"mesh.{e.axis}", str(e)) from None
    # The tensor axis holds copies of the batch: rows split over data x fsdp only.
    shards = sizes.get("data", 1) * sizes.get("fsdp", 1)
    if batch % shards:
        raise ConfigError(file, "train.batch_tokens", f"a batch of {batch} sequences does not split over {shards} "
                          "devices")
    per_device = batch // shards
    if train.micro_batch and per_device % train.micro_batch:
        raise ConfigError(file, "train.micro_batch", f"{train.micro_batch} does not divide the per-device batch of "
                          f"{per_device} sequences")
    fsdp, tensor = sizes.get("fsdp", 1), sizes.get("tensor", 1)
    fsdp_key = "mesh.fsdp" if spec.mesh.fsdp is not None else "mesh.size"
    if fsdp > 1 and model.d_model % fsdp:
        raise ConfigError(file, fsdp_key, f"fsdp over {fsdp} devices needs d_model divisible by {fsdp} "
                          f"(run {spec.run_id} has d_model={model.d_model})")
    if tensor > 1 and (model.n_head % tensor or model.d_ff % tensor):
        raise ConfigError(file, "mesh.tensor", f"tensor parallelism over {tensor} devices splits heads and MLP units: "
                          f"n_head and d_ff must be divisible by {tensor} (run {spec.run_id} has "
                          f"n_head={model.n_head}, d_ff={model.d_ff})")
