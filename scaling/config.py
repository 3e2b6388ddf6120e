"""Run specifications: frozen, validated dataclasses, one per grid point of a sweep.

A `RunSpec` is everything that decides what a training run computes. Its `run_id` is a stable
hash of the parts that change the science (shape, data, optimizer, schedule, tokens, seed,
objective, precision), so a rerun of the same sweep finds its own folder. Execution details that
do not change the losses beyond float noise (mesh, micro-batch, attention implementation,
checkpoint interval) are kept out of the hash: the same run can resume on a different machine.

Every config checks its own values on construction (types, ranges, relations between its own
fields) and raises `ConfigValueError(field, message)`; the sweep reader adds the file and the TOML
key path. What needs several configs or the machine (a batch split over a mesh, task documents that
fit seq_len, data files that exist) is checked by the reader, scaling/sweep/reader.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from scaling.config_checks import (
    ConfigValueError, check, choice, entries, flag, from_dict, instance, integer, number, strings, task_name_problem,
    text,
)
from scaling.config_evals import EvalConfig
from scaling.config_facts import FactsConfig
from scaling.config_recipe import RecipeConfig
from scaling.config_synthetic import SyntheticConfig


class ConfigError(Exception):
    """A user mistake in a sweep file: one line naming the file, the key path and what was expected."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = str(file), key, message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


SCHEDULES = ("cosine", "wsd", "constant")
DTYPES = ("float32", "bfloat16", "float16")
TOKEN_DTYPES = ("uint16", "uint32")
MESH_PRESETS = ("dp", "fsdp", "fsdp_tp")
# The named axes of each preset's mesh, outermost first, and the axis that takes "the rest" of the
# devices when no axis size is -1. Tensor is innermost: its devices are neighbours (one host, NVLink).
MESH_AXES = {"dp": ("data",), "fsdp": ("fsdp",), "fsdp_tp": ("data", "fsdp", "tensor")}
MESH_REST_AXIS = {"dp": "data", "fsdp": "fsdp", "fsdp_tp": "fsdp"}
ATTENTION = ("xla", "dot_product_attention")
SOURCES = ("stdlib", "text", "tokens", "synthetic", "facts")
LAUNCHERS = ("local", "slurm", "ray")
GRIDS = ("kaplan", "isoflop")
TRACKERS = ("none", "wandb")  # [sweep] tracker: where evaluation rows go besides parquet

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
class ModelConfig:
    """Architecture only (GPT-2 style pre-LN decoder); see scaling/model.py."""

    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    vocab_size: int
    seq_len: int
    tie_embeddings: bool = True

    def __post_init__(self):
        check(self, n_layer=integer(ge=1), d_model=integer(ge=1), n_head=integer(ge=1))
        if self.d_model % self.n_head:
            raise ConfigValueError("n_head", f"{self.n_head} does not divide d_model={self.d_model} (expected a "
                                   "divisor of d_model)")
        check(self, d_ff=integer(ge=1), vocab_size=integer(ge=2), seq_len=integer(ge=2, le=MAX_SEQ_LEN),
              tie_embeddings=flag)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass(frozen=True)
class TaskSpec:
    """One task mixed into the training data and probed (scaling/data/tasks.py). `params` are the task
    class's own settings as sorted (key, value) pairs, so the spec stays hashable."""

    name: str
    kind: str
    weight: float = 1.0
    params: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        problem = task_name_problem(self.name)
        if problem:
            raise ConfigValueError("name", problem)
        check(self, kind=text("expected a task kind"), weight=number(gt=0))
        pairs = isinstance(self.params, tuple) and all(
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in self.params)
        # Sorted and distinct: two specs of the same task are equal (and hash alike).
        if not pairs or [k for k, _ in self.params] != sorted({k for k, _ in self.params}):
            raise ConfigValueError("params", f"expected (name, value) pairs sorted by name, got {self.params!r}")


@dataclass(frozen=True)
class TasksConfig:
    """Task documents mixed into the source at `rate` (a fraction of tokens), and their probes."""

    rate: float = 0.1
    tasks: tuple[TaskSpec, ...] = ()
    heldout_fraction: float = 0.1
    probe_items: int = 500
    seed: int = 0

    def __post_init__(self):
        check(self, rate=number(gt=0, le=0.9), heldout_fraction=number(gt=0, le=0.9),
              probe_items=integer(ge=1, le=MAX_PROBE_ITEMS), seed=integer(ge=0), tasks=entries(instance(TaskSpec)))
        if not self.tasks:  # blamed on the rate: it mixes in documents of no task
            raise ConfigValueError("rate", "no tasks: add a table per task, e.g. [data.tasks.addition]")
        names = [t.name for t in self.tasks]
        if len(set(names)) < len(names):  # a name is a record column
            raise ConfigValueError("tasks", f"expected distinct task names, got {names}")


@dataclass(frozen=True)
class DataConfig:
    source: str = "stdlib"
    paths: tuple[str, ...] = ()
    dtype: str = "uint16"
    val_fraction: float = 0.02
    data_seed: int = 0
    base_dir: str = "."
    synthetic: SyntheticConfig | None = None  # source "synthetic" only
    facts: FactsConfig | None = None  # source "facts" only (scaling/config_facts.py)
    tasks: TasksConfig | None = None
    unique_tokens: int | None = None  # repeated data: train on this many distinct tokens (scaling/data/batches.py)
    recipe: RecipeConfig | None = None  # sources mixed and filtered, instead of source and paths (config_recipe.py)

    def __post_init__(self):
        check(self, source=choice(SOURCES), paths=strings("expected a list of strings (files or globs)"),
              unique_tokens=integer(ge=1, optional=True))
        if self.source in ("text", "tokens") and not self.paths:
            raise ConfigValueError("paths", f"expected at least one path for source = {self.source!r}")
        check(self, dtype=choice(TOKEN_DTYPES), val_fraction=number(gt=0, le=0.5), data_seed=integer(ge=0),
              base_dir=text(), synthetic=instance(SyntheticConfig, optional=True),
              facts=instance(FactsConfig, optional=True), tasks=instance(TasksConfig, optional=True),
              recipe=instance(RecipeConfig, optional=True))
        if self.recipe is not None and (self.source != "stdlib" or self.paths):
            raise ConfigValueError("recipe", "a recipe's components are its sources: expected no source or paths")
        for name in ("synthetic", "facts"):
            if getattr(self, name) is not None and self.source != name:
                raise ConfigValueError(name, f'settings for source = "{name}", but source = {self.source!r}')
        if self.tasks is not None and self.source == "tokens":
            raise ConfigValueError("tasks", "task documents are bytes: they mix only into a byte-level source "
                                   '("stdlib", "text", "synthetic" or "facts")')


@dataclass(frozen=True)
class SamplingConfig:
    """Generation at the end of a run from validation prompts (scaling/science/sampling.py)."""

    prompts: int = 16
    prompt_tokens: int = 32
    new_tokens: int = 32
    # The strategies' settings: temperature sampling, top-k and top-p truncation (Fan et al. 2018;
    # Holtzman et al. 2020), beam width.
    temperature: float = 0.8
    top_k: int = 20
    top_p: float = 0.9
    beam: int = 4
    seed: int = 0

    def __post_init__(self):
        check(self, prompts=integer(ge=1, le=MAX_PROMPTS), prompt_tokens=integer(ge=1), new_tokens=integer(ge=1),
              temperature=number(gt=0), top_k=integer(ge=1), top_p=number(gt=0, le=1),
              beam=integer(ge=1, le=MAX_BEAM), seed=integer(ge=0))


def decay_steps(decay: float, steps: int) -> int:
    """The WSD cool-down length in updates: the last `decay` of the run, at least one."""
    return max(1, int(round(decay * steps)))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping; the schedule's warmup and decay are fractions of the run.

    `warmup_steps`, when set, replaces `warmup * steps`: the runs of a branched WSD group
    (scaling/sweep/branch_plan.py) share one warmup in absolute steps, so their stable phases are identical."""

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
    warmup_steps: int | None = None

    def __post_init__(self):
        check(self, lr=number(gt=0), weight_decay=number(ge=0),
              # Adam's moment averages need beta < 1: at 1 they never move from zero (Kingma & Ba 2015).
              beta1=number(ge=0, lt=1), beta2=number(ge=0, lt=1), eps=number(gt=0), grad_clip=number(ge=0),
              schedule=choice(SCHEDULES), warmup=number(ge=0, le=1), decay=number(ge=0, le=1),
              min_lr_ratio=number(ge=0, le=1), warmup_steps=integer(ge=0, optional=True))
        if self.schedule == "wsd" and self.warmup + self.decay > 1:
            raise ConfigValueError("decay", "warmup + decay must be at most 1 (fractions of the run)")


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
    # "xla": attention written out (einsum, float32 softmax); "dot_product_attention": cuDNN flash where
    # present. Same math up to float noise: out of run_id (like the mesh), a run may resume under the other.
    attention: str = "xla"
    eval_spacing: str | None = None  # None (log-spaced) or "linear": evenly spaced, to resolve a transition

    def __post_init__(self):
        check(self, tokens=integer(ge=1), batch_tokens=integer(ge=1), micro_batch=integer(ge=0),
              eval_points=integer(ge=1, le=MAX_EVAL_POINTS), eval_sequences=integer(ge=1, le=MAX_EVAL_SEQUENCES),
              checkpoint_every=integer(ge=0), keep_checkpoints=flag, label_smoothing=number(ge=0, le=1),
              entropy_coef=number(), param_dtype=choice(DTYPES), compute_dtype=choice(DTYPES),
              attention=choice(ATTENTION),
              eval_spacing=lambda value: None if value is None else choice(("log", "linear"))(value))
        if self.eval_spacing == "log":  # the default, however it is written: the same run_id
            object.__setattr__(self, "eval_spacing", None)

    def eval_steps(self, steps: int) -> list[int]:
        return eval_steps(steps, self.eval_points, self.eval_spacing or "log")

    def batch_size(self, seq_len: int) -> int:
        """Global batch in sequences."""
        return self.batch_tokens // seq_len

    def steps(self, seq_len: int) -> int:
        return self.tokens // (self.batch_size(seq_len) * seq_len)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh: presets dp, fsdp, fsdp_tp; scaling/training/sharding.py says what each axis splits.
    `size`: the devices the mesh uses (-1: all). An axis of -1 takes the rest of them; an axis left
    unset (None) is 1, but the preset's rest axis (`MESH_REST_AXIS`) is -1 when no axis is."""

    preset: str = "dp"
    size: int = -1
    data: int | None = None
    fsdp: int | None = None
    tensor: int | None = None

    def __post_init__(self):
        check(self, preset=choice(MESH_PRESETS), size=integer(ge=-1))
        if self.size == 0:
            raise ConfigValueError("size", "expected a positive device count or -1 (all devices)")
        names = MESH_AXES[self.preset]
        for axis in ("data", "fsdp", "tensor"):
            if getattr(self, axis) is None:
                continue
            check(self, **{axis: integer(ge=-1)})
            if axis not in names:
                raise ConfigValueError(axis, f"the {self.preset} preset has no {axis} axis (its axes: "
                                       f"{', '.join(names)}; " 'preset = "fsdp_tp" has data, fsdp and tensor)')
            if getattr(self, axis) == 0:
                raise ConfigValueError(axis, "expected a positive axis size or -1 (the rest of the devices)")
        rest = [axis for axis in names if getattr(self, axis) == -1]
        if len(rest) > 1:
            raise ConfigValueError(rest[1], f"only one axis may be -1 (the rest of the devices), got "
                                   f"{' and '.join(rest)}")

    def axis_sizes(self, n_devices: int) -> dict[str, int]:
        """{axis: size} for a machine with `n_devices` devices, in mesh order.

        Raises MeshError (with the key to blame) when the mesh does not fit the devices."""
        names = MESH_AXES[self.preset]
        given = {a: getattr(self, a) for a in names if getattr(self, a) is not None}
        rest = [a for a, v in given.items() if v == -1]  # at most one, and only the preset's axes: __post_init__
        if not rest and MESH_REST_AXIS[self.preset] not in given:
            rest = [MESH_REST_AXIS[self.preset]]
        sizes = {a: given.get(a, 1) for a in names}
        fixed = math.prod(v for a, v in sizes.items() if a not in rest)
        if self.size != -1:
            total = self.size
        elif rest:
            total = n_devices
        else:
            total = fixed
        if rest:
            if total % fixed:
                named = " x ".join(f"{a}={v}" for a, v in sizes.items() if a not in rest)
                where = f"the {total} available" if self.size == -1 else f"size = {total}"
                raise MeshError(rest[0] if rest[0] in given else "size",
                                f"{fixed} devices ({named}) do not divide {where}")
            sizes[rest[0]] = total // fixed
        elif fixed != total:
            raise MeshError("size", f"{' x '.join(map(str, sizes.values()))} = {fixed} devices, not size = {total}")
        if total > n_devices or n_devices % total:
            raise MeshError("size", f"{total} devices do not divide the {n_devices} available")
        return sizes

    def describe(self) -> str:
        """As written: `fsdp_tp(tensor=2)`; the resolved mesh is recorded per run (`mesh` column)."""
        parts = [f"{a}={getattr(self, a)}" for a in ("data", "fsdp", "tensor") if getattr(self, a) is not None]
        parts += [f"size={self.size}"] if self.size != -1 else []
        return f"{self.preset}({', '.join(parts)})"


class MeshError(ValueError):
    """A mesh that does not fit the devices; `axis` is the [mesh] key to blame."""

    def __init__(self, axis: str, message: str):
        self.axis = axis
        super().__init__(message)


@dataclass(frozen=True)
class SlurmConfig:
    """`[slurm]`: how the slurm launcher asks for resources (one job array per sweep, via submitit).

    One run gets `nodes` x `gpus_per_node` devices; a run spanning several GPUs runs one process per
    GPU (`tasks_per_node = gpus_per_node`), which `jax.distributed.initialize()` auto-detects."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    max_timeouts: int = 3  # requeues after hitting the time limit (preemptions requeue without limit)
    signal_delay_s: int = 120  # SIGUSR2 this long before the limit: time to requeue
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load, source .venv/bin/activate)
    folder: str | None = None  # submitit's logs and pickles; default <out_dir>/slurm

    def __post_init__(self):
        named = text("expected a non-empty string", optional=True)
        check(self, partition=named, account=named, qos=named, constraint=named, nodes=integer(ge=1),
              gpus_per_node=integer(ge=0), cpus_per_task=integer(ge=1, optional=True),
              mem_gb=number(gt=0, optional=True), time_min=integer(ge=1), max_timeouts=integer(ge=0),
              signal_delay_s=integer(ge=0), setup=strings("expected a list of shell lines (strings)"), folder=named)
        if self.signal_delay_s >= self.time_min * 60:
            raise ConfigValueError("signal_delay_s", f"must be shorter than the time limit ({self.time_min} min)")

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_node)

    def devices_per_run(self) -> int:
        return self.nodes * max(1, self.gpus_per_node)


@dataclass(frozen=True)
class RayConfig:
    """`[ray]`: an existing Ray cluster (`address`), and what one run (one task) asks for."""

    address: str = "auto"
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self):
        check(self, address=text('expected a cluster address such as "auto" or "ray://head:10001"'),
              num_cpus=number(ge=0), num_gpus=number(ge=0))

    def devices_per_run(self) -> int:
        return max(1, int(self.num_gpus))


# Fields that do not enter run_id: how a run executes, or where its settings came from, not what it computes.
_EXECUTION_ONLY = {"mesh", "sweep", "train.micro_batch", "train.checkpoint_every", "train.keep_checkpoints",
                   "train.attention", "data.base_dir", "lr_source", "stage", "overrides", "tracker",
                   "tracker_project"}
# Optional instruments, hashed only when set: a sweep without them keeps the run ids it had before
# they existed. `eval` (extra evaluation sets) does not change training but does change the records a
# run writes, so a run with other sets is another run, not one "already complete".
_HASHED_WHEN_SET = {"data.synthetic", "data.facts", "data.tasks", "sampling", "optim.warmup_steps",
                    "train.eval_spacing", "data.unique_tokens", "data.recipe",
                    "eval"}


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
    sampling: SamplingConfig | None = None
    eval: EvalConfig | None = None  # [eval]: extra evaluation sets (scaling/config_evals.py)
    lr_source: str = "fixed"  # optim.lr as the sweep file gives it, or "tuned": from `scaling tune`'s rule
    stage: str = "main"  # or "tune": a learning-rate tuning run, never in a grid's fits
    overrides: tuple[str, ...] = ()  # the command line's `--set KEY=VALUE`s (recorded; the values they set are hashed)
    tracker: str = "none"  # [sweep] tracker: evaluation rows also go there (scaling/training/tracker.py)
    tracker_project: str = "scaling"

    def __post_init__(self):
        check(self, sweep=text(), grid=choice(GRIDS), model=instance(ModelConfig), data=instance(DataConfig),
              optim=instance(OptimConfig), train=instance(TrainConfig), mesh=instance(MeshConfig),
              seed=integer(ge=0), flops_budget=number(gt=0, optional=True),
              sampling=instance(SamplingConfig, optional=True), eval=instance(EvalConfig, optional=True),
              lr_source=choice(("fixed", "tuned")),
              stage=choice(("main", "tune")), overrides=strings("expected KEY=VALUE strings"),
              tracker=choice(TRACKERS), tracker_project=text("expected a project name"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunSpec:
        """The spec whose `to_dict()` is `data`, also after a JSON round trip (a child process gets its
        spec so): `RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec`, run_id included."""
        return from_dict(cls, data)

    @property
    def batch_size(self) -> int:
        return self.train.batch_size(self.model.seq_len)

    @property
    def steps(self) -> int:
        return self.train.steps(self.model.seq_len)

    @property
    def run_id(self) -> str:
        science = self.to_dict()
        for dotted in _EXECUTION_ONLY | _HASHED_WHEN_SET:  # disjoint: left out always, or when unset
            node = science
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node[p]
            if dotted in _EXECUTION_ONLY or node.get(leaf) is None:
                node.pop(leaf, None)
        digest = hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:8]
        m = self.model
        return f"L{m.n_layer}-d{m.d_model}-t{_short(self.train.tokens)}-s{self.seed}-{digest}"

    def labels(self) -> dict[str, str]:
        """`key=value` labels that `--only` patterns match against."""
        model, train = self.model, self.train
        out = {"n_layer": model.n_layer, "d_model": model.d_model, "n_head": model.n_head, "d_ff": model.d_ff,
               "tokens": train.tokens, "seed": self.seed, "lr": self.optim.lr, "grid": self.grid,
               "label_smoothing": train.label_smoothing, "entropy_coef": train.entropy_coef}
        out.update({"budget": f"{self.flops_budget:.3g}"} if self.flops_budget is not None else {})
        out.update({"unique_tokens": self.data.unique_tokens} if self.data.unique_tokens is not None else {})
        out.update({"recipe": self.data.recipe.name} if self.data.recipe is not None else {})
        return {k: str(v) for k, v in out.items()}


def _short(x: float) -> str:
    """1000000 -> '1e6', 3000000 -> '3e6', 2500000 -> '2.5e6'."""
    if x <= 0:
        return str(x)
    exp = int(math.floor(math.log10(x)))
    return f"{x / 10**exp:.3g}e{exp}"


def eval_steps(total_steps: int, points: int, spacing: str = "log") -> list[int]:
    """Evaluation steps from 1 to the last step, log-spaced (a learning curve over decades) or evenly
    spaced ("linear": the same resolution all along training); the last step always included."""
    space = np.geomspace if spacing == "log" else np.linspace
    grid = np.unique(np.round(space(1, total_steps, num=max(points, 1))).astype(int))
    return sorted(set(int(s) for s in grid) | {total_steps})
