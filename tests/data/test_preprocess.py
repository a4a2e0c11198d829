"""The evaluation preprocessing a student carries (`data.preprocess`) and its graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.fbank import FbankConfig, compute_fbank, new_fbank_module
from cmkd_cli.data.preprocess import (
    FbankInput,
    ImageInput,
    crop_indices,
    evenly_spaced_crops,
    parse_preprocessing,
    read_image,
    read_waveform,
)
from cmkd_cli.data.spectrogram import LogSpectrogram, SpectrogramConfig, spectrogram
from cmkd_cli.errors import DataError, UsageError
from tests.fixtures_layouts import shared_data

FRONTENDS = [
    FbankConfig(),
    FbankConfig(frontend="voxceleb_trainer"),
]


def _speech() -> np.ndarray:
    path = shared_data("librispeech-test-other", "1688", "1688-142285-0002.flac")
    return load_audio(path)[0][: 16000 * 3]


def test_crops_are_evenly_spaced_flush_with_the_ends_and_wrap_short_utterances() -> None:
    idx = crop_indices(torch.tensor(1000), 400, 4)
    assert idx[:, 0].tolist() == [0, 200, 400, 600] and idx[-1, -1] == 999
    assert torch.equal(idx[1], torch.arange(200, 600))
    assert crop_indices(torch.tensor(1000), 400, 1)[0, 0] == 0
    short = crop_indices(torch.tensor(150), 400, 3)  # wrap-padded: every crop from the start
    assert torch.equal(short[0], torch.arange(400) % 150) and torch.equal(short[0], short[2])
    feats = np.arange(1000 * 2, dtype=np.float32).reshape(1000, 2)
    crops = evenly_spaced_crops(feats, 400, 4)
    assert crops.shape == (4, 400, 2) and crops[3, -1, 0] == feats[-1, 0]


@pytest.mark.parametrize("cfg", FRONTENDS, ids=lambda c: c.frontend)
def test_fbank_graphs_script_and_export_to_onnx_as_computed(cfg: FbankConfig, tmp_path) -> None:
    """The front-end in the student's exported graph is the features' own computation."""
    import onnxruntime as ort

    wave = _speech()
    module = new_fbank_module(cfg).eval()
    eager = compute_fbank(wave, cfg)
    x = torch.from_numpy(wave)[None]
    scripted = torch.jit.script(module)
    with torch.no_grad():
        np.testing.assert_array_equal(scripted(x)[0].numpy(), eager)
    dim = torch.export.Dim("samples", min=cfg.window)
    with torch.no_grad():
        program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=({1: dim},))
    program.save(str(tmp_path / "fbank.onnx"))
    session = ort.InferenceSession(str(tmp_path / "fbank.onnx"), providers=["CPUExecutionProvider"])
    for n in (len(wave), 12345):  # another length than the one exported with
        got = session.run(None, {session.get_inputs()[0].name: wave[None, :n]})[0][0]
        np.testing.assert_allclose(got, compute_fbank(wave[:n], cfg), rtol=0, atol=1e-4)


def test_spectrogram_graph_fits_any_length_as_the_dataset_does() -> None:
    cfg = SpectrogramConfig(sample_rate=8000, length=40)
    module = torch.jit.script(LogSpectrogram(cfg))
    wave = _speech()[::2]
    for n in (500, cfg.n_samples, 20000):  # shorter (repeated), exact, longer (centre)
        with torch.no_grad():
            got = module(torch.from_numpy(wave[:n])[None])[0]
        torch.testing.assert_close(got, spectrogram(wave[:n], cfg), rtol=0, atol=0)


def test_speaker_input_crops_frames_as_its_front_end_cuts_them() -> None:
    kaldi = FbankInput(fbank=FbankConfig(), crops=10, crop_seconds=4.0)
    vt = FbankInput(fbank=FbankConfig(frontend="voxceleb_trainer"), crop_seconds=2.0)
    assert kaldi.crop_frames == 400 and vt.crop_frames == 202  # voxceleb_trainer's 402 / 202
    assert vt.with_crops(3, None).crops == 3 and vt.with_crops(None, None) == vt
    front = vt.frontend()
    with torch.no_grad():
        crops = front(torch.from_numpy(_speech())[None])
    assert crops.shape == (1, 10, 202, 40)
    # float16-rounded as the store keeps features
    assert torch.equal(crops, crops.half().float())


def test_stored_preprocessing_round_trips_and_bad_kinds_name_the_file() -> None:
    from cmkd_cli.data.image_transforms import ImageTransformConfig

    inp = ImageInput(image=ImageTransformConfig(size=32), frames=3)
    assert parse_preprocessing(inp.model_dump(mode="json"), "x") == inp
    with pytest.raises(UsageError, match="student.pt: preprocessing"):
        parse_preprocessing({"kind": "video"}, "student.pt")


def test_user_inputs_decode_as_files_do(tmp_path) -> None:
    import soundfile as sf

    wave = _speech()
    sf.write(str(tmp_path / "a.wav"), wave, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(read_waveform(tmp_path / "a.wav", 16000), wave)
    np.testing.assert_array_equal(read_waveform((wave, 16000), 16000), wave)
    stereo = np.stack([wave, wave])
    np.testing.assert_allclose(read_waveform((stereo, 16000), 16000), wave, atol=1e-7)
    assert len(read_waveform((wave, 8000), 16000)) == 2 * len(wave)  # resampled
    with pytest.raises(UsageError, match="a \\(waveform, sample_rate\\) pair"):
        read_waveform(wave, 16000)
    with pytest.raises(DataError, match="a waveform must be"):
        read_waveform((np.zeros((2, 2, 2)), 16000), 16000)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert read_image(grey, 3).shape == (3, 8, 8)  # one channel stands for RGB
    with pytest.raises(DataError, match="has 3 channels but the student takes 1"):
        read_image(np.zeros((8, 8, 3), np.uint8), 1)
