"""MUSAN reader: the noise source of paper A's robustness test (Sec. 4.1.1, Eq. 13).

Reads ROOT/{music,noise,speech}/<source>/**/*.{wav,flac,ogg} (other files such as
ANNOTATIONS or LICENSE are ignored). Writes OUT/manifest.jsonl with one record per file
(`id` = path without extension, `category` = music|noise|speech, `source`), OUT/skipped.jsonl,
and OUT/wav/ for files that needed resampling to 16 kHz or downmixing.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from cmkd_cli.data.audio import AUDIO_EXTS
from cmkd_cli.errors import UsageError
from data_prep.common import (
    OfficialSize,
    Outcome,
    PrepareOptions,
    PrepareResult,
    Task,
    files_under,
    prepare_audio,
    prepare_tasks,
    register_reader,
    require_dir,
)

CATEGORIES = ("music", "noise", "speech")
#: Snyder, Chen & Povey, "MUSAN: A Music, Speech, and Noise Corpus", arXiv:1510.08484
#: (2015), Table 1: 660 music, 426 speech and 930 noise files
MUSAN_FILES = {"music": 660, "speech": 426, "noise": 930}
MUSAN_SOURCE = "Snyder et al., MUSAN, arXiv:1510.08484, Table 1"


class MusanOptions(PrepareOptions):
    categories: list[str] = Field(
        default_factory=lambda: list(CATEGORIES),
        description="MUSAN categories to read (music, noise, speech)",
    )


def _worker(task: Task) -> Outcome:
    p = task.params
    audio = prepare_audio(p["audio"], Path(p["out"]), f"wav/{task.key}.wav", p["min_duration"])
    record = {
        "id": task.key,
        "split": "train",
        "label": p["category"],
        "category": p["category"],
        "source": p["source"],
        "audio": audio.audio,
        "duration": round(audio.duration, 4),
        "notes": audio.notes or None,
    }
    return Outcome(key=task.key, record=record, outputs=audio.outputs, decoded=audio.decoded)


@register_reader(
    "musan",
    MusanOptions,
    "Read MUSAN (ROOT/{music,noise,speech}/<source>/*.{wav,flac,ogg}); write "
    "OUT/manifest.jsonl (with category), OUT/skipped.jsonl and OUT/wav/ for converted files.",
)
def prepare_musan(opts: MusanOptions) -> PrepareResult:
    """MUSAN -> manifest of noise/music/speech files with their category."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    unknown = sorted(set(opts.categories) - set(CATEGORIES))
    if unknown:
        raise UsageError(f"--categories: unknown {unknown}; choose from {list(CATEGORIES)}")
    tasks = []
    for category in opts.categories:
        for path in files_under(root / category, "**/*"):
            if path.suffix.lower() not in AUDIO_EXTS:
                continue
            rel = path.relative_to(root)
            params = {
                "category": category,
                "source": rel.parts[1] if len(rel.parts) > 2 else category,
                "audio": str(path),
                "out": str(opts.out),
                "min_duration": opts.min_duration,
            }
            tasks.append(Task(rel.with_suffix("").as_posix(), (str(path),), params))
    sizes = [OfficialSize(MUSAN_FILES[c], MUSAN_SOURCE, label=c) for c in opts.categories]
    return prepare_tasks("musan", opts, tasks, _worker, (), started, sizes)
