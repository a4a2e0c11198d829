"""Machinery shared by every `cmkd prepare` reader: workers, resume, skip report, manifest.

A reader scans its dataset's layout into `Task`s (one per manifest record), names a
module-level worker `Task -> Outcome`, and calls `prepare_tasks`. This module then
- answers each task whose inputs (size, mtime) and parameters are unchanged since an earlier
  run from the journal OUT/.prepare-state.jsonl (appended as tasks finish, so a killed run
  resumes where it stopped and a second run decodes nothing);
- runs the other tasks in `workers` processes behind a progress bar;
- turns any error raised for a file into a line of OUT/skipped.jsonl, never a crash of the
  whole run (files mapping to one sample id: the first is kept, the others skipped);
- writes OUT/manifest.jsonl and OUT/skipped.jsonl atomically and returns a `PrepareResult`,
  whose `completeness` compares what was written with the dataset's published sizes
  (`OfficialSize`, each citing where its figure comes from), so a partial copy shows at once;
  a run that keeps no record fails (exit 1) saying so, with skipped.jsonl written;
- stops on SIGINT/SIGTERM with the journal intact (a rerun continues), workers cancelled.
`prepare_audio` and `prepare_frames` are the per-file steps most readers need.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from cmkd_cli.data import audio
from cmkd_cli.data.manifest import SKIPPED, Record, Skipped, write_manifest
from cmkd_cli.data.video import save_frames
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.interrupts import ignore_in_worker
from cmkd_cli.io import atomic_write_jsonl, writing
from cmkd_cli.progress import track
from cmkd_cli.registry import Registry
from cmkd_cli.schema import StrictModel

STATE = ".prepare-state.jsonl"
T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """min(4, CPU count): the default size of every worker pool."""
    return max(1, min(4, os.cpu_count() or 1))


class PrepareOptions(StrictModel):
    """Options every reader takes; a reader subclasses this with its own fields."""

    root: Path = Field(description="the dataset's root folder (as downloaded and unpacked)")
    out: Path = Field(description="output folder for manifest.jsonl, skipped.jsonl, wav/ ...")
    workers: int = Field(default_factory=default_workers, ge=1, description="worker processes")
    min_duration: float = Field(0.5, ge=0, description="skip audio shorter than this many seconds")


@dataclass(frozen=True)
class OfficialSize:
    """A size of a dataset as published (`source` says where), checked against the manifest.

    Counts the records of the manifest `splits` (all when empty; `label`: only records with
    that label, e.g. a MUSAN category) as `what`: records, distinct speakers or distinct
    labels (classes). `name` is the split's name in the source when it differs (e.g. CIFAR's
    `train`, which the reader divides into train and val)."""

    count: int
    source: str
    splits: tuple[str, ...] = ()
    what: Literal["records", "speakers", "classes"] = "records"
    label: str | None = None
    name: str | None = None

    def found(self, records: Sequence[Record]) -> int:
        rows = [
            r
            for r in records
            if (not self.splits or r.split in self.splits)
            and (self.label is None or r.label == self.label)
        ]
        if self.what == "speakers":
            return len({r.speaker for r in rows if r.speaker})
        if self.what == "classes":
            return len({r.label for r in rows if r.label is not None})
        return len(rows)


class SizeCheck(StrictModel):
    """Found against expected for one published size."""

    split: str
    what: str
    found: int
    expected: int
    source: str


def check_sizes(records: Sequence[Record], sizes: Iterable[OfficialSize]) -> list[SizeCheck]:
    """One `SizeCheck` per published size."""
    return [
        SizeCheck(
            split=size.name
            or ("+".join(size.splits) if size.splits else "all")
            + (f" ({size.label})" if size.label else ""),
            what=size.what,
            found=size.found(records),
            expected=size.count,
            source=size.source,
        )
        for size in sizes
    ]


class PrepareResult(StrictModel):
    """What a `prepare` run did; printed as a table, or as JSON with --json."""

    dataset: str
    root: str
    out: str
    manifest: str
    skipped_file: str
    records: int
    skipped: int
    decoded: int = Field(description="files decoded in this run (0 on an unchanged rerun)")
    reused: int = Field(description="records taken from an earlier run without decoding")
    speakers: int
    hours: float
    splits: dict[str, int]
    notes: dict[str, int] = Field(description="conversions applied (resampled, downmixed, ...)")
    skip_reasons: dict[str, int]
    extra: dict[str, Any] = Field(default_factory=dict)
    completeness: list[SizeCheck] = Field(
        default_factory=list, description="found vs expected per split, from published sizes"
    )
    seconds: float


@dataclass(frozen=True)
class Task:
    """One unit of reader work: `inputs` are the files it reads, `params` JSON-able settings."""

    key: str
    inputs: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


class Outcome(BaseModel):
    """A finished task: its record (None when skipped), files it skipped, files it relies on."""

    key: str
    record: dict[str, Any] | None = None
    skipped: list[Skipped] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    decoded: int = 0


@dataclass(frozen=True)
class Reader:
    """A registered `cmkd prepare NAME` reader."""

    name: str
    options: type[PrepareOptions]
    prepare: Callable[[Any], PrepareResult]
    summary: str


READERS: Registry[Reader] = Registry("reader", package="data_prep")


def register_reader(name: str, options: type[PrepareOptions], summary: str):
    """Decorator: make `prepare(options) -> PrepareResult` available as `cmkd prepare NAME`.

    `summary` is the command's help: what it reads and what it writes.
    """

    def decorator(fn: Callable[[Any], PrepareResult]) -> Callable[[Any], PrepareResult]:
        READERS.register(name)(Reader(name, options, fn, summary))
        return fn

    return decorator


# ---------------------------------------------------------------- small helpers for readers


def skip(path: str | os.PathLike[str], error: BaseException | str) -> Skipped:
    """A skipped.jsonl entry; a message starting with the path has that prefix removed."""
    text, prefix = str(error), f"{path}: "
    return Skipped(path=str(path), reason=text[len(prefix) :] if text.startswith(prefix) else text)


def reason_kind(reason: str) -> str:
    """The leading phrase of a skip reason, for counting ("truncated wav", "empty file")."""
    return reason.split(":")[0].split(" (")[0].strip()


def relative_to_out(out_dir: Path, path: Path) -> str:
    """A manifest path: relative (posix) inside `out_dir`, absolute elsewhere."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(out_dir)).as_posix()
    except ValueError:
        return os.path.abspath(path)


def require_dir(path: Path, option: str) -> Path:
    if not Path(path).is_dir():
        raise UsageError(f"{option} {path}: folder does not exist")
    return Path(path)


def files_under(folder: Path, pattern: str) -> list[Path]:
    """Sorted regular files matching `pattern` below `folder` (none when it is absent)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))


def _newer_or_same(output: Path, source: Path) -> bool:
    return output.stat().st_mtime_ns >= source.stat().st_mtime_ns


@dataclass
class AudioResult:
    audio: str
    duration: float
    notes: list[str]
    decoded: int
    outputs: list[str]


def prepare_audio(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    wav_rel: str,
    min_duration: float,
    sample_rate: int = 16000,
) -> AudioResult:
    """Make `source` usable as 16 kHz mono audio; raise DataError to have it skipped.

    A wav/flac already at `sample_rate` and mono is decoded once to check it and used in
    place (absolute path); anything else is decoded, resampled/downmixed and written to
    OUT/`wav_rel`, which is reused when complete and newer than `source`. Audio shorter
    than `min_duration` seconds is refused.
    """
    source, out_dir = Path(source), Path(out_dir)
    probe = audio.probe_audio(source, sample_rate)
    _check_duration(source, probe.duration, min_duration)
    in_place = (
        source.suffix.lower() in (".wav", ".flac")
        and probe.source_rate == sample_rate
        and probe.source_channels == 1
    )
    if in_place:
        samples, info = audio.load_audio(source, sample_rate)
        _check_duration(source, info.duration, min_duration)
        where = os.path.abspath(source)
        return AudioResult(where, info.duration, [], 1, [where])
    dst = out_dir / wav_rel
    if dst.is_file() and _newer_or_same(dst, source) and audio.is_decoded_wav(dst, sample_rate):
        duration, decoded = audio.probe_audio(dst).duration, 0
    else:
        samples, info = audio.load_audio(source, sample_rate)
        _check_duration(source, info.duration, min_duration)
        audio.write_wav(dst, samples, sample_rate)
        duration, decoded = info.duration, 1
    return AudioResult(relative_to_out(out_dir, dst), duration, probe.notes(), decoded, [str(dst)])


def _check_duration(path: Path, duration: float, min_duration: float) -> None:
    if duration < min_duration:
        raise DataError(f"{path}: too short: {duration:.3f} s < --min-duration {min_duration:g} s")


def prepare_frames(
    video: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    stem_rel: str,
    n: int,
    times: Sequence[float] | None = None,
) -> tuple[list[str], int]:
    """Write `n` evenly spaced frames of `video` (or the frames at `times` seconds, then
    n = len(times)) as OUT/`stem_rel`_KK.jpg (reused when newer).

    Returns (manifest paths, number of videos decoded: 0 or 1); raises DataError.
    """
    video, out_dir = Path(video), Path(out_dir)
    n = n if times is None else len(times)
    outs = [out_dir / f"{stem_rel}_{k:02d}.jpg" for k in range(n)]
    done = all(o.is_file() and o.stat().st_size > 0 and _newer_or_same(o, video) for o in outs)
    if not done:
        save_frames(video, outs, times=times)
    return [relative_to_out(out_dir, o) for o in outs], int(not done)


def audio_visual_task(
    key: str,
    audio: Path,
    video: Path,
    opts: PrepareOptions,
    record: dict[str, Any],
    frames: int = 1,
    times: list[float] | None = None,
    start: float | None = None,
) -> Task:
    """The `Task` of one clip for `audio_visual_worker` (its inputs: the audio and video)."""
    params = {
        "audio": str(audio),
        "video": str(video),
        "frames": frames,
        "times": times,
        "start": start,
        "out": str(opts.out),
        "min_duration": opts.min_duration,
        "record": record,
    }
    return Task(key, tuple(dict.fromkeys((str(audio), str(video)))), params)


def audio_visual_worker(task: Task) -> Outcome:
    """One audio-visual clip (AVE, CREMA-D, VGGSound): audio to OUT/wav/, frames to OUT/frames/.

    `task.params`: `audio` (file whose audio is used), `video`, `frames` (count) or `times`
    (seconds), `start` (an event segment's start: the audio must reach it), `out`,
    `min_duration` and `record` (the record's other fields). A missing or unreadable video
    skips the clip, reported under the video's path.
    """
    p = task.params
    out = Path(p["out"])
    audio = prepare_audio(p["audio"], out, f"wav/{task.key}.wav", p["min_duration"])
    start = p.get("start")
    if start is not None and audio.duration <= start:
        raise DataError(
            f"{p['audio']}: audio ends at {audio.duration:.2f} s, before the event starts "
            f"({start} s)"
        )
    try:
        frames, n = prepare_frames(
            p["video"], out, f"frames/{task.key}", p["frames"], p.get("times")
        )
    except DataError as exc:
        return Outcome(key=task.key, skipped=[skip(p["video"], exc)], decoded=audio.decoded)
    record = {
        "id": task.key,
        **p["record"],
        "audio": audio.audio,
        "frames": frames,
        "duration": round(audio.duration, 4),
        "notes": audio.notes or None,
    }
    outputs = audio.outputs + [str(out / f) for f in frames]
    return Outcome(key=task.key, record=record, outputs=outputs, decoded=audio.decoded + n)


def check_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a decodable image file; raise DataError for a missing, empty,
    truncated or non-image file (the whole image is decoded, not only its header), or a
    float image (e.g. a 32-bit TIFF) with NaN/Inf pixels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            pixels = np.asarray(img) if img.mode == "F" else None
            size = img.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if pixels is not None and not np.isfinite(pixels).all():
        bad = int(pixels.size - np.count_nonzero(np.isfinite(pixels)))
        raise DataError(f"{path}: non-finite pixels: {bad} of {pixels.size} are NaN or Inf")
    return size


def image_worker(task: Task) -> Outcome:
    """One image used in place (CrisisMMD, Tiny-ImageNet): decoded once to check it; the
    record is `task.params["record"]` plus `image` (the path), `width` and `height`."""
    width, height = check_image(task.inputs[0])
    record = {
        "id": task.key,
        **task.params["record"],
        "image": task.inputs[0],
        "width": width,
        "height": height,
    }
    return Outcome(key=task.key, record=record, outputs=[task.inputs[0]])


def pick_seeded(keys: Iterable[str], count: int, seed: int) -> set[str]:
    """The `count` keys with the smallest stable hash of (seed, key): a seeded subset that
    does not depend on the order of `keys`, and barely moves when a few keys are missing."""
    return set(sorted(keys, key=lambda k: (audio.stable_seed(seed, k), k))[: max(0, count)])


# ---------------------------------------------------------------- workers and resume


def _limit_threads() -> None:
    """Worker initializer: one compute thread per process (the pool is the parallelism);
    signals are left to the parent, which cancels the pool.

    The environment covers torch imported later; torch already imported while the parent's
    main module was re-imported (spawn does that before the initializer) is set directly.
    """
    ignore_in_worker()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """In-process work gets one torch thread too (when torch is loaded), restored after."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch:
            torch.set_num_threads(before)


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int, description: str = "working"
) -> Iterator[R]:
    """`fn` over `items` in order, in `workers` processes (in-process for 1), with progress.

    Each worker computes with one thread. `fn` must be a module-level function (or a
    functools.partial of one). Workers are spawned (fresh interpreters), never forked from a
    parent whose compute threads may be running.
    """
    if workers <= 1 or len(items) <= 1:
        with _one_torch_thread():
            yield from track(map(fn, items), total=len(items), description=description)
        return
    chunk = max(1, min(64, len(items) // (workers * 8)))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_limit_threads) as pool:
        try:
            results = pool.map(fn, items, chunksize=chunk)
            yield from track(results, total=len(items), description=description)
        except BaseException:  # a signal or an error: drop the queued work, keep nothing waiting
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _guarded(worker: Callable[[Task], Outcome], task: Task) -> Outcome:
    """The worker's outcome; any error it raises skips this task only (with the reason)."""
    path = task.inputs[0] if task.inputs else task.key
    try:
        return worker(task)
    except DataError as exc:
        return Outcome(key=task.key, skipped=[skip(path, exc)])
    except Exception as exc:  # noqa: BLE001 - one bad file never fails the whole prepare
        return Outcome(key=task.key, skipped=[skip(path, f"{type(exc).__name__}: {exc}")])


def _without_duplicates(tasks: Sequence[Task]) -> tuple[list[Task], list[Outcome]]:
    """The first task of each sample id; the others as skipped outcomes naming the kept one."""
    first: dict[str, Task] = {}
    dropped = []
    for t in tasks:
        if t.key not in first:
            first[t.key] = t
            continue
        kept = first[t.key].inputs[0] if first[t.key].inputs else t.key
        path = t.inputs[0] if t.inputs else t.key
        reason = f"duplicate: same sample id {t.key!r} as {kept}, which is kept"
        dropped.append(
            Outcome(key=f"{t.key}#duplicate-{len(dropped)}", skipped=[skip(path, reason)])
        )
    return list(first.values()), dropped


def _fingerprint(dataset: str, task: Task) -> str:
    stats = []
    for p in task.inputs:
        try:
            st = os.stat(p)
            stats.append([p, st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append([p, None, None])
    blob = json.dumps([dataset, task.params, stats], sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _read_state(path: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """The journal, tolerant of a last line cut short by a killed run."""
    state: dict[str, tuple[str, dict[str, Any]]] = {}
    if not path.is_file():
        return state
    with open(path) as fh:
        for line in fh:
            try:
                row = json.loads(line)
                state[row["key"]] = (row["fingerprint"], row["outcome"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return state


def run_tasks(
    dataset: str,
    out_dir: Path,
    tasks: Sequence[Task],
    worker: Callable[[Task], Outcome],
    workers: int,
) -> tuple[list[Outcome], int]:
    """Run `tasks` (resuming from the journal); returns (outcomes in task order, then the
    skipped duplicates; reused count)."""
    tasks, duplicates = _without_duplicates(tasks)
    keys = [t.key for t in tasks]
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE
    state = _read_state(state_path)
    prints = {t.key: _fingerprint(dataset, t) for t in tasks}
    done: dict[str, Outcome] = {}
    for t in tasks:
        fp, row = state.get(t.key, (None, None))
        if fp == prints[t.key] and row is not None:
            outcome = Outcome.model_validate(row)
            if all(Path(p).exists() for p in outcome.outputs):
                done[t.key] = outcome.model_copy(update={"decoded": 0})
    reused = len(done)
    todo = [t for t in tasks if t.key not in done]
    with open(state_path, "a") as journal:
        for outcome in parallel_map(partial(_guarded, worker), todo, workers, f"{dataset}"):
            done[outcome.key] = outcome
            row = {"key": outcome.key, "fingerprint": prints[outcome.key]}
            with writing(state_path):
                journal.write(json.dumps({**row, "outcome": outcome.model_dump()}) + "\n")
                journal.flush()
    atomic_write_jsonl(
        state_path,
        ({"key": k, "fingerprint": prints[k], "outcome": done[k].model_dump()} for k in keys),
    )
    return [done[k] for k in keys] + duplicates, reused


def finish(
    dataset: str,
    opts: PrepareOptions,
    outcomes: Iterable[Outcome],
    reused: int,
    started: float,
    scan_skipped: Iterable[Skipped] = (),
    extra: dict[str, Any] | None = None,
    sizes: Iterable[OfficialSize] = (),
) -> PrepareResult:
    """Write OUT/manifest.jsonl + OUT/skipped.jsonl atomically and summarise the run
    (with found vs expected for each published size in `sizes`)."""
    outcomes = list(outcomes)
    records = [Record.model_validate(o.record) for o in outcomes if o.record is not None]
    skipped = list(scan_skipped) + [s for o in outcomes for s in o.skipped]
    if not records:
        atomic_write_jsonl(Path(opts.out) / SKIPPED, [s.model_dump() for s in skipped])
        reasons = Counter(reason_kind(s.reason) for s in skipped).most_common(3)
        why = ", ".join(f"{n} {r}" for r, n in reasons) or "nothing to read"
        raise DataError(
            f"{dataset}: no record kept from {opts.root} ({why}); see "
            f"{Path(opts.out) / SKIPPED}; no manifest written"
        )
    manifest = write_manifest(opts.out, records, skipped)
    notes = Counter(n for r in records for n in (getattr(r, "notes", None) or []))
    return PrepareResult(
        dataset=dataset,
        root=str(opts.root),
        out=str(opts.out),
        manifest=str(manifest),
        skipped_file=str(Path(opts.out) / SKIPPED),
        records=len(records),
        skipped=len(skipped),
        decoded=sum(o.decoded for o in outcomes),
        reused=reused,
        speakers=len({r.speaker for r in records if r.speaker}),
        hours=round(sum(r.duration or 0.0 for r in records) / 3600, 4),
        splits=dict(sorted(Counter(r.split for r in records).items())),
        notes=dict(sorted(notes.items())),
        skip_reasons=dict(sorted(Counter(reason_kind(s.reason) for s in skipped).items())),
        extra=extra or {},
        completeness=check_sizes(records, sizes),
        seconds=round(time.perf_counter() - started, 3),
    )


def prepare_tasks(
    dataset: str,
    opts: PrepareOptions,
    tasks: Sequence[Task],
    worker: Callable[[Task], Outcome],
    scan_skipped: Iterable[Skipped] = (),
    started: float | None = None,
    sizes: Iterable[OfficialSize] = (),
    more: Callable[[], list[Outcome]] | None = None,
) -> PrepareResult:
    """The whole of a simple reader after its scan: run the tasks, write the manifest
    (with the records `more()` adds, made in this process after the tasks)."""
    started = time.perf_counter() if started is None else started
    if not tasks:
        raise DataError(f"{opts.root}: no {dataset} files found in the expected layout")
    outcomes, reused = run_tasks(dataset, Path(opts.out), tasks, worker, opts.workers)
    outcomes += more() if more is not None else []
    return finish(dataset, opts, outcomes, reused, started, scan_skipped, sizes=sizes)
