"""`cmkd prepare NAME` end to end on real-layout fixture trees: exit codes, --json, files."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures_layouts import add_bad_wavs, cnceleb_tree, musan_tree, voxceleb1_tree


def test_prepare_voxceleb1_json_files_and_rerun(cli, tmp_path: Path) -> None:
    root = voxceleb1_tree(tmp_path / "vox1")
    fsdd = root / "wav" / "id10002" / "fsdd"
    add_bad_wavs(fsdd, fsdd / "00001.wav", fsdd / "00002.wav")
    out = tmp_path / "out"
    res = cli("--json", "prepare", "voxceleb1", "--root", root, "--out", out, "--workers", "1")
    assert res.code == 0, res.stderr
    result = res.json()
    assert (result["records"], result["skipped"], result["speakers"]) == (7, 3, 3)
    assert result["skip_reasons"] == {
        "empty file": 1,
        "not a readable audio file": 1,
        "truncated wav": 1,
    }
    assert result["splits"] == {"dev": 5, "test": 2}
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 7 and {"id", "speaker", "audio", "duration", "split"} <= set(
        manifest[0]
    )
    assert len((out / "skipped.jsonl").read_text().splitlines()) == 3
    again = cli(
        "--json", "prepare-data", "voxceleb1", "--root", root, "--out", out, "--workers", "1"
    )
    assert again.code == 0 and (again.json()["decoded"], again.json()["reused"]) == (0, 10)


def test_prepare_table_help_and_errors(cli, tmp_path: Path) -> None:
    root = musan_tree(tmp_path / "musan")
    res = cli("prepare", "musan", "--root", root, "--out", tmp_path / "o", "--categories", "speech")
    assert res.code == 0, res.stderr
    assert "prepare musan" in res.stdout and "records" in res.stdout
    helped = cli("prepare", "--help")
    assert helped.code == 0
    for name in ("voxceleb1", "voxceleb2", "cnceleb", "musan"):
        assert name in helped.stdout
    vox2 = cli("prepare", "voxceleb2", "--help")
    assert "--frames" in vox2.stdout and "--meta" in vox2.stdout and "m4a" in vox2.stdout
    missing = cli("prepare", "musan", "--root", tmp_path / "nope", "--out", tmp_path / "o")
    assert (
        missing.code == 2 and f"--root {tmp_path / 'nope'}: folder does not exist" in missing.stderr
    )
    bad = cli("prepare", "voxceleb2", "--root", root, "--out", tmp_path / "o", "--frames", "-1")
    assert bad.code == 2 and "--frames" in bad.stderr
    unknown = cli("prepare", "timit", "--root", root)
    assert unknown.code == 2


def test_found_vs_expected_per_split_from_the_published_sizes(cli, tmp_path: Path) -> None:
    root = voxceleb1_tree(tmp_path / "vox1")
    out = tmp_path / "out"
    res = cli("--json", "prepare", "voxceleb1", "--root", root, "--out", out, "--workers", "1")
    assert res.code == 0, res.stderr
    checks = {
        (c["split"], c["what"]): (c["found"], c["expected"]) for c in res.json()["completeness"]
    }
    assert checks == {
        ("dev", "records"): (4, 148_642),
        ("dev", "speakers"): (2, 1_211),
        ("test", "records"): (2, 4_874),
        ("test", "speakers"): (1, 40),
    }
    assert all("Nagrani et al." in c["source"] for c in res.json()["completeness"])
    assert "warning: this copy of voxceleb1 is partial: dev records 4 of 148,642" in res.stderr
    table = cli("prepare", "voxceleb1", "--root", root, "--out", out, "--workers", "1")
    assert "test speakers" in table.stdout and "1 / 40 (2.5%" in table.stdout

    # lists a corpus ships are the expectation too: CN-Celeb's enroll.lst and trials.lst
    cn = cli(
        "--json",
        "prepare",
        "cnceleb",
        "--root",
        cnceleb_tree(tmp_path / "cn"),
        "--out",
        tmp_path / "cn-out",
        "--workers",
        "1",
    )
    checks = {
        (c["split"], c["what"]): (c["found"], c["expected"], c["source"])
        for c in cn.json()["completeness"]
    }
    assert checks[("enroll", "records")] == (2, 2, "eval/lists/enroll.lst")
    assert checks[("test", "records")] == (2, 3, "eval/lists/trials.lst")  # one file missing
    assert checks[("dev", "speakers")] == (1, 1, "dev/dev.lst")
    assert checks[("dev+heldout", "speakers")] == (2, 1_000, "Fan et al., ICASSP 2020")


def test_merge_dev_test_on_the_wav_layout_is_refused(cli, tmp_path: Path) -> None:
    root = voxceleb1_tree(tmp_path / "vox1")
    res = cli("prepare", "voxceleb1", "--root", root, "--out", tmp_path / "o", "--merge-dev-test")
    assert res.code == 2
    assert f"--merge-dev-test: {root / 'wav'} is one folder, read as it is" in res.stderr
    assert "drop it" in res.stderr and not (tmp_path / "o" / "manifest.jsonl").exists()
