"""Speaker verification end to end through the CLI on real audio arranged in the VoxCeleb
layouts: prepare -> extract-fbank -> distill -> eval -> noise-test.

LibriSpeech test-other speakers play VoxCeleb2 identities (their audio encoded to AAC in
m4a, faces/video.mp4 as their video); other LibriSpeech speakers and two FSDD speakers
(8 kHz, resampled) play VoxCeleb1 for real target and non-target trials.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from tests.fixtures_layouts import (
    encode_m4a,
    fresh_path,
    librispeech_files,
    shared_data,
    write_wav_from,
)

PEOPLE = ["angelina_jolie", "kate_siegel", "paul_rudd", "shea_whigham"]


def still_mp4(photo: Path, dst: Path, seconds: float = 1.0, fps: int = 5) -> Path:
    """A short H.264 video of a real photo (downscaled to 480 px), as VoxCeleb2's mp4."""
    import av
    from PIL import Image

    with Image.open(photo) as im:
        im = im.convert("RGB")
        im.thumbnail((480, 480))
        im = im.crop((0, 0, im.width // 2 * 2, im.height // 2 * 2))
    fresh_path(dst)
    with av.open(str(dst), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = im.width, im.height, "yuv420p"
        for _ in range(int(seconds * fps)):
            frame = av.VideoFrame.from_image(im)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return dst


def voxceleb2_faces_tree(root: Path, per_speaker: int = 3) -> Path:
    """VoxCeleb2 layout: LibriSpeech speakers as identities, each with a real face photo as
    its video (still H.264 mp4s made from faces/test_images); the last two are in test/."""
    files = list(librispeech_files(len(PEOPLE), per_speaker).items())
    for n, ((spk, flacs), person) in enumerate(zip(files, PEOPLE, strict=True)):
        split = "test" if n >= len(PEOPLE) - 2 else "dev"
        video = still_mp4(
            shared_data("faces", "test_images", person, "1.jpg"), root / f"{person}.mp4"
        )
        for k, flac in enumerate(flacs, 1):
            rel = Path(f"id{int(spk):05d}") / f"vid{spk}" / f"{k:05d}"
            encode_m4a(flac, root / split / "aac" / rel.with_suffix(".m4a"))
            dst = fresh_path(root / split / "mp4" / rel.with_suffix(".mp4"))
            dst.symlink_to(video)
    return root


EVAL_CROPS = ["--crops", "2", "--crop-seconds", "2.0"]
TINY = [
    "--set",
    "data.batch_size=4",
    "--set",
    "data.eval_batch_size=4",
    "--set",
    "data.params.eval_crops=2",
    "--set",
    "data.params.eval_seconds=2.0",
    "--set",
    "data.num_workers=0",
    "--set",
    "student.params.width=quarter",
    "--set",
    "student.params.embed_dim=64",
    "--set",
    "train.epochs=1",
    "--set",
    "train.amp=none",
    "--set",
    "eval.every=1",
    "--set",
    "train.threads=2",
]


def _voxceleb1_eval_tree(root: Path) -> list[str]:
    """VoxCeleb1 wav layout: LibriSpeech speakers 7-9 and FSDD jackson/theo, 3 each."""
    names = []
    libri = list(librispeech_files(9, 3).items())[6:]
    for n, (_spk, flacs) in enumerate(libri):
        for k, flac in enumerate(flacs, 1):
            rel = f"id1027{n}/libri/{k:05d}.wav"
            write_wav_from(flac, root / "wav" / rel, seconds=3.0)
            names.append(rel)
    for n, who in enumerate(("jackson", "theo")):
        for k, wav in enumerate(
            sorted(shared_data("fsdd", "recordings").glob(f"*_{who}_*.wav"))[:3], 1
        ):
            rel = f"id1028{n}/fsdd/{k:05d}.wav"
            write_wav_from(wav, root / "wav" / rel)
            names.append(rel)
    return names


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    shared_data("librispeech-test-other")
    return tmp_path_factory.mktemp("speaker-e2e")


def test_speaker_pipeline(cli, work: Path, monkeypatch) -> None:
    voxceleb2_faces_tree(work / "VoxCeleb2")
    names = _voxceleb1_eval_tree(work / "VoxCeleb1")
    trials = work / "lists" / "veri_test2.txt"
    trials.parent.mkdir()
    spk = lambda n: n.split("/")[0]  # noqa: E731
    trials.write_text(
        "".join(f"{int(spk(a) == spk(b))} {a} {b}\n" for a, b in itertools.combinations(names, 2))
    )

    for args in (
        (
            "prepare",
            "voxceleb2",
            "--root",
            work / "VoxCeleb2",
            "--out",
            work / "vox2",
            "--workers",
            "1",
        ),
        (
            "extract-fbank",
            "--manifest",
            work / "vox2" / "manifest.jsonl",
            "--out",
            work / "vox2-fbank",
            "--workers",
            "1",
            "--frontend",
            "voxceleb_trainer",
        ),
        (
            "prepare",
            "voxceleb1",
            "--root",
            work / "VoxCeleb1",
            "--out",
            work / "vox1",
            "--workers",
            "1",
            "--min-duration",
            "0.1",
        ),
        (
            "extract-fbank",
            "--manifest",
            work / "vox1" / "manifest.jsonl",
            "--out",
            work / "vox1-fbank",
            "--workers",
            "1",
            "--frontend",
            "voxceleb_trainer",
        ),
    ):
        res = cli(*args)
        assert res.code == 0, (args, res.stderr)

    vox2 = [json.loads(x) for x in (work / "vox2" / "manifest.jsonl").read_text().splitlines()]
    assert len(vox2) == 12 and {r["split"] for r in vox2} == {"dev", "test"}
    assert all(r["frames"] for r in vox2)  # one face frame of each video

    res = cli(
        "--json",
        "distill",
        "--recipe",
        "vox2-baseline",
        "--var",
        f"work={work}",
        "--set",
        f"data.params.train_manifest={work / 'vox2' / 'manifest.jsonl'}",
        "--set",
        f"output.root={work / 'runs'}",
        *TINY,
    )
    assert res.code == 0, res.stderr
    run = res.json()["runs"][0]
    assert set(run["test"]) == {"eer", "min_dcf"} and 0.0 <= run["test"]["eer"] <= 1.0
    best = work / "runs" / "vox2-baseline" / "best.pt"
    # no test split of its own: the test numbers are the best epoch's validation, not re-run
    final = json.loads((best.parent / "final.json").read_text())
    epochs = [json.loads(x) for x in (best.parent / "metrics.jsonl").read_text().splitlines()]
    val = next(r for r in epochs if r["kind"] == "epoch" and r["epoch"] == final["best_epoch"])
    assert final["test_is_val"] and final["test"] == {
        "eer": val["val/eer"],
        "min_dcf": val["val/min_dcf"],
    }

    ev = cli(
        "--json",
        "eval",
        "--checkpoint",
        best,
        "--trials",
        "voxceleb1-o",
        "--manifest",
        work / "vox1" / "manifest.jsonl",
        *EVAL_CROPS,
        "--fbank",
        work / "vox1-fbank",
        "--lists",
        work / "lists",
        "--det",
        work / "det.png",
    )
    assert ev.code == 0, ev.stderr
    r = ev.json()["results"][0]
    assert r["n_trials"] == len(list(itertools.combinations(names, 2)))
    assert r["n_target"] == 5 * 3 and r["utterances"] == len(names)
    assert 0.0 <= r["eer"] <= 1.0 and r["min_dcf"] >= 0.0
    assert r["det_png"] == str(work / "det.png") and (work / "det.png").stat().st_size > 1000
    assert f"DET curve: {work / 'det.png'}" in ev.stderr  # one curve: the path asked for
    # the recipe's scoring (paper A: mean distance, P_target 0.01); the flags override it
    assert r["scoring"] == {"score": "distance", "p_target": 0.01, "c_miss": 1.0, "c_fa": 1.0}
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["data_spec"]["student_input"]["fbank"]["frontend"] == "voxceleb_trainer"
    assert ckpt["student"]["backbone.conv1.bias"].shape == (16,)  # ResNetSE34V2's stem bias
    base = ["--json", "eval", "--checkpoint", best, "--trials", str(trials)]
    base += ["--manifest", work / "vox1" / "manifest.jsonl", *EVAL_CROPS]
    dist, cos, dcf = (
        cli(*base, "--fbank", work / "vox1-fbank", *extra).json()["results"][0]
        for extra in ([], ["--score", "cosine"], ["--p-target", "0.05", "--c-fa", "2"])
    )
    assert cos["scoring"]["score"] == "cosine" and dcf["scoring"]["p_target"] == 0.05
    assert dist["eer"] == r["eer"] and dcf["eer"] == r["eer"]  # the DCF weights leave the EER
    # from audio (no store) the checkpoint's front-end is used: the same scores as the store
    # up to the store's float16 rounding
    audio = cli(*base).json()["results"][0]
    assert abs(audio["eer"] - dist["eer"]) <= 0.05
    kaldi_store = cli(
        "extract-fbank",
        "--manifest",
        work / "vox1" / "manifest.jsonl",
        "--out",
        work / "vox1-kaldi",
        "--workers",
        "1",
    )
    assert kaldi_store.code == 0
    wrong = cli(*base, "--fbank", work / "vox1-kaldi")
    assert wrong.code != 0 and "holds kaldi front-end, 40 mels features" in wrong.stderr
    bad = cli(*base, "--score", "euclid")
    assert bad.code == 2 and "--score 'euclid'" in bad.stderr

    # an utterance the store lacks is named with its line of the list, not a KeyError
    listed = (work / "lists" / "veri_test2.txt").read_text().splitlines()
    bad_list = work / "missing.txt"
    bad_list.write_text(
        "# a comment\n\n" + listed[0] + "\n1 " + listed[0].split()[1] + " id99999/x/00001.wav\n"
    )
    missing = cli(
        "eval", "--checkpoint", best, "--trials", bad_list, "--manifest",
        work / "vox1" / "manifest.jsonl", *EVAL_CROPS, "--fbank", work / "vox1-fbank",
    )  # fmt: skip
    assert missing.code == 1, missing.stderr
    assert (
        "missing.txt:4: utterance id99999/x/00001.wav is not in the fbank store" in missing.stderr
    )

    noisy = cli(
        "--json",
        "noise-test",
        "--checkpoint",
        best,
        "--musan",
        shared_data("musan-mini"),
        "--snr",
        "15",
        "5",
        "--trials",
        str(trials),
        "--manifest",
        work / "vox1" / "manifest.jsonl",
        *EVAL_CROPS,
    )
    assert noisy.code == 0, noisy.stderr
    rows = noisy.json()["results"]
    assert [row["snr_db"] for row in rows] == [None, 15.0, 5.0]
    assert rows[0]["eer"] != rows[2]["eer"] or rows[0]["min_dcf"] != rows[2]["min_dcf"]
    again = cli(
        "--json",
        "noise-test",
        "--checkpoint",
        best,
        "--musan",
        shared_data("musan-mini"),
        "--snr",
        "5",
        "--trials",
        str(trials),
        "--manifest",
        work / "vox1" / "manifest.jsonl",
        *EVAL_CROPS,
    )
    assert again.json()["results"][1]["eer"] == rows[2]["eer"]  # noise seeded per utterance

    # faces: align, train a face teacher, distil with paper A's feature method, cross-match
    al = cli(
        "--json",
        "align-faces",
        "--manifest",
        work / "vox2" / "manifest.jsonl",
        "--out",
        work / "vox2-faces",
        "--batch-size",
        "4",
    )
    assert al.code == 0, al.stderr
    assert al.json()["records"] == 12 and al.json()["aligned"] == 12
    again = cli(
        "--json",
        "align-faces",
        "--manifest",
        work / "vox2" / "manifest.jsonl",
        "--out",
        work / "vox2-faces",
    )
    assert again.json()["aligned"] == 0 and again.json()["reused"] == 12  # resumable
    faces = [
        json.loads(x) for x in (work / "vox2-faces" / "manifest.jsonl").read_text().splitlines()
    ]
    assert all(Path(work / "vox2-faces" / r["faces"][0]).is_file() for r in faces)

    # the README's route without a face checkpoint: --var face_teacher=none trains the face
    # teacher (the recipe's `pretrain`, `when: untrained`); the ResNet-34 face model stands
    # in for IR-50 on this CPU, its `checkpoint` still the recipe's ${face_teacher}
    face_sets = [
        *TINY,
        "--set",
        f"output.root={work / 'runs'}",
        "--set",
        "teacher.model={name: resnet34_face, params: "
        "{checkpoint: '${face_teacher}', head: arcface, s: 16.0, m: 0.3}}",
        "--set",
        "teacher.pretrain.epochs=1",
    ]
    route = ["--recipe", "soft-vox2-feature", "--var", f"work={work}", "--var", "face_teacher=none"]
    tt = cli("--json", "train-teacher", *route, *face_sets)
    assert tt.code == 0, tt.stderr
    assert tt.json()["trained"] and set(tt.json()["test"]) == {"eer", "min_dcf"}  # on faces
    teacher_dir = Path(tt.json()["out"])
    best_teacher = torch.load(teacher_dir / "best.pt", weights_only=True)
    assert "optimizer" not in best_teacher and "student" in best_teacher  # weights only
    assert (teacher_dir / "best.pt").stat().st_size < (teacher_dir / "last.pt").stat().st_size
    # a distill that only loads data differently reuses the teacher (its key is unchanged)
    loader_only = ["--set", "data.eval_batch_size=2", "--set", "train.threads=1"]
    res = cli("--json", "distill", *route, *face_sets, *loader_only)
    assert res.code == 0, res.stderr
    assert res.json()["teacher"]["trained"] is False  # the teacher above is reused
    assert res.json()["teacher"]["out"] == str(teacher_dir)
    soft = work / "runs" / "soft-vox2-feature" / "best.pt"
    # lean checkpoints (issue 14 item 5): the ResNet34 speaker student's best.pt and the
    # teacher's are their weights and a little metadata (<= 2x), last.pt carries Adam's state
    for best in (soft, teacher_dir / "best.pt"):
        held = torch.load(best, weights_only=True)
        weights = sum(t.numel() * t.element_size() for t in held["student"].values())
        assert best.stat().st_size <= 2 * weights, (best, best.stat().st_size, weights)
        assert (best.parent / "last.pt").stat().st_size > 2 * weights  # what a resume needs
    rows = [json.loads(x) for x in (soft.parent / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/soft_feature" in r for r in rows if r["kind"] == "step")

    matching = ["cross-match", "--checkpoint", soft, "--triplets", "40", *EVAL_CROPS]
    matching += ["--manifest", work / "vox2-faces" / "manifest.jsonl"]
    cm = cli("--json", *matching)
    assert cm.code == 0, cm.stderr
    protocols = {r["protocol"][:3]: r for r in cm.json()["rows"]}
    assert set(protocols) == {"A-F", "F-A"}
    assert all(
        r["chance"] == 0.5 and 0.0 <= r["accuracy"] <= 1.0 and r["trials"] == 40
        for r in protocols.values()
    )
    # only the held-out (test) speakers' 6 records, never the training speakers'
    assert (cm.json()["split"], cm.json()["records"]) == ("test", 6)
    assert all(0 < r["records_used"] <= 6 for r in protocols.values())
    every = cli("--json", *matching, "--split", "all")
    assert every.code == 0 and every.json()["records"] == 12
    none = cli(*matching, "--split", "val")
    assert none.code == 2 and "--split val: no record" in none.stderr and "dev, test" in none.stderr


def test_trial_list_errors_name_file_and_line(cli, tmp_path: Path) -> None:
    from cmkd_cli.errors import DataError
    from cmkd_cli.metrics.trials import read_trials

    bad = tmp_path / "t.txt"
    bad.write_text("# VoxCeleb1-O\n1 a.wav b.wav\n\n0 a.wav c.wav\n")
    assert len(read_trials(bad)) == 2  # blank and comment lines are ignored
    bad.write_text("# nothing but a comment\n\n")
    with pytest.raises(DataError, match=r"t\.txt has no trials"):
        read_trials(bad)
    bad.write_text("1 a.wav b.wav\n2 a.wav c.wav\n")
    with pytest.raises(DataError, match=r"t\.txt:2"):
        read_trials(bad)
