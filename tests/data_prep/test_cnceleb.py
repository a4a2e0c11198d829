"""CN-Celeb reader on a fixture tree in its real layout (data/, dev/dev.lst, eval/lists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmkd_cli.data.manifest import read_manifest
from cmkd_cli.errors import DataError
from data_prep.cnceleb import CNCelebOptions, parse_name, prepare_cnceleb
from tests.fixtures_layouts import cnceleb_tree, skip_reasons, write_text


def test_records_genres_splits_and_trials(tmp_path: Path) -> None:
    root = cnceleb_tree(tmp_path / "CN-Celeb_flac")
    write_text(root / "data" / "id00000" / "notes.flac")  # wrong name, not audio either
    out = tmp_path / "out"
    res = prepare_cnceleb(CNCelebOptions(root=root, out=out, workers=1))
    records = {r.id: r for r in read_manifest(out)}
    assert sorted(records) == [
        "enroll/id00800-enroll",
        "enroll/id00801-enroll",
        "id00000/interview-01-001",
        "id00000/singing-01-001",
        "id00001/interview-01-001",
        "id00001/singing-01-001",
        "test/id00800-singing-01-005",
        "test/id00801-vlog-02-003",
    ]
    sung = records["id00000/singing-01-001"]
    assert (sung.split, sung.speaker, sung.genre, sung.video) == (
        "dev",
        "id00000",
        "singing",
        "id00000/singing-01",
    )
    assert records["id00001/interview-01-001"].split == "heldout"  # not in dev/dev.lst
    test = records["test/id00801-vlog-02-003"]
    assert (test.split, test.speaker, test.genre) == ("test", "id00801", "vlog")
    enroll = records["enroll/id00800-enroll"]
    assert enroll.split == "enroll" and enroll.speaker == "id00800"
    assert enroll.audio == str(
        root / "eval" / "enroll" / "id00800-enroll.flac"
    )  # 16 kHz flac in place
    assert enroll.duration == pytest.approx(9.075, abs=1e-3)

    trials = (out / "trials.txt").read_text().splitlines()
    assert trials == [
        "1 enroll/id00800-enroll test/id00800-singing-01-005",
        "0 enroll/id00800-enroll test/id00801-vlog-02-003",
        "0 enroll/id00801-enroll test/id00800-singing-01-005",
        "1 enroll/id00801-enroll test/id00801-vlog-02-003",
    ]
    assert res.extra["trials"] == 4 and res.extra["trials_dropped"] == 1  # its file is missing
    skipped = {Path(path).name: reason for path, reason in skip_reasons(out).items()}
    assert skipped == {
        "notes.flac": "file name does not match <genre>-<video>-<utt>.flac",
        "id00999-movie-01-001.wav": "file does not exist",
    }
    assert res.splits == {"dev": 2, "enroll": 2, "heldout": 2, "test": 2}

    again = prepare_cnceleb(CNCelebOptions(root=root, out=out, workers=1))
    assert (again.decoded, again.reused, again.records) == (0, 9, 8)
    assert (out / "trials.txt").read_text().splitlines() == trials


def test_list_entries_name_wav_files_that_the_corpus_ships_as_flac(tmp_path: Path) -> None:
    root = cnceleb_tree(tmp_path / "CN-Celeb_flac")
    assert "enroll/id00800-enroll.wav" in (root / "eval" / "lists" / "enroll.lst").read_text()
    assert not list((root / "eval").rglob("*.wav"))  # the lists' names exist only as .flac
    out = tmp_path / "out"
    prepare_cnceleb(CNCelebOptions(root=root, out=out, workers=1))
    test = {r.id: r for r in read_manifest(out)}["test/id00800-singing-01-005"]
    assert test.audio == str(root / "eval" / "test" / "id00800-singing-01-005.flac")


def test_lists_that_keep_no_trial_are_an_error(cli, tmp_path: Path) -> None:
    root = cnceleb_tree(tmp_path / "CN-Celeb_flac")
    for flac in (root / "eval" / "test").glob("*.flac"):
        flac.unlink()  # a copy without the test files
    out = tmp_path / "out"
    res = cli("prepare", "cnceleb", "--root", root, "--out", out, "--workers", "1")
    assert res.code == 1
    assert "trials.lst: none of its 5 trials has both files kept" in res.stderr
    assert "id00800-singing-01-005.wav was not read" in res.stderr
    assert (out / "manifest.jsonl").is_file() and not (out / "trials.txt").exists()


def test_malformed_lists_name_the_line(tmp_path: Path) -> None:
    root = cnceleb_tree(tmp_path / "cn")
    trials = root / "eval" / "lists" / "trials.lst"
    trials.write_text(trials.read_text() + "id00800-enroll test/x.flac maybe\n")
    with pytest.raises(DataError, match=r"trials.lst:6: unknown label 'maybe'"):
        prepare_cnceleb(CNCelebOptions(root=root, out=tmp_path / "o", workers=1))
    trials.write_text("id00800-enroll test/x.flac\n")
    with pytest.raises(DataError, match=r"trials.lst:1: expected 3 fields, found 2"):
        prepare_cnceleb(CNCelebOptions(root=root, out=tmp_path / "o", workers=1))


def test_parse_name() -> None:
    assert parse_name("live_broadcast-03-012") == ("live_broadcast", "03", "012")
    assert parse_name("notes") is None and parse_name("a--1") is None
