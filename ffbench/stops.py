"""Stops: Ctrl-C (SIGINT), SIGTERM (`kill PID`, `scancel`, a scheduler's preemption) and SLURM's
warning of a job's time limit (SIGUSR2, on which submitit requeues the job or gives up), each
acted on at the next training step or evaluation chunk at the latest, never at the end of the
epoch, whatever runs when it arrives.

SIGINT and SIGTERM raise KeyboardInterrupt in the signal handler, so that the job unwinds at
once and tracking.job_run closes its run KILLED with the epochs it finished. But Python prints
and drops an exception raised while a weakref finalizer runs (measure.py's saved-tensor meter
has one per saved tensor), or a `__del__` method: the stop is therefore also remembered, and
`check()` raises it again from ordinary code. Every training step (learner.step) and every
evaluation chunk (learner.chunks) calls it; and `after_job()` at the end of each job, for a stop
dropped after the last of those (in the final test's last chunk): the job's run is complete and
stays FINISHED, and the process stops there instead of starting a sweep's next job.

A handler that was there before for SIGUSR2 (submitit's, in a SLURM job) is not run inside the
signal handler but by the next `check()`, where its exception (SystemExit once it has requeued
the job, an error when it gives up) cannot be dropped either.

Torch-free: the handlers are Python's, set in the main thread, where Python runs them."""

import signal
from collections.abc import Callable

_pending: int | None = None  # the signal that arrived and is not acted on yet
_deferred: dict[int, Callable] = {}  # signal number -> the earlier handler check() runs


def install() -> None:
    """Take over SIGINT and SIGTERM, and defer the SIGUSR2 handler if one was set; forget a
    stop that an earlier job of this process did not act on (a sweep's jobs may share it)."""
    global _pending
    _pending = None
    warning = getattr(signal, "SIGUSR2", None)  # not on Windows
    if warning is not None:
        before = signal.getsignal(warning)
        if callable(before) and before is not _handle:  # not ours from an earlier job
            _deferred[warning] = before
            signal.signal(warning, _handle)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handle)


def _handle(signum: int, frame) -> None:
    global _pending
    if signum in _deferred:
        if _pending is None:  # a stop that came first wins over the warning
            _pending = signum
        return
    _pending = signum
    raise _interrupt(signum)


def check() -> None:
    """Act on a stop that arrived since the last call: raise KeyboardInterrupt for SIGINT or
    SIGTERM, or run the deferred handler (submitit's: requeue and exit, or raise)."""
    global _pending
    signum = _pending
    if signum is None:
        return
    _pending = None  # raised from here, it cannot be dropped
    if signum in _deferred:
        _deferred[signum](signum, None)
        return
    raise _interrupt(signum)


def after_job() -> None:
    """Act on a SIGINT or SIGTERM that arrived after the job's last check: raise its
    KeyboardInterrupt, so that no further job of a sweep starts in this process. A pending
    time-limit warning is left alone: its job is done, so there is nothing to requeue."""
    global _pending
    signum = _pending
    if signum is None or signum in _deferred:
        return
    _pending = None
    raise _interrupt(signum)


def _interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")
