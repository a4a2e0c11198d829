"""The voxceleb_trainer front-end against the reference built from torchaudio, on a real wav.

The reference is clovaai/voxceleb_trainer's ResNetSE34V2 input path, rebuilt here from its
description: soundfile samples -> PreEmphasis(0.97, reflect pad of one sample, 2-tap conv)
-> torchaudio MelSpectrogram(16 kHz, n_fft 512, win 400, hop 160, hamming window, 40 mels)
-> +1e-6 -> log -> InstanceNorm1d(40); crops of `max_frames * 160 + 240` samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.fbank import (
    FbankConfig,
    FbankStore,
    compute_fbank,
    crop_frames,
    n_frames,
)
from cmkd_cli.models.speaker import resnet34_asp
from tests.fixtures_layouts import shared_data, write_wav_from

VT = FbankConfig(frontend="voxceleb_trainer", dtype="float32")


def reference_features(audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel `[T, 40]`, InstanceNorm'd `[T, 40]`) of one signal as voxceleb_trainer does."""
    import torchaudio

    x = torch.FloatTensor(audio)[None, None]  # [1, 1, N], as the model's forward gets it
    x = F.conv1d(F.pad(x, (1, 0), "reflect"), torch.FloatTensor([[[-0.97, 1.0]]])).squeeze(1)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        window_fn=torch.hamming_window,
        n_mels=40,
    )
    with torch.no_grad():
        logmel = (mel(x) + 1e-6).log()  # [1, 40, T]
        normed = torch.nn.InstanceNorm1d(40)(logmel)
    return logmel[0].T, normed[0].T


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    """A real 16 kHz 16-bit wav (a LibriSpeech test-other utterance rewritten as wav)."""
    src = shared_data("librispeech-test-other", "1688", "1688-142285-0002.flac")
    return write_wav_from(src, tmp_path_factory.mktemp("frontend") / "utt.wav")


def test_whole_utterance_equals_the_torchaudio_reference(wav: Path) -> None:
    import soundfile as sf

    audio, rate = sf.read(str(wav))  # float64 in [-1, 1], as the reference reads it
    assert rate == 16000
    ref_log, ref_norm = reference_features(audio)
    ours = compute_fbank(load_audio(wav)[0], VT)
    assert ours.shape == tuple(ref_log.shape) == (1 + len(audio) // 160, 40)
    assert ours.shape[0] == n_frames(len(audio), VT)
    # ours runs in float64 (so that exported graphs reproduce it); the reference's float32
    # FFT is itself off by up to ~1.3e-4 in the quietest bins, on average by far less
    np.testing.assert_allclose(ours, ref_log.numpy(), rtol=0, atol=2e-4)
    assert np.abs(ours - ref_log.numpy()).mean() < 2e-6
    # the student's input_norm is the reference's InstanceNorm1d over the crop
    net = resnet34_asp(num_classes=None, n_mels=40).backbone
    normed = net.to_image(torch.from_numpy(ours)[None])[0, 0].T
    np.testing.assert_allclose(normed.numpy(), ref_norm.numpy(), rtol=0, atol=2e-4)
    # and it is not the Kaldi front-end: the two differ well beyond rounding
    kaldi = net.to_image(torch.from_numpy(compute_fbank(load_audio(wav)[0], FbankConfig()))[None])
    assert kaldi.shape[-1] == ours.shape[0] - 2
    assert (kaldi[0, 0].T - normed[1:-1]).pow(2).mean().sqrt() > 0.05


def test_frames_per_crop_are_the_reference_max_frames_plus_two(wav: Path) -> None:
    import soundfile as sf

    assert (crop_frames(2.0, VT), crop_frames(4.0, VT)) == (202, 402)
    assert (crop_frames(2.0, FbankConfig()), crop_frames(4.0, FbankConfig())) == (200, 400)
    audio = np.tile(sf.read(str(wav))[0], 2)  # 5.7 s: room for a 4 s crop
    for max_frames, expected in ((200, 202), (400, 402)):
        ref_log, _ = reference_features(audio[: max_frames * 160 + 240])  # loadWAV's crop
        assert ref_log.shape[0] == expected == crop_frames(max_frames / 100, VT)


def test_a_store_crop_is_the_reference_crop_but_for_its_reflect_padded_edges(
    wav: Path, tmp_path: Path
) -> None:
    """The store holds whole-utterance features; the reference computes each 2 s crop on its
    own, reflect-padding the crop's ends. Frames 2..200 of 202 are equal; frames 0, 1 (the
    crop's first samples: reflection and pre-emphasis) and 201 see real neighbouring audio."""
    import soundfile as sf

    audio = sf.read(str(wav))[0]
    whole = compute_fbank(load_audio(wav)[0], VT)
    k = 50  # the reference crop starting at sample 50 * 160 is frames 50.. of the whole
    ref_log, _ = reference_features(audio[k * 160 : k * 160 + 200 * 160 + 240])
    crop = whole[k : k + crop_frames(2.0, VT)]
    assert crop.shape == tuple(ref_log.shape) == (202, 40)
    diff = np.abs(crop - ref_log.numpy()).max(axis=1)
    assert diff[2:201].max() < 2e-4  # the reference's float32 rounding (see above)
    assert (diff[[0, 1, 201]] > 1e-3).all()


def test_frontend_defaults_and_checks() -> None:
    assert FbankConfig().frontend == "kaldi" and FbankConfig().cmn is True
    assert FbankConfig(frontend="voxceleb_trainer").cmn is False  # InstanceNorm does it
    assert FbankConfig(frontend="voxceleb_trainer", cmn=True).cmn is True
    assert VT.n_fft == 512 and (VT.window, VT.shift) == (400, 160)
    with pytest.raises(ValueError, match="no dither"):
        FbankConfig(frontend="voxceleb_trainer", dither=1.0)
    with pytest.raises(ValueError, match="frontend"):
        FbankConfig(frontend="librosa")
    assert FbankConfig().same_features(FbankConfig(cmn=False, dtype="float32"))
    assert not FbankConfig().same_features(VT)


def test_a_store_made_before_the_option_reads_as_kaldi(tmp_path: Path) -> None:
    """config.json of an older store has no `frontend`: it is the Kaldi front-end."""
    old = {k: v for k, v in FbankConfig().model_dump().items() if k != "frontend"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "index.jsonl").write_text("")
    store = FbankStore(tmp_path)
    assert store.config.frontend == "kaldi" and store.config == FbankConfig()
