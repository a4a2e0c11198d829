"""`cmkd align-faces`: detect, select and align the face of every frame of a manifest.

Each record's `frames` (paths relative to the manifest's folder) go through MTCNN and the
5-point similarity alignment of `cmkd_cli.data.faces`; frame k of record ID becomes
OUT/faces/ID/k.png (112x112). OUT/manifest.jsonl holds the input records with
`faces: [aligned paths]` added (their paths `audio`, `image` and `frames` rewritten to stay
valid from OUT; `video` is an id, `idXXXXX/<YouTube id>`, and is kept as it is);
a record none of whose frames has a face is left out and listed in OUT/skipped.jsonl.

Resumable: an aligned face already on disk is not redone, and a frame that failed leaves
OUT/faces/ID/k.noface.txt (the reason) so a rerun does not detect it again. A missing
frame leaves no marker (it may appear later). OUT/config.json keeps the settings that shape
the faces (--min-prob, --max-side); a rerun with others is refused. Delete OUT to start over.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field
from rich.table import Table

from cmkd_cli import console
from cmkd_cli.data.faces import (
    ALIGNED_SIZE,
    MAX_SIDE,
    MIN_PROB,
    FaceDetector,
    align_images,
    load_image,
)
from cmkd_cli.data.manifest import (
    MANIFEST,
    SKIPPED,
    Record,
    Skipped,
    read_manifest,
    resolve,
    write_manifest,
)
from cmkd_cli.engine.lock import run_lock
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from cmkd_cli.progress import track
from cmkd_cli.schema import StrictModel
from data_prep.common import relative_to_out

FACES_DIR = "faces"
NO_FACE_SUFFIX = ".noface.txt"
CONFIG = "config.json"
#: record fields holding paths relative to the manifest's folder (`video` is an id)
PATH_FIELDS = ("audio", "image")


class AlignFacesOptions(StrictModel):
    manifest: Path = Field(description="manifest with `frames` (prepare)")
    out: Path = Field(description="output folder")
    batch_size: int = Field(16, description="images per MTCNN batch")
    device: str = Field("auto", description="auto|cpu|cuda")
    min_prob: float = Field(MIN_PROB, description="least face probability")
    max_side: int = Field(MAX_SIDE, description="downscale frames to this size for detection")


class SkippedRecord(Skipped):
    """A record left out of the face manifest: its first frame and why each frame failed."""

    id: str


class AlignFacesResult(StrictModel):
    manifest: str = Field(description="the face manifest written (OUT/manifest.jsonl)")
    skipped_file: str
    records: int = Field(description="records of the input manifest")
    records_with_faces: int
    records_skipped: int
    frames: int
    aligned: int = Field(description="faces aligned in this run (0 on a rerun)")
    reused: int = Field(description="aligned faces already on disk")
    failed: int = Field(description="frames without a face or unreadable (this run or before)")
    fail_reasons: dict[str, int]
    device: str
    seconds: float


@dataclass
class _Frame:
    record: int
    source: Path
    target: Path
    face: bool = False
    reason: str | None = None

    @property
    def marker(self) -> Path:
        return self.target.with_suffix(NO_FACE_SUFFIX)


def run(options: AlignFacesOptions) -> AlignFacesResult:
    """Align the faces of the manifest's frames into `out`; idempotent; one writer per `out`."""
    with run_lock(Path(options.out)):
        remove_stale_temporaries(options.out)
        return _align(options)


def _align(options: AlignFacesOptions) -> AlignFacesResult:
    """The work of `run` once `out` is locked."""
    started = time.perf_counter()
    manifest, out, batch_size = options.manifest, options.out, options.batch_size
    device, min_prob, max_side = options.device, options.min_prob, options.max_side
    _check_options(manifest, out, batch_size, min_prob, max_side)
    dev = _device(device)
    records = read_manifest(manifest)
    _check_config(out, {"min_prob": min_prob, "max_side": max_side, "size": ALIGNED_SIZE})
    frames = [
        _Frame(i, resolve(manifest, f), out / FACES_DIR / _safe_id(r.id) / f"{k:02d}.png")
        for i, r in enumerate(records)
        for k, f in enumerate(r.frames)
    ]
    todo, reused = [], 0
    for fr in frames:
        if fr.target.is_file():
            fr.face, reused = True, reused + 1
        elif fr.marker.is_file():
            fr.reason = fr.marker.read_text().strip()
        else:
            todo.append(fr)
    console.info(
        f"align-faces: {len(frames)} frames of {len(records)} records; "
        f"{len(frames) - len(todo)} done before, {len(todo)} to detect on {dev}"
    )
    aligned = 0
    if todo:
        detector = FaceDetector(dev, max_side=max_side, batch_size=batch_size)
        chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        for chunk in track(chunks, description=f"aligning faces (batches of {batch_size})"):
            aligned += _align_chunk(detector, chunk, min_prob)

    kept, skipped = _face_records(records, frames, manifest, out)
    write_manifest(out, kept, skipped)
    failed = [fr.reason for fr in frames if not fr.face and fr.reason]
    return AlignFacesResult(
        manifest=str(out / MANIFEST),
        skipped_file=str(out / SKIPPED),
        records=len(records),
        records_with_faces=len(kept),
        records_skipped=len(skipped),
        frames=len(frames),
        aligned=aligned,
        reused=reused,
        failed=len(failed),
        fail_reasons=dict(Counter(_reason_kind(r) for r in failed)),
        device=str(dev),
        seconds=round(time.perf_counter() - started, 2),
    )


def _align_chunk(detector: FaceDetector, chunk: list[_Frame], min_prob: float) -> int:
    """Load, detect and align one batch of frames; write faces or no-face markers."""
    loaded, images = [], []
    for fr in chunk:
        try:
            images.append(load_image(fr.source))
            loaded.append(fr)
        except DataError as exc:
            fr.reason = str(exc)
            if fr.source.exists():  # a missing frame may appear later: no marker
                atomic_write_text(fr.marker, fr.reason + "\n")
    done = 0
    for fr, face in zip(loaded, align_images(detector, images, min_prob), strict=True):
        if face is None:
            fr.reason = f"no face detected in {fr.source}"
            atomic_write_text(fr.marker, fr.reason + "\n")
            continue
        with atomic_path(fr.target) as tmp:
            face.save(tmp, format="PNG")
        fr.face, done = True, done + 1
    return done


def _face_records(
    records: list[Record], frames: list[_Frame], manifest: Path, out: Path
) -> tuple[list[Record], list[SkippedRecord]]:
    """Records with `faces` added (paths valid from `out`), and those without any face."""
    by_record: dict[int, list[_Frame]] = {}
    for fr in frames:
        by_record.setdefault(fr.record, []).append(fr)
    kept, skipped = [], []
    for i, rec in enumerate(records):
        mine = by_record.get(i, [])
        faces = [relative_to_out(out, fr.target) for fr in mine if fr.face]
        if not faces:
            first = str(mine[0].source) if mine else str(resolve(manifest, MANIFEST))
            reasons = [fr.reason or "" for fr in mine] or [f"record {rec.id} has no `frames`"]
            skipped.append(SkippedRecord(path=first, reason="; ".join(reasons), id=rec.id))
            continue
        row = rec.model_dump(exclude_none=True)
        for key in PATH_FIELDS:
            if key in row:
                row[key] = relative_to_out(out, resolve(manifest, row[key]))
        row["frames"] = [relative_to_out(out, fr.source) for fr in mine]
        kept.append(Record.model_validate({**row, "faces": faces}))
    return kept, skipped


def _reason_kind(reason: str) -> str:
    if reason.startswith("no face"):
        return "no face detected"
    if reason.endswith("does not exist"):
        return "missing file"
    return "not a readable image"


def _safe_id(record_id: str) -> str:
    """A relative folder for a record id: `/` kept as sub-folders, other odd characters
    replaced, plus a hash of the raw id whenever it had to be changed (no collisions)."""
    parts = [re.sub(r"[^\w.\-]", "_", p) for p in record_id.split("/")]
    parts = [p if p.strip(".") else "_" for p in parts]
    safe = "/".join(parts)
    if safe != record_id:
        safe += "-" + hashlib.sha1(record_id.encode()).hexdigest()[:8]
    return safe


def _check_options(
    manifest: Path, out: Path, batch_size: int, min_prob: float, max_side: int
) -> None:
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if not 0.0 < min_prob <= 1.0:
        raise UsageError(f"--min-prob {min_prob}: must be in (0, 1]")
    if max_side < 48:
        raise UsageError(f"--max-side {max_side}: must be at least 48 pixels")
    src = Path(manifest) / MANIFEST if Path(manifest).is_dir() else Path(manifest)
    if src.resolve() == (Path(out) / MANIFEST).resolve():
        raise UsageError(f"--out {out}: would overwrite the input manifest {src}; pick another")


def _check_config(out: Path, config: dict[str, float]) -> None:
    """Record the settings that shape the faces in OUT/config.json; a rerun with other
    settings would mix two kinds of faces, so it is refused."""
    path = out / CONFIG
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in config if before.get(k) != config[k]]
        if changed:
            k = changed[0]
            raise UsageError(
                f"--out {out}: its faces were made with {k}={before.get(k)}, not {config[k]}; "
                "use another --out or delete this one"
            )
        return
    atomic_write_json(path, config)


def _device(spec: str) -> torch.device:
    """`auto` (CUDA when visible, else CPU), `cpu`, `cuda` or `cuda:N`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec != "cpu" and not re.fullmatch(r"cuda(:\d+)?", spec):
        raise UsageError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: no CUDA device is visible")
    return torch.device(spec)


def render(result: AlignFacesResult) -> Table:
    rows = [
        ["face manifest", result.manifest],
        [
            "records / with faces / skipped",
            f"{result.records} / {result.records_with_faces} / {result.records_skipped}",
        ],
        ["frames", result.frames],
        ["aligned now / reused", f"{result.aligned} / {result.reused}"],
        ["failed frames", result.failed],
    ]
    rows += [[f"  {reason}", n] for reason, n in result.fail_reasons.items()]
    rows += [["device", result.device], ["seconds", result.seconds]]
    return console.table("align-faces", ["", "value"], rows)
