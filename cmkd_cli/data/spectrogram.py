"""Log-magnitude STFT spectrograms: the audio input of paper B (C2KD appendix C.1).

Appendix C.1: a 512-sample window with an overlap of 353 (hop 512 - 353 = 159), giving
257 x T spectrograms with T = 299 for CREMA-D and 1,004 for AVE and VGGSound: 3 s and
10 s of 16 kHz audio without centre padding (T = 1 + (N - 512) // 159). Every setting is a
field of `SpectrogramConfig`, so a dataset states its own rate and length (AV-digits:
8 kHz, about 1 s).

The waveform is first brought to exactly the `n_samples` that `length` frames need: a
longer clip is cropped (at a random offset when augmenting, else its centre), a shorter one
is repeated (as OGM-GE/PMR tile CREMA-D clips) or zero padded. Then `log(|STFT| + eps)`
with a periodic Hann window, as librosa's `stft` + `np.log(abs(.) + 1e-7)` in those
references.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from cmkd_cli.schema import StrictModel


class SpectrogramConfig(StrictModel):
    """STFT settings of one dataset (recipe field `data.params.audio`)."""

    sample_rate: int = Field(16000, gt=0, description="audio is loaded (resampled) at this rate")
    window: int = Field(512, ge=2, description="STFT window and FFT size in samples")
    overlap: int = Field(353, ge=0, description="samples shared by consecutive windows")
    length: int = Field(299, ge=1, description="frames T per sample (CREMA-D 299, AVE 1004)")
    pad: Literal["repeat", "zeros"] = Field("repeat", description="how a short clip is filled")
    eps: float = Field(1e-7, gt=0, description="added to the magnitude before the log")

    @model_validator(mode="after")
    def _hop_positive(self) -> SpectrogramConfig:
        if self.overlap >= self.window:
            raise ValueError(
                f"overlap {self.overlap} must be smaller than the window {self.window}"
            )
        return self

    @property
    def hop(self) -> int:
        return self.window - self.overlap

    @property
    def n_freq(self) -> int:
        return self.window // 2 + 1

    @property
    def n_samples(self) -> int:
        """Samples that give exactly `length` frames without centre padding."""
        return self.window + (self.length - 1) * self.hop


def fit_length(
    samples: np.ndarray, n: int, pad: str = "repeat", rng: np.random.Generator | None = None
) -> np.ndarray:
    """`samples` cropped or filled to exactly `n` samples.

    Longer: a window at a random offset drawn from `rng`, or the centre when `rng` is None.
    Shorter: tiled (`repeat`) or zero padded at the end (`zeros`); an empty signal is zeros.
    """
    samples = np.asarray(samples, dtype=np.float32)
    have = len(samples)
    if have > n:
        extra = have - n
        offset = int(rng.integers(0, extra + 1)) if rng is not None else extra // 2
        return samples[offset : offset + n]
    if have == n:
        return samples
    if pad == "repeat" and have > 0:
        return np.tile(samples, -(-n // have))[:n]
    out = np.zeros(n, dtype=np.float32)
    out[:have] = samples
    return out


@functools.lru_cache(maxsize=8)
def _hann(n: int) -> torch.Tensor:
    """The periodic Hann window, built once per size (read-only for torch.stft)."""
    return torch.hann_window(n)


def log_spectrogram(samples: np.ndarray, cfg: SpectrogramConfig) -> torch.Tensor:
    """`log(|STFT| + eps)` of a mono signal, `[n_freq, frames]` float32 (no centre padding).

    The signal must hold at least one window; `spectrogram` fits it to `cfg.n_samples` first.
    """
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    stft = torch.stft(
        wave,
        n_fft=cfg.window,
        hop_length=cfg.hop,
        win_length=cfg.window,
        window=_hann(cfg.window),
        center=False,
        return_complex=True,
    )
    return torch.log(stft.abs() + cfg.eps)


def spectrogram(
    samples: np.ndarray, cfg: SpectrogramConfig, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """The fixed-size `[n_freq, length]` input of one clip (random crop when `rng` is given)."""
    return log_spectrogram(fit_length(samples, cfg.n_samples, cfg.pad, rng), cfg)
