"""One run over several processes and meshes (simulated CPU devices, gloo collectives):

- two processes x two devices, joined through `scaling run --coordinator`, give the losses of one
  process with four devices;
- the checkpoint those two processes wrote (each its half of the fsdp shards) restores in one
  process on two devices;
- a run stopped on a 4-device mesh resumes on a 2-device mesh from exactly the saved parameters and
  ends where the uninterrupted 4-device run ends;
- two processes stopped by a job's stop signal (SIGUSR2) that arrives during a checkpoint write
  finish the write before they exit, and the run resumes from it.

Every subprocess has a hard timeout; the module's processes run once (a module fixture).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import tiny_sweep
from scaling import records
from scaling.sweep.reader import load_sweep

TIMEOUT = 300
TOL = 1e-5


def _env(n_devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}", "JAX_PLATFORMS": "cpu",
            "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(folder: Path, keep_checkpoints: bool) -> Path:
    folder.mkdir(parents=True)
    path = tiny_sweep(folder, train_extra="keep_checkpoints = true" if keep_checkpoints else "")
    with open(path, "a") as f:
        f.write('[mesh]\npreset = "fsdp"\n')  # parameters split over every device of every process
    return path


def _python(code: str, *args, n_devices: int, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=cwd,
                          env=_env(n_devices), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# One process, four devices: the uninterrupted reference; then the same run stopped at step 10, and
# its step-10 parameters as saved (restored here on the 4-device mesh they were saved from).
FOUR_DEVICES = """
    import json, sys
    import numpy as np
    from scaling import records
    from scaling.training import sharding as shd, step as tr
    from scaling.training.checkpoint import Checkpoints
    from scaling.training.run import Halt, train_run
    from scaling.sweep.reader import load_sweep

    spec = load_sweep(sys.argv[1], device_count=4).runs[0]
    whole = train_run(spec, sys.argv[2])
    try:
        train_run(spec, sys.argv[3], halt_at=10)
        raise SystemExit("no halt")
    except Halt:
        pass
    program = tr.build_program(spec, shd.make_mesh(spec.mesh))
    ckpt = Checkpoints(records.run_dir(sys.argv[3], spec.run_id) / "checkpoints")
    step = ckpt.latest_step()
    state, _ = ckpt.restore(step, program.abstract_state())
    ckpt.close()
    np.savez(sys.argv[4], **{k: np.asarray(v) for k, v in state["params"].items()})
    print(json.dumps({"step": step, "n_devices": program.mesh.size, "val_loss": whole["val_loss"]}))
"""

# One process, two devices: restore what 2 processes wrote on 4 devices; restore the halted run's
# step-10 checkpoint and compare with the saved parameters; resume that run here.
TWO_DEVICES = """
    import dataclasses, json, sys
    import numpy as np
    from scaling import records
    from scaling.data.batches import validation_windows
    from scaling.data.sources import open_source
    from scaling.training import sharding as shd, step as tr
    from scaling.training.checkpoint import Checkpoints
    from scaling.training.run import train_run
    from scaling.sweep.reader import load_sweep

    spec = load_sweep(sys.argv[1], device_count=2).runs[0]
    mesh = shd.make_mesh(spec.mesh)
    program = tr.build_program(spec, mesh)
    out = {"n_devices": mesh.size}

    ckpt = Checkpoints(records.run_dir(sys.argv[2], spec.run_id) / "checkpoints")
    state, _ = ckpt.restore(ckpt.latest_step(), program.abstract_state())
    ckpt.close()
    kernel = state["params"]["blocks/0/fc/kernel"]
    out["shard_shape"], out["kernel_shape"] = list(kernel.addressable_shards[0].data.shape), list(kernel.shape)
    source = open_source("stdlib")
    n_val = tr.n_eval_windows(spec, shd.batch_shards(mesh), len(source.val) // spec.model.seq_len)
    windows = validation_windows(source.val, spec.model.seq_len, n_val)
    out["multiprocess_val_loss"] = tr.evaluate(program, state["params"], windows,
                                               tr.eval_chunk(spec, shd.batch_shards(mesh)))["val_loss"]

    ckpt = Checkpoints(records.run_dir(sys.argv[3], spec.run_id) / "checkpoints")
    state, _ = ckpt.restore(10, program.abstract_state())
    ckpt.close()
    saved = np.load(sys.argv[4])
    out["same_params"] = sorted(saved.files) == sorted(state["params"]) and all(
        np.array_equal(saved[k], np.asarray(v)) for k, v in state["params"].items())
    resumed = train_run(spec, sys.argv[3])
    out["resumed_status"], out["resumed_val_loss"] = resumed["status"], resumed["val_loss"]
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    single, multi = _sweep(root / "single", False), _sweep(root / "multi", True)
    spec = load_sweep(single, device_count=4).runs[0]
    assert spec.run_id == load_sweep(multi, device_count=4).runs[0].run_id  # mesh and checkpoints: not science

    four = _python(FOUR_DEVICES, single, root / "whole", root / "halted", root / "step10.npz", n_devices=4, cwd=root)

    port = _free_port()
    procs, logs = [], []
    for i in range(2):
        log = open(root / f"process{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "scaling", "run", str(multi), "--run-id", spec.run_id, "--progress", "jsonl",
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            cwd=root, env=_env(2), stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
        for log in logs:
            log.close()
    outputs = [(root / f"process{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)

    two = _python(TWO_DEVICES, multi, root / "multi" / "out", root / "halted", root / "step10.npz", n_devices=2,
                  cwd=root)
    return {"spec": spec, "single": root / "whole", "multi": root / "multi" / "out", "outputs": outputs,
            "four": four, "two": two}


def _history(out: Path, run_id: str):
    return pq.read_table(records.run_dir(out, run_id) / "history.parquet").to_pandas()


def test_two_processes_give_the_losses_of_one_process(runs):
    spec = runs["spec"]
    one, two = _history(runs["single"], spec.run_id), _history(runs["multi"], spec.run_id)
    assert list(one["step"]) == list(two["step"]) and len(one) >= 3
    for column in ("train_loss", "val_loss", "val_entropy", "grad_norm"):
        diff = (one[column] - two[column]).abs().max()
        assert diff <= TOL, (column, diff)
    assert one["val_loss"].iloc[-1] < one["val_loss"].iloc[0]  # it trained
    summary = pq.read_table(records.run_dir(runs["multi"], spec.run_id) / "summary.parquet").to_pylist()[0]
    assert summary["status"] == "complete" and summary["n_devices"] == 4 and summary["mesh"] == "fsdp:fsdp=4"
    config = json.loads((records.run_dir(runs["multi"], spec.run_id) / "config.json").read_text())
    assert config["process_count"] == 2 and config["n_devices"] == 4
    # One progress stream per run (process 0's); both processes finish the run.
    events = [[json.loads(line) for line in out.splitlines() if line.startswith("{")] for out in runs["outputs"]]
    assert any(e["event"] == "step" for e in events[0]) and not any(e["event"] == "step" for e in events[1])
    done = {"event": "done", "run_id": spec.run_id, "status": "complete", "error": None}
    assert [e for e in events[0] if e["event"] == "done"] == [done]
    assert [e for e in events[1] if e["event"] == "done"] == [done]


def test_a_checkpoint_written_by_two_processes_restores_on_two_devices(runs):
    two, spec = runs["two"], runs["spec"]
    assert two["n_devices"] == 2
    # Restored onto the 2-device mesh's shardings: half of one dimension per device.
    assert sorted(two["shard_shape"]) in (sorted([two["kernel_shape"][0] // 2, two["kernel_shape"][1]]),
                                          sorted([two["kernel_shape"][0], two["kernel_shape"][1] // 2]))
    final = _history(runs["multi"], spec.run_id)["val_loss"].iloc[-1]
    assert abs(two["multiprocess_val_loss"] - final) <= TOL


def test_a_run_stopped_on_four_devices_resumes_on_two(runs):
    four, two = runs["four"], runs["two"]
    assert four["n_devices"] == 4 and four["step"] == 10
    assert two["same_params"]  # bitwise: resharding moves bytes, it does not round them
    assert two["resumed_status"] == "complete"
    assert abs(two["resumed_val_loss"] - four["val_loss"]) <= TOL


# One of two processes of a run, under the stop signal's deferral as a SLURM task runs
# (scaling/launch/slurm.py), with a stand-in for submitit's handler that exits with its requeue code. The
# signal comes while the step-10 checkpoint is being written: the write must finish first.
PREEMPTED_PROCESS = """
    import json, os, signal, sys
    from scaling.launch import distributed
    distributed.initialize("on", coordinator=sys.argv[3], num_processes=2, process_id=int(sys.argv[4]))
    import jax
    from scaling.training import preemption
    from scaling.training.run import train_run
    from scaling.sweep.reader import load_sweep
    import orbax.checkpoint as ocp
    written = []  # the steps whose orbax write has finished
    orbax_save, orbax_wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished

    def save(self, step, *args, **kwargs):
        if step == 10:
            os.kill(os.getpid(), signal.SIGUSR2)  # arrives as orbax starts writing step 10
        self._scaling_step = step
        return orbax_save(self, step, *args, **kwargs)

    def wait_until_finished(self):
        orbax_wait(self)
        if getattr(self, "_scaling_step", None) is not None:
            written.append(self._scaling_step)
            self._scaling_step = None

    def requeue(signum, frame):  # submitit's handler requeues the job and exits with this code
        print(json.dumps({"written": written}), flush=True)
        os._exit(144)

    ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished = save, wait_until_finished
    signal.signal(signal.SIGUSR2, requeue)
    spec = load_sweep(sys.argv[1], device_count=jax.device_count()).runs[0]
    with preemption.deferred():
        train_run(spec, sys.argv[2])
    print(json.dumps({"written": written, "not stopped": True}), flush=True)
"""


def _two_processes(code: str, sweep: Path, out: Path, cwd: Path, run_id: str | None = None) -> list:
    port = _free_port()
    if run_id is None:
        argv = lambda i: [sys.executable, "-c", textwrap.dedent(code), str(sweep), str(out), f"127.0.0.1:{port}", str(i)]
    else:
        argv = lambda i: [sys.executable, "-m", "scaling", "run", str(sweep), "--run-id", run_id,
                          "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
    procs = [subprocess.Popen(argv(i), cwd=cwd, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    try:
        return [(p.wait(timeout=TIMEOUT), p.stdout.read()) for p in procs]
    finally:
        for p in procs:
            p.kill()


def test_a_preempted_run_of_two_processes_stops_after_its_checkpoint_write_and_resumes(runs, tmp_path):
    """Several processes cannot stop at one chosen step without agreeing on it, so theirs stop when
    the signal comes, but never inside a checkpoint write; the run resumes from that checkpoint and
    ends where the uninterrupted run ends."""
    spec = runs["spec"]
    sweep = _sweep(tmp_path / "sweep", False)
    out = tmp_path / "sweep" / "out"
    stopped = _two_processes(PREEMPTED_PROCESS, sweep, out, tmp_path)
    for code, output in stopped:
        assert code == 144, output[-3000:]
        report = json.loads(output.strip().splitlines()[-1])
        assert report["written"][-1] == 10 and "not stopped" not in report, "the step-10 write finished, then it stopped"
    run = records.run_dir(out, spec.run_id)
    assert records.read_status(run) == "running"
    assert max(_history(out, spec.run_id)["step"]) <= 10
    resumed = _two_processes(None, sweep, out, tmp_path, run_id=spec.run_id)
    assert [code for code, _ in resumed] == [0, 0], "\n\n".join(o[-3000:] for _, o in resumed)
    one, two = _history(runs["single"], spec.run_id), _history(out, spec.run_id)
    assert list(one["step"]) == list(two["step"])
    assert (one["val_loss"] - two["val_loss"]).abs().max() <= TOL
