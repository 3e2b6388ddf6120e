"""Evaluation rows to an experiment tracker as well (`[sweep] tracker`): parquet stays the store.

    tracker = open_tracker(spec, writer=True)   # a no-op unless spec.tracker names one
    tracker.log(row)                            # at every evaluation: the row's numeric columns at its step
    tracker.finish(status)                      # once, whatever the outcome (idempotent)

`wandb` (the `wandb` extra) makes one W&B run per training run: named by its run_id, grouped by
its sweep, with the run spec as its config, in project `tracker_project`. W&B's own environment
settles where it goes: `WANDB_MODE=offline` keeps it on disk (`wandb sync` uploads it later),
`WANDB_DIR` the folder. The runs of a pack train in one process, so each member opens its own W&B
run beside the others (`reinit="create_new"`, W&B >= 0.19.10) and holds its run object.

A tracker never stops a run: its first error (wandb missing, not logged in, a full disk) becomes one
warning naming the run, and the tracker of that run goes quiet. A resumed run opens a new W&B run
under the same name and logs its earlier rows again first, so each W&B run holds the whole curve.
Only the process that writes records (process 0) tracks.
"""

from __future__ import annotations

import math
import numbers
import warnings

from scaling.config import RunSpec


class Tracker:
    """The tracker of a run that has none: every call does nothing."""

    def log(self, row: dict) -> None:
        pass

    def finish(self, status: str = "complete") -> None:
        pass


def numeric(row: dict) -> dict:
    """The columns of `row` a tracker can chart: finite numbers (not flags, strings or NaN)."""
    return {k: float(v) if isinstance(v, float) else v for k, v in row.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}


class WandbTracker(Tracker):
    """One W&B run per training run (see the module's docstring)."""

    def __init__(self, spec: RunSpec):
        self.run_id, self.run, self.failed = spec.run_id, None, False
        self._guard("start", self._open, spec)

    def _open(self, spec: RunSpec) -> None:
        import wandb
        self.run = wandb.init(project=spec.tracker_project, group=spec.sweep, name=spec.run_id,
                              config={"run_id": spec.run_id, **spec.to_dict()}, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))

    def _guard(self, what: str, fn, *args) -> None:
        """`fn(*args)`, its error the one warning of this run; after it, nothing is sent."""
        if self.failed:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop a run
            self.failed = True
            warnings.warn(f"run {self.run_id}: the wandb tracker failed to {what} ({type(e).__name__}: {e}); the "
                          "run goes on, its records are in parquet as always, and nothing more goes to wandb",
                          RuntimeWarning, stacklevel=3)
            run, self.run = self.run, None
            if run is not None:
                try:
                    run.finish(exit_code=1)
                except Exception:  # noqa: BLE001 - already warned once
                    pass

    def log(self, row: dict) -> None:
        self._guard("log", self._log, row)

    def _log(self, row: dict) -> None:
        values = numeric(row)
        self.run.log(values, step=int(values.pop("step")))

    def finish(self, status: str = "complete") -> None:
        if self.run is not None:
            self._guard("finish", self.run.finish, 0 if status == "complete" else 1)
            self.run = None


def open_tracker(spec: RunSpec, *, writer: bool = True) -> Tracker:
    """The tracker `spec` asks for (`spec.tracker`); a no-op one for "none" and off process 0."""
    if spec.tracker == "none" or not writer:
        return Tracker()
    return WandbTracker(spec)
