"""SIGINT and SIGTERM: stop cleanly, keep what was computed, exit 128 + the signal number.

`handle_signals()` (installed by the CLI around a stage) turns the first SIGINT/SIGTERM
into a request. Inside a `deferred()` block (a training step, a checkpoint write) the
request is only recorded: the engine finishes the step, writes a resumable checkpoint and
raises `Interrupted` (`interrupted at step N (epoch E); resume with: ...`). Anywhere else
(data preparation, evaluation, building datasets) the handler raises `StopNow` at once;
atomic writes and journals make sure nothing finished is lost. A second signal always
stops at once. A SIGINT that the parent shell ignores (a job started with `&`) stays
ignored, as Python itself does.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cmkd_cli.errors import CmkdError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_pending: int | None = None
_deferring = 0
_installed = False


class StopNow(BaseException):  # noqa: N818 - not an error: a request to stop
    """Raised by the handler outside deferred blocks (a BaseException, so that readers'
    `except Exception` guards never swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupted(CmkdError):
    """A stage stopped on a signal after saving what it had; exit code 128 + signal.

    `resume` is the command that continues (filled in by the stage that knows it)."""

    def __init__(self, signum: int, message: str, resume: str | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = message
        self.resume = resume

    def __str__(self) -> str:
        return self.message + (f"; resume with: {self.resume}" if self.resume else "")


@contextmanager
def resumable_with(command: str, before: str = "interrupted") -> Iterator[None]:
    """Name the resume command in an `Interrupted` leaving the block, and turn a `StopNow`
    (a signal outside training steps) into one: `before` says where it came."""
    try:
        yield
    except Interrupted as exc:
        exc.resume = exc.resume or command
        raise
    except StopNow as stop:
        raise Interrupted(stop.signum, before, command) from None


def exit_code(signum: int) -> int:
    return 128 + signum


def _handler(signum: int, frame: Any) -> None:
    global _pending
    first = _pending is None
    if first:
        _pending = signum
    if _deferring and first:
        return
    raise StopNow(_pending or signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Install the handlers for the block (main thread only; a no-op elsewhere)."""
    global _installed, _pending
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if sig == signal.SIGINT and current == signal.SIG_IGN:
            continue
        previous[sig] = current
        signal.signal(sig, _handler)
    _installed, _pending = True, None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _installed, _pending = False, None
        reap_workers()


def reap_workers() -> None:
    """Kill the daemonic worker processes still alive (DataLoader workers): they ignore
    SIGTERM (`ignore_in_worker`), and the interpreter's exit terminates daemonic children
    with SIGTERM, then waits for them, which would be forever."""
    for proc in multiprocessing.active_children():
        if proc.daemon:
            proc.kill()
            proc.join(5)


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block a (first) signal is only recorded; check `requested()` after it."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def requested() -> int | None:
    """The signal received so far (None: none)."""
    return _pending


def ignore_in_worker(*_: Any) -> None:
    """Worker processes (a pool's initializer, a DataLoader's `worker_init_fn`) leave
    SIGINT/SIGTERM to their parent, which stops them."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
