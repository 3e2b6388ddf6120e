"""Configs check their own values on construction, the sweep reader takes their defaults from the
dataclass fields, and a run spec survives a JSON round trip (a child process gets its spec so)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from scaling.config import (
    ConfigValueError, DataConfig, MeshConfig, ModelConfig, OptimConfig, RayConfig, RunSpec, SamplingConfig,
    SlurmConfig, SyntheticConfig, TasksConfig, TaskSpec, TrainConfig,
)
from scaling.sweep.grids import ShapeRule
from scaling.sweep.reader import SweepConfig, load_sweep

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "sweeps").glob("*.toml"))

MODEL = dict(n_layer=2, d_model=64, n_head=2, d_ff=256, vocab_size=256, seq_len=128)
COPY = TaskSpec("copy", "copy", params=(("max_len", 6), ("min_len", 3)))
TEXT = dict(source="text", paths=("a.txt",))

# (config, valid keyword arguments, the field made bad, its bad value, what the message must say)
REFUSED = [
    (ModelConfig, MODEL, "n_layer", 0, "expected an integer >= 1, got 0"),
    (ModelConfig, MODEL, "d_model", 64.0, "expected an integer, got 64.0"),
    (ModelConfig, MODEL, "n_head", 3, "3 does not divide d_model=64 (expected a divisor of d_model)"),
    (ModelConfig, MODEL, "seq_len", 1 << 17, "expected an integer <= 65,536, got 131,072"),
    (ModelConfig, MODEL, "tie_embeddings", "yes", "expected true or false, got 'yes'"),
    (SyntheticConfig, {}, "alphabet", 1, "expected an integer >= 2, got 1"),
    (SyntheticConfig, {}, "orders", (1, 9), "expected a non-empty list of orders in [1, 4], got [1, 9]"),
    (SyntheticConfig, {}, "orders", [1, 2], "expected a list, got [1, 2]"),
    (SyntheticConfig, dict(alphabet=255, orders=(2,)), "orders", (3,), "alphabet^order = 255^3 contexts is over 65536"),
    (SyntheticConfig, {}, "end_prob", 1.0, "expected a number < 1, got 1.0"),
    (TaskSpec, dict(name="copy", kind="copy"), "name", "Copy", "a task name is lowercase letters, digits and _"),
    (TaskSpec, dict(name="copy", kind="copy"), "weight", 0.0, "expected a number > 0, got 0.0"),
    (TaskSpec, dict(name="copy", kind="copy"), "params", (("min_len", 3), ("max_len", 6)), "sorted by name"),
    (TasksConfig, dict(tasks=(COPY,)), "rate", 0.95, "expected a number <= 0.9, got 0.95"),
    (TasksConfig, dict(tasks=(COPY,)), "probe_items", 10**6, "expected an integer <= 100,000"),
    (TasksConfig, dict(tasks=(COPY,)), "tasks", (COPY, COPY), "expected distinct task names"),
    (DataConfig, {}, "source", "web", "expected one of stdlib, text, tokens, synthetic, facts, got 'web'"),
    (DataConfig, TEXT, "paths", (), "expected at least one path for source = 'text'"),
    (DataConfig, TEXT, "paths", "a.txt", "expected a list of strings (files or globs), got 'a.txt'"),
    (DataConfig, {}, "val_fraction", 0.0, "expected a number > 0, got 0.0"),
    (DataConfig, {}, "synthetic", SyntheticConfig(), 'settings for source = "synthetic", but source = \'stdlib\''),
    (SamplingConfig, {}, "beam", 65, "expected an integer <= 64, got 65"),
    (SamplingConfig, {}, "top_p", 0.0, "expected a number > 0, got 0.0"),
    (OptimConfig, {}, "lr", 0.0, "expected a number > 0, got 0.0"),
    (OptimConfig, {}, "beta2", 1.0, "expected a number < 1, got 1.0"),
    (OptimConfig, {}, "schedule", "linear", "expected one of cosine, wsd, constant, got 'linear'"),
    (OptimConfig, dict(schedule="wsd", warmup=0.5), "decay", 0.6, "warmup + decay must be at most 1"),
    (OptimConfig, {}, "warmup_steps", -1, "expected an integer >= 0, got -1"),
    (TrainConfig, dict(tokens=10**6, batch_tokens=8192), "tokens", 0, "expected an integer >= 1, got 0"),
    (TrainConfig, dict(tokens=10**6, batch_tokens=8192), "eval_points", 10**9, "expected an integer <= 10,000"),
    (TrainConfig, dict(tokens=10**6, batch_tokens=8192), "label_smoothing", 1.5, "expected a number <= 1, got 1.5"),
    (TrainConfig, dict(tokens=10**6, batch_tokens=8192), "param_dtype", "fp8", "expected one of float32, bfloat16"),
    (MeshConfig, {}, "size", 0, "expected a positive device count or -1 (all devices)"),
    (MeshConfig, {}, "tensor", 2, "the dp preset has no tensor axis"),
    (MeshConfig, dict(preset="fsdp_tp", data=-1), "tensor", -1, "only one axis may be -1"),
    (SlurmConfig, {}, "nodes", 0, "expected an integer >= 1, got 0"),
    (SlurmConfig, {}, "partition", " ", "expected a non-empty string"),
    (SlurmConfig, dict(time_min=1, signal_delay_s=30), "signal_delay_s", 90, "shorter than the time limit (1 min)"),
    (SlurmConfig, {}, "setup", "module load cuda", "expected a list of shell lines (strings)"),
    (RayConfig, {}, "num_gpus", -1.0, "expected a number >= 0, got -1.0"),
    (RayConfig, {}, "address", "", 'expected a cluster address such as "auto"'),
    (ShapeRule, {}, "head_dim", 0, "expected an integer >= 1, got 0"),
    (ShapeRule, {}, "seq_len", 1, "expected an integer >= 2, got 1"),  # the model's own check, under its name
    (ShapeRule, {}, "tie_embeddings", 1, "expected true or false, got 1"),
]


@pytest.mark.parametrize("cls,valid,name,bad,expected", REFUSED,
                         ids=[f"{c[0].__name__}.{c[2]}={c[3]!r}"[:60] for c in REFUSED])
def test_a_config_refuses_a_bad_value_on_construction(cls, valid, name, bad, expected):
    cls(**valid)  # the rest is fine
    with pytest.raises(ConfigValueError) as e:
        cls(**{**valid, name: bad})
    assert e.value.field == name
    assert expected in e.value.message, e.value.message


def test_an_entry_of_a_tuple_is_blamed_by_its_index():
    with pytest.raises(ConfigValueError) as e:
        SyntheticConfig(orders=(1, "2"))
    assert (e.value.field, e.value.message) == ("orders[1]", "expected an integer, got '2'")


def test_dataclasses_replace_checks_too():
    with pytest.raises(ConfigValueError) as e:
        dataclasses.replace(OptimConfig(), schedule="wsd", warmup=0.9)
    assert e.value.field == "decay"


def _spec(**changes) -> RunSpec:
    fields = dict(sweep="s", grid="kaplan", model=ModelConfig(**MODEL), data=DataConfig(), optim=OptimConfig(),
                  train=TrainConfig(tokens=10**6, batch_tokens=8192))
    return RunSpec(**{**fields, **changes})


@pytest.mark.parametrize("name,bad,expected", [
    ("grid", "chinchilla", "expected one of kaplan, isoflop"),
    ("model", MODEL, "expected a ModelConfig, got dict"),
    ("seed", -1, "expected an integer >= 0, got -1"),
    ("flops_budget", 0.0, "expected a number > 0, got 0.0"),
])
def test_a_run_spec_refuses_bad_parts(name, bad, expected):
    _spec()
    with pytest.raises(ConfigValueError) as e:
        _spec(**{name: bad})
    assert e.value.field == name and expected in e.value.message


def test_a_sweep_config_refuses_branch_with_pack():
    with pytest.raises(ConfigValueError) as e:
        SweepConfig(name="s", path="s.toml", out_dir="results/s", runs=(_spec(),), branch=True, pack=True)
    assert e.value.field == "branch" and "not both branch = true and [sweep] pack = true" in e.value.message
    with pytest.raises(ConfigValueError) as e:
        SweepConfig(name="../x", path="s.toml", out_dir="results/s", runs=())
    assert e.value.field == "name" and "a path separator in the name" in e.value.message


# ------------------------------------------------------------------------------------------------
# Defaults are the dataclasses' own: a sweep file that sets nothing gets them.


def test_a_file_that_sets_nothing_gets_the_dataclass_defaults(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[data]\nsource = "synthetic"\n[data.synthetic]\n[data.tasks.copy]\n[sampling]\n[mesh]\n'
                    "[grid]\nmodels = [{ n_layer = 2, d_model = 64 }]\ntokens = [1e5]\n")
    sweep = load_sweep(path)
    (spec,) = sweep.runs
    assert spec.optim == OptimConfig() and spec.mesh == MeshConfig() and spec.sampling == SamplingConfig()
    assert spec.data.synthetic == SyntheticConfig()
    assert (spec.data.tasks.rate, spec.data.tasks.probe_items) == (TasksConfig.rate, TasksConfig.probe_items)
    assert spec.data.tasks.tasks[0].weight == TaskSpec.weight
    assert spec.train == TrainConfig(tokens=100_000, batch_tokens=8192)
    assert spec.model == ShapeRule().make(2, 64) and spec.model.tie_embeddings is ModelConfig.tie_embeddings
    assert (spec.data.val_fraction, spec.data.dtype, spec.seed) == (DataConfig.val_fraction, DataConfig.dtype, 0)
    assert sweep.slurm == SlurmConfig() and sweep.ray == RayConfig()
    assert (sweep.launcher, sweep.max_parallel, sweep.pack, sweep.pack_size) == ("local", 1, False, 8)


# ------------------------------------------------------------------------------------------------
# The round trip: to_dict -> JSON -> from_dict gives the same spec, and so the same run_id.


def _round_trip(spec: RunSpec) -> RunSpec:
    return RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_run_survives_a_json_round_trip(path):
    runs = load_sweep(path).runs
    assert runs
    for spec in runs:
        again = _round_trip(spec)
        assert again == spec and again.run_id == spec.run_id
        hash(again)  # tuples again, not lists: a frozen spec stays hashable


INSTRUMENTED = """
[data]
source = "synthetic"
seq_len = 64
[data.synthetic]
orders = [1, 2]
alphabet = 8
[data.tasks]
rate = 0.2
[data.tasks.copy]
min_len = 2
max_len = 5
[data.tasks.add]
kind = "addition"
format = "reversed"
weight = 2.0
[sampling]
prompts = 4
prompt_tokens = 16
new_tokens = 16
[mesh]
preset = "fsdp_tp"
tensor = 2
[schedule]
kind = "wsd"
branch = true
[train]
batch_tokens = 2048
[grid]
models = [{ n_layer = 1, d_model = 32 }]
tokens = [1e5, 4e5]
[isoflop]
budgets = [3e11]
models = [{ n_layer = 1, d_model = 32 }, { n_layer = 2, d_model = 32 }, { n_layer = 2, d_model = 64 },
          { n_layer = 3, d_model = 64 }]
"""


def test_a_run_with_every_instrument_survives_a_json_round_trip(tmp_path):
    path = tmp_path / "instruments.toml"
    path.write_text(INSTRUMENTED)
    runs = load_sweep(path).runs
    # Every optional part is set in some run, so the round trip has each to restore.
    assert all(s.data.synthetic and s.data.tasks and s.sampling and s.mesh.tensor for s in runs)
    assert any(s.flops_budget for s in runs) and any(s.optim.warmup_steps is not None for s in runs)
    assert {t.params for s in runs for t in s.data.tasks.tasks} >= {(("max_len", 5), ("min_len", 2))}
    for spec in runs:
        again = _round_trip(spec)
        assert again == spec and again.run_id == spec.run_id
        assert type(again.data.synthetic.orders) is tuple and type(again.data.tasks.tasks[0].params[0]) is tuple


def test_from_dict_refuses_a_key_it_does_not_know():
    data = _spec().to_dict()
    data["optim"]["momentum"] = 0.9
    with pytest.raises(ConfigValueError) as e:
        RunSpec.from_dict(data)
    assert e.value.field == "momentum" and "not a field of OptimConfig" in e.value.message


def test_from_dict_checks_the_values_it_rebuilds():
    data = _spec().to_dict()
    data["model"]["n_head"] = 3
    with pytest.raises(ConfigValueError) as e:
        RunSpec.from_dict(data)
    assert e.value.field == "n_head"
