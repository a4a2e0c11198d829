"""Inputs decoded once: per sample, its static view or its decode, memory-mapped on disk.

For one split and one modality of a dataset the cache holds, per sample, one of:

- its **static view**, the exact input the model gets when the view draws nothing (an
  evaluation split, a side that is not augmented, audio no longer than the input so that no
  crop is drawn), in the form it is stored best: a spectrogram (float32) or resized frames
  before normalisation (uint8);
- its **decode**, what an augmented view starts from: the waveform at the dataset's rate
  (float32) or the decoded frames (uint8, at their own resolution); the random crop and flip
  then run on every draw, as without the cache.

Reading either gives the same tensor, bit for bit, as decoding the files (tested). Each cache
lives in `CACHE/inputs/<key>/`, the key a sha256 of the format, the modality, whether it is
augmented, the view's preprocessing settings and every record's id, files, segment and the
files' size and modification time: a change to any of them is a new cache, never a stale
one. It is written once, before training, by the training process (loader workers decode in
parallel, with a progress bar), into a temporary folder renamed when complete, so a killed
build leaves nothing a later run reads. A sample whose files do not decode keeps no row and is
decoded from its files when drawn, raising the same error that names it.

Layout of a cache folder: `meta.json` (rows, dtypes); `static.bin` + `static.rows.npy` and
`decoded.bin` + `decoded.rows.npy`: the values of every row back to back, and per row its
offset into them (-1: no row) and its shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from cmkd_cli import console
from cmkd_cli.io import atomic_write_json, writing
from cmkd_cli.progress import track

FORMAT = 1
META = "meta.json"
KINDS = ("static", "decoded")

#: one sample's row: (static view, decode); at most one of them is not None
Row = tuple[np.ndarray | None, np.ndarray | None]


def file_stamp(path: str | os.PathLike[str]) -> list[int] | None:
    """[size, mtime_ns] of a file (None when missing): a changed file changes the key."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def cache_key(description: dict[str, Any], records: Sequence[Sequence[Any]]) -> str:
    """A stable key of what a cache holds: `description` (modality, augmentation,
    preprocessing settings) and `records` (per sample: id, files, segment, file stamps)."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, **description}, sort_keys=True).encode())
    for record in records:
        h.update(json.dumps(record, default=str).encode())
    return h.hexdigest()[:20]


class RaggedStore:
    """Read-only rows of one dtype and varying shapes in one flat memory-mapped file."""

    def __init__(self, folder: Path, kind: str, dtype: str) -> None:
        self.path, self.dtype = folder / f"{kind}.bin", np.dtype(dtype)
        self.rows = np.load(folder / f"{kind}.rows.npy")
        self._values: np.ndarray | None = None

    def values(self) -> np.ndarray:
        if self._values is None:  # opened in each process that reads (loader workers too)
            size = self.path.stat().st_size // self.dtype.itemsize
            self._values = (
                np.memmap(self.path, dtype=self.dtype, mode="r", shape=(size,))
                if size
                else np.empty(0, self.dtype)
            )
        return self._values

    def __getitem__(self, index: int) -> np.ndarray | None:
        offset, *shape = (int(v) for v in self.rows[index])
        if offset < 0:
            return None
        count = int(np.prod(shape))
        return np.array(self.values()[offset : offset + count]).reshape(shape)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_values": None}


class _Writer:
    """Appends rows to `KIND.bin` and records their offsets and shapes."""

    def __init__(self, folder: Path, kind: str, n: int) -> None:
        self.folder, self.kind, self.n = folder, kind, n
        self.fh = open(folder / f"{kind}.bin", "wb")
        self.offset, self.dtype, self.shapes = 0, None, {}

    def put(self, index: int, value: np.ndarray | None) -> None:
        if value is None:
            return
        value = np.ascontiguousarray(value)
        if self.dtype is None:
            self.dtype = value.dtype
        elif value.dtype != self.dtype:  # a programming error in a dataset's cache rows
            raise ValueError(f"{self.kind} row {index}: {value.dtype}, expected {self.dtype}")
        with writing(self.fh.name):
            self.fh.write(value.tobytes())
        self.shapes[index] = (self.offset, value.shape)
        self.offset += value.size

    def close(self) -> str:
        with writing(self.fh.name):
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
        ndim = max((len(s) for _, s in self.shapes.values()), default=0)
        rows = np.full((self.n, 1 + ndim), -1, dtype=np.int64)
        for index, (offset, shape) in self.shapes.items():
            rows[index] = [offset, *shape]
        with writing(self.folder / f"{self.kind}.rows.npy"):
            np.save(self.folder / f"{self.kind}.rows.npy", rows)
        return str(self.dtype or np.dtype("float32"))


class InputCache:
    """One split's cached rows of one modality: `static(i)` and `decoded(i)` (or None)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        meta = json.loads((folder / META).read_text())
        self.stores = {k: RaggedStore(folder, k, meta["dtypes"][k]) for k in KINDS}

    def __len__(self) -> int:
        return len(self.stores["static"].rows)

    def static(self, index: int) -> np.ndarray | None:
        return self.stores["static"][index]

    def decoded(self, index: int) -> np.ndarray | None:
        return self.stores["decoded"][index]


class _Rows:
    """The rows to compute, as a dataset for a DataLoader (workers decode in parallel)."""

    def __init__(self, n: int, row: Callable[[int], Row]) -> None:
        self.n, self.row = n, row

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int, Row]:
        return index, self.row(index)


def _as_is(item: Any) -> Any:
    return item


def build_cache(
    folder: Path, n: int, row: Callable[[int], Row], workers: int = 0, description: str = ""
) -> InputCache | None:
    """The cache in `folder`, computing its `n` rows with `row(i)` unless it is complete.

    Returns None (and warns) when it cannot be written, e.g. a full disk: the data are then
    decoded from their files as without a cache.
    """
    if (folder / META).is_file():
        return InputCache(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        writers = {k: _Writer(tmp, k, n) for k in KINDS}
        loader = DataLoader(_Rows(n, row), batch_size=None, num_workers=workers, collate_fn=_as_is)
        for index, (static, decoded) in track(loader, total=n, description=description):
            writers["static"].put(index, static)
            writers["decoded"].put(index, decoded)
        dtypes = {k: w.close() for k, w in writers.items()}
        atomic_write_json(tmp / META, {"format": FORMAT, "rows": n, "dtypes": dtypes})
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same cache first
            if not (folder / META).is_file():
                raise
    except OSError as exc:
        console.warn(f"input cache {folder} not written ({exc}); decoding from the files")
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return InputCache(folder)
