"""Launchers and the sweep-file keys that drive them, without a cluster:

- the slurm launcher's batch script, through submitit's own SlurmExecutor with stand-in `sbatch` /
  `srun` commands (array size, parallelism, signal, time limit, resources), and the same script from
  `--dry-run`;
- submitit's LocalExecutor running a sweep's tasks (each a local job) two at a time, with a failed
  run's error text in the report; a preempted job requeues itself and resumes from its checkpoint;
- the ray launcher on a local Ray instance, if Ray is installed;
- mesh, launcher and attention keys: validation, resolution, run ids, Megatron-style specs.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import tiny_sweep
from scaling import cli, records
from scaling.config import MeshConfig, MeshError
from scaling.launch.slurm import RunTask, run_slurm
from scaling.sweep.reader import load_sweep

THREE_RUNS = ", { n_layer = 1, d_model = 32 }, { n_layer = 2, d_model = 16 }"


def _summaries(out: Path) -> dict:
    return {p.parent.name: pq.read_table(p).to_pylist()[0] for p in sorted(out.glob("runs/*/summary.parquet"))}


def _break_checkpoint(sweep, spec) -> None:
    """A checkpoint that exists but cannot be read: that run fails with a clear error."""
    ckpt = records.run_dir(sweep.out_dir, spec.run_id) / "checkpoints" / "10"
    ckpt.mkdir(parents=True)
    (ckpt / "_CHECKPOINT_METADATA").write_text("{not json")


# ------------------------------------------------------------------------------------------------
# SLURM, without a cluster


FAKE_SBATCH = """#!/bin/sh
cp "$1" "{dest}"
echo "Submitted batch job 4242"
"""


def test_slurm_batch_script_without_a_cluster(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(dest=tmp_path / "submitted.sh"))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that it exists
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    sweep_path = tiny_sweep(tmp_path, more_models=THREE_RUNS)
    with open(sweep_path, "a") as f:
        f.write('[slurm]\npartition = "debug"\naccount = "lab"\ntime_min = 30\nsetup = ["module load cuda"]\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    flags = ["--launcher", "slurm", "--max-parallel", "2", "--partition", "gpu", "--gpus-per-node", "2",
             "--mem-gb", "32"]
    dry = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(sweep_path), "--dry-run", *flags],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    proc = subprocess.run([sys.executable, "-m", "scaling", "sweep", str(sweep_path), *flags], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "submitted 3, skipped (already done) 0, failed 0" in proc.stdout
    assert "job array 4242: 3 runs, at most 2 at once" in proc.stdout

    script = (tmp_path / "submitted.sh").read_text()
    lines = set(script.splitlines())
    folder = (tmp_path / "out" / "slurm").resolve()
    expected = {
        "#SBATCH --array=0-2%2",  # one array for the 3 runs, 2 at a time
        "#SBATCH --signal=USR2@120",  # time to requeue before the kill
        "#SBATCH --time=30",  # minutes, from the sweep file
        "#SBATCH --partition=gpu",  # the flag overrides the file
        "#SBATCH --account=lab",
        "#SBATCH --nodes=1",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",  # one process per GPU
        "#SBATCH --mem=32GB",
        "#SBATCH --job-name=scaling-tiny",
        f"#SBATCH --output={folder}/%A_%a_0_log.out",
        "module load cuda",
    }
    assert expected <= lines, expected - lines
    assert any(line.startswith("srun ") and "-m submitit.core._submit" in line and str(folder) in line
               for line in lines)
    # --dry-run prints the very script that is submitted.
    assert script.strip() in dry.stdout

    # Each array task is a pickled RunTask that requeues itself when preempted or timed out.
    from submitit.core.utils import DelayedSubmission
    pickles = sorted(folder.glob("4242_*_submitted.pkl"))
    assert len(pickles) == 3
    with open(pickles[0], "rb") as f:
        delayed = pickle.load(f)
    task = delayed.function
    # The task trains from the spec written before submitting, not from the sweep file.
    from scaling.launch import jobfile
    assert isinstance(task, RunTask) and jobfile.read(task.spec_file).sweep_file == str(sweep_path)
    assert task.distributed == "auto" and task.cwd == str(tmp_path)
    again = task.checkpoint()
    assert isinstance(again, DelayedSubmission) and again.function is task
    run_ids = {s.run_id for s in load_sweep(sweep_path).runs}
    submitted = set()
    for p in pickles:
        with open(p, "rb") as f:
            submitted.add(jobfile.read(pickle.load(f).function.spec_file).spec.run_id)
    assert submitted == run_ids


# ------------------------------------------------------------------------------------------------
# submitit's LocalExecutor: the same tasks, each a local job


def test_submitit_local_jobs_run_the_sweep_two_at_a_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(tiny_sweep(tmp_path, more_models=THREE_RUNS), device_count=1)
    broken = sweep.runs[2]
    _break_checkpoint(sweep, broken)
    report = run_slurm(sweep, sweep.runs, max_parallel=2, cluster="local", quiet=True)
    assert sorted(report.complete) == sorted(s.run_id for s in sweep.runs[:2])
    assert [run_id for run_id, _ in report.failed] == [broken.run_id]
    assert "cannot be read" in report.failed[0][1]
    assert report.max_running == 2 and len(report.submitted) == 3
    assert "failed 1" in report.lines()[0] and any(broken.run_id in line for line in report.lines())
    result = _summaries(Path(sweep.out_dir))
    assert [result[s.run_id]["status"] for s in sweep.runs] == ["complete", "complete", "failed"]
    # A rerun skips what is complete.
    again = run_slurm(sweep, sweep.runs[:2], max_parallel=2, cluster="local", quiet=True)
    assert sorted(again.skipped) == sorted(s.run_id for s in sweep.runs[:2]) and not again.submitted


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's task process through /proc")
def test_a_preempted_job_requeues_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import submitit

    from scaling.training.run import train_run
    monkeypatch.chdir(tmp_path)
    sweep_path = tiny_sweep(tmp_path, tokens=128 * 60)
    spec = load_sweep(sweep_path, device_count=1).runs[0]
    ex = submitit.AutoExecutor(tmp_path / "jobs", cluster="local")
    ex.update_parameters(timeout_min=10)
    from scaling.launch import jobfile
    (task_job,) = jobfile.jobs_of(load_sweep(sweep_path), [spec])
    job = ex.submit(RunTask(str(jobfile.write(task_job)), str(tmp_path), "off"))
    ckpt = records.run_dir(tmp_path / "out", spec.run_id) / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not any(p.name.isdigit() and int(p.name) >= 20 for p in
                                             (ckpt.iterdir() if ckpt.exists() else [])):
        assert not job.done(), job.stderr()
        time.sleep(0.05)
    # SIGUSR2 to the job's task process, as SLURM sends it before preempting or at the time limit.
    # (LocalJob._interrupt would signal submitit's local controller, which does not forward it.)
    (task_pid,) = _children(job._process.pid)
    os.kill(task_pid, signal.SIGUSR2)
    history_at_interrupt = pq.read_table(records.run_dir(tmp_path / "out", spec.run_id) / "history.parquet")
    assert max(history_at_interrupt.column("step").to_pylist()) < spec.steps, "interrupted too late to test"
    assert job.result(), job.stderr()
    log = job.stderr() or ""
    # (submitit's local environment calls any SIGUSR2 a time-out; on SLURM a preemption requeues too.)
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log, log[-2000:]
    resumed = _summaries(tmp_path / "out")[spec.run_id]
    whole = train_run(spec, tmp_path / "uninterrupted")
    assert resumed["status"] == "complete"
    assert (resumed["val_loss"], resumed["train_loss"]) == (whole["val_loss"], whole["train_loss"])


def _children(pid: int) -> list[int]:
    """Live child processes of `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


# ------------------------------------------------------------------------------------------------
# Ray


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray starts its processes with fork + exec
def test_ray_runs_the_sweep_on_a_local_instance(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'scaling[ray]')")
    from scaling.launch.ray_launcher import run_ray
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(tiny_sweep(tmp_path, more_models=", { n_layer = 1, d_model = 32 }"), device_count=1)
    _break_checkpoint(sweep, sweep.runs[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_ray(sweep, sweep.runs, max_parallel=2, quiet=True)
    finally:
        ray.shutdown()
    assert report.complete == [sweep.runs[0].run_id] and report.max_running == 2
    assert [run_id for run_id, _ in report.failed] == [sweep.runs[1].run_id]
    assert "cannot be read" in report.failed[0][1]
    assert _summaries(Path(sweep.out_dir))[sweep.runs[0].run_id]["status"] == "complete"


# ------------------------------------------------------------------------------------------------
# Sweep-file keys

GRID = """
[grid]
models = [{ n_layer = 2, d_model = 64 }]
tokens = [1e5]
"""

BAD = [
    ("launcher", '[sweep]\nlauncher = "k8s"\n' + GRID, "sweep.launcher", "expected one of local, slurm, ray"),
    ("slurm-unknown", "[slurm]\ngpus = 4\n" + GRID, "slurm.gpus", "unknown key (known here: account"),
    ("slurm-nodes", "[slurm]\nnodes = 0\n" + GRID, "slurm.nodes", "expected an integer >= 1"),
    ("slurm-time", '[slurm]\ntime_min = "1:00:00"\n' + GRID, "slurm.time_min", "expected an integer"),
    ("slurm-setup", '[slurm]\nsetup = "module load cuda"\n' + GRID, "slurm.setup", "expected a list of shell lines"),
    ("slurm-signal", "[slurm]\ntime_min = 1\nsignal_delay_s = 90\n" + GRID, "slurm.signal_delay_s",
     "shorter than the time limit"),
    ("slurm-partition", '[slurm]\npartition = ""\n' + GRID, "slurm.partition", "non-empty"),
    ("ray-unknown", '[ray]\nadress = "auto"\n' + GRID, "ray.adress", "unknown key"),
    ("ray-gpus", "[ray]\nnum_gpus = -1\n" + GRID, "ray.num_gpus", "expected a number >= 0"),
    ("attention", '[train]\nattention = "flash"\n' + GRID, "train.attention",
     "expected one of xla, dot_product_attention"),
    ("mesh-preset", '[mesh]\npreset = "tp"\n' + GRID, "mesh.preset", "expected one of dp, fsdp, fsdp_tp"),
    ("mesh-axis-not-in-preset", "[mesh]\ntensor = 2\n" + GRID, "mesh.tensor", "the dp preset has no tensor axis"),
    ("mesh-two-rests", '[mesh]\npreset = "fsdp_tp"\ndata = -1\ntensor = -1\n' + GRID, "mesh.tensor",
     "only one axis may be -1"),
    ("mesh-axis-zero", '[mesh]\npreset = "fsdp_tp"\ntensor = 0\n' + GRID, "mesh.tensor", "expected a positive"),
    ("mesh-too-big", '[mesh]\npreset = "fsdp_tp"\ndata = 2\nfsdp = 2\ntensor = 2\n' + GRID, "mesh.size",
     "8 devices do not divide the 4 available"),
    ("mesh-rest-not-dividing", '[mesh]\npreset = "fsdp_tp"\ntensor = 3\n' + GRID, "mesh.size",
     "3 devices (data=1 x tensor=3) do not divide the 4 available"),
    ("mesh-explicit-rest", '[mesh]\npreset = "fsdp_tp"\ndata = -1\nfsdp = 3\n' + GRID, "mesh.data",
     "3 devices (fsdp=3 x tensor=1) do not divide the 4 available"),
    ("mesh-size-mismatch", '[mesh]\npreset = "fsdp_tp"\nsize = 4\ndata = 1\nfsdp = 1\ntensor = 2\n' + GRID,
     "mesh.size", "1 x 1 x 2 = 2 devices, not size = 4"),
    ("tensor-heads", '[mesh]\npreset = "fsdp_tp"\ntensor = 4\n[grid]\nmodels = [{ n_layer = 2, d_model = 64, '
     'n_head = 2 }]\ntokens = [1e5]\n', "mesh.tensor", "n_head and d_ff must be divisible by 4"),
    ("fsdp_tp-d_model", '[mesh]\npreset = "fsdp_tp"\nfsdp = 4\n[grid]\nmodels = [{ n_layer = 2, d_model = 66, '
     'n_head = 1 }]\ntokens = [1e5]\n', "mesh.fsdp", "d_model divisible by 4"),
    ("tensor-batch", '[mesh]\npreset = "fsdp_tp"\ndata = 4\n[train]\nbatch_tokens = 256\n[data]\nseq_len = 128\n'
     + GRID, "train.batch_tokens", "a batch of 2 sequences does not split over 4 devices"),
]


@pytest.mark.parametrize("text,key,expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_scale_out_keys_are_one_line_exit_2(text, key, expected, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_device_count", lambda: 4)
    rc = cli.main(["sweep", "bad.toml", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"scaling: bad.toml: {key}: ") and expected in err, err
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.toml"]


def test_slurm_and_ray_meshes_are_checked_against_the_devices_they_ask_for(tmp_path, monkeypatch, capsys):
    """A login node's device count says nothing about the job: the check uses nodes x gpus_per_node."""
    (tmp_path / "s.toml").write_text('[mesh]\npreset = "fsdp_tp"\ntensor = 8\n[grid]\n'
                                     'models = [{ n_layer = 2, d_model = 64, n_head = 8 }]\ntokens = [1e5]\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_device_count", lambda: 1)
    monkeypatch.setattr(cli, "_print_plan", lambda sweep, runs: None)
    assert cli.main(["sweep", "s.toml", "--dry-run"]) == 2  # locally: 8 > 1 device
    assert "mesh.size: 8 devices (data=1 x tensor=8) do not divide the 1 available" in capsys.readouterr().err
    assert cli.main(["sweep", "s.toml", "--dry-run", "--launcher", "slurm", "--gpus-per-node", "8"]) == 0
    assert "#SBATCH --gpus-per-node=8" in capsys.readouterr().out
    assert cli.main(["sweep", "s.toml", "--dry-run", "--launcher", "slurm", "--gpus-per-node", "4"]) == 2
    assert "8 devices (data=1 x tensor=8) do not divide the 4 available" in capsys.readouterr().err
    assert cli.main(["sweep", "s.toml", "--dry-run", "--launcher", "slurm", "--gpus-per-node", "4",
                     "--nodes", "2"]) == 0


def test_mesh_axis_sizes():
    assert MeshConfig("dp").axis_sizes(8) == {"data": 8}
    assert MeshConfig("fsdp", 4).axis_sizes(8) == {"fsdp": 4}
    assert MeshConfig("fsdp_tp", tensor=2).axis_sizes(8) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert MeshConfig("fsdp_tp", data=-1, fsdp=2, tensor=2).axis_sizes(16) == {"data": 4, "fsdp": 2, "tensor": 2}
    assert MeshConfig("fsdp_tp", size=4, tensor=2).axis_sizes(8) == {"data": 1, "fsdp": 2, "tensor": 2}
    assert MeshConfig("fsdp_tp", data=2, fsdp=1, tensor=1).axis_sizes(4) == {"data": 2, "fsdp": 1, "tensor": 1}
    with pytest.raises(MeshError) as e:
        MeshConfig("fsdp_tp", tensor=3).axis_sizes(8)
    assert e.value.axis == "size"


def test_execution_settings_stay_out_of_run_id(tmp_path):
    base = tiny_sweep(tmp_path)
    other = tiny_sweep(tmp_path, name="other.toml", train_extra='attention = "dot_product_attention"')
    with open(other, "a") as f:
        f.write('[mesh]\npreset = "fsdp_tp"\ntensor = 2\n[slurm]\ngpus_per_node = 8\n[ray]\nnum_gpus = 1\n')
    text = other.read_text().replace('name = "tiny"', 'name = "tiny"\nlauncher = "slurm"')
    other.write_text(text)
    a, b = load_sweep(base).runs[0], load_sweep(other).runs[0]
    assert a.run_id == b.run_id
    assert b.train.attention == "dot_product_attention" and b.mesh.tensor == 2
    assert load_sweep(other).launcher == "slurm" and load_sweep(other).slurm.gpus_per_node == 8


def test_run_accepts_only_complete_coordinator_flags(tmp_path, capsys):
    sweep = tiny_sweep(tmp_path)
    rc = cli.main(["run", str(sweep), "--run-id", "x", "--coordinator", "127.0.0.1:1234"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "scaling: --coordinator, --num-processes and --process-id go together"
