"""Atomic file writes: a killed write never leaves a half-written file under the final name."""

from __future__ import annotations

import errno
import json
import os
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


@contextmanager
def atomic_path(path: str | os.PathLike[str]):
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    The file gets the mode an ordinary `open()` would give (0666 minus the umask), not
    mkstemp's private 0600, so teammates on a shared cluster can read what a run wrote.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunError(f"no space left on device writing {path}") from None
        raise
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
    """`torch.save` atomically, through a Python file object so that a full disk is an
    OSError (ENOSPC) naming the file, not torch's `[enforce fail at inline_container.cc]`."""
    import torch  # lazy: io is used by torch-free stages (prepare, report, recipes)

    atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


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
