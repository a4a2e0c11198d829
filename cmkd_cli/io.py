"""Atomic file writes: a killed write never leaves a half-written file under the final name.

A full disk (ENOSPC), a full quota (EDQUOT) or the process's file-size limit (EFBIG,
`ulimit -f`) is one line naming the file, `no space left on device writing FILE`, however
deep a library buried the OSError (torch's zip writer raises a RuntimeError whose context it
is): `writing(path)` translates it around any write, `atomic_path` around every atomic one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cmkd_cli.errors import DataError, RunError


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: what each errno of a write that found no room is called in the message
DISK_FULL = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (over the file-size limit, `ulimit -f`)",
}


#: numpy's `tofile` (np.save to a file) reports a short write without an errno; on a
#: regular file the kernel writes short only when the disk, quota or size limit is reached
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def disk_full(exc: BaseException | None) -> OSError | None:
    """The OSError of a full disk (`DISK_FULL`, or numpy's short write, as ENOSPC) that `exc`
    is or was raised from (its `__cause__`/`__context__` chain), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        if isinstance(exc, OSError) and exc.errno is None and _SHORT_WRITE.match(str(exc)):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        exc = exc.__cause__ or exc.__context__
    return None


def no_space(path: str | os.PathLike[str] | None, err: OSError) -> RunError:
    """The one-line error of a write to `path` that found no room."""
    return RunError(DISK_FULL[err.errno] + (f" writing {path}" if path else ""))


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """A full disk (or quota, or file-size limit) inside the block is `no space left on
    device writing PATH` (exit 1); anything else passes unchanged."""
    try:
        yield
    except Exception as exc:
        err = disk_full(exc)
        if err is None:
            raise
        raise no_space(path, err) from None


@contextmanager
def atomic_path(path: str | os.PathLike[str]):
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    The file gets the mode an ordinary `open()` would give (0666 minus the umask), not
    mkstemp's private 0600, so teammates on a shared cluster can read what a run wrote.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    try:
        with writing(path):
            yield Path(tmp)
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[Any]], None], mode: str = "w"):
    """Write `path` through `writer(file)` atomically (text mode `w` or binary `wb`)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def default_cache_dir() -> Path:
    """`$CMKD_CACHE_DIR`, else `$XDG_CACHE_HOME/cmkd` (default `~/.cache/cmkd`)."""
    if os.environ.get("CMKD_CACHE_DIR"):
        return Path(os.environ["CMKD_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "cmkd"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save` atomically; a full disk names the file (`atomic_path`), not torch's
    `[enforce fail at inline_container.cc] unexpected pos`, which hides the OSError."""
    import torch  # lazy: io is used by torch-free stages (prepare, report, recipes)

    atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


def allocated_memmap(path: str | os.PathLike[str], dtype: Any, shape: tuple[int, ...]) -> Any:
    """A new `.npy` memory map (`np.lib.format.open_memmap`, mode w+) whose blocks are
    allocated up front: a full disk is `no space left on device writing PATH` here (and the
    file removed), not a SIGBUS that kills the process when a page of a sparse file is first
    written. Filesystems without `fallocate` get the sparse file, as before."""
    import numpy as np  # lazy: io is used by stages that never map an array

    path = Path(path)
    try:
        with writing(path):
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    raise
            finally:
                os.close(fd)
    except RunError:
        path.unlink(missing_ok=True)
        raise
    return array


def read_jsonl(path: str | os.PathLike[str], growing: bool = False) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a malformed line is reported with its number. `growing`: the
    file may be appended to right now (a run's metrics.jsonl), so a last line without its
    newline that does not parse yet is left out."""
    return list(iter_jsonl(path, growing))


def iter_jsonl(path: str | os.PathLike[str], growing: bool = False) -> Iterator[Any]:
    """`read_jsonl` one row at a time (a large file is never held as rows)."""
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                if growing and not line.endswith("\n"):
                    return
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            yield row


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the `.NAME.*.tmp` files `atomic_path` leaves when its process is killed (call
    it only while holding the folder's lock: a live writer's temporary looks the same)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
