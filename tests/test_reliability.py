"""Records that nothing can spoil: a finished run is never touched again, a full or read-only disk
fails one run (not the sweep), damaged records are skipped with a warning, and SIGINT / SIGTERM stop
a sweep at its runs' checkpoints with one line saying how to resume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, tiny_sweep
from scaling import records
from scaling.sweep.reader import load_sweep

SHIPPED_RUN = "L1-d16-t4e6-s0-1e1faab3"  # the smallest size's longest run of the shipped kaplan sweep


def scaling(*args, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "scaling", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kw)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, but the runs' empty lock files (ignored by git)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture
def shipped_copy(tmp_path) -> Path:
    """A project folder holding the kaplan sweep file, its saved learning-rate rule (it says
    lr = "tuned") and one of its shipped, complete runs."""
    (tmp_path / "sweeps").mkdir()
    shutil.copy(REPO / "sweeps" / "kaplan.toml", tmp_path / "sweeps")
    (tmp_path / "results" / "kaplan" / "tune").mkdir(parents=True)
    shutil.copy(REPO / "results" / "kaplan" / "tune" / "lr_rule.json", tmp_path / "results" / "kaplan" / "tune")
    run = tmp_path / "results" / "kaplan" / "runs" / SHIPPED_RUN
    shutil.copytree(REPO / "results" / "kaplan" / "runs" / SHIPPED_RUN, run)
    return tmp_path


# ------------------------------------------------------------------------------------------------
# 1. A complete run is never retrained or rewritten


def test_scaling_run_on_a_complete_run_says_so_exits_0_and_changes_no_byte(shipped_copy):
    """What a SLURM requeue or a Ray retry of a finished array task does."""
    before = snapshot(shipped_copy / "results")
    proc = scaling("run", "sweeps/kaplan.toml", "--run-id", SHIPPED_RUN, cwd=shipped_copy)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{SHIPPED_RUN} is already complete: nothing to do"
    assert snapshot(shipped_copy / "results") == before


def test_a_run_found_complete_under_its_lock_is_left_alone_lone_or_packed(shipped_copy):
    """A second sweep process that picked the run before the first one completed it: the status is
    read again under the lock, by the lone path and by the packed one."""
    from scaling.training.run import run_pack_and_record
    from scaling.training.run import run_and_record
    sweep = load_sweep(shipped_copy / "sweeps" / "kaplan.toml")
    spec = next(s for s in sweep.runs if s.run_id == SHIPPED_RUN)
    out_dir = shipped_copy / "results" / "kaplan"
    before = snapshot(out_dir)
    result = run_and_record(spec, out_dir)
    assert result["status"] == "complete" and result["already"]
    assert [r["status"] for r in run_pack_and_record([spec], out_dir)] == ["complete"]
    assert snapshot(out_dir) == before


def test_two_sweep_processes_on_one_sweep_file_complete_every_run_once(tmp_path):
    path = tiny_sweep(tmp_path, more_models=", { n_layer = 1, d_model = 32 }, { n_layer = 2, d_model = 16 }")
    procs = [subprocess.Popen([sys.executable, "-m", "scaling", "sweep", str(path), "-q"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    out = tmp_path / "out"
    statuses = [pq.read_table(p).column("status")[0].as_py() for p in sorted(out.glob("runs/*/summary.parquet"))]
    assert statuses == ["complete"] * 3
    assert not list(out.glob("runs/*/error.txt"))
    before = snapshot(out)
    again = scaling("sweep", path, "-q", cwd=tmp_path)
    assert again.returncode == 0 and "skipped (already done) 3" in again.stdout
    assert snapshot(out) == before


# ------------------------------------------------------------------------------------------------
# 2. A full or read-only disk


@contextlib.contextmanager
def _tmpfs(where: Path, options: str):
    """A 1 MB tmpfs mounted at `where` for the test's duration (skipped where mounts are not allowed)."""
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): needs root and mounts")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    with _tmpfs(tmp_path / "disk", "size=1m") as disk:
        yield disk


@pytest.fixture
def read_only_disk(tmp_path):
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        yield disk


def test_a_full_disk_fails_the_runs_that_do_not_fit_and_the_sweep_goes_on(tmp_path, tiny_disk):
    # Two runs whose checkpoints (Adam state) need more than 1 MB, and one small run that fits.
    path = tiny_sweep(tmp_path, more_models=", { n_layer = 2, d_model = 64 }, { n_layer = 1, d_model = 128 }")
    path.write_text(path.read_text().replace(f'out_dir = "{tmp_path / "out"}"', f'out_dir = "{tiny_disk / "out"}"'))
    proc = scaling("sweep", path, "-q", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 2, proc.stderr[-3000:]
    assert "complete 1, skipped (already done) 0, diverged 0, failed 2" in proc.stdout
    failed = [line for line in proc.stdout.splitlines() if line.startswith("  failed ")]
    assert len(failed) == 2 and all("no space left on the device" in line for line in failed), proc.stdout
    runs = tiny_disk / "out" / "runs"
    for summary in runs.glob("*/summary.parquet"):
        row = pq.read_table(summary).to_pylist()[0]
        assert row["status"] in ("complete", "failed")
        if row["status"] == "failed":
            assert row["error"].startswith("no space left on the device") and "\n" not in row["error"]
    assert not [p for p in runs.rglob("*") if "tmp" in p.name], "temporary files left on the full disk"


def test_a_read_only_results_folder_is_refused_before_anything_trains(tmp_path, read_only_disk):
    path = tiny_sweep(tmp_path)
    path.write_text(path.read_text().replace(f'out_dir = "{tmp_path / "out"}"', f'out_dir = "{read_only_disk / "x"}"'))
    for args in (["--dry-run"], []):
        proc = scaling("sweep", path, *args, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.splitlines() == [f"scaling: {path}: sweep.out_dir: {read_only_disk / 'x'}: cannot write "
                                            "there (Read-only file system); expected a folder this user can write "
                                            "the records to"]
    run = scaling("run", path, "--run-id", load_sweep(path).runs[0].run_id, cwd=tmp_path, timeout=120)
    assert run.returncode == 2 and "sweep.out_dir" in run.stderr and len(run.stderr.splitlines()) == 1


def test_storage_errors_read_as_one_plain_line():
    from scaling.records import error_line
    assert error_line(OSError(errno.ENOSPC, "No space left on device", "/r/summary.parquet")) == \
        "no space left on the device (writing /r/summary.parquet)"
    # orbax reports a full disk as a ValueError carrying the OS error's text
    orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "opt_state" in OCDBT database: Failed to write 1400050 '
                       "bytes to file 16: No space left on device [os_error_code='28']")
    assert error_line(orbax) == "no space left on the device (while writing the run's records or checkpoint)"
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert error_line(outer).startswith("read-only file system")
    assert error_line(KeyError("x")) == "KeyError: 'x'"


def test_a_failure_that_cannot_be_recorded_still_returns_its_line(tmp_path, monkeypatch):
    spec = load_sweep(tiny_sweep(tmp_path)).runs[0]
    folder = records.run_dir(tmp_path / "out", spec.run_id)
    folder.mkdir(parents=True)
    (folder / ".summary.parquet.abc.tmp").write_bytes(b"half")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(records, "write_rows", full)
    monkeypatch.setattr(records, "write_text", full)
    try:
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "history.parquet"))
    except OSError as e:
        line = records.record_error(spec, tmp_path / "out", e)
    assert line.startswith("no space left on the device (writing ") and "could not be recorded" in line
    assert not (folder / ".summary.parquet.abc.tmp").exists()


def test_record_files_are_readable_by_the_group_under_the_umask(tmp_path):
    code = ("import os, sys; os.umask(0o002)\n"
            "from pathlib import Path\n"
            "from scaling import records\n"
            "records.write_text(Path(sys.argv[1]) / 'a.txt', 'x')\n"
            "records.write_rows(Path(sys.argv[1]) / 'b.parquet', [{'run_id': 'r'}])\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.txt": 0o664, "b.parquet": 0o664}


# ------------------------------------------------------------------------------------------------
# 3. Damaged records: skipped with one warning, flagged by `scaling status`


def _damage(run: Path, how: str) -> None:
    summary, history = run / "summary.parquet", run / "history.parquet"
    if how == "summary-foreign-columns":
        pq.write_table(pa.table({"foo": [1]}), summary)
    elif how == "summary-no-rows":
        pq.write_table(pq.read_table(summary).slice(0, 0), summary)
    elif how == "history-no-rows":
        pq.write_table(pq.read_table(history).slice(0, 0), history)
    elif how == "history-cut":
        history.write_bytes(history.read_bytes()[: history.stat().st_size // 2])
    elif how == "history-short":
        table = pq.read_table(history)
        pq.write_table(table.slice(0, table.num_rows - 3), history)
    elif how == "history-of-another-run":
        table = pq.read_table(history)
        pq.write_table(table.set_column(table.schema.get_field_index("run_id"), "run_id",
                                        pa.array(["other"] * table.num_rows)), history)


DAMAGE = {  # how -> what load_runs's warning and `scaling status` say
    "summary-foreign-columns": "has no run_id, status, step column",
    "summary-no-rows": "holds no rows",
    "history-no-rows": "history.parquet: holds no rows",
    "history-cut": "unreadable record",
    "history-short": "ends at step",
    "history-of-another-run": "holds rows of run_id other",
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_records_are_skipped_with_one_warning_and_flagged(how, tmp_path, capsys):
    from analysis import RecordWarning, load_history, load_runs
    from scaling.cli import main
    results = tmp_path / "kaplan"
    for shipped in (REPO / "results" / "kaplan" / "runs").glob("*-t4e6-s0-*"):  # each size's longest run: 6
        shutil.copytree(shipped, results / "runs" / shipped.name)
    run = results / "runs" / SHIPPED_RUN
    _damage(run, how)
    phrase = DAMAGE[how]
    def read(loader):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = loader(results)
        return frame, [str(w.message) for w in caught if issubclass(w.category, RecordWarning)]
    runs, messages = read(load_runs)
    assert len(messages) == 1 and phrase in messages[0] and str(run) in messages[0], messages
    assert SHIPPED_RUN not in set(runs["run_id"]) and runs["run_id"].notna().all() and len(runs) == 5
    history, history_messages = read(load_history)
    if how.startswith("history") and how != "history-short":  # the history file itself is unusable
        assert SHIPPED_RUN not in set(history["run_id"])
        assert len(history_messages) == 1 and str(run / "history.parquet") in history_messages[0], history_messages
    assert main(["status", str(results)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if SHIPPED_RUN in line)
    assert "damaged" in row
    from analysis import cli as analysis_cli
    from analysis import make_plots
    readers = [lambda: analysis_cli.fit_command([str(results), "--law", "kaplan", "--bootstrap", "0"]),
               lambda: analysis_cli.table_command([str(results), "--bootstrap", "0"])]
    if how == "history-cut":  # every figure of the sweep: slower, so once
        readers.append(lambda: make_plots.main([str(tmp_path), "--bootstrap", "0"]))
    for read in readers:
        assert read() == 0
        err = capsys.readouterr().err
        assert [line for line in err.splitlines() if "skipping" in line] == [f"warning: {messages[0]}"], err


def test_status_flags_a_run_without_its_config(tmp_path, capsys):
    from scaling.cli import main
    for shipped in (REPO / "results" / "kaplan" / "runs").glob("*-t4e6-s0-*"):  # each size's longest run: 6
        shutil.copytree(shipped, tmp_path / "runs" / shipped.name)
    (tmp_path / "runs" / SHIPPED_RUN / "config.json").unlink()
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "damaged (no config.json), recorded complete" in " ".join(out.split())
    assert "complete 5, damaged 1" in out


# ------------------------------------------------------------------------------------------------
# 4. Command-line values that cannot work


@pytest.mark.parametrize("value", ["-3", "0", "two"])
def test_max_parallel_below_one_is_one_line_exit_2(value, tmp_path):
    path = tiny_sweep(tmp_path)
    proc = scaling("sweep", path, "--dry-run", "--max-parallel", value, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "argument --max-parallel: expected an integer" in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# 5. Signals


def _live_children(pid: int) -> list[int]:
    proc = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in proc.stdout.split()]


def _stop_sweep(path: Path, run: Path, signum: int, cwd: Path) -> None:
    """Start `scaling sweep` of `path`, send `signum` once `run` has trained past the last checkpoint
    it has (Ctrl-C as a terminal sends it: to the process group; SIGTERM to the parent alone), and
    check how it stops."""
    before = {p.name for p in (run / "checkpoints").iterdir()} if (run / "checkpoints").exists() else set()
    proc = subprocess.Popen([sys.executable, "-m", "scaling", "sweep", str(path), "-q"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # training has started: its first evaluation or checkpoint is new
        now = {p.name for p in (run / "checkpoints").iterdir()} if (run / "checkpoints").exists() else set()
        if now - before and (run / "history.parquet").exists():
            break
        time.sleep(0.1)
    children = _live_children(proc.pid)
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signum, err
    assert err.splitlines() == [f"scaling: stopped by {signal.Signals(signum).name}: 1 run(s) stopped at their last "
                                f"checkpoint, 0 complete; run `scaling sweep {path}` again to resume"]
    assert children and not any(Path(f"/proc/{c}").exists() for c in children)  # reaped: no zombie either
    step = pq.read_table(run / "summary.parquet").column("step")[0].as_py()
    saved = [int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and saved[0] >= step  # a checkpoint of the step it stopped at, past its last evaluation


def test_a_stopped_sweep_says_how_to_resume_leaves_no_process_and_resumes(tmp_path):
    path = tiny_sweep(tmp_path, tokens=160_000)
    spec = load_sweep(path).runs[0]
    run = records.run_dir(tmp_path / "out", spec.run_id)
    _stop_sweep(path, run, signal.SIGINT, tmp_path)
    _stop_sweep(path, run, signal.SIGTERM, tmp_path)
    again = scaling("sweep", path, "-q", cwd=tmp_path)
    assert again.returncode == 0 and "complete 1" in again.stdout
    steps = pq.read_table(run / "history.parquet").column("step").to_pylist()
    assert steps == sorted(set(steps)) and steps[-1] == spec.steps
