"""The sweep as a user runs it: through the `scaling` command, with kills and reruns."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from conftest import REPO, tiny_sweep
from scaling import records
from scaling.sweep.reader import load_sweep


def scaling(*args, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "scaling", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kw)


def summaries(out):
    return {p.parent.name: pq.read_table(p).to_pylist()[0] for p in sorted(out.glob("runs/*/summary.parquet"))}


def test_smoke_sweep_end_to_end_then_rerun_skips(tmp_path):
    proc = scaling("sweep", REPO / "sweeps" / "smoke.toml", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "results" / "smoke"
    first = summaries(out)
    assert len(first) == 3 and all(s["status"] == "complete" for s in first.values())
    assert "complete 3" in proc.stdout
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    t0 = time.perf_counter()
    again = scaling("sweep", REPO / "sweeps" / "smoke.toml", "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and "skipped (already done) 3" in again.stdout
    assert time.perf_counter() - t0 < 30
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes  # nothing retrained
    status = scaling("status", out, cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.count("complete") >= 3


def test_status_of_a_sweep_file_lists_every_run_of_its_grid(tmp_path, capsys):
    from scaling.cli import main
    from scaling.records import write_failure
    path = tiny_sweep(tmp_path, more_models=", { n_layer = 2, d_model = 32 }")
    sweep = load_sweep(path)
    write_failure(sweep.runs[1], sweep.out_dir, "failed", "out of memory")
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "failed 1, pending 1" in out
    assert sweep.runs[0].run_id in out and "pending" in out.split(sweep.runs[0].run_id)[1].splitlines()[0]
    assert main(["status", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: no such file" in capsys.readouterr().err


def test_dry_run_and_only(tmp_path):
    sweep = tiny_sweep(tmp_path, more_models=", { n_layer = 2, d_model = 32 }")
    proc = scaling("sweep", sweep, "--dry-run", "--only", "d_model=32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "L2-d32" in proc.stdout and "L1-d16" not in proc.stdout
    assert not (tmp_path / "out").exists()
    none = scaling("sweep", sweep, "--dry-run", "--only", "d_model=999", cwd=tmp_path)
    assert none.returncode == 2 and len(none.stderr.strip().splitlines()) == 1 and "--only" in none.stderr


def test_sigkill_mid_run_then_rerun_resumes_to_the_same_losses(tmp_path):
    sweep_path = tiny_sweep(tmp_path, tokens=128 * 120)
    spec = load_sweep(sweep_path, device_count=1).runs[0]
    ckpt = records.run_dir(tmp_path / "out", spec.run_id) / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "scaling", "sweep", str(sweep_path), "-q"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not any(p.name.isdigit() and int(p.name) >= 20 for p in
                                             (ckpt.iterdir() if ckpt.exists() else [])):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    history = pq.read_table(records.run_dir(tmp_path / "out", spec.run_id) / "history.parquet")
    assert max(history.column("step").to_pylist()) < spec.steps, "the kill came too late to test resume"
    rerun = scaling("sweep", sweep_path, "-q", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resumed = summaries(tmp_path / "out")[spec.run_id]
    # The same run uninterrupted, launched the same way (the same CPU devices: scaling/launch/cpu.py).
    (tmp_path / "ref").mkdir()
    ref_path = tiny_sweep(tmp_path / "ref", tokens=128 * 120)
    assert scaling("sweep", ref_path, "-q", cwd=tmp_path).returncode == 0
    whole = summaries(tmp_path / "ref" / "out")[spec.run_id]
    assert resumed["status"] == "complete"
    assert (resumed["val_loss"], resumed["train_loss"]) == (whole["val_loss"], whole["train_loss"])


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep_path = tiny_sweep(tmp_path, more_models=", { n_layer = 1, d_model = 32 }")
    sweep = load_sweep(sweep_path, device_count=1)
    broken = sweep.runs[0]
    # A damaged checkpoint for one run: that run fails with a clear error, the other completes.
    ckpt = records.run_dir(sweep.out_dir, broken.run_id) / "checkpoints" / "10"
    ckpt.mkdir(parents=True)
    (ckpt / "_CHECKPOINT_METADATA").write_text("{not json")
    proc = scaling("sweep", sweep_path, "-q", cwd=tmp_path)
    assert proc.returncode == 1
    assert "failed 1" in proc.stdout and broken.run_id in proc.stdout
    result = summaries(tmp_path / "out")
    assert result[broken.run_id]["status"] == "failed" and result[broken.run_id]["error"]
    assert result[sweep.runs[1].run_id]["status"] == "complete"


def test_top_level_help_and_version(capsys):
    """`scaling -h` lists every subcommand with its own sentence; `--version` names the package version."""
    import importlib.metadata

    import pytest

    from scaling.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["-h"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    sub = next(a for a in parser._actions if a.dest == "command")
    sentences = [a.help for a in sub._choices_actions]
    assert len(set(sentences)) == len(sentences) == len(sub.choices)
    for name in sub.choices:
        assert f"    {name} " in out
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"scaling {importlib.metadata.version('scaling')}"
