"""AVE (Tian et al. 2018), as paper B uses it (C2KD appendix A, C.1): 28 event classes; the
audio of the annotated event segment and its frames, in the dataset's own splits.

Layout (AVE_Dataset as unpacked): ROOT/Annotations.txt, ROOT/trainSet.txt, valSet.txt,
testSet.txt, one line per annotated event `Category&VideoID&Quality&StartTime&EndTime`
(seconds; a header line is recognised and skipped), and the clips ROOT/AVE/<VideoID>.mp4 (or
--videos). The class list is every category of Annotations.txt (sorted; the split files when
it is absent).

One record per annotation line, as the dataset counts its samples (4,143 lines for 3,339 /
402 / 402 train / val / test samples): "One video may contain different audio-visual
events" (the dataset's ReadMe), so 45 videos carry two or three lines (a man and a woman
speaking over the same seconds, a banjo and a mandolin, ...) and 18 of them are listed in
two splits. A record's id is `<VideoID>/<category slug>` (unique per line in the official
files; a second line of the same video and category with another segment gets the segment
appended, an exact repeat of a line is reported and left out), its `video` the VideoID.
Each record holds the mp4's audio as 16 kHz mono OUT/wav/<id>.wav with `start`/`end`
marking the event (the dataset cuts it there), and frames at `--fps` (1) inside the event,
OUT/frames/<id>_KK.jpg, taken at the middle of each second. A line whose segment is empty
(the official files hold one, `Church bell&VWi2ENBuTbw&good&0&0`) has no event to cut and
is reported in OUT/skipped.jsonl.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Container
from pathlib import Path

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
    prepare_tasks,
    register_reader,
    require_dir,
    skip,
)

SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
#: Tian et al., "Audio-Visual Event Localization in Unconstrained Videos", ECCV 2018, Sec. 3:
#: 4,143 samples of 28 event categories; its split files trainSet/valSet/testSet.txt hold
#: 3,339 / 402 / 402 of them (one line each)
AVE_SOURCE = "Tian et al., ECCV 2018, Sec. 3 + its split files"
AVE_SIZES = (
    OfficialSize(3_339, AVE_SOURCE, ("train",)),
    OfficialSize(402, AVE_SOURCE, ("val",)),
    OfficialSize(402, AVE_SOURCE, ("test",)),
    OfficialSize(28, AVE_SOURCE, (), "classes"),
)


class AVEOptions(PrepareOptions):
    videos: Path | None = Field(None, description="folder of <VideoID>.mp4 (default ROOT/AVE)")
    fps: float = Field(1.0, gt=0, description="frames per second of the event segment")


def parse_line(line: str, where: str) -> tuple[str, str, str, float, float] | None:
    """(category, video id, quality, start, end) of one annotation line; None for a header.

    An empty segment (start = end, as one official line has) is a DataError: no event."""
    parts = [p.strip() for p in line.rstrip("\n").split("&")]
    if len(parts) != 5:
        raise DataError(f"{where}: expected Category&VideoID&Quality&Start&End, got {line!r}")
    category, vid, quality, start, end = parts
    if vid == "VideoID":
        return None
    try:
        t0, t1 = float(start), float(end)
    except ValueError:
        raise DataError(f"{where}: start/end {start!r}/{end!r} are not numbers") from None
    if not 0 <= t0 < t1:
        raise DataError(f"{where}: event segment {t0:g}-{t1:g} s is empty or negative")
    return category, vid, quality, t0, t1


def read_annotations(
    path: Path, skipped: list[Skipped]
) -> list[tuple[str, str, str, float, float]]:
    """The lines of an AVE annotation file; a malformed line is reported and left out."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = parse_line(line, f"{path}:{n}")
        except DataError as exc:
            skipped.append(skip(f"{path}:{n}", exc))
            continue
        if row is not None:
            rows.append(row)
    return rows


def category_slug(category: str) -> str:
    """A file-name-safe form of a category: `Male speech, man speaking` ->
    `male_speech_man_speaking`."""
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_") or "_"


def record_id(vid: str, category: str, t0: float, t1: float, taken: Container[str]) -> str:
    """The id of one annotation line: `<vid>/<slug>`, or with `-<start>-<end>` appended when
    that video and category were already given another segment."""
    base = f"{vid}/{category_slug(category)}"
    return base if base not in taken else f"{base}-{t0:g}-{t1:g}"


def event_times(start: float, end: float, fps: float) -> list[float]:
    """Frame times inside [start, end): the middle of each 1/fps slice (at least one)."""
    n = max(1, math.floor((end - start) * fps + 1e-6))
    return [start + (k + 0.5) / fps for k in range(n)]


@register_reader(
    "ave",
    AVEOptions,
    "Read AVE (ROOT/{trainSet,valSet,testSet}.txt, ROOT/Annotations.txt, ROOT/AVE/*.mp4); "
    "write OUT/wav/ (16 kHz), OUT/frames/ (1 fps in the event), OUT/manifest.jsonl, "
    "OUT/classes.txt and OUT/skipped.jsonl.",
)
def prepare_ave(opts: AVEOptions) -> PrepareResult:
    """AVE -> manifest: one record per annotation line (video, event segment, label, split)."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    videos = Path(opts.videos) if opts.videos else root / "AVE"
    skipped: list[Skipped] = []
    tasks: dict[str, Task] = {}
    lines: dict[tuple[str, str, float, float], str] = {}  # (vid, category, t0, t1) -> where
    categories: set[str] = set()
    for split, name in SPLIT_FILES.items():
        if not (root / name).is_file():
            raise DataError(f"{root / name}: AVE split file does not exist")
        for category, vid, quality, t0, t1 in read_annotations(root / name, skipped):
            categories.add(category)
            line = (vid, category, t0, t1)
            if line in lines:
                skipped.append(
                    skip(root / name, f"{vid} {category} {t0:g}-{t1:g} s repeats {lines[line]}")
                )
                continue
            lines[line] = f"{name} ({split})"
            key = record_id(vid, category, t0, t1, tasks)
            mp4 = videos / f"{vid}.mp4"
            record = {
                "split": split,
                "label": category,
                "video": vid,
                "quality": quality,
                "start": t0,
                "end": t1,
            }
            times = event_times(t0, t1, opts.fps)
            tasks[key] = audio_visual_task(key, mp4, mp4, opts, record, times=times, start=t0)
    annotations = root / "Annotations.txt"
    if annotations.is_file():
        categories = {row[0] for row in read_annotations(annotations, [])} or categories
    tasks_ = list(tasks.values())
    result = prepare_tasks("ave", opts, tasks_, audio_visual_worker, skipped, started, AVE_SIZES)
    write_classes(opts.out, [(c, c) for c in sorted(categories)])
    return result.model_copy(update={"extra": {"classes": len(categories)}})
