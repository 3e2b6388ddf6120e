"""WSD branching: a branch computes exactly what its own run would, at the cost of its cool-down."""

import pyarrow.parquet as pq
import pytest

from conftest import write_sweep
from scaling.sweep import branch_plan as branching
from scaling import records
from scaling.cli import main
from scaling.training.run import Halt, train_run
from scaling.sweep.reader import load_sweep

BRANCHED = """
[sweep]
name = "branched"
out_dir = "{out}"
[data]
seq_len = 16
[model]
head_dim = 8
[schedule]
kind = "{kind}"
warmup = {warmup}
decay = 0.2
branch = true
[train]
batch_tokens = 128
eval_points = 4
eval_sequences = 8
checkpoint_every = 5
[grid]
models = [{{ n_layer = 1, d_model = 16 }}]
tokens = [1280, 3840, 5120]
"""


def branched_sweep(tmp_path, kind="wsd", warmup=0.1):
    return write_sweep(tmp_path / "branched.toml", BRANCHED.format(out=tmp_path / "out", kind=kind, warmup=warmup))


def _history(out, run_id):
    return pq.read_table(records.run_dir(out, run_id) / "history.parquet").to_pylist()


def test_branches_equal_their_runs_trained_alone_and_survive_kills(tmp_path):
    sweep = load_sweep(branched_sweep(tmp_path), device_count=1)
    plan = branching.plan(sweep.runs)
    trunk = max(sweep.runs, key=lambda s: s.steps)
    branches = plan.of_trunk(trunk.run_id)
    assert [b.spec.steps for b in branches] == [10, 30] and [b.step for b in branches] == [8, 24]
    # One warmup for the group (10% of the trunk's 40 steps), explicit where it is not the run's own.
    assert trunk.optim.warmup_steps is None and all(b.spec.optim.warmup_steps == 4 for b in branches)
    out = tmp_path / "out"

    # The trunk is killed at step 10: the first branch is seeded, the second has pending rows.
    with pytest.raises(Halt):
        train_run(trunk, out, plan=plan, halt_at=10)
    assert branching.seed_dir(out, branches[0]).is_dir() and not branching.seed_dir(out, branches[1]).exists()
    train_run(trunk, out, plan=plan)
    for b in branches:
        assert branching.seed_dir(out, b).is_dir()
    # The longer branch is killed in its cool-down and resumed from its own checkpoint.
    with pytest.raises(Halt):
        train_run(branches[1].spec, out, plan=plan, halt_at=25)
    for b in branches:
        train_run(b.spec, out, plan=plan)
        assert not branching.seed_dir(out, b).exists()  # a completed branch removes its seed

    alone = tmp_path / "alone"
    for b in branches:
        train_run(b.spec, alone)
        branched, reference = _history(out, b.spec.run_id), _history(alone, b.spec.run_id)
        assert [r["step"] for r in branched] == [r["step"] for r in reference]
        for key in ("train_loss", "val_loss", "val_entropy", "val_ece", "lr", "grad_norm", "tokens", "flops"):
            assert [r[key] for r in branched] == [r[key] for r in reference], (b.spec.run_id, key)  # bitwise on CPU
        summary = pq.read_table(records.run_dir(out, b.spec.run_id) / "summary.parquet").to_pylist()[0]
        assert summary["status"] == "complete"
        assert summary["branched_from"] == trunk.run_id and summary["branch_step"] == b.step
        assert all(r["branched_from"] == trunk.run_id for r in branched)
        # FLOPs as its own training would count them: the shared prefix included.
        assert summary["tokens"] == b.spec.steps * b.spec.batch_size * b.spec.model.seq_len == summary["target_tokens"]
        assert summary["flops"] == reference[-1]["flops"]
        cal = pq.read_table(records.run_dir(out, b.spec.run_id) / "calibration.parquet").to_pandas()
        cal_alone = pq.read_table(records.run_dir(alone, b.spec.run_id) / "calibration.parquet").to_pandas()
        assert (cal["run_id"] == b.spec.run_id).all()
        assert cal[["step", "bin", "count"]].equals(cal_alone[["step", "bin", "count"]])
    trunk_summary = pq.read_table(records.run_dir(out, trunk.run_id) / "summary.parquet").to_pylist()[0]
    assert trunk_summary["branched_from"] is None and trunk_summary["branch_step"] is None
    assert not (records.run_dir(out, trunk.run_id) / "branches").exists() or not any(
        (records.run_dir(out, trunk.run_id) / "branches").iterdir())


def test_a_branch_without_a_seed_trains_alone(tmp_path):
    sweep = load_sweep(branched_sweep(tmp_path), device_count=1)
    plan = branching.plan(sweep.runs)
    b = next(iter(plan.branches.values()))
    result = train_run(b.spec, tmp_path / "out", plan=plan)
    assert result["status"] == "complete" and result["branched_from"] is None
    assert _history(tmp_path / "out", b.spec.run_id)[0]["step"] == 1


@pytest.mark.parametrize("kind, warmup, key", [("cosine", 0.1, "schedule.branch"),
                                               ("wsd", 0.3, "schedule.warmup")])
def test_bad_branching_is_one_line_exit_2(tmp_path, capsys, kind, warmup, key):
    path = branched_sweep(tmp_path, kind=kind, warmup=warmup)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: {key}:" in err and "expected" in err


def test_dry_run_shows_branches_and_counts_only_trained_steps(tmp_path, capsys):
    assert main(["sweep", str(branched_sweep(tmp_path)), "--dry-run"]) == 0
    text = capsys.readouterr().out
    sweep = load_sweep(branched_sweep(tmp_path), device_count=1)
    trunk = max(sweep.runs, key=lambda s: s.steps)
    assert f"from {trunk.run_id} at step 8" in text and "trunk of 2" in text
    assert "branching saves" in text
    plan = branching.plan(sweep.runs)
    assert sum(plan.trained_steps(s) for s in sweep.runs) == 40 + 2 + 6


def test_run_ids_without_branching_are_unchanged(tmp_path):
    plain = load_sweep(write_sweep(tmp_path / "plain.toml", BRANCHED.format(
        out=tmp_path / "out", kind="wsd", warmup=0.1).replace("branch = true\n", "")), device_count=1)
    branched = load_sweep(branched_sweep(tmp_path), device_count=1)
    assert all(s.optim.warmup_steps is None for s in plain.runs)
    # The trunk computes the same thing either way: same run_id; the branches' warmup differs.
    assert len({s.run_id for s in plain.runs} & {s.run_id for s in branched.runs}) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_local_launcher_starts_branches_from_their_seeds(tmp_path, workers):
    """One worker: the trunk and its branches train in one process, trunk first (launch.branch_jobs);
    two: each branch in its own process, started once its seed is there."""
    from analysis import load_runs
    from scaling.launch.local import local_jobs, run_local
    from scaling.launch.report import SweepReport
    sweep = load_sweep(branched_sweep(tmp_path), device_count=1)
    trunk = max(sweep.runs, key=lambda s: s.steps)
    jobs = local_jobs(sweep, sweep.runs, SweepReport(), workers)
    if workers == 1:
        assert len(jobs) == 1 and jobs[0][0] == trunk and len(jobs[0]) == 3
    else:
        assert sorted(len(j) for j in jobs) == [1, 1, 1]
    report = run_local(sweep, sweep.runs, max_parallel=workers, quiet=True)
    assert not report.failed and len(report.complete) == 3
    runs = load_runs(sweep.out_dir).set_index("run_id")
    for b in branching.plan(sweep.runs).of_trunk(trunk.run_id):
        assert runs.loc[b.spec.run_id, "branched_from"] == trunk.run_id
        assert runs.loc[b.spec.run_id, "branch_step"] == b.step
    assert runs["status"].eq("complete").all()
