"""CREMA-D (Cao et al. 2014), as paper B uses it (C2KD appendix A, C.1): 6 emotions from the
actors' voices and faces; 6,698 training and 744 test clips of 7,442.

Layout: ROOT/AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav and
ROOT/VideoFlash/<same>.flv (FLV; decoded by content with PyAV). The label is the emotion
code of the name (NEU, HAP, SAD, FEA, DIS, ANG). A clip is its wav (16 kHz mono, used in
place; other rates converted) and `--frames` evenly spaced frames of its video (default 3,
about 1 fps; the dataset samples the 1 frame of appendix C.1 from them).

Splits: CREMA-D ships none; the "standard" 6,698/744 split of OGM-GE/PMR is a random one.
`--test-list FILE` takes the test clips from a file (one clip name per line, first column of
a csv such as OGM-GE's test.csv); otherwise the test set is the seeded subset of
round(N * 744 / 7442) clips (744 of the full 7,442). A validation split is carved from the
training clips (`--val-fraction`, seeded), so model selection never looks at the test set.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from pydantic import Field

from cmkd_cli.data.manifest import Skipped, write_classes
from cmkd_cli.errors import DataError
from data_prep.common import (
    OfficialSize,
    PrepareOptions,
    PrepareResult,
    audio_visual_task,
    audio_visual_worker,
    files_under,
    pick_seeded,
    prepare_tasks,
    register_reader,
    require_dir,
    skip,
)

EMOTIONS = {
    "NEU": "neutral",
    "HAP": "happy",
    "SAD": "sad",
    "FEA": "fear",
    "DIS": "disgust",
    "ANG": "angry",
}
CLIP_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
TEST_SHARE = 744 / 7442  # the standard split's test share
#: Cao et al., "CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset", IEEE Trans.
#: Affective Computing 2014: 7,442 clips of 91 actors, 6 emotions
CREMA_D_SOURCE = "Cao et al., IEEE TAC 2014"
CREMA_D_SIZES = (
    OfficialSize(7_442, CREMA_D_SOURCE),
    OfficialSize(91, CREMA_D_SOURCE, (), "speakers"),
)


class CremaDOptions(PrepareOptions):
    frames: int = Field(3, ge=1, description="evenly spaced frames per video")
    test_list: Path | None = Field(None, description="file of test clip names (default: seeded)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of train kept for validation")
    seed: int = Field(0, description="seed of the test and validation subsets")


def read_name_list(path: Path) -> set[str]:
    """Clip names from a list file: the first comma/space-separated field of each line."""
    if not path.is_file():
        raise DataError(f"{path}: --test-list file does not exist")
    names = set()
    for line in path.read_text().splitlines():
        first = re.split(r"[,\s]", line.strip(), maxsplit=1)[0] if line.strip() else ""
        if first:
            names.add(Path(first).stem)
    return names


def assign_splits(
    clips: list[str], test_list: set[str] | None, val_fraction: float, seed: int
) -> dict[str, str]:
    """clip -> train|val|test (module docstring: the standard split, validation from train)."""
    if test_list is None:
        test = pick_seeded(clips, round(len(clips) * TEST_SHARE), seed)
    else:
        test = set(clips) & test_list
    rest = [c for c in clips if c not in test]
    val = pick_seeded(rest, round(len(rest) * val_fraction), seed + 1)
    return {c: "test" if c in test else "val" if c in val else "train" for c in clips}


@register_reader(
    "crema-d",
    CremaDOptions,
    "Read CREMA-D (ROOT/AudioWAV/*.wav + ROOT/VideoFlash/*.flv); write OUT/frames/*.jpg, "
    "OUT/wav/ (when not 16 kHz mono), OUT/manifest.jsonl, OUT/classes.txt, OUT/skipped.jsonl.",
)
def prepare_crema_d(opts: CremaDOptions) -> PrepareResult:
    """CREMA-D -> manifest: one record per clip with its emotion, actor, audio and frames."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    require_dir(root / "AudioWAV", "--root (AudioWAV/)")
    skipped: list[Skipped] = []
    clips: dict[str, Path] = {}
    for path in files_under(root / "AudioWAV", "*"):
        m = CLIP_NAME.match(path.stem)
        if path.suffix.lower() != ".wav" or not m or m[3] not in EMOTIONS:
            skipped.append(skip(path, "not a CREMA-D clip name (Actor_Sentence_Emotion_Level.wav)"))
            continue
        clips[path.stem] = path
    test_list = read_name_list(opts.test_list) if opts.test_list else None
    splits = assign_splits(sorted(clips), test_list, opts.val_fraction, opts.seed)
    tasks = []
    for name, wav in sorted(clips.items()):
        actor, sentence, emotion, level = CLIP_NAME.match(name).groups()
        flv = root / "VideoFlash" / f"{name}.flv"
        record = {
            "split": splits[name],
            "label": emotion,
            "speaker": actor,
            "sentence": sentence,
            "level": level,
        }
        tasks.append(audio_visual_task(name, wav, flv, opts, record, frames=opts.frames))
    result = prepare_tasks(
        "crema-d", opts, tasks, audio_visual_worker, skipped, started, CREMA_D_SIZES
    )
    write_classes(opts.out, list(EMOTIONS.items()))
    return result
