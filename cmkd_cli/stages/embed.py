"""`cmkd embed`: a student's embeddings of files, streamed to .npy with an ids file.

Reads a `student.pt` (or a run's best.pt) and either the files given or a manifest's
records (the field the student reads: `audio`, `image`, the first of `frames`, `text`).
Writes OUT/embeddings.npy (`[N, D]` float32, row i for line i of OUT/ids.txt), for speaker
students also OUT/crops.npy (`[N, K, D]`, the crop embeddings `cmkd score --embeddings`
scores exactly as `eval`), OUT/embed.json (what made them) and OUT/skipped.jsonl (inputs
that could not be read, with the reason; they get no row).

Each input goes through `Student.graph_inputs` and `Student.embed_decoded`, the code path
of the Python API. Rows are written into memory-mapped files chunk by chunk and the count
is recorded after each chunk, so a killed run resumes where it stopped; the final names
appear only when every input is done, and a finished OUT with the same inputs and
checkpoint is not redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from cmkd_cli import console
from cmkd_cli.data.manifest import Record, read_manifest, resolve
from cmkd_cli.data.preprocess import FbankInput, ImageInput, SceneInput, TextInput
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.io import (
    allocated_memmap,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    writing,
)
from cmkd_cli.metrics.trials import utterance_vectors
from cmkd_cli.options.common import EmbedOptions
from cmkd_cli.progress import track
from cmkd_cli.student.api import Student, load

EMBEDDINGS, CROPS, IDS, INFO, SKIPPED = (
    "embeddings.npy",
    "crops.npy",
    "ids.txt",
    "embed.json",
    "skipped.jsonl",
)
PROGRESS = ".embed-progress.json"


class EmbedFilesOptions(EmbedOptions):
    """`cmkd embed`: which student, which inputs, where to (+ the crops of speakers)."""

    checkpoint: Path = Field(description="student.pt or a run's best.pt")
    files: list[Path] = Field(default_factory=list, description="input files")
    manifest: Path | None = Field(None, description="embed a manifest's records instead")
    split: str | None = Field(None, description="only the manifest records of this split")
    out: Path = Field(description="output folder")
    batch_size: int = Field(16, ge=1, description="inputs per forward pass")


class EmbedResult(BaseModel):
    out: str
    inputs: int
    embedded: int
    skipped: int
    dim: int
    crops: int | None
    reused: bool
    scoring: dict[str, Any] | None = None


def inputs_of(options: EmbedFilesOptions, student: Student) -> list[tuple[str, Any]]:
    """(id, input) pairs: each file (its path as the id; a text student reads its content),
    or each manifest record of `split` (the record's id, the field the student reads)."""
    if options.files and options.manifest:
        raise UsageError("give input FILEs or --manifest, not both")
    if options.files:
        text = isinstance(student.input, TextInput)
        return [(str(f), _read_text(f) if text else f) for f in options.files]
    if options.manifest is None:
        raise UsageError("give input FILEs or --manifest")
    field = _manifest_field(student)
    items = []
    for r in read_manifest(options.manifest):
        if options.split not in (None, r.split):
            continue
        value = _record_input(r, field, options.manifest)
        if value is not None:
            items.append((r.id, value))
    if not items:
        split = f" of split {options.split!r}" if options.split else ""
        raise UsageError(f"--manifest {options.manifest}: no record{split} has `{field}`")
    return items


def _manifest_field(student: Student) -> str:
    inp = student.input
    if isinstance(inp, TextInput):
        return "text"
    if isinstance(inp, ImageInput):
        return "frames" if inp.frames else "image"
    if isinstance(inp, SceneInput):
        return "image" if inp.modality == "rgb" else "depth"
    return "audio"


def _record_input(r: Record, field: str, manifest: Path) -> Any:
    if field == "text":
        return r.text
    if field == "frames":
        return resolve(manifest, r.frames[0]) if r.frames else None
    value = getattr(r, field, None) or (r.model_extra or {}).get(field)
    return resolve(manifest, value) if value else None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the text ({exc})") from None


def run_key(checkpoint: Path, ids: list[str]) -> str:
    """What the outputs depend on: the checkpoint file and the ordered ids."""
    st = checkpoint.stat()
    blob = json.dumps([str(checkpoint.resolve()), st.st_size, st.st_mtime_ns, ids])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run(options: EmbedFilesOptions) -> EmbedResult:
    student = load(options.checkpoint, options.device)
    student.with_crops(options.crops, options.crop_seconds)
    items = inputs_of(options, student)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    key = run_key(options.checkpoint, [i for i, _ in items])
    done = _finished(out, key)
    if done is not None:
        console.info(f"{out}: already embedded with this checkpoint; nothing to do")
        return done
    speaker = isinstance(student.input, FbankInput)
    writer = _Writer(out, key, len(items))
    for lo in track(
        range(writer.consumed, len(items), options.batch_size),
        description="embedding",
        total=-(-(len(items) - writer.consumed) // options.batch_size),
    ):
        chunk = items[lo : lo + options.batch_size]
        good, decoded = [], []
        for uid, x in chunk:
            try:
                decoded.append(student.graph_inputs([x])[0])
                good.append(uid)
            except DataError as exc:
                writer.skipped.append({"id": uid, "reason": str(exc)})
        if decoded:
            emb = student.embed_decoded(decoded, options.batch_size).numpy()
            writer.write(good, emb, speaker)
        writer.commit(lo + len(chunk))
    result = writer.finish(speaker)
    if speaker:  # how `cmkd score --embeddings` scores these crops: as the student's eval
        result.scoring = student.scoring.model_dump()
        atomic_write_json(out / INFO, {"key": key, **result.model_dump()})
    if writer.skipped:
        console.warn(f"{len(writer.skipped)} inputs could not be read: see {out / SKIPPED}")
    return result


class _Writer:
    """Rows into memory-mapped `.partial` files, the count in PROGRESS after each chunk."""

    def __init__(self, out: Path, key: str, n: int) -> None:
        self.out, self.key, self.n = out, key, n
        self.ids: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.consumed = 0
        self.maps: dict[str, np.ndarray] = {}
        progress = out / PROGRESS
        if progress.is_file():
            state = json.loads(progress.read_text())
            if state.get("key") == key and all(
                (out / f"{name}.partial").is_file() for name in state["files"]
            ):
                self.ids, self.skipped = state["ids"], state["skipped"]
                self.consumed = state["consumed"]
                self.maps = {
                    name: np.load(out / f"{name}.partial", mmap_mode="r+")
                    for name in state["files"]
                }
                console.info(f"{out}: resuming after {self.consumed} of {n} inputs")

    def _map(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.maps:
            path = self.out / f"{name}.partial"
            self.maps[name] = allocated_memmap(path, np.float32, (self.n, *shape))
        return self.maps[name]

    def write(self, ids: list[str], emb: np.ndarray, speaker: bool) -> None:
        rows = slice(len(self.ids), len(self.ids) + len(ids))
        if speaker:
            self._map(CROPS, emb.shape[1:])[rows] = emb
            emb = utterance_vectors(emb).numpy()
        self._map(EMBEDDINGS, emb.shape[1:])[rows] = emb
        self.ids.extend(ids)

    def commit(self, consumed: int) -> None:
        """Flush the rows, then record how far the inputs are done."""
        for m in self.maps.values():
            m.flush()
        self.consumed = consumed
        state = {
            "key": self.key,
            "consumed": consumed,
            "ids": self.ids,
            "skipped": self.skipped,
            "files": sorted(self.maps),
        }
        atomic_write_json(self.out / PROGRESS, state)

    def finish(self, speaker: bool) -> EmbedResult:
        if not self.ids:
            raise DataError(f"no input could be read (see {self.out / SKIPPED})")
        for name, m in self.maps.items():
            m.flush()
            partial = self.out / f"{name}.partial"
            if len(self.ids) == self.n:
                os.replace(partial, self.out / name)
            else:  # skipped inputs: keep the rows written
                with writing(self.out / name):
                    np.save(self.out / f".{name}.tmp.npy", np.asarray(m[: len(self.ids)]))
                os.replace(self.out / f".{name}.tmp.npy", self.out / name)
                partial.unlink()
        self.maps.clear()
        atomic_write_text(self.out / IDS, "".join(f"{i}\n" for i in self.ids))
        atomic_write_jsonl(self.out / SKIPPED, self.skipped)
        emb = np.load(self.out / EMBEDDINGS, mmap_mode="r")
        crops = np.load(self.out / CROPS, mmap_mode="r").shape[1] if speaker else None
        result = EmbedResult(
            out=str(self.out),
            inputs=self.n,
            embedded=len(self.ids),
            skipped=len(self.skipped),
            dim=int(emb.shape[1]),
            crops=crops,
            reused=False,
        )
        atomic_write_json(self.out / INFO, {"key": self.key, **result.model_dump()})
        (self.out / PROGRESS).unlink(missing_ok=True)
        return result


def _finished(out: Path, key: str) -> EmbedResult | None:
    info = out / INFO
    if not (info.is_file() and (out / EMBEDDINGS).is_file() and (out / IDS).is_file()):
        return None
    state = json.loads(info.read_text())
    if state.pop("key", None) != key:
        return None
    return EmbedResult.model_validate({**state, "reused": True})


def render(result: EmbedResult) -> str:
    crops = f" (+ {result.crops} crops each in crops.npy)" if result.crops else ""
    verb = "already embedded" if result.reused else "embedded"
    return (
        f"{verb} {result.embedded} of {result.inputs} inputs into {result.out}/embeddings.npy "
        f"[{result.embedded}, {result.dim}]{crops}; {result.skipped} skipped"
    )
