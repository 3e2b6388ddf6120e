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

`scaling run` treats SIGINT (Ctrl-C) and SIGTERM (a local sweep being stopped, `kill`) the same way
(`stop_on_signals()`), with `Stopped` raised in place of submitit's handler: the run ends at a
checkpoint, the process exits with 128 + the signal's number, and a rerun resumes exactly.
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


class Stopped(BaseException):
    """A person or a process manager asked this process to stop (SIGINT, SIGTERM): raised where the
    run can stop cleanly, after its last checkpoint write (`stop_on_signals`)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal


class _State:
    def __init__(self):
        self.installed = False
        self.signum: int | None = None  # the signal that arrived and has not been handed on
        self.once = False  # hand the signal on once: later ones are ignored (the process is stopping)
        self.handed = False
        self.polling = 0
        self.critical = 0
        self.then = None  # what handing the signal on calls: (signum, frame) -> None


_state = _State()


def requested() -> bool:
    """Whether the stop signal arrived (only ever true within `deferred()`)."""
    return _state.signum is not None


def _hand_over() -> None:
    signum, _state.signum = _state.signum, None
    _state.handed = True
    _state.then(signum, None)


def _hand_over_if_waiting() -> None:
    if _state.installed and _state.signum is not None and not _state.polling and not _state.critical:
        _hand_over()


def _on_signal(signum: int, frame) -> None:
    if _state.once and _state.handed:
        return
    _state.signum = signum
    _hand_over_if_waiting()


@contextmanager
def deferred(signum: int | tuple[int, ...] = signal.SIGUSR2, *, then=None, once: bool = False) -> Iterator[None]:
    """Within: `signum` (one or several) is handled between steps or after a checkpoint write, by
    `then(signum, frame)`, by default the handler installed before (which is expected to exit:
    submitit's requeues the job); with `once`, signals after the first handed on are ignored. A
    no-op off the main thread, or where no handler is given and no Python handler was installed."""
    signums = (signum,) if isinstance(signum, int) else tuple(signum)
    previous = {s: signal.getsignal(s) for s in signums}
    then = then or previous[signums[0]]
    if _state.installed or threading.current_thread() is not threading.main_thread() or not callable(then):
        yield
        return
    _state.installed, _state.signum, _state.handed, _state.once, _state.then = True, None, False, once, then
    for s in signums:
        signal.signal(s, _on_signal)
    preempted = False
    try:
        yield
    except Preempted:
        preempted = True
    finally:
        for s in signums:
            signal.signal(s, previous[s])
        _state.installed = False
    if preempted:
        _state.signum = _state.signum or signums[0]
        _hand_over()


def _raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


def stop_on_signals():
    """Within: SIGINT and SIGTERM stop a run in one process as a preemption does (after a checkpoint
    of the step it is on), then raise `Stopped`; elsewhere (start-up, a pack, several processes)
    they raise `Stopped` at once, except during a checkpoint write, which finishes first."""
    return deferred((signal.SIGINT, signal.SIGTERM), then=_raise_stopped, once=True)


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
