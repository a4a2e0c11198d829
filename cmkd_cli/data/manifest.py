"""Manifests: one JSON object per sample (`manifest.jsonl`) plus a report of skipped files.

Every `prepare` reader writes `OUT/manifest.jsonl` and `OUT/skipped.jsonl`; later stages
(extract-fbank, align-faces, distill, eval) read the manifest. A classification reader also
writes `OUT/classes.txt`, the ordered class list (one `label<TAB>name` line per class: the
record's `label` and the readable name prompts use). Core fields are typed;
a dataset may add its own (e.g. `gender`, `genre`, `quality`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from cmkd_cli.errors import DataError
from cmkd_cli.io import atomic_write_jsonl, atomic_write_text, iter_jsonl

MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.jsonl"
CLASSES = "classes.txt"


class Record(BaseModel):
    """One sample. Paths are absolute or relative to the manifest's folder."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    split: str = "train"
    label: str | int | None = None
    speaker: str | None = None
    video: str | None = None
    audio: str | None = None
    frames: list[str] = Field(default_factory=list)
    image: str | None = None
    text: str | None = None
    duration: float | None = None


class Skipped(BaseModel):
    path: str
    reason: str


def write_manifest(
    out_dir: str | Path, records: Iterable[Record], skipped: Iterable[Skipped] = ()
) -> Path:
    """Write `manifest.jsonl` and `skipped.jsonl` atomically; ids must be unique."""
    out_dir = Path(out_dir)
    rows = [r.model_dump(exclude_none=True) for r in records]
    seen: set[str] = set()
    for r in rows:
        if r["id"] in seen:
            raise DataError(f"{out_dir / MANIFEST}: sample id {r['id']!r} appears twice")
        seen.add(r["id"])
    atomic_write_jsonl(out_dir / SKIPPED, [s.model_dump() for s in skipped])
    atomic_write_jsonl(out_dir / MANIFEST, rows)
    return out_dir / MANIFEST


def manifest_file(path: str | Path) -> Path:
    """The manifest file of `path` (the file, or a folder holding manifest.jsonl)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist (run `cmkd prepare` first)")
    return path


def _validated(path: Path, model: type[BaseModel]) -> Iterator[Any]:
    """The manifest's records, each validated by `model`; errors name the record and field."""
    for n, row in enumerate(iter_jsonl(path), 1):
        try:
            yield model.model_validate(row)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise DataError(f"{path}: record {n}: field `{field}`: {err['msg']}") from None


def read_manifest(path: str | Path) -> list[Record]:
    """Read a manifest (file or folder holding manifest.jsonl); errors name the line."""
    path = manifest_file(path)
    return list(_validated(path, Record))


@functools.lru_cache(maxsize=16)
def _columns_model(fields: tuple[str, ...]) -> type[BaseModel]:
    """A model of `fields` alone: `Record`'s fields as `Record` declares them, any other
    (a dataset's own, e.g. `faces`) any JSON value or None; the rest of a line is ignored."""
    known = Record.model_fields
    spec: dict[str, Any] = {
        f: (known[f].annotation, known[f]) if f in known else (Any, None) for f in fields
    }
    return create_model("RecordColumns", __config__=ConfigDict(extra="ignore"), **spec)


def read_manifest_columns(
    path: str | Path, fields: Sequence[str], where: Callable[[Any], bool] | None = None
) -> dict[str, list[Any]]:
    """`fields` of the records `where` keeps (called with a record of those fields), one list
    per field in manifest order. Those fields are validated as `read_manifest` validates
    them, with its messages, but no `Record` is built per line: the reader for a few fields
    of a large manifest (VoxCeleb2 dev's 1.09 M records: see README, Speed and memory)."""
    path = manifest_file(path)
    columns: dict[str, list[Any]] = {f: [] for f in fields}
    for record in _validated(path, _columns_model(tuple(fields))):
        if where is None or where(record):
            for f, column in columns.items():
                column.append(getattr(record, f))
    return columns


def resolve(manifest_path: str | Path, rel: str) -> Path:
    """A path from a record, resolved against the manifest's folder when relative."""
    p = Path(rel)
    if p.is_absolute():
        return p
    base = Path(manifest_path)
    return (base if base.is_dir() else base.parent) / p


def records_to_dicts(records: Iterable[Record]) -> list[dict[str, Any]]:
    return [r.model_dump(exclude_none=True) for r in records]


def write_classes(out_dir: str | Path, classes: list[tuple[str, str]]) -> Path:
    """Write OUT/classes.txt atomically: one `label<TAB>name` line per class, in class order."""
    keys = [k for k, _ in classes]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"{Path(out_dir) / CLASSES}: class label {dup!r} appears twice")
    bad = [k for k, n in classes if not k or "\t" in k + n or "\n" in k + n]
    if bad:
        raise DataError(f"{Path(out_dir) / CLASSES}: class label {bad[0]!r} is empty or has a tab")
    path = Path(out_dir) / CLASSES
    atomic_write_text(path, "".join(f"{k}\t{n}\n" for k, n in classes))
    return path


def read_classes(path: str | Path) -> list[tuple[str, str]]:
    """(label, name) per class from a classes.txt (a line without a tab names itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / CLASSES
    if not path.is_file():
        raise DataError(f"class list {path} does not exist (written by `cmkd prepare`)")
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            key, _, name = line.partition("\t")
            out.append((key, name or key))
    return out
