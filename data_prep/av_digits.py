"""AV-digits: our real audio-visual digit benchmark from FSDD recordings and MNIST test images.

Each Free Spoken Digit Dataset recording (`{digit}_{speaker}_{take}.wav`, 8 kHz, 6 speakers
x 50 takes x 10 digits) is paired with an MNIST test image of the same digit, in the spirit
of AV-MNIST: the two modalities share only the class, so both distillation directions
(A->V, V->A) can be measured on real data.

Pairing (fixed, seeded): the MNIST test images of digit d are permuted by
`default_rng([seed, d])`; the recordings of digit d, ordered by (take, speaker), take the
permuted images in turn (300 recordings per digit, about 1,000 images: no image is used
twice). Ordering by take first makes a run with `--takes N` pair exactly as the full set.
The MNIST index is written into every record (`image_index`), the image to OUT/images/.

`--unpaired` also writes the MNIST images no recording is paired with (about 7,000) as
image-only records of split `unpaired`: what an image teacher may learn from besides the
training pairs (recipe av-digits-lowdata).

Splits: `--split take` (seen speakers) follows FSDD's own convention, takes 0-4 = test,
takes 5-9 = val, the rest train; `--split speaker` (unseen speakers) holds out
`--test-speaker` (theo) and `--val-speaker` (yweweler).

Layout: ROOT/fsdd/recordings/*.wav and ROOT/mnist/t10k-{images-idx3,labels-idx1}-ubyte[.gz]
(../shared/data), or any copy given by --fsdd and --mnist.
"""

from __future__ import annotations

import gzip
import re
import time
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from cmkd_cli.data.manifest import Skipped, write_classes
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.io import atomic_path
from data_prep.common import (
    Outcome,
    PrepareOptions,
    PrepareResult,
    Task,
    files_under,
    prepare_audio,
    prepare_tasks,
    register_reader,
    relative_to_out,
    require_dir,
    skip,
)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")
TEST_TAKES, VAL_TAKES = range(0, 5), range(5, 10)
IDX_MAGIC = {"images": 0x0803, "labels": 0x0801}
FSDD_RATE = 8000


class AVDigitsOptions(PrepareOptions):
    min_duration: float = Field(0.1, ge=0, description="skip audio shorter than this (s)")
    fsdd: Path | None = Field(None, description="FSDD wav folder (default ROOT/fsdd/recordings)")
    mnist: Path | None = Field(None, description="MNIST IDX folder (default ROOT/mnist)")
    split: Literal["take", "speaker"] = Field(
        "take", description="take: takes 0-4 test, 5-9 val (seen speakers); speaker: held out"
    )
    test_speaker: str = Field("theo", description="--split speaker: the test speaker")
    val_speaker: str = Field("yweweler", description="--split speaker: the validation speaker")
    takes: int = Field(50, ge=1, description="use takes 0..N-1 only (a reduced benchmark)")
    seed: int = Field(0, description="seed of the recording -> image pairing")
    unpaired: bool = Field(
        False,
        description="also write every MNIST image no recording is paired with (split "
        "`unpaired`, image only): data for an image teacher (av-digits-lowdata)",
    )


def read_idx(path: Path, kind: str) -> np.ndarray:
    """An MNIST IDX file (gzip or raw) as uint8: images `[N, rows, cols]`, labels `[N]`."""
    if not path.is_file():
        raise DataError(f"{path}: MNIST {kind} file does not exist")
    try:
        blob = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    if len(blob) < 4 or int.from_bytes(blob[:4], "big") != IDX_MAGIC[kind]:
        raise DataError(f"{path}: not an IDX {kind} file (bad magic number)")
    ndim = blob[3]
    dims = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    if len(blob) - start != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file: {len(blob) - start} bytes for shape {dims}")
    return np.frombuffer(blob, dtype=np.uint8, offset=start).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return folder / f"{stem}.gz"


def load_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test set (t10k) from `folder`: images `[N, 28, 28]` and labels `[N]`."""
    images = read_idx(_idx_file(folder, "t10k-images-idx3-ubyte"), "images")
    labels = read_idx(_idx_file(folder, "t10k-labels-idx1-ubyte"), "labels")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} MNIST images but {len(labels)} labels")
    return images, labels


def pair_images(
    recordings: list[tuple[int, str, int]], labels: np.ndarray, seed: int
) -> dict[tuple[int, str, int], int]:
    """(digit, speaker, take) -> MNIST index of the same digit (module docstring: pairing)."""
    pairs: dict[tuple[int, str, int], int] = {}
    for digit in range(10):
        pool = np.flatnonzero(labels == digit)
        if len(pool) == 0:
            raise DataError(f"MNIST holds no image of digit {digit}")
        perm = np.random.default_rng([seed, digit]).permutation(pool)
        mine = sorted((r for r in recordings if r[0] == digit), key=lambda r: (r[2], r[1]))
        for k, rec in enumerate(mine):
            pairs[rec] = int(perm[k % len(perm)])
    return pairs


def _split(speaker: str, take: int, opts: AVDigitsOptions) -> str:
    if opts.split == "speaker":
        return {opts.test_speaker: "test", opts.val_speaker: "val"}.get(speaker, "train")
    return "test" if take in TEST_TAKES else "val" if take in VAL_TAKES else "train"


def _write_png(image: np.ndarray, path: Path) -> None:
    if path.is_file() and path.stat().st_size > 0:
        return
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _worker(task: Task) -> Outcome:
    p = task.params
    out = Path(p["out"])
    audio = prepare_audio(
        task.inputs[0], out, f"wav/{task.key}.wav", p["min_duration"], sample_rate=FSDD_RATE
    )
    record = {
        "id": task.key,
        "split": p["split"],
        "label": p["label"],
        "speaker": p["speaker"],
        "take": p["take"],
        "audio": audio.audio,
        "image": p["image"],
        "image_index": p["image_index"],
        "duration": round(audio.duration, 4),
        "notes": audio.notes or None,
    }
    outputs = audio.outputs + [str(out / p["image"])]
    return Outcome(key=task.key, record=record, outputs=outputs, decoded=audio.decoded)


@register_reader(
    "av-digits",
    AVDigitsOptions,
    "Pair FSDD recordings (ROOT/fsdd/recordings) with MNIST test images (ROOT/mnist) of the "
    "same digit; write OUT/images/*.png, OUT/manifest.jsonl, OUT/classes.txt, skipped.jsonl.",
)
def prepare_av_digits(opts: AVDigitsOptions) -> PrepareResult:
    """FSDD x MNIST -> manifest: one record per recording with its paired image and split."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    fsdd = require_dir(opts.fsdd or root / "fsdd" / "recordings", "--fsdd")
    images, labels = load_mnist(Path(opts.mnist or root / "mnist"))
    found: dict[tuple[int, str, int], Path] = {}
    skipped: list[Skipped] = []
    for path in files_under(fsdd, "*"):
        m = FSDD_NAME.match(path.stem)
        if path.suffix.lower() != ".wav" or not m:
            skipped.append(skip(path, "not an FSDD recording name ({digit}_{speaker}_{take}.wav)"))
            continue
        rec = (int(m[1]), m[2], int(m[3]))
        if rec[2] < opts.takes:
            found[rec] = path
    if opts.split == "speaker":
        speakers = {s for _, s, _ in found}
        for flag, who in (
            ("--test-speaker", opts.test_speaker),
            ("--val-speaker", opts.val_speaker),
        ):
            if who not in speakers:
                raise UsageError(f"{flag} {who}: no such FSDD speaker in {fsdd}")
    pairs = pair_images(list(found), labels, opts.seed)
    tasks = []
    for rec, path in sorted(found.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        digit, speaker, take = rec
        png = Path(opts.out) / "images" / f"{pairs[rec]:05d}.png"
        _write_png(images[pairs[rec]], png)
        params = {
            "split": _split(speaker, take, opts),
            "label": DIGIT_NAMES[digit],
            "speaker": speaker,
            "take": take,
            "image": relative_to_out(Path(opts.out), png),
            "image_index": pairs[rec],
            "out": str(opts.out),
            "min_duration": opts.min_duration,
        }
        tasks.append(Task(path.stem, (str(path),), params))

    def more() -> list[Outcome]:
        return unpaired_images(images, labels, set(pairs.values()), Path(opts.out))

    more_records = more if opts.unpaired else None
    result = prepare_tasks("av-digits", opts, tasks, _worker, skipped, started, more=more_records)
    write_classes(opts.out, [(name, name) for name in DIGIT_NAMES])
    return result


def unpaired_images(
    images: np.ndarray, labels: np.ndarray, paired: set[int], out: Path
) -> list[Outcome]:
    """A record (split `unpaired`, no audio) for every MNIST image no recording uses."""
    outcomes = []
    for index in np.flatnonzero(~np.isin(np.arange(len(labels)), list(paired))):
        png = out / "images" / f"{index:05d}.png"
        _write_png(images[index], png)
        record = {
            "id": f"mnist-{index:05d}",
            "split": "unpaired",
            "label": DIGIT_NAMES[int(labels[index])],
            "image": relative_to_out(out, png),
            "image_index": int(index),
        }
        outcomes.append(Outcome(key=record["id"], record=record, outputs=[str(png)]))
    return outcomes
