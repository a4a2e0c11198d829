"""One writer per run directory: an exclusive lock on RUN/.lock while a process works there.

The lock is a POSIX record lock on the file (`lockf`, fcntl F_SETLK), so the kernel drops it
when its holder dies, however it dies (kill -9 included): a stale `.lock` file never blocks
a later run. Unlike `flock(2)` it is not inherited by forked children, so DataLoader workers
that outlive a killed run for a few seconds do not keep holding it. (A POSIX lock is also
released when its process closes any descriptor of the file: nothing else here opens `.lock`
while holding it; `_holder` reads it only in a process that failed to lock.) The file names
the holder (pid, host, start time, command) for the message a second process gets (exit 1).
Locks are re-entrant within a process (a study locks its root, then each run).
On a filesystem without locks a warning says so and the run goes on unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmkd_cli import console
from cmkd_cli.errors import RunError
from cmkd_cli.io import writing

LOCK_FILE = ".lock"
_held: dict[str, tuple[int, int]] = {}  # resolved dir -> (fd, depth)


class RunLocked(RunError):
    """Another process holds the run directory (exit 1)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return (
        f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('started', '?')}"
    )


@contextmanager
def run_lock(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold RUN/.lock for the duration of the block (creating RUN); `enabled=False` (other
    DDP ranks) does nothing."""
    if not enabled:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    path = run_dir / LOCK_FILE
    with writing(path):  # a full disk (no inode left) names the lock file
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLocked(
                f"{run_dir} is in use by another cmkd process ({_holder(path)}); wait for it "
                "to finish, or stop it first"
            ) from None
        console.warn(f"{run_dir}: cannot lock ({exc.strerror}); make sure one process writes it")
        yield
        return
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["cmkd", *sys.argv[1:]]),
    }
    try:
        with writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _held[key] = (fd, 1)
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)  # releases the lock
