"""AV-digits end to end on a reduced size: `cmkd prepare av-digits`, then `cmkd distill` of
the KD recipe in both directions (a teacher per direction, trained by `teacher.pretrain`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

FAST = [
    "--set", "train.epochs=4",
    "--set", "teacher.pretrain.epochs=4",
    "--set", "data.batch_size=32",
    "--set", "train.threads=1",
]  # fmt: skip


def test_av_digits_kd_both_directions(cli, tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    prep = cli(
        "--json", "prepare", "av-digits", "--root", shared_data, "--out", tmp_path / "av-digits",
        "--takes", "8", "--split", "speaker", "--workers", "1",
    )  # fmt: skip
    assert prep.code == 0, prep.stderr
    assert prep.json()["splits"] == {"test": 80, "train": 320, "val": 80}

    # a relative data root (the cwd is tmp_path): the run records it as an absolute path
    args = ["--json", "distill", "--recipe", "av-digits-kd", "--var", "data_root=."]
    res = cli(*args, *FAST)
    assert res.code == 0, res.stderr
    out = res.json()
    root = tmp_path / "runs" / "av-digits-kd"
    assert [row["variant"] for row in out["table"]] == ["kd", "v2a"]
    for row in out["table"]:
        assert 0.0 <= row["mean"] <= 1.0 and row["n"] == 1
    # one teacher per direction: the audio MLP for A->V, the image CNN for V->A
    teachers = sorted(root.glob("teacher-*/teacher.pt"))
    assert len(teachers) == 2
    for variant, student, teacher in (("kd", "image", "mlp"), ("v2a", "audio", "digits_cnn")):
        cfg = yaml.safe_load((root / variant / "seed-1" / "config.yaml").read_text())
        assert cfg["data"]["params"]["student_modality"] == student
        assert cfg["teacher"]["model"]["name"] == teacher
        final = json.loads((root / variant / "seed-1" / "final.json").read_text())
        assert 0.0 <= final["test"]["accuracy"] <= 1.0
    # the audio teacher learns the digits from the recordings (10 classes: chance is 0.1)
    # real learning in a few steps: the image teacher (V->A) and the image student (A->V)
    # are well above chance (0.1) on the 80 recordings of the unseen test speaker
    metas = {m["model_name"]: m for m in (torch.load(t, weights_only=True) for t in teachers)}
    assert set(metas) == {"mlp", "digits_cnn"}
    assert metas["digits_cnn"]["test"]["accuracy"] > 0.4
    # the A->V student learns from a weak teacher (an MLP on 1 s of 8 kHz audio of an unseen
    # speaker: 0.20-0.29 over seeds 1-3) and ends at 0.20-0.41 after 4 epochs (measured on
    # seeds 1-3 with float32 and float64 spectrograms alike): above chance is what holds
    assert out["table"][0]["mean"] > 0.125

    # the shipped students read a test recording / MNIST image as the test split does
    from cmkd_cli import load
    from tests.student.test_api import assert_api_is_the_dataset_view, eval_split_of

    for variant, kind in (("kd", "image"), ("v2a", "spectrogram")):
        student = load(root / variant / "seed-1" / "student.pt")
        assert student.input.kind == kind
        test = eval_split_of(student)
        assert_api_is_the_dataset_view(student, test, 8)

    again = cli(*args, *FAST)
    assert again.code == 0 and {r["status"] for r in again.json()["runs"]} == {"skipped"}

    # eval from another directory reads the data as the run resolved it ...
    best = root / "kd" / "seed-1" / "best.pt"
    test = json.loads((root / "kd" / "seed-1" / "final.json").read_text())["test"]["accuracy"]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    ev = cli("--json", "eval", "-c", best)
    assert ev.code == 0, ev.stderr
    assert ev.json()["metrics"]["accuracy"] == pytest.approx(test)
    # ... and, once the data moved, from --var (relative to the cwd) or --manifest
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "av-digits", tmp_path / "moved" / "av-digits")
    lost = cli("eval", "-c", best)
    assert lost.code == 1 and f"--var NAME=PATH (the run used data_root={tmp_path})" in lost.stderr
    for flags in (["--var", "data_root=../moved"], ["--manifest", "../moved/av-digits"]):
        moved = cli("--json", "eval", "-c", best, *flags)
        assert moved.code == 0, moved.stderr
        assert moved.json()["metrics"]["accuracy"] == pytest.approx(test)
    wrong = cli("eval", "-c", best, "--var", "data=/x")
    assert wrong.code == 2 and "was not made with a variable ${data}" in wrong.stderr
