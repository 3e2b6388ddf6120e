"""The `scaling` command's manners: a help of its own for every subcommand, the ETA of a running sweep
in `scaling status`, and one-line errors (exit status 2) for a missing folder or an unknown run id."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import tiny_sweep
from scaling import records
from scaling.cli import build_parser, main
from scaling.launch.eta import ETA_FILE, EtaFile, published_eta
from scaling.sweep.reader import load_sweep


def _description(help_text: str) -> str:
    """The paragraph after the usage lines of an argparse help."""
    return " ".join(help_text.split("\n\n")[1].split())


def _help(name: str) -> int:
    """`scaling NAME -h`'s exit status (the runner's own parsers exit; the analysis commands return)."""
    try:
        return main([name, "-h"])
    except SystemExit as exit_:
        return exit_.code


def test_every_subcommand_describes_itself_in_its_own_words(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    descriptions = {}
    for name in sub.choices:
        assert _help(name) == 0
        descriptions[name] = _description(capsys.readouterr().out)
    for name, text in descriptions.items():
        assert text and not text.startswith(("positional arguments", "options")), (name, text)
    assert len(set(descriptions.values())) == len(descriptions), descriptions


@pytest.fixture
def running(tmp_path):
    """A sweep folder with one run recorded as running and its lock held, as by a live run."""
    sweep = load_sweep(tiny_sweep(tmp_path))
    run = records.run_dir(sweep.out_dir, sweep.runs[0].run_id)
    records.write_json(run / "config.json", {"run_id": sweep.runs[0].run_id})
    records.write_table(run / "summary.parquet", [{**records.base_row(sweep.runs[0]), "status": "running", "step": 3}])
    lock = records.RunLock(run)
    assert lock.acquire()
    yield sweep, lock
    lock.release()


def test_status_shows_the_eta_a_running_sweep_publishes(running, capsys):
    sweep, lock = running
    EtaFile(sweep.out_dir, clock=lambda: time.time() - 10)(elapsed_s=5.0, remaining_s=130.4)
    assert main(["status", sweep.out_dir]) == 0
    assert "running 1; ETA 2:00 (the sweep's estimate of 0:10 ago)" in capsys.readouterr().out
    assert main(["status", sweep.path]) == 0  # the same, given the sweep file
    assert "running 1; ETA 2:00" in capsys.readouterr().out
    lock.release()  # the run's process is gone: interrupted, and no ETA
    assert main(["status", sweep.out_dir]) == 0
    out = capsys.readouterr().out
    assert "interrupted 1" in out and "ETA" not in out


def test_an_eta_of_a_process_that_ended_is_not_shown(running, capsys):
    sweep, _ = running
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    EtaFile(sweep.out_dir)(0.0, 60.0)
    assert published_eta(sweep.out_dir) is not None
    path = os.path.join(sweep.out_dir, ETA_FILE)
    eta = json.loads(open(path).read())
    records.write_json(path, {**eta, "pid": int(dead.stdout)})
    assert published_eta(sweep.out_dir) is None
    assert main(["status", sweep.out_dir]) == 0
    assert "running 1; ETA unknown" in capsys.readouterr().out


def test_the_eta_file_is_rewritten_at_most_every_few_seconds_and_removed_at_the_end(tmp_path):
    now = [1000.0]
    eta = EtaFile(tmp_path, clock=lambda: now[0])
    eta(0.0, 100.0)
    now[0] += 1
    eta(1.0, 50.0)  # too soon: not written
    assert published_eta(tmp_path, now=now[0]) == (99.0, 1.0)
    now[0] += 10
    eta(11.0, 40.0)
    assert published_eta(tmp_path, now=now[0]) == (40.0, 0.0)
    eta.close()
    assert published_eta(tmp_path) is None and not (tmp_path / ETA_FILE).exists()


@pytest.mark.parametrize("argv, message", [
    (["status", "{missing}"], "no results folder at {missing}"),
    (["fit", "{missing}"], "no results folder at {missing}"),
    (["table", "{missing}"], "no results folder at {missing}"),
    (["compare", "{missing}", "{missing}"], "no results folder at {missing}"),
    (["reproduce", "{missing}", "{missing}"], "no results folder at {missing}"),
    (["report", "{missing}"], "no results folder at {missing}"),
    (["run", "{sweep}", "--run-id", "L9-nope"], "--run-id: no run 'L9-nope' in this sweep"),
    (["run", "--spec", "{missing}/spec.json"], "{missing}/spec.json: no such file"),
])
def test_a_missing_folder_or_run_id_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    values = {"missing": tmp_path / "missing", "sweep": tiny_sweep(tmp_path)}
    assert main([a.format(**values) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message.format(**values) in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
