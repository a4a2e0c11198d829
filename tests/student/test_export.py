"""`cmkd export`: TorchScript and ONNX graphs with the front-end, checked on real inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch


def test_digits_student_to_torchscript_checked_on_its_test_samples(digits_run: Path, cli):
    from cmkd_cli import load
    from tests.student.test_api import _test_split

    out = digits_run.parent / "exported-ts"
    res = cli("--json", "export", "-c", digits_run / "student.pt", "-f", "torchscript", "-o", out)
    assert res.code == 0, res.stderr
    assert res.json()["how"] == "torch.jit.script" and res.json()["max_abs_diff"] <= 1e-4
    assert len(res.json()["verified_on"]) == 4  # the run's first test samples
    spec = json.loads((out / "model.json").read_text())
    assert spec["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert [o["name"] for o in spec["outputs"]] == ["embedding", "logits"]
    assert spec["class_names"][7] == "seven" and "## Checked" in (out / "README.md").read_text()
    # the file alone, on test images it was not checked on, gives the API's outputs
    module = torch.jit.load(str(out / "model.ts"))
    images, _ = _test_split()
    x = images[10:42]
    with torch.no_grad():
        embedding, logits = module(x)
    student = load(digits_run / "student.pt")
    np.testing.assert_allclose(
        embedding.detach().numpy(), student.embed(list(x[:, 0].numpy())), atol=1e-4
    )
    preds = [p.index for p in student.predict(list(x[:, 0].numpy()))]
    assert logits.argmax(-1).tolist() == preds


def test_speaker_student_to_onnx_takes_any_length_of_waveform(speaker_run, cli, tmp_path):
    import onnxruntime as ort

    from cmkd_cli import load

    wavs = [speaker_run.test_wavs[k] for k in sorted(speaker_run.test_wavs)]
    data, rate = sf.read(str(wavs[1]), dtype="float32")
    short = tmp_path / "short.wav"  # 1.5 s: shorter than a 2 s crop, wrap-padded
    sf.write(str(short), data[: int(1.5 * rate)], rate, subtype="PCM_16")
    out = tmp_path / "onnx"
    res = cli(
        "--json",
        "export",
        "-c",
        speaker_run.run / "student.pt",
        "-f",
        "onnx",
        "-o",
        out,
        "--input",
        wavs[0],
        "--input",
        short,
    )
    assert res.code == 0, res.stderr
    assert res.json()["max_abs_diff"] <= 1e-4 and res.json()["how"].startswith("torch.onnx")
    spec = json.loads((out / "model.json").read_text())
    assert spec["inputs"][0]["name"] == "waveform" and "16000 Hz" in spec["inputs"][0]["meaning"]
    assert [o["name"] for o in spec["outputs"]] == ["embedding", "crops"]
    assert spec["preprocessing"]["kind"] == "fbank" and spec["verified"]["runtime"].startswith(
        "onnxruntime"
    )
    # another length than the example it was exported with, a batch of two equal lengths
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    student = load(speaker_run.run / "student.pt")
    clip = sf.read(str(wavs[2]), dtype="float32")[0][: int(2.7 * rate)]
    emb, crops = session.run(None, {"waveform": np.stack([clip, clip[::-1].copy()])})
    assert crops.shape == (2, 2, 64)
    np.testing.assert_allclose(emb[0], student.embed((clip, rate)), atol=1e-4)
    np.testing.assert_allclose(emb[1], student.embed((clip[::-1].copy(), rate)), atol=1e-4)
    # exported crops score a trial as eval does (the recipe's mean crop distance)
    from cmkd_cli.metrics.trials import score_pairs

    whole_crops = session.run(None, {"waveform": data[None]})[1][0]
    exported = score_pairs(np.stack([whole_crops, crops[0]]), np.array([[0, 1]]), score="distance")
    assert abs(float(exported[0]) - student.score(wavs[1], (clip, rate))) < 1e-4


def test_speaker_student_scripts_with_its_fbank_front_end(speaker_run, cli, tmp_path):
    out = tmp_path / "ts"
    wav = speaker_run.test_wavs["id533/00002.wav"]
    res = cli(
        "--json",
        "export",
        "-c",
        speaker_run.run / "best.pt",
        "-f",
        "torchscript",
        "-o",
        out,
        "-i",
        wav,
    )
    assert res.code == 0, res.stderr
    assert res.json()["how"] == "torch.jit.script"
    from cmkd_cli import load

    module = torch.jit.load(str(out / "model.ts"))
    clip = torch.from_numpy(sf.read(str(wav), dtype="float32")[0][:30000])  # 1.875 s
    with torch.no_grad():
        emb, _ = module(clip[None])
    student = load(speaker_run.run / "student.pt")
    np.testing.assert_allclose(emb[0].numpy(), student.embed((clip.numpy(), 16000)), atol=1e-4)


def test_an_export_that_differs_from_eager_fails_and_writes_nothing(
    digits_run: Path, cli, tmp_path, monkeypatch
):
    import cmkd_cli.student.export as export

    real = export.run_exported

    def off_by_a_little(fmt, path):
        call = real(fmt, path)
        return lambda x: [o + 1e-3 for o in call(x)]

    monkeypatch.setattr(export, "run_exported", off_by_a_little)
    out = tmp_path / "bad"
    res = cli("export", "-c", digits_run / "student.pt", "-f", "torchscript", "-o", out)
    assert res.code == 1
    assert "differs from eager PyTorch by 0.001 on test sample 0" in res.stderr
    assert not (out / "model.ts").exists() and not (out / "model.json").exists()


def test_export_usage_errors(digits_run: Path, cli, tmp_path) -> None:
    res = cli("export", "-c", digits_run / "student.pt", "-f", "tflite", "-o", tmp_path)
    assert res.code == 2 and "--format 'tflite': choose torchscript or onnx" in res.stderr
    missing = tmp_path / "nope.png"
    res = cli(
        "export", "-c", digits_run / "student.pt", "-f", "onnx", "-o", tmp_path, "-i", missing
    )
    assert res.code == 1 and "nope.png" in res.stderr


@pytest.mark.parametrize(
    "name,params,shape",
    [
        ("resnet34_asp", {"width": "quarter", "embed_dim": 32}, (2, 150, 40)),
        ("digits_cnn", {"width": 8}, (2, 1, 8, 8)),
        ("mlp", {"in_dim": 64, "hidden": [32, 16], "norm": "batch"}, (2, 64)),
        ("resnet18", {"in_channels": 1}, (2, 1, 32, 40)),
        ("mobilenet_v2", {}, (2, 3, 32, 32)),
        ("shufflenet_v2", {}, (2, 3, 32, 32)),
        ("deeplabv3plus_resnet18", {}, (1, 3, 33, 47)),
    ],
)
def test_student_models_script_and_match_eager(name, params, shape) -> None:
    from cmkd_cli.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, 5, params).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(shape)
    with torch.no_grad():
        ref, got = model(x), scripted(x)
    torch.testing.assert_close(got.embedding, ref.embedding)
    torch.testing.assert_close(got.logits, ref.logits)
