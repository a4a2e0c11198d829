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
references. `LogSpectrogram` does both in one graph, the same one `cmkd export` ships.
"""

from __future__ import annotations

import functools
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

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


def fit_indices(
    have: torch.Tensor,
    n: int,
    repeat: bool,
    offset: Optional[torch.Tensor] = None,  # noqa: UP045
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices `[n]` into a signal of `have` (>= 1) samples that fit it to exactly `n`, and
    the mask `[n]` of those that hold a sample (False: zero padding).

    Longer: the window at `offset` (default: the centre, `(have - n) // 2`). Shorter: tiled
    from the start (`repeat`) or zero padded at the end. Index arithmetic on a 0-dim `have`
    (no branch on the length), so TorchScript and ONNX graphs hold it for any length.
    """
    extra = torch.clamp(have - n, min=0)
    start = extra // 2 if offset is None else offset
    idx = start + torch.arange(n, device=have.device)
    if repeat:
        return idx % have, torch.ones_like(idx, dtype=torch.bool)
    return torch.clamp(idx, max=have - 1), idx < have


def fit_length(
    samples: np.ndarray, n: int, pad: str = "repeat", rng: np.random.Generator | None = None
) -> np.ndarray:
    """`samples` cropped or filled to exactly `n` samples (`fit_indices`).

    Longer: a window at a random offset drawn from `rng`, or the centre when `rng` is None.
    Shorter: tiled (`repeat`) or zero padded at the end (`zeros`); an empty signal is zeros.
    """
    samples = np.asarray(samples, dtype=np.float32)
    have = len(samples)
    if have == 0:
        return np.zeros(n, dtype=np.float32)
    offset = None
    if rng is not None and have > n:
        offset = torch.tensor(int(rng.integers(0, have - n + 1)))
    idx, valid = fit_indices(torch.tensor(have), n, pad == "repeat", offset)
    return np.where(valid.numpy(), samples[idx.numpy()], np.float32(0))


class LogSpectrogram(nn.Module):
    """`log(|STFT| + eps)` of clips `[B, N]` (any N >= 1) -> `[B, n_freq, length]` float32.

    Each clip is first fitted to `cfg.n_samples` (`fit_indices`: its centre, or `offset`);
    periodic Hann window, no centre padding, FFT size = window (librosa's `stft` with
    `center=False`, as the references). Computed in float64 so that eager and exported
    graphs (`cmkd export`) agree to float32 rounding even in near-silent bins.
    """

    def __init__(self, cfg: SpectrogramConfig) -> None:
        super().__init__()
        self.n, self.window, self.hop = cfg.n_samples, cfg.window, cfg.hop
        self.length, self.repeat, self.eps = cfg.length, cfg.pad == "repeat", cfg.eps
        hann = torch.hann_window(cfg.window, periodic=True, dtype=torch.float64)
        self.register_buffer("hann", hann, persistent=False)
        self.register_buffer("offsets", torch.arange(cfg.window), persistent=False)

    def forward(self, wave: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        have = torch.scalar_tensor(wave.shape[-1], dtype=torch.long, device=wave.device)
        idx, valid = fit_indices(have, self.n, self.repeat, offset)
        x = wave.double()[:, idx] * valid.double()
        starts = torch.arange(self.length, device=x.device) * self.hop
        frames = x[:, starts[:, None] + self.offsets[None, :]] * self.hann  # [B, T, window]
        magnitude = torch.fft.rfft(frames, n=self.window).abs()
        return torch.log(magnitude + self.eps).transpose(1, 2).float()


@functools.lru_cache(maxsize=8)
def _module(cfg_json: str) -> LogSpectrogram:
    return LogSpectrogram(SpectrogramConfig.model_validate_json(cfg_json)).eval()


def spectrogram(
    samples: np.ndarray, cfg: SpectrogramConfig, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """The fixed-size `[n_freq, length]` input of one clip (random crop when `rng` is given)."""
    samples = np.asarray(samples, dtype=np.float32)
    if len(samples) == 0:
        samples = np.zeros(1, dtype=np.float32)  # an empty clip: silence (zeros or tiled)
    offset = None
    if rng is not None and len(samples) > cfg.n_samples:
        offset = torch.tensor(int(rng.integers(0, len(samples) - cfg.n_samples + 1)))
    with torch.no_grad():
        return _module(cfg.model_dump_json())(torch.from_numpy(samples)[None], offset)[0]
