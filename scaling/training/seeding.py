"""The trunk's side of WSD branching (`scaling/sweep/branch_plan.py`): rows at its branches'
evaluation steps while it trains, and each branch's seed (a checkpoint, its rows, branch.json)
at its branch point."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from scaling import records
from scaling.config import RunSpec
from scaling.sweep.branch_plan import Branch, seed_dir
from scaling.training.checkpoint import Checkpoints
from scaling.training.runlog import RunLog, rows_until


def _pending_dir(out_dir, b: Branch) -> Path:
    return records.run_dir(out_dir, b.trunk) / "branches" / f".pending-{b.spec.run_id}"


@dataclass
class _Track:
    """One branch that the trunk is recording rows for, until it writes its seed."""

    branch: Branch
    evals: set[int]
    log: object  # run.RunLog of the branch: its rows, calibration bins and losses since its last evaluation


class Seeder:
    """The trunk's side: rows at its branches' evaluation steps, and their seeds at their branch points.

    `restored_step` and `host`: the trunk's resume point and its checkpoint's host state (None, {}
    for a fresh start). A branch is left to train alone when its seed cannot be made exactly: its
    branch point is behind the resume point, or it was not being tracked when the trunk last saved."""

    def __init__(self, out_dir, trunk: RunSpec, branches: list[Branch], restored_step: int | None, host: dict,
                 ctx):
        """`ctx`: the trunk's run.RunContext (a branch has the trunk's shape, data and mesh)."""
        self.out_dir, self.trunk = out_dir, trunk
        tracked = host.get("branch_losses", {})
        self.active: list[_Track] = []
        for b in branches:
            own = records.run_dir(out_dir, b.spec.run_id)
            if (b.step <= (restored_step or 0) or (restored_step and b.spec.run_id not in tracked)
                    or seed_dir(out_dir, b).exists() or (own / "checkpoints").exists()
                    or records.read_status(own) in records.DONE):
                continue
            log = RunLog(b.spec, out_dir, ctx, columns={"branched_from": trunk.run_id, "branch_step": b.step})
            if restored_step:  # the rows written before the trunk's checkpoint (save_pending)
                log.resume(tracked[b.spec.run_id], *rows_until(_pending_dir(out_dir, b), restored_step))
            self.active.append(_Track(b, {s for s in b.spec.train.eval_steps(b.spec.steps) if s <= b.step},
                                      log))

    def needs(self, step: int) -> bool:
        """Whether the trunk must stop at `step` (read its loss, hold its state) for a branch."""
        return any(step in t.evals or step == t.branch.step for t in self.active)

    def on_loss(self, loss: float) -> None:
        for t in self.active:
            t.log.losses_since_eval.append(loss)

    def at_step(self, step: int, measure, state: dict) -> None:
        """`measure(step)`: (evaluation columns, calibration bins) of the trunk's state after `step`
        updates, shared with the trunk's own row."""
        for t in list(self.active):
            if step in t.evals:
                t.log.evaluation(step, *measure(step))
            if step == t.branch.step:
                self._write_seed(t, state)
                self.active.remove(t)

    def _write_seed(self, t: _Track, state: dict) -> None:
        final = seed_dir(self.out_dir, t.branch)
        tmp = final.parent / f".tmp-{t.branch.spec.run_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        ckpt = Checkpoints(tmp / "checkpoints")
        ckpt.save(t.branch.step, state, {"losses_since_eval": list(t.log.losses_since_eval)})
        ckpt.close()
        records.write_rows(tmp / "history.parquet", t.log.history)
        if t.log.calibration:
            records.write_table(tmp / "calibration.parquet", t.log.calibration)
        records.write_json(tmp / "branch.json", {"branched_from": self.trunk.run_id, "branch_step": t.branch.step})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        shutil.rmtree(_pending_dir(self.out_dir, t.branch), ignore_errors=True)

    def host_state(self) -> dict:
        """What the trunk's checkpoint must hold to resume its branches' rows exactly."""
        return {"branch_losses": {t.branch.spec.run_id: list(t.log.losses_since_eval) for t in self.active}}

    def save_pending(self) -> None:
        """The rows so far of branches not yet seeded; written before the trunk's checkpoint, and
        read back up to the checkpoint's step on resume (as the run's own history is)."""
        for t in self.active:
            if t.log.history:
                pending = _pending_dir(self.out_dir, t.branch)
                records.write_rows(pending / "history.parquet", t.log.history)
                if t.log.calibration:
                    records.write_table(pending / "calibration.parquet", t.log.calibration)
