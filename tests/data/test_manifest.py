"""Reading manifests: whole records, or a few fields of each (`read_manifest_columns`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmkd_cli.data.manifest import read_manifest, read_manifest_columns
from cmkd_cli.errors import DataError

ROWS = [
    {"id": "a", "split": "dev", "speaker": "s1", "faces": ["f/a.png"], "duration": 2.5},
    {"id": "b", "speaker": "s2", "frames": ["x.jpg"], "gender": "f"},
    {"id": "c", "split": "test", "label": 3, "faces": []},
]


def _write(path: Path, rows: list, blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "   ")
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_columns_are_the_records_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "manifest.jsonl", ROWS, blank_after=1)
    fields = ("id", "split", "speaker", "label", "faces", "frames")
    cols = read_manifest_columns(tmp_path, fields)  # the folder, as read_manifest takes
    records = read_manifest(path)
    assert cols == {f: [getattr(r, f, None) for r in records] for f in fields}
    assert cols["split"] == ["dev", "train", "test"] and cols["faces"] == [["f/a.png"], None, []]
    kept = read_manifest_columns(path, ("id", "split"), where=lambda r: r.split != "train")
    assert kept == {"id": ["a", "c"], "split": ["dev", "test"]}


@pytest.mark.parametrize(
    ("bad", "fields", "message"),
    [
        ({"id": "", "speaker": "s"}, ("id",), r"record 3: field `id`: String should have at least"),
        ({"id": "x", "speaker": 7}, ("id", "speaker"), r"record 3: field `speaker`: Input should"),
        ({"id": "x", "frames": "a.jpg"}, ("frames",), r"record 3: field `frames`: Input should"),
    ],
)
def test_a_bad_field_is_named_as_read_manifest_names_it(tmp_path, bad, fields, message) -> None:
    path = _write(tmp_path / "m.jsonl", [*ROWS[:2], bad], blank_after=1)
    for read in (read_manifest, lambda p: read_manifest_columns(p, fields)):
        with pytest.raises(DataError, match=rf"m\.jsonl: {message}"):
            read(path)
    assert read_manifest_columns(path, ("split",))["split"][2] == "train"  # not read: not checked


def test_bad_json_and_missing_files_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.jsonl", [ROWS[0], "{not json"])
    with pytest.raises(DataError, match=r"m\.jsonl:2: not valid JSON"):
        read_manifest_columns(path, ("id",))
    with pytest.raises(DataError, match=r"manifest .*nothing\.jsonl does not exist"):
        read_manifest_columns(tmp_path / "nothing.jsonl", ("id",))
