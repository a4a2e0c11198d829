"""`cmkd align-faces` end to end on real photos: faces, manifest, skipped records, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cmkd_cli.data.manifest import read_manifest, resolve
from tests.fixtures_layouts import link_or_copy, shared_data, skip_reasons, write_text


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A manifest folder: two real photos, a text file named .jpg, a faceless grey image."""
    root = tmp_path / "data"
    link_or_copy(shared_data("faces", "test_images", "kate_siegel", "1.jpg"), root / "f/kate.jpg")
    link_or_copy(shared_data("faces", "test_images", "paul_rudd", "1.jpg"), root / "f/paul.jpg")
    link_or_copy(shared_data("fsdd", "recordings", "0_george_0.wav"), root / "a/0.wav")
    write_text(root / "f/broken.jpg")
    Image.new("RGB", (96, 96), (120, 120, 120)).save(root / "f/grey.png")
    rows = [
        {
            "id": "spk1/kate",
            "speaker": "spk1",
            "video": "id10001/1zcIwhmdeo4",  # an id (speaker/YouTube id), as readers write it
            "audio": "a/0.wav",
            "frames": ["f/kate.jpg"],
        },
        {"id": "spk2/paul", "speaker": "spk2", "frames": ["f/broken.jpg", "f/paul.jpg"]},
        {"id": "spk3/broken", "speaker": "spk3", "frames": ["f/broken.jpg"]},
        {"id": "spk4/grey", "speaker": "spk4", "frames": ["f/grey.png"]},
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_align_faces_writes_faces_manifest_and_skips(cli, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "faces"
    res = cli("--json", "align-faces", "--manifest", tree, "--out", out, "--device", "cpu")
    assert res.code == 0, res.stderr
    result = res.json()
    assert (result["records"], result["records_with_faces"], result["records_skipped"]) == (4, 2, 2)
    assert (result["frames"], result["aligned"], result["reused"], result["failed"]) == (5, 2, 0, 3)
    assert result["fail_reasons"] == {"not a readable image": 2, "no face detected": 1}

    records = {r.id: r for r in read_manifest(out / "manifest.jsonl")}
    assert sorted(records) == ["spk1/kate", "spk2/paul"]
    kate, paul = records["spk1/kate"], records["spk2/paul"]
    assert kate.faces == ["faces/spk1/kate/00.png"] and paul.faces == ["faces/spk2/paul/01.png"]
    for rec in (kate, paul):
        face = Image.open(resolve(out / "manifest.jsonl", rec.faces[0]))
        assert face.size == (112, 112) and face.format == "PNG"
    # the other paths of a record still point at the same files from OUT
    assert resolve(out / "manifest.jsonl", kate.audio).samefile(tree / "a/0.wav")
    assert resolve(out / "manifest.jsonl", paul.frames[1]).samefile(tree / "f/paul.jpg")
    assert kate.video == "id10001/1zcIwhmdeo4"  # an id, not a path: kept as it was

    reasons = skip_reasons(out)
    assert set(reasons) == {str(tree / "f/broken.jpg"), str(tree / "f/grey.png")}
    assert reasons[str(tree / "f/grey.png")] == f"no face detected in {tree / 'f/grey.png'}"
    assert "is not a readable image" in reasons[str(tree / "f/broken.jpg")]
    skipped_ids = [
        json.loads(line)["id"] for line in (out / "skipped.jsonl").read_text().splitlines()
    ]
    assert skipped_ids == ["spk3/broken", "spk4/grey"]


def test_rerun_reuses_faces_and_failures_without_detecting(
    cli, tree: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "faces"
    assert cli("align-faces", "--manifest", tree, "--out", out, "--device", "cpu").code == 0
    face = out / "faces/spk1/kate/00.png"
    stamp = face.stat().st_mtime_ns
    manifest = (out / "manifest.jsonl").read_text()

    import cmkd_cli.stages.align_faces as stage

    def no_detector(*args, **kwargs):
        raise AssertionError("a rerun must not run the detector")

    monkeypatch.setattr(stage, "FaceDetector", no_detector)
    res = cli("--json", "align-faces", "--manifest", tree / "manifest.jsonl", "--out", out)
    assert res.code == 0, res.stderr
    result = res.json()
    assert (result["aligned"], result["reused"], result["failed"]) == (0, 2, 3)
    assert face.stat().st_mtime_ns == stamp
    assert (out / "manifest.jsonl").read_text() == manifest

    # a face removed since is the only frame done again
    monkeypatch.undo()
    face.unlink()
    res = cli("--json", "align-faces", "--manifest", tree, "--out", out, "--device", "cpu")
    assert (res.json()["aligned"], res.json()["reused"]) == (1, 1) and face.is_file()

    # other settings would mix two kinds of faces in one folder
    res = cli("align-faces", "--manifest", tree, "--out", out, "--min-prob", "0.5")
    assert res.code == 2
    assert res.stderr.strip() == (
        f"error: --out {out}: its faces were made with min_prob=0.9, not 0.5; "
        "use another --out or delete this one"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "gpu"], "--device 'gpu': choose auto, cpu, cuda or cuda:N"),
        (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["--min-prob", "1.5"], "--min-prob 1.5: must be in (0, 1]"),
    ],
)
def test_bad_options_are_one_sentence_usage_errors(cli, tree, tmp_path, args, message) -> None:
    res = cli("align-faces", "--manifest", tree, "--out", tmp_path / "o", *args)
    assert res.code == 2
    assert res.stderr.strip() == f"error: {message}"


def test_out_may_not_overwrite_the_input_manifest(cli, tree: Path) -> None:
    res = cli("align-faces", "--manifest", tree, "--out", tree, "--device", "cpu")
    assert res.code == 2 and "would overwrite the input manifest" in res.stderr


def test_help_says_what_it_reads_and_writes(cli) -> None:
    res = cli("align-faces", "--help")
    assert res.code == 0
    text = " ".join(res.stdout.split())
    for part in ("`frames`", "OUT/faces/ID/K.png", "OUT/manifest.jsonl", "OUT/skipped.jsonl"):
        assert part in text
