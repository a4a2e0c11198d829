"""CN-Celeb reader (paper A Sec. 4.1: cross-dataset test set; genres such as interview,
singing, movie, vlog).

Reads ROOT/data/idXXXXX/<genre>-<video>-<utt>.flac (split `dev` for the speakers in
ROOT/dev/dev.lst, or all when that list is absent; `heldout` for the others), and the
evaluation lists ROOT/eval/lists/enroll.lst (`id00800-enroll enroll/id00800-enroll.wav`) and
ROOT/eval/lists/trials.lst (`id00800-enroll test/id00800-singing-01-005.wav 1`), whose files
live under ROOT/eval/. The lists name `.wav` files while CN-Celeb_flac ships
eval/enroll/*.flac and eval/test/*.flac: an entry is resolved by its folder and stem, to the
file of that stem with any audio extension (the wespeaker and Kaldi CN-Celeb recipes do the
same by rewriting the names). Writes OUT/manifest.jsonl (ids `idXXXXX/<genre>-<video>-<utt>`,
`enroll/<stem>`, `test/<stem>`), OUT/skipped.jsonl, and OUT/trials.txt in the VoxCeleb form
`<1|0> <enroll record id> <test record id>` for the trials whose two files were kept. Lists
that keep no trial at all are an error (exit 1) naming the first entry that was not found.
"""

from __future__ import annotations

import time
from pathlib import Path

from cmkd_cli.data.audio import AUDIO_EXTS
from cmkd_cli.data.manifest import Skipped
from cmkd_cli.errors import DataError
from cmkd_cli.io import atomic_write_text
from data_prep.common import (
    OfficialSize,
    Outcome,
    PrepareOptions,
    PrepareResult,
    Task,
    files_under,
    finish,
    prepare_audio,
    register_reader,
    require_dir,
    run_tasks,
    skip,
)

TRIALS = "trials.txt"
#: Fan et al., "CN-Celeb: a challenging Chinese speaker recognition dataset", ICASSP 2020
#: (abstract: "more than 130,000 utterances from 1,000 Chinese celebrities")
CNCELEB_SPEAKERS = OfficialSize(1_000, "Fan et al., ICASSP 2020", ("dev", "heldout"), "speakers")
_LABELS = {"1": 1, "target": 1, "0": 0, "nontarget": 0}


class CNCelebOptions(PrepareOptions):
    pass


def parse_name(stem: str) -> tuple[str, str, str] | None:
    """(genre, video, utterance) of `<genre>-<video>-<utt>`, or None when it does not match."""
    parts = stem.rsplit("-", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def _worker(task: Task) -> Outcome:
    p = task.params
    audio = prepare_audio(p["audio"], Path(p["out"]), f"wav/{task.key}.wav", p["min_duration"])
    record = {k: p[k] for k in ("split", "speaker", "video", "genre") if p.get(k) is not None}
    record |= {
        "id": task.key,
        "audio": audio.audio,
        "duration": round(audio.duration, 4),
        "notes": audio.notes or None,
    }
    return Outcome(key=task.key, record=record, outputs=audio.outputs, decoded=audio.decoded)


def _read_list(path: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of `columns` fields; a malformed row names its line."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns:
            raise DataError(f"{path}:{n}: expected {columns} fields, found {len(fields)}")
        rows.append(fields)
    return rows


def _data_tasks(root: Path, common: dict, skipped: list[Skipped]) -> list[Task]:
    dev_list = root / "dev" / "dev.lst"
    dev = set(dev_list.read_text().split()) if dev_list.is_file() else None
    tasks = []
    for path in files_under(root / "data", "*/*"):
        speaker = path.parent.name
        parsed = parse_name(path.stem)
        if path.suffix.lower() not in AUDIO_EXTS or parsed is None:
            skipped.append(skip(path, "file name does not match <genre>-<video>-<utt>.flac"))
            continue
        genre, video, _ = parsed
        split = "dev" if dev is None or speaker in dev else "heldout"
        params = {"split": split, "speaker": speaker, "video": f"{speaker}/{genre}-{video}"}
        params |= {"genre": genre, "audio": str(path), **common}
        tasks.append(Task(f"{speaker}/{path.stem}", (str(path),), params))
    return tasks


def eval_files(eval_dir: Path) -> dict[str, Path]:
    """`<folder>/<stem>` -> audio file, for the files of eval/enroll/ and eval/test/."""
    return {
        f"{folder}/{path.stem}": path
        for folder in ("enroll", "test")
        for path in reversed(files_under(eval_dir / folder, "*"))  # the first name wins
        if path.suffix.lower() in AUDIO_EXTS
    }


def resolve_entry(eval_dir: Path, rel: str, files: dict[str, Path]) -> tuple[str, Path]:
    """(record id `<folder>/<stem>`, audio file) of a list entry such as
    `test/id00800-singing-01-005.wav`: the named file when it exists, else the file of the
    same folder and stem with another audio extension (the .flac the corpus ships), else the
    named path (reported missing later)."""
    key = Path(rel).with_suffix("").as_posix()
    named = eval_dir / rel
    return key, named if named.is_file() else files.get(key, named)


def _eval_tasks(root: Path, common: dict) -> tuple[list[Task], list[tuple[int, str, str]]]:
    """Tasks for the enroll and test files, and the trials as (label, enroll id, test id)."""
    lists = root / "eval" / "lists"
    enroll_lst, trials_lst = lists / "enroll.lst", lists / "trials.lst"
    if not enroll_lst.is_file() and not trials_lst.is_file():
        return [], []
    if not (enroll_lst.is_file() and trials_lst.is_file()):
        raise DataError(f"{lists}: needs both enroll.lst and trials.lst (one is missing)")
    tasks, enroll_ids = {}, {}
    files = eval_files(root / "eval")
    for enroll_id, rel in _read_list(enroll_lst, 2):
        key, audio = resolve_entry(root / "eval", rel, files)
        enroll_ids[enroll_id] = key
        params = {"split": "enroll", "speaker": enroll_id.split("-")[0]}
        params |= {"audio": str(audio), **common}
        tasks[key] = Task(key, (params["audio"],), params)
    trials = []
    for n, (enroll_id, rel, label) in enumerate(_read_list(trials_lst, 3), 1):
        if label.lower() not in _LABELS or enroll_id not in enroll_ids:
            what = f"label {label!r}" if enroll_id in enroll_ids else f"enroll id {enroll_id!r}"
            raise DataError(f"{trials_lst}:{n}: unknown {what}")
        key, audio = resolve_entry(root / "eval", rel, files)
        trials.append((_LABELS[label.lower()], enroll_ids[enroll_id], key))
        if key not in tasks:
            speaker, _, rest = Path(rel).stem.partition("-")
            parsed = parse_name(rest)
            params = {"split": "test", "speaker": speaker, "audio": str(audio)}
            if parsed:
                genre, video, _ = parsed
                params |= {"genre": genre, "video": f"{speaker}/{genre}-{video}"}
            tasks[key] = Task(key, (params["audio"],), params | common)
    return list(tasks.values()), trials


def _listed_sizes(root: Path, eval_tasks: list[Task]) -> list[OfficialSize]:
    """What the corpus's own lists name: dev speakers, enrollment and test files."""
    sizes = []
    dev_list = root / "dev" / "dev.lst"
    if dev_list.is_file():
        dev = len(set(dev_list.read_text().split()))
        sizes.append(OfficialSize(dev, "dev/dev.lst", ("dev",), "speakers"))
    for split, lst in (("enroll", "enroll.lst"), ("test", "trials.lst")):
        n = sum(t.params["split"] == split for t in eval_tasks)
        if n:
            sizes.append(OfficialSize(n, f"eval/lists/{lst}", (split,)))
    return sizes


@register_reader(
    "cnceleb",
    CNCelebOptions,
    "Read CN-Celeb (ROOT/data/idXXXXX/<genre>-<video>-<utt>.flac, ROOT/eval/lists/"
    "{enroll,trials}.lst with their enroll/ and test/ files); write OUT/manifest.jsonl (with "
    "genre), OUT/skipped.jsonl, OUT/trials.txt, and OUT/wav/ for files that needed converting.",
)
def prepare_cnceleb(opts: CNCelebOptions) -> PrepareResult:
    """CN-Celeb -> manifest (+ trials.txt in record ids); genres are kept per record."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    common = {"out": str(opts.out), "min_duration": opts.min_duration}
    skipped: list[Skipped] = []
    eval_tasks, trials = _eval_tasks(root, common)
    tasks = _data_tasks(root, common, skipped) + eval_tasks
    if not tasks:
        raise DataError(f"{root}: no CN-Celeb files found (expected data/ or eval/lists/)")
    outcomes, reused = run_tasks("cnceleb", Path(opts.out), tasks, _worker, opts.workers)
    kept = {o.key for o in outcomes if o.record is not None}
    usable = [t for t in trials if t[1] in kept and t[2] in kept]
    extra = {
        "trials": len(usable),
        "trials_dropped": len(trials) - len(usable),
        "trials_file": str(Path(opts.out) / TRIALS),
    }
    sizes = [CNCELEB_SPEAKERS, *_listed_sizes(root, eval_tasks)]
    result = finish("cnceleb", opts, outcomes, reused, started, skipped, extra, sizes)
    if trials and not usable:
        (Path(opts.out) / TRIALS).unlink(missing_ok=True)  # no stale list from an earlier run
        lost = next(f for t in trials for f in t[1:] if f not in kept)
        audio = next(t.params["audio"] for t in tasks if t.key == lost)
        raise DataError(
            f"{root / 'eval' / 'lists' / 'trials.lst'}: none of its {len(trials)} trials has "
            f"both files kept (e.g. {lost}: {audio} was not read; see {result.skipped_file})"
        )
    atomic_write_text(Path(opts.out) / TRIALS, "".join(f"{lab} {e} {t}\n" for lab, e, t in usable))
    return result
