"""Spectrogram settings of paper B appendix C.1 on real recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.spectrogram import SpectrogramConfig, fit_length, spectrogram


def test_paper_shapes_from_window_overlap_and_length() -> None:
    crema, ave = SpectrogramConfig(length=299), SpectrogramConfig(length=1004)
    assert (crema.hop, crema.n_freq) == (159, 257)
    # 257 x 299 is 3 s and 257 x 1004 is 10 s of 16 kHz audio, as in the appendix
    assert crema.n_samples == 512 + 298 * 159 and abs(crema.n_samples / 16000 - 3) < 0.01
    assert abs(ave.n_samples / 16000 - 10) < 0.01
    spec = spectrogram(np.zeros(48000, np.float32) + 0.1, crema)
    assert spec.shape == (257, 299) and spec.dtype == torch.float32
    with pytest.raises(ValidationError, match="smaller than the window"):
        SpectrogramConfig(window=256, overlap=256)


def test_real_speech_log_magnitude(shared_data: Path) -> None:
    samples, _ = load_audio(shared_data / "fsdd" / "recordings" / "7_theo_3.wav", 8000)
    cfg = SpectrogramConfig(sample_rate=8000, length=48)
    spec = spectrogram(samples, cfg)
    assert spec.shape == (257, 48)
    # log magnitude: speech energy sits well above the eps floor, low bins above high bins
    assert spec.max() > 0 and spec.min() > np.log(cfg.eps) - 1
    assert spec[:64].mean() > spec[192:].mean()
    ref = torch.stft(
        torch.from_numpy(fit_length(samples, cfg.n_samples)).double(),
        512,
        159,
        window=torch.hann_window(512, dtype=torch.float64),
        center=False,
        return_complex=True,
    )
    torch.testing.assert_close(spec, torch.log(ref.abs() + 1e-7).float(), rtol=0, atol=1e-5)


def test_fit_length_crops_repeats_and_pads() -> None:
    x = np.arange(10, dtype=np.float32)
    assert fit_length(x, 4).tolist() == [3, 4, 5, 6]  # centre crop without a generator
    a = fit_length(x, 4, rng=np.random.default_rng(0))
    assert a.tolist() == fit_length(x, 4, rng=np.random.default_rng(0)).tolist()
    starts = {fit_length(x, 4, rng=np.random.default_rng(s))[0] for s in range(20)}
    assert len(starts) > 3 and min(starts) >= 0 and max(starts) <= 6  # random, in range
    assert fit_length(x[:3], 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert fit_length(x[:3], 5, "zeros").tolist() == [0, 1, 2, 0, 0]
    assert fit_length(x[:0], 3).tolist() == [0, 0, 0]
