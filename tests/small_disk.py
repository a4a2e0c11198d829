"""Run `cmkd` on a disk that fills up: a small tmpfs where this machine lets a test mount one
(a private mount namespace: `unshare --user --map-root-user --mount`), else a file-size limit
(RLIMIT_FSIZE, which any CI runner allows: a write past it fails with EFBIG)."""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


@dataclass
class Outcome:
    code: int
    stderr: str
    kind: str  # "tmpfs" (ENOSPC) or "fsize" (EFBIG)

    @property
    def message(self) -> str:
        """The words (a regex) a full disk is reported with on this kind of small disk: under
        a size limit numpy's short write, which carries no errno, reads as a full disk."""
        if self.kind == "tmpfs":
            return "no space left on device"
        return "(file too large|no space left on device)"


def tmpfs_available(probe: Path) -> bool:
    """Whether a private tmpfs can be mounted on `probe` (an empty folder) here."""
    if shutil.which("unshare") is None:
        return False
    probe.mkdir(parents=True, exist_ok=True)
    mount = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(probe))}"
    done = subprocess.run([*UNSHARE, "sh", "-c", mount], capture_output=True, timeout=30)
    return done.returncode == 0


def disk_kind(cwd: Path) -> str:
    """`tmpfs` where a private tmpfs can be mounted here, else `fsize` (or what
    $CMKD_TEST_SMALL_DISK names: `fsize` checks the fallback CI runners take)."""
    forced = os.environ.get("CMKD_TEST_SMALL_DISK")
    if forced:
        return forced
    return "tmpfs" if tmpfs_available(cwd / ".probe") else "fsize"


def run_cmkd_on_small_disk(
    args: list[str], disk: Path, size: int, cwd: Path, keep: Path, kind: str
) -> Outcome:
    """`cmkd ARGS` with `disk` (an empty folder) holding at most `size` bytes (`tmpfs`: in
    all, `fsize`: per file); afterwards `keep` holds a copy of what `disk` held (the tmpfs
    goes with its namespace)."""
    disk.mkdir(parents=True, exist_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "cmkd_cli", *[str(a) for a in args]]
    if kind == "tmpfs":
        q = shlex.quote
        script = (
            f"mount -t tmpfs -o size={size} tmpfs {q(str(disk))} || exit 99; "
            f"{shlex.join(cmd)}; rc=$?; cp -a {q(str(disk))}/. {q(str(keep))}/; exit $rc"
        )
        done = subprocess.run(
            [*UNSHARE, "sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True
        )
        return Outcome(done.returncode, done.stderr, "tmpfs")

    def limit() -> None:  # Python ignores SIGXFSZ, so a write past the limit is EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=limit, check=False
    )
    if keep != disk:
        shutil.copytree(disk, keep, dirs_exist_ok=True)
    return Outcome(done.returncode, done.stderr, "fsize")
