"""Tiny-ImageNet (Le and Yang 2015), paper A Sec. 4.2's second text -> image benchmark: 200
classes of 64x64 images, 500 training and 50 validation images each.

Layout (tiny-imagenet-200.zip unpacked): ROOT/tiny-imagenet-200/ (or ROOT itself) with
wnids.txt (the 200 class ids), words.txt (`wnid<TAB>name, synonym, ...`),
train/<wnid>/images/*.JPEG and val/images/*.JPEG + val/val_annotations.txt
(`file<TAB>wnid<TAB>box`). The unlabelled test/ folder is not read. Images are used in place.
Splits: the official validation images are the test split (their labels are public; paper A
reports on them), and a validation split is carved from train (`--val-fraction`, seeded).
The record's label is the wnid; OUT/classes.txt pairs it with the first name of words.txt
(the name prompts are made of).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import Field

from cmkd_cli.data.manifest import Skipped, write_classes
from cmkd_cli.errors import DataError
from data_prep.common import (
    OfficialSize,
    PrepareOptions,
    PrepareResult,
    Task,
    files_under,
    image_worker,
    pick_seeded,
    prepare_tasks,
    register_reader,
    require_dir,
    skip,
)

FOLDER = "tiny-imagenet-200"


class TinyImageNetOptions(PrepareOptions):
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of train kept for validation")
    seed: int = Field(0, description="seed of the validation split")


def read_wnids(root: Path) -> list[str]:
    path = root / "wnids.txt"
    if not path.is_file():
        raise DataError(f"{path}: Tiny-ImageNet class list does not exist")
    return [w.strip() for w in path.read_text().splitlines() if w.strip()]


def read_words(root: Path) -> dict[str, str]:
    """wnid -> its first name in words.txt ("goldfish, Carassius auratus" -> "goldfish")."""
    path = root / "words.txt"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, names = line.partition("\t")
        if names.strip():
            out[wnid.strip()] = names.split(",")[0].strip()
    return out


def read_val_annotations(root: Path, skipped: list[Skipped]) -> dict[str, str]:
    """val image file name -> wnid from val/val_annotations.txt."""
    path = root / "val" / "val_annotations.txt"
    if not path.is_file():
        raise DataError(f"{path}: Tiny-ImageNet validation labels do not exist")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2:
            if line.strip():
                skipped.append(skip(f"{path}:{n}", "expected file<TAB>wnid<TAB>box"))
            continue
        out[parts[0].strip()] = parts[1].strip()
    return out


#: Stanford CS231n's Tiny ImageNet (tiny-imagenet-200): 200 classes, 500 training and 50
#: validation images each (100,000 / 10,000); the validation images are the test split here
TINY_SOURCE = "CS231n Tiny ImageNet (tiny-imagenet-200)"
TINY_IMAGENET_SIZES = (
    OfficialSize(100_000, TINY_SOURCE, ("train", "val"), name="train"),
    OfficialSize(10_000, TINY_SOURCE, ("test",), name="val (test here)"),
    OfficialSize(200, TINY_SOURCE, (), "classes"),
)


@register_reader(
    "tiny-imagenet",
    TinyImageNetOptions,
    "Read Tiny-ImageNet (ROOT/tiny-imagenet-200/{wnids.txt,words.txt,train,val}); write "
    "OUT/manifest.jsonl (images used in place), OUT/classes.txt and OUT/skipped.jsonl.",
)
def prepare_tiny_imagenet(opts: TinyImageNetOptions) -> PrepareResult:
    """Tiny-ImageNet -> manifest: train (minus a carved val) and the official val as test."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    root = root / FOLDER if (root / FOLDER).is_dir() else root
    wnids = read_wnids(root)
    known = set(wnids)
    words = read_words(root)
    skipped: list[Skipped] = []
    entries: list[tuple[str, Path, str, str]] = []  # key, image, wnid, split
    for wnid in wnids:
        for image in files_under(root / "train" / wnid / "images", "*"):
            entries.append((f"train/{image.stem}", image, wnid, "train"))
    train_keys = [e[0] for e in entries]
    val = pick_seeded(train_keys, round(len(train_keys) * opts.val_fraction), opts.seed)
    for name, wnid in sorted(read_val_annotations(root, skipped).items()):
        image = root / "val" / "images" / name
        if wnid not in known:
            skipped.append(skip(image, f"class {wnid} is not in wnids.txt"))
            continue
        entries.append((f"val/{Path(name).stem}", image, wnid, "test"))
    tasks = []
    for key, image, wnid, split in entries:
        split = "val" if key in val else split
        params = {"record": {"split": split, "label": wnid}}
        tasks.append(Task(key, (os.path.abspath(image),), params))
    result = prepare_tasks(
        "tiny-imagenet", opts, tasks, image_worker, skipped, started, TINY_IMAGENET_SIZES
    )
    write_classes(opts.out, [(w, words.get(w, w)) for w in wnids])
    return result
