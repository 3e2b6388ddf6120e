"""A cluster's "you are about to be stopped" signal, handled where the run can stop cleanly.

SLURM sends SIGUSR2 `signal_delay_s` before it preempts a job or its time runs out, and submitit's
handler then checkpoints the task, requeues the job and exits the process at once, wherever its
main thread is. Exiting in the middle of an orbax save kills the save's threads with the
interpreter: the process aborts instead of exiting with the code that requeues a job (submitit's
local executor then reports the job finished with no result), and the steps since the last
checkpoint are trained again.

Within `deferred()` (what a submitit task runs in), the signal only sets a flag:

- a run in one process notices it at its next step boundary (`polling()`, `requested()`), saves a
  checkpoint of that step and raises `Preempted`; leaving `deferred()` then calls the handler that
  was there before (submitit's), which requeues the job and exits. On resume not one step is redone.
- otherwise (a run over several processes, which could only agree on a step through a collective,
  or no run polling) the handler runs as soon as no checkpoint is being written (`critical()`).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Preempted(BaseException):
    """Raised by a run that saved its state because the job is being stopped (not an error of the run)."""

    def __init__(self, step: int):
        super().__init__(f"preempted after step {step}; its checkpoint is saved")
        self.step = step


class _State:
    def __init__(self):
        self.installed = False
        self.signum: int | None = None  # the signal that arrived and has not been handed on
        self.polling = 0
        self.critical = 0
        self.previous = None


_state = _State()


def requested() -> bool:
    """Whether the stop signal arrived (only ever true within `deferred()`)."""
    return _state.signum is not None


def _hand_over() -> None:
    signum, _state.signum = _state.signum, None
    _state.previous(signum, None)


def _hand_over_if_waiting() -> None:
    if _state.installed and _state.signum is not None and not _state.polling and not _state.critical:
        _hand_over()


def _on_signal(signum: int, frame) -> None:
    _state.signum = signum
    _hand_over_if_waiting()


@contextmanager
def deferred(signum: int = signal.SIGUSR2) -> Iterator[None]:
    """Within: `signum` is handled between steps or after a checkpoint write, then by the handler
    installed before (which is expected to exit: submitit's requeues the job). A no-op off the main
    thread or where no Python handler was installed."""
    previous = signal.getsignal(signum)
    if _state.installed or threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    _state.installed, _state.signum, _state.previous = True, None, previous
    signal.signal(signum, _on_signal)
    preempted = False
    try:
        yield
    except Preempted:
        preempted = True
    finally:
        signal.signal(signum, previous)
        _state.installed = False
    if preempted:
        _state.signum = _state.signum or signum
        _hand_over()


@contextmanager
def _holding(counter: str) -> Iterator[None]:
    setattr(_state, counter, getattr(_state, counter) + 1)
    try:
        yield
    finally:
        setattr(_state, counter, getattr(_state, counter) - 1)
    _hand_over_if_waiting()  # a signal that came in the block and was not dealt with


def polling():
    """Within: the caller checks `requested()` at each step boundary and stops there itself."""
    return _holding("polling")


def critical():
    """Within: the signal waits (a checkpoint is being written)."""
    return _holding("critical")
