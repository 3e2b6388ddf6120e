"""Orbax checkpoints of (params, opt_state) for resuming a killed run.

Orbax writes each step to a temporary folder and renames it when complete, so a kill mid-save
leaves the previous checkpoint as the latest. Restoring is onto the current mesh's shardings, so a
run may resume on a different device count. A checkpoint that exists but cannot be read is an
error, never a silent restart from step 0.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from scaling.training import preemption

# Orbax logs every save at INFO; the run's own progress says enough.
logging.getLogger("absl").setLevel(logging.WARNING)


class CheckpointError(Exception):
    pass


class Checkpoints:
    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self.manager = ocp.CheckpointManager(
            self.folder, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                              enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, host: dict) -> None:
        """`state`: arrays (params, optimizer state); `host`: JSON-able host-side counters saved with them."""
        with preemption.critical():  # a job's stop signal waits for the save's threads to finish
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            host=ocp.args.JsonSave(host)), force=True)
            self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                     host=ocp.args.JsonRestore()))
            return out["state"], out["host"]
        except Exception as e:  # orbax raises many types for a damaged checkpoint
            # The library's own text (often a C++ binding's) goes to error.txt with the traceback.
            raise CheckpointError(f"checkpoint {self.folder / str(step)} cannot be read ({type(e).__name__}); "
                                  f"delete the run folder {self.folder.parent} to train this run again from "
                                  "step 0") from e

    def close(self) -> None:
        self.manager.close()

    def finish(self, keep: bool) -> None:
        """A finished run's checkpoints: closed and kept (`[train] keep_checkpoints`), or deleted."""
        if keep:
            self.close()
        else:
            self.delete_all()

    def delete_all(self) -> None:
        """Multi-host: every process closes its manager, then process 0 alone deletes the folder."""
        self.close()
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("scaling:delete-checkpoints")
        if jax.process_index() == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
