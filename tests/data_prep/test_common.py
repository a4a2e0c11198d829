"""The machinery shared by every reader: resume journal, skip report, registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmkd_cli.data.manifest import read_manifest
from cmkd_cli.errors import DataError
from data_prep.common import (
    READERS,
    STATE,
    Outcome,
    PrepareOptions,
    Task,
    parallel_map,
    prepare_tasks,
    reason_kind,
    skip,
)


def _worker(task: Task) -> Outcome:
    path = Path(task.inputs[0])
    text = path.read_text()
    if text.startswith("bad"):
        raise DataError(f"{path}: unreadable: says {text.strip()!r}")
    record = {"id": task.key, "label": text.strip(), "split": task.params["split"]}
    return Outcome(key=task.key, record=record, decoded=1)


def _square(x: int) -> int:
    return x * x


def _tree(tmp_path: Path) -> tuple[PrepareOptions, list[Task]]:
    root = tmp_path / "root"
    root.mkdir()
    for name, text in [("a", "cat"), ("b", "bad file"), ("c", "dog")]:
        (root / f"{name}.txt").write_text(text + "\n")
    opts = PrepareOptions(root=root, out=tmp_path / "out", workers=1)
    tasks = [Task(n, (str(root / f"{n}.txt"),), {"split": "train"}) for n in "abc"]
    return opts, tasks


def test_errors_become_skips_and_reruns_do_nothing(tmp_path: Path) -> None:
    opts, tasks = _tree(tmp_path)
    res = prepare_tasks("toy", opts, tasks, _worker)
    assert [(r.id, r.label) for r in read_manifest(opts.out)] == [("a", "cat"), ("c", "dog")]
    assert res.skip_reasons == {"unreadable": 1} and (res.decoded, res.reused) == (2, 0)
    skipped = json.loads((opts.out / "skipped.jsonl").read_text())
    assert skipped == {"path": tasks[1].inputs[0], "reason": "unreadable: says 'bad file'"}
    again = prepare_tasks("toy", opts, tasks, _worker)
    assert (again.decoded, again.reused, again.records, again.skipped) == (0, 3, 2, 1)
    changed = [tasks[0], tasks[1], Task("c", tasks[2].inputs, {"split": "test"})]
    third = prepare_tasks("toy", opts, changed, _worker)  # a changed parameter redoes its task
    assert (third.decoded, third.reused, third.splits) == (1, 2, {"test": 1, "train": 1})


def test_a_killed_run_resumes_from_its_journal(tmp_path: Path) -> None:
    opts, tasks = _tree(tmp_path)
    prepare_tasks("toy", opts, tasks, _worker)
    journal = opts.out / STATE
    lines = journal.read_text().splitlines()
    journal.write_text(lines[0] + "\n" + lines[2][:25])  # 'c' cut mid-line, 'b' lost
    res = prepare_tasks("toy", opts, tasks, _worker)
    assert (res.reused, res.decoded, res.records) == (1, 1, 2)


def test_duplicates_and_crashing_items_are_skipped_and_nothing_kept_is_an_error(
    tmp_path: Path,
) -> None:
    opts, tasks = _tree(tmp_path)
    twin = Task("a", (str(tmp_path / "root" / "a.flac"),), tasks[0].params)
    crashing = Task("z", (str(tmp_path / "root" / "missing.txt"),), tasks[0].params)
    res = prepare_tasks("toy", opts, [tasks[0], twin, tasks[2], crashing], _worker)
    assert [r.id for r in read_manifest(opts.out)] == ["a", "c"]
    skipped = [json.loads(line) for line in (opts.out / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [
        {"path": str(tmp_path / "root" / "missing.txt"), "reason": skipped[0]["reason"]},
        {
            "path": twin.inputs[0],
            "reason": f"duplicate: same sample id 'a' as {tasks[0].inputs[0]}, which is kept",
        },
    ]
    assert skipped[0]["reason"].startswith("FileNotFoundError: ")  # not a DataError: still one item
    assert res.records == 2 and res.skipped == 2

    empty = PrepareOptions(root=opts.root, out=tmp_path / "none", workers=1)
    with pytest.raises(DataError, match=r"toy: no record kept from .* \(1 unreadable\); see "):
        prepare_tasks("toy", empty, [tasks[1]], _worker)
    assert (empty.out / "skipped.jsonl").is_file() and not (empty.out / "manifest.jsonl").exists()
    with pytest.raises(DataError, match="no toy files found"):
        prepare_tasks("toy", opts, [], _worker)


def test_a_float_image_with_nan_pixels_is_not_an_image(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from data_prep.common import check_image

    pixels = np.ones((4, 5), dtype=np.float32)
    Image.fromarray(pixels, mode="F").save(tmp_path / "ok.tif")
    assert check_image(tmp_path / "ok.tif") == (5, 4)
    pixels[1, 2] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif: non-finite pixels: 1 of 20 are NaN or Inf"):
        check_image(tmp_path / "nan.tif")


def test_parallel_map_keeps_order_across_processes() -> None:
    assert list(parallel_map(_square, list(range(7)), workers=2)) == [x * x for x in range(7)]


def test_skip_and_reason_kind() -> None:
    entry = skip("/d/x.wav", "/d/x.wav: truncated wav: header declares 10 bytes")
    assert entry.reason == "truncated wav: header declares 10 bytes"
    assert reason_kind(entry.reason) == "truncated wav"
    assert (
        reason_kind("not a readable audio file (Format not recognised.)")
        == "not a readable audio file"
    )


def test_the_speaker_verification_readers_are_registered() -> None:
    from cmkd_cli.stages.prepare import readers

    assert {"voxceleb1", "voxceleb2", "cnceleb", "musan"} <= set(readers().names())
    assert readers() is READERS
