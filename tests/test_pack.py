"""Packed runs (scaling/training/pack.py): runs that differ only in seed or scalar hyper-parameters train in one
vmapped program, and each writes exactly the records it would write alone."""

import dataclasses
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, write_sweep
from scaling import cli, records
from scaling.launch import cpu
from scaling.sweep.pack_plan import plan_packs
from scaling.training.pack import PackError, check_packable
from scaling.training.run import run_pack_and_record, train_pack
from scaling.training.run import Halt, train_run
from scaling.sweep.reader import load_sweep

# 12 steps of 8 sequences; evaluations (and checkpoints) at steps 1, 3 and 12.
SWEEP = """
[sweep]
name = "packed"
out_dir = "{out}"
{sweep_extra}
[data]
seq_len = 16
[model]
head_dim = 8
[train]
batch_tokens = 128
eval_points = 3
eval_sequences = 8
checkpoint_every = 0
[grid]
models = [{{ n_layer = 1, d_model = 16 }}]
tokens = [1536]
{axes}
"""


def pack_sweep(tmp_path, sweep_extra="", axes="", name="packed.toml"):
    return write_sweep(tmp_path / name, SWEEP.format(out=tmp_path / "out", sweep_extra=sweep_extra, axes=axes))


def members(spec):
    """Four runs of one shape that differ in seed, learning rate and weight decay, and objective."""
    r = dataclasses.replace
    return [spec, r(spec, seed=1), r(spec, optim=r(spec.optim, lr=1e-2, weight_decay=0.0)),
            r(spec, train=r(spec.train, label_smoothing=0.1, entropy_coef=0.05))]


def history(out, spec):
    return pq.read_table(records.run_dir(out, spec.run_id) / "history.parquet").to_pandas()


@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """The four runs trained alone: what their packed records must equal."""
    tmp = tmp_path_factory.mktemp("lone")
    specs = members(load_sweep(pack_sweep(tmp), device_count=1).runs[0])
    for spec in specs:
        assert train_run(spec, tmp / "out")["status"] == "complete"
    return specs, tmp / "out"


def assert_same_losses(packed_out, lone_out, spec):
    a, b = history(packed_out, spec), history(lone_out, spec)
    assert list(a["step"]) == list(b["step"]) == [1, 3, 12]
    for column in ("train_loss", "val_loss", "val_entropy", "val_ece", "grad_norm", "lr"):
        np.testing.assert_allclose(a[column], b[column], rtol=0, atol=1e-5, err_msg=column)


def test_packed_runs_write_the_records_of_lone_runs(lone, tmp_path):
    specs, lone_out = lone
    assert len({s.run_id for s in specs}) == 4
    out = tmp_path / "out"
    results = train_pack(specs, out)
    assert [r["status"] for r in results] == ["complete"] * 4
    for spec in specs:
        assert_same_losses(out, lone_out, spec)
        packed, alone = records.run_dir(out, spec.run_id), records.run_dir(lone_out, spec.run_id)
        for name in ("history.parquet", "summary.parquet", "calibration.parquet"):
            assert pq.read_schema(packed / name) == pq.read_schema(alone / name), name
        summary = pq.read_table(packed / "summary.parquet").to_pylist()[0]
        assert summary["pack_size"] == 4 and summary["seed"] == spec.seed and summary["tokens_per_second"] > 0
        assert pq.read_table(alone / "summary.parquet").to_pylist()[0]["pack_size"] == 1
        config = json.loads((packed / "config.json").read_text())
        assert config["pack"] == [s.run_id for s in specs] and config["spec"] == json.loads(
            (alone / "config.json").read_text())["spec"]
        assert not (packed / "checkpoints").exists()
    # The members really differ: a pack that mixed them up could not match all four lone runs.
    finals = [history(out, s)["val_loss"].iloc[-1] for s in specs]
    assert len(set(finals)) == 4


def test_a_member_that_diverges_is_recorded_as_alone_and_the_others_go_on(lone, tmp_path):
    specs, lone_out = lone
    r = dataclasses.replace
    bad = r(specs[0], optim=r(specs[0].optim, lr=1e30))  # parameters overflow: the loss turns non-finite
    alone = train_run(bad, tmp_path / "alone")
    assert alone["status"] == "diverged"
    results = train_pack([specs[0], bad, specs[1]], tmp_path / "out")
    assert [x["status"] for x in results] == ["complete", "diverged", "complete"]
    assert (results[1]["error"], results[1]["step"]) == (alone["error"], alone["step"])
    summary = pq.read_table(records.run_dir(tmp_path / "out", bad.run_id) / "summary.parquet").to_pylist()[0]
    assert summary["status"] == "diverged" and summary["error"] == alone["error"]
    assert list(history(tmp_path / "out", bad)["step"]) == list(history(tmp_path / "alone", bad)["step"])
    for spec in (specs[0], specs[1]):
        assert_same_losses(tmp_path / "out", lone_out, spec)


PACK_ON_TWO_DEVICES = """
import dataclasses, sys
import jax
from scaling.training.run import train_pack
from scaling.sweep import load_sweep
assert jax.device_count() == 2, jax.devices()
spec = load_sweep(sys.argv[1], device_count=2).runs[0]
r = dataclasses.replace
specs = [spec, r(spec, seed=1), r(spec, optim=r(spec.optim, lr=1e-2, weight_decay=0.0)),
         r(spec, train=r(spec.train, label_smoothing=0.1, entropy_coef=0.05))]
assert [x["status"] for x in train_pack(specs, sys.argv[2])] == ["complete"] * 4
"""


def test_a_pack_splits_its_batch_over_two_devices_and_matches_lone_runs(lone, tmp_path):
    """The CPU's one-device-per-core mesh (scaling/launch/cpu.py): each member's rows split over the devices,
    gradients summed once per step; the records still equal the lone runs' on one device."""
    specs, lone_out = lone
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run([sys.executable, "-c", PACK_ON_TWO_DEVICES, str(pack_sweep(tmp_path)), str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for spec in specs:
        assert_same_losses(tmp_path / "out", lone_out, spec)
        assert pq.read_table(records.run_dir(tmp_path / "out", spec.run_id) / "summary.parquet").to_pylist()[0][
            "n_devices"] == 2


def test_a_killed_pack_resumes_and_finished_runs_are_skipped(lone, tmp_path):
    specs, lone_out = lone
    out = tmp_path / "out"
    with pytest.raises(Halt):
        run_pack_and_record(specs[:3], out, halt_at=3)
    assert all(max(history(out, s)["step"]) == 3 for s in specs[:3])
    # Three runs resume from step 3 as a pack; the fourth starts fresh, alone.
    results = run_pack_and_record(specs, out)
    assert [r["status"] for r in results] == ["complete"] * 4
    for spec in specs:
        assert_same_losses(out, lone_out, spec)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again = run_pack_and_record(specs, out)
    assert [r["status"] for r in again] == ["complete"] * 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes
    lock = records.RunLock(records.run_dir(tmp_path / "other", specs[0].run_id))
    assert lock.acquire()
    try:
        held = run_pack_and_record(specs[:1], tmp_path / "other")
    finally:
        lock.release()
    assert held[0]["status"] == "locked"


def test_sweep_with_pack_trains_its_runs_in_one_process(tmp_path):
    sweep = pack_sweep(tmp_path, sweep_extra="seeds = [0, 1]\npack = true",
                       axes='[axes]\n"train.label_smoothing" = [0.0, 0.1]')
    proc = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(sweep), "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "complete 4" in proc.stdout
    runs = load_sweep(sweep, device_count=1).runs
    packs = {}
    for spec in runs:
        path = records.run_dir(tmp_path / "out", spec.run_id)
        summary = pq.read_table(path / "summary.parquet").to_pylist()[0]
        assert summary["status"] == "complete"
        pack = tuple(json.loads((path / "config.json").read_text())["pack"])
        assert summary["pack_size"] == len(pack) and spec.run_id in pack
        # The launcher gave the pack's process one CPU device per core (scaling/launch/cpu.py).
        assert summary["n_devices"] == cpu.devices_per_run(runs, 1)
        packs[pack] = packs.get(pack, 0) + 1
    assert list(packs.values()) == [4]  # one pack, one process: the sweep ran 4 runs at once with max_parallel 1
    again = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(sweep), "--quiet"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "skipped (already done) 4" in again.stdout


def test_plan_packs_groups_runs_that_compute_alike(tmp_path):
    spec = load_sweep(pack_sweep(tmp_path), device_count=1).runs[0]
    r = dataclasses.replace
    same = [r(spec, seed=s) for s in range(7)]
    other_data = r(spec, data=r(spec.data, data_seed=1))
    other_shape = r(spec, model=r(spec.model, d_model=32, n_head=4))
    other_schedule = r(spec, optim=r(spec.optim, schedule="wsd"))
    packs = plan_packs(same + [other_data, other_shape, other_schedule], pack_size=3)
    assert [len(p) for p in packs] == [3, 2, 2, 1, 1, 1]
    assert [p[0] for p in packs[3:]] == [other_data, other_shape, other_schedule]
    fsdp = [r(x, mesh=r(x.mesh, preset="fsdp")) for x in same[:2]]
    with pytest.raises(PackError, match="dp mesh preset only"):
        check_packable(fsdp, SimpleNamespace(size=2))
    check_packable(fsdp, SimpleNamespace(size=1))
    check_packable(same[:2], SimpleNamespace(size=2))
    with pytest.raises(PackError, match="differ in more"):
        check_packable([spec, other_shape], SimpleNamespace(size=1))


@pytest.mark.parametrize("line, key, expected", [
    ('pack = "yes"', "sweep.pack", "expected true or false"),
    ("pack_size = 0", "sweep.pack_size", "expected an integer >= 1, got 0"),
    ("pack_size = 2.5", "sweep.pack_size", "expected an integer, got 2.5"),
])
def test_bad_pack_keys_are_one_line_exit_2(line, key, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_device_count", lambda: 1)
    sweep = pack_sweep(tmp_path, sweep_extra=line)
    assert cli.main(["sweep", str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{sweep}: {key}: {expected}" in err
    assert not (tmp_path / "out").exists()


def test_a_member_whose_checkpoint_cannot_be_read_fails_and_the_other_trains_as_alone(lone, tmp_path):
    """The first member of a pack of two has a damaged checkpoint: it is recorded failed, and the
    second, left alone, trains with its own learning rate and seed: its lone run's losses."""
    specs, lone_out = lone
    out = tmp_path / "out"
    broken = records.run_dir(out, specs[0].run_id) / "checkpoints" / "10"
    broken.mkdir(parents=True)
    (broken / "_CHECKPOINT_METADATA").write_text("{not json")
    results = train_pack(specs[:2], out)
    assert results[0]["status"] == "failed" and "cannot be read" in results[0]["error"]
    assert results[1]["status"] == "complete"
    assert_same_losses(out, lone_out, specs[1])
