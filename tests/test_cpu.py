"""One CPU device per core (scaling/launch/cpu.py): how many each run gets, and that a user's choice wins."""

import dataclasses

import pytest

from conftest import tiny_sweep
from scaling.launch import cpu
from scaling.sweep.reader import load_sweep


@pytest.fixture
def specs(tmp_path):
    runs = load_sweep(tiny_sweep(tmp_path), device_count=1).runs
    assert {s.batch_size for s in runs} == {8}  # 8 sequences a step
    return runs


@pytest.mark.parametrize("cores, at_once, expected", [
    (1, 1, 1), (2, 1, 2), (2, 2, 1), (4, 1, 4), (8, 2, 4),
    (6, 1, 4),  # a batch of 8 rows does not split over 6 or 5 devices
    (16, 1, 8),  # nor over more devices than it has rows
])
def test_each_run_gets_its_share_of_the_cores_that_its_batch_splits_over(specs, cores, at_once, expected):
    assert cpu.devices_per_run(specs, at_once, cores=cores) == expected


def test_a_mesh_that_fixes_its_size_is_respected(specs):
    fixed = [dataclasses.replace(s, mesh=dataclasses.replace(s.mesh, size=2)) for s in specs]
    assert cpu.devices_per_run(fixed, 1, cores=3) == 2  # 3 devices do not hold a mesh of size 2
    assert cpu.devices_per_run(fixed, 1, cores=4) == 4


def test_the_users_device_count_wins(specs, monkeypatch):
    monkeypatch.delenv(cpu.ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(cpu, "cores_available", lambda: 2)
    assert cpu.run_env(specs, 1) == {cpu.ENV: "2"}
    assert cpu.run_env(specs, 2) == {cpu.ENV: "1"}
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert cpu.run_env(specs, 1) == {}
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(cpu.ENV, "1")
    assert cpu.run_env(specs, 1) == {}
