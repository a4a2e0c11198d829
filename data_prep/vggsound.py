"""VGGSound (Chen et al. 2020), as paper B uses it (C2KD appendix A, C.1): 10 s YouTube clips
of 309 sound classes, the dataset's own train/test partition, and a seeded choice of 50
classes ("we randomly choose 50 classes").

Layout: ROOT/vggsound.csv (or --csv), rows `ytid,start,label,split` (no header; labels with
commas are quoted), and the clips ROOT/video/<ytid>_<start>.mp4 (or --videos), the start
written as in the csv or zero-padded to 6 digits (`abc_000030.mp4`, the released files).
`--classes N` keeps a seeded subset of N classes (0: all); the chosen list is written to
OUT/classes.txt. A validation split is carved from train (`--val-fraction`, seeded). Each
clip gives its audio (16 kHz mono OUT/wav/) and `--frames` (3) evenly spaced frames.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import Field

from cmkd_cli.data.manifest import Skipped, write_classes
from cmkd_cli.errors import DataError
from data_prep.common import (
    OfficialSize,
    PrepareOptions,
    PrepareResult,
    Task,
    audio_visual_task,
    audio_visual_worker,
    pick_seeded,
    prepare_tasks,
    register_reader,
    require_dir,
    skip,
)


class VGGSoundOptions(PrepareOptions):
    csv: Path | None = Field(None, description="the label csv (default ROOT/vggsound.csv)")
    videos: Path | None = Field(None, description="folder of <ytid>_<start>.mp4 (ROOT/video)")
    classes: int = Field(50, ge=0, description="seeded subset of this many classes (0: all)")
    frames: int = Field(3, ge=1, description="evenly spaced frames per clip")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of train kept for validation")
    seed: int = Field(0, description="seed of the class subset and the validation split")


def read_csv(path: Path, skipped: list[Skipped]) -> list[tuple[str, int, str, str]]:
    """(ytid, start, label, split) rows; a malformed row is reported and left out."""
    if not path.is_file():
        raise DataError(f"{path}: VGGSound csv does not exist")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.reader(fh), 1):
            if not row or (n == 1 and row[0].strip().lower() in ("ytid", "# ytid", "youtube_id")):
                continue
            try:
                ytid, start, label, split = (c.strip() for c in row)
                rows.append((ytid, int(float(start)), label, split))
            except ValueError:
                skipped.append(skip(f"{path}:{n}", f"expected ytid,start,label,split, got {row}"))
    return rows


#: Chen et al., "VGGSound: A Large-scale Audio-Visual Dataset", ICASSP 2020: 309 classes
VGGSOUND_CLASSES = OfficialSize(309, "Chen et al., ICASSP 2020", (), "classes")


def choose_classes(labels: set[str], count: int, seed: int) -> list[str]:
    """`count` labels drawn with numpy's default_rng(seed) from the sorted list (0: all)."""
    ordered = sorted(labels)
    if count == 0 or count >= len(ordered):
        return ordered
    picks = np.random.default_rng(seed).choice(len(ordered), size=count, replace=False)
    return sorted(ordered[i] for i in picks)


def clip_path(videos: Path, ytid: str, start: int) -> Path:
    """The clip file: `<ytid>_<start:06d>.mp4` (released name) or `<ytid>_<start>.mp4`."""
    for name in (f"{ytid}_{start:06d}.mp4", f"{ytid}_{start}.mp4"):
        if (videos / name).is_file():
            return videos / name
    return videos / f"{ytid}_{start:06d}.mp4"


@register_reader(
    "vggsound",
    VGGSoundOptions,
    "Read VGGSound (ROOT/vggsound.csv + ROOT/video/<ytid>_<start>.mp4), optionally a seeded "
    "class subset; write OUT/wav/, OUT/frames/, OUT/manifest.jsonl, OUT/classes.txt, skipped.",
)
def prepare_vggsound(opts: VGGSoundOptions) -> PrepareResult:
    """VGGSound -> manifest: one record per clip of the chosen classes."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    videos = Path(opts.videos) if opts.videos else root / "video"
    skipped: list[Skipped] = []
    rows = read_csv(Path(opts.csv) if opts.csv else root / "vggsound.csv", skipped)
    bad = [r for r in rows if r[3] not in ("train", "test")]
    skipped += [skip(f"{r[0]}_{r[1]}", f"unknown split {r[3]!r}") for r in bad]
    rows = [r for r in rows if r[3] in ("train", "test")]
    chosen = choose_classes({r[2] for r in rows}, opts.classes, opts.seed)
    keep = set(chosen)
    rows = [r for r in rows if r[2] in keep]
    train_keys = [f"{r[0]}_{r[1]:06d}" for r in rows if r[3] == "train"]
    val = pick_seeded(train_keys, round(len(train_keys) * opts.val_fraction), opts.seed)
    tasks: dict[str, Task] = {}
    for ytid, start, label, split in rows:
        key = f"{ytid}_{start:06d}"
        if key in tasks:
            skipped.append(skip(key, "clip listed twice in the csv; kept the first"))
            continue
        mp4 = clip_path(videos, ytid, start)
        record = {
            "split": "val" if key in val else split,
            "label": label,
            "video": ytid,
            "video_start": start,  # seconds into the YouTube video (the clip starts there)
        }
        tasks[key] = audio_visual_task(key, mp4, mp4, opts, record, frames=opts.frames)
    # the csv is the official clip list: how many of its clips this copy holds
    listed = [
        OfficialSize(
            n, "vggsound.csv (clips listed)", (split,) if split == "test" else ("train", "val")
        )
        for split, n in sorted(Counter(r[3] for r in rows).items())
    ]
    sizes = listed + ([VGGSOUND_CLASSES] if opts.classes in (0, VGGSOUND_CLASSES.count) else [])
    result = prepare_tasks(
        "vggsound", opts, list(tasks.values()), audio_visual_worker, skipped, started, sizes
    )
    write_classes(opts.out, [(c, c) for c in chosen])
    return result.model_copy(update={"extra": {"classes": len(chosen)}})
