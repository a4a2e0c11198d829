"""VoxCeleb1 and VoxCeleb2 readers (paper A Sec. 4.1.1: train on VoxCeleb2 audio + 1 face
frame per video, test on VoxCeleb1 O/E/H).

VoxCeleb2: ROOT/{dev,test}/aac/idXXXXX/<video>/NNNNN.m4a and ROOT/{dev,test}/mp4/... .mp4.
The AAC audio is decoded to OUT/wav/<id>.wav (16 kHz mono); face frames go to
OUT/frames/<id>_KK.jpg. An utterance with only an mp4 takes its audio from the mp4.
VoxCeleb1: ROOT/wav/idXXXXX/<video>/NNNNN.wav, or ROOT/vox1_test_wav/ (+ vox1_dev_wav/ with
--merge-dev-test), each holding wav/ or the idXXXXX folders. 16 kHz mono wavs are used in
place; others are converted. Sample ids are `idXXXXX/<video>/NNNNN`, as in the trial lists.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from pydantic import Field

from cmkd_cli.data.manifest import Skipped
from cmkd_cli.errors import DataError, UsageError
from data_prep.common import (
    OfficialSize,
    Outcome,
    PrepareOptions,
    PrepareResult,
    Task,
    files_under,
    prepare_audio,
    prepare_frames,
    prepare_tasks,
    register_reader,
    require_dir,
    skip,
)

# The 40 VoxCeleb1 test speakers (the original "O" trial list): id10270 .. id10309.
VOX1_TEST_SPEAKERS = range(10270, 10310)

#: VoxCeleb2: Chung, Nagrani & Zisserman, "VoxCeleb2: Deep Speaker Recognition",
#: Interspeech 2018, Table 1 (dev 5,994 speakers / 1,092,009 utterances; test 118 / 36,237)
VOX2_SOURCE = "Chung et al., VoxCeleb2, Interspeech 2018, Table 1"
VOX2_SIZES = (
    OfficialSize(1_092_009, VOX2_SOURCE, ("dev",)),
    OfficialSize(5_994, VOX2_SOURCE, ("dev",), "speakers"),
    OfficialSize(36_237, VOX2_SOURCE, ("test",)),
    OfficialSize(118, VOX2_SOURCE, ("test",), "speakers"),
)
#: VoxCeleb1: Nagrani, Chung & Zisserman, "VoxCeleb: a large-scale speaker identification
#: dataset", Interspeech 2017 (1,251 speakers, 153,516 utterances; verification split: dev
#: 1,211 / 148,642, test 40 / 4,874), as on the VoxCeleb1 web page
VOX1_SOURCE = "Nagrani et al., VoxCeleb, Interspeech 2017 (verification split)"
VOX1_DEV = (
    OfficialSize(148_642, VOX1_SOURCE, ("dev",)),
    OfficialSize(1_211, VOX1_SOURCE, ("dev",), "speakers"),
)
VOX1_TEST = (
    OfficialSize(4_874, VOX1_SOURCE, ("test",)),
    OfficialSize(40, VOX1_SOURCE, ("test",), "speakers"),
)


class VoxCeleb2Options(PrepareOptions):
    frames: int = Field(
        1, ge=0, description="face frames per video: 1 = the middle, N evenly spaced, 0 = none"
    )
    meta: Path | None = Field(
        None, description="vox2_meta.csv (VoxCeleb2 ID, VGGFace2 ID, Gender, Set) for `gender`"
    )


class VoxCeleb1Options(PrepareOptions):
    merge_dev_test: bool = Field(
        False, description="read vox1_dev_wav/ and vox1_test_wav/ together (E and H lists)"
    )
    meta: Path | None = Field(
        None, description="vox1_meta.csv (VoxCeleb1 ID, VGGFace1 ID, Gender, ...) for `gender`"
    )


def read_gender_meta(path: Path) -> dict[str, str]:
    """Speaker id -> gender from a VoxCeleb meta table (comma or tab separated, padded cells)."""
    if not path.is_file():
        raise DataError(f"{path}: meta file does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    first = text.splitlines()[0] if text.strip() else ""
    rows = list(csv.reader(text.splitlines(), delimiter="\t" if "\t" in first else ","))
    if not rows:
        raise DataError(f"{path}: meta file is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "gender" not in header or "id" not in header[0]:
        raise DataError(f"{path}: header {rows[0]} lacks an ID first column and a Gender column")
    g = header.index("gender")
    return {
        row[0].strip(): row[g].strip().lower()
        for row in rows[1:]
        if len(row) > g and row[0].strip()
    }


def _utterance_id(rel: Path) -> tuple[str, str, str]:
    """(id, speaker, video) of a path idXXXXX/<video>/NNNNN.ext relative to its split root."""
    speaker, video = rel.parts[0], rel.parts[1]
    return rel.with_suffix("").as_posix(), speaker, f"{speaker}/{video}"


def _vox2_worker(task: Task) -> Outcome:
    p = task.params
    out = Path(p["out"])
    audio = prepare_audio(p["audio"], out, f"wav/{task.key}.wav", p["min_duration"])
    skipped: list[Skipped] = []
    notes, frames, decoded = list(audio.notes), [], audio.decoded
    if p["mp4"] is None:
        notes.append("no mp4 video")
    elif p["frames"] > 0:
        try:
            frames, n = prepare_frames(p["mp4"], out, f"frames/{task.key}", p["frames"])
            decoded += n
        except DataError as exc:
            skipped.append(skip(p["mp4"], exc))
            notes.append("no face frames (unreadable mp4)")
    record = {
        "id": task.key,
        "split": p["split"],
        "speaker": p["speaker"],
        "video": p["video"],
        "audio": audio.audio,
        "frames": frames,
        "duration": round(audio.duration, 4),
        "gender": p["gender"],
        "notes": notes or None,
    }
    outputs = audio.outputs + [str(out / f) for f in frames]
    return Outcome(key=task.key, record=record, skipped=skipped, outputs=outputs, decoded=decoded)


def _scan_tree(base: Path, ext: str, found: dict, slot: int, skipped: list[Skipped]) -> None:
    """Collect base/idXXXXX/<video>/NNNNN.ext into found[rel] (slot 0: audio, 1: video)."""
    for path in files_under(base, "*/*/*"):
        if path.suffix.lower() != ext:
            skipped.append(skip(path, f"unexpected file type (expected {ext})"))
            continue
        rel = path.relative_to(base).with_suffix("")
        found.setdefault(rel, [None, None])[slot] = path


@register_reader(
    "voxceleb2",
    VoxCeleb2Options,
    "Read VoxCeleb2 (ROOT/{dev,test}/aac/*/*/*.m4a + ROOT/{dev,test}/mp4/*/*/*.mp4); write "
    "OUT/wav/ (16 kHz mono), OUT/frames/*.jpg, OUT/manifest.jsonl and OUT/skipped.jsonl.",
)
def prepare_voxceleb2(opts: VoxCeleb2Options) -> PrepareResult:
    """VoxCeleb2 -> manifest: one record per utterance with audio, face frames, gender, split."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    gender = read_gender_meta(opts.meta) if opts.meta else {}
    tasks, skipped = [], []
    for split in ("dev", "test"):
        found: dict[Path, list[Path | None]] = {}
        _scan_tree(root / split / "aac", ".m4a", found, 0, skipped)
        _scan_tree(root / split / "mp4", ".mp4", found, 1, skipped)
        for rel, (m4a, mp4) in sorted(found.items()):
            key, speaker, video = _utterance_id(rel)
            audio_src = m4a or mp4
            inputs = tuple(str(p) for p in (m4a, mp4) if p is not None)
            params = {
                "split": split,
                "speaker": speaker,
                "video": video,
                "audio": str(audio_src),
                "mp4": str(mp4) if mp4 else None,
                "frames": opts.frames,
                "gender": gender.get(speaker),
                "out": str(opts.out),
                "min_duration": opts.min_duration,
            }
            tasks.append(Task(key, inputs, params))
    return prepare_tasks("voxceleb2", opts, tasks, _vox2_worker, skipped, started, VOX2_SIZES)


def _vox1_worker(task: Task) -> Outcome:
    p = task.params
    audio = prepare_audio(p["audio"], Path(p["out"]), f"wav/{task.key}.wav", p["min_duration"])
    record = {
        "id": task.key,
        "split": p["split"],
        "speaker": p["speaker"],
        "video": p["video"],
        "audio": audio.audio,
        "duration": round(audio.duration, 4),
        "gender": p["gender"],
        "notes": audio.notes or None,
    }
    return Outcome(key=task.key, record=record, outputs=audio.outputs, decoded=audio.decoded)


def _speaker_folder_root(folder: Path) -> Path:
    """`folder/wav` when present (as unzipped from vox1_*_wav.zip), else `folder`."""
    return folder / "wav" if (folder / "wav").is_dir() else folder


def vox1_split(speaker: str) -> str:
    """'test' for the 40 speakers of the original VoxCeleb1 test list, else 'dev'."""
    digits = speaker[2:] if speaker.startswith("id") else ""
    return "test" if digits.isdigit() and int(digits) in VOX1_TEST_SPEAKERS else "dev"


def _vox1_roots(root: Path, merge: bool) -> list[Path]:
    """The speaker folders to read; `--merge-dev-test` only applies to the two-zip layout."""
    if (root / "wav").is_dir():
        if merge:
            raise UsageError(
                f"--merge-dev-test: {root / 'wav'} is one folder, read as it is (it holds the "
                "dev and test speakers that were unpacked into it); the flag merges "
                "ROOT/vox1_dev_wav/ and ROOT/vox1_test_wav/: drop it"
            )
        return [root / "wav"]
    test, dev = root / "vox1_test_wav", root / "vox1_dev_wav"
    roots = [_speaker_folder_root(d) for d in ((dev, test) if merge else (test,)) if d.is_dir()]
    if not roots:
        wanted = "vox1_dev_wav/ or vox1_test_wav/" if merge else "vox1_test_wav/"
        raise DataError(f"{root}: holds neither wav/ nor {wanted} (VoxCeleb1 layout)")
    return roots


@register_reader(
    "voxceleb1",
    VoxCeleb1Options,
    "Read VoxCeleb1 (ROOT/wav/*/*/*.wav, or ROOT/vox1_test_wav [+ vox1_dev_wav with "
    "--merge-dev-test]); write OUT/manifest.jsonl, OUT/skipped.jsonl and OUT/wav/ for files "
    "that needed resampling or downmixing (16 kHz mono wavs are used in place).",
)
def prepare_voxceleb1(opts: VoxCeleb1Options) -> PrepareResult:
    """VoxCeleb1 -> manifest: one record per utterance; split 'test' for id10270..id10309."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    gender = read_gender_meta(opts.meta) if opts.meta else {}
    tasks: dict[str, Task] = {}
    skipped: list[Skipped] = []
    roots = _vox1_roots(root, opts.merge_dev_test)
    for base in roots:
        for path in files_under(base, "*/*/*"):
            if path.suffix.lower() != ".wav":
                skipped.append(skip(path, "unexpected file type (expected .wav)"))
                continue
            key, speaker, video = _utterance_id(path.relative_to(base))
            if key in tasks:
                skipped.append(skip(path, f"duplicate of {tasks[key].inputs[0]}"))
                continue
            params = {
                "split": vox1_split(speaker),
                "speaker": speaker,
                "video": video,
                "audio": str(path),
                "gender": gender.get(speaker),
                "out": str(opts.out),
                "min_duration": opts.min_duration,
            }
            tasks[key] = Task(key, (str(path),), params)
    test_only = roots == [_speaker_folder_root(root / "vox1_test_wav")]
    sizes = VOX1_TEST if test_only else VOX1_DEV + VOX1_TEST
    tasks_ = list(tasks.values())
    return prepare_tasks("voxceleb1", opts, tasks_, _vox1_worker, skipped, started, sizes)
