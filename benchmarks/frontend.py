"""How far the speaker front-ends and the fbank store are from voxceleb_trainer's input.

On the real LibriSpeech test-other recordings (../shared/data), every feature is compared
after the model's per-crop InstanceNorm (so in units of each mel bin's standard deviation):

  kaldi vs voxceleb_trainer   the two front-ends on whole utterances (Kaldi frame t against
                              the centred frame t + 1, whose window starts 40 samples earlier);
                              RMS difference and the correlation of each mel bin over time
  store crop vs per-crop      voxceleb_trainer computes each 2 s crop from its own samples
                              (reflect-padded ends); the store cuts 202 frames out of the
                              whole utterance's features: RMS difference over the crop and
                              over its frames 2..200
  float16 store               the default store dtype against float32

Usage: .venv/bin/python benchmarks/frontend.py [--crops 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.datasets import keyed_rng
from cmkd_cli.data.fbank import FbankConfig, compute_fbank, crop_frames

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "librispeech-test-other"
VT = FbankConfig(frontend="voxceleb_trainer")
KALDI = FbankConfig()


def normalise(feats: np.ndarray) -> np.ndarray:
    """The model's InstanceNorm1d over time, per mel bin (`[T, F]`)."""
    x = torch.from_numpy(np.asarray(feats, dtype=np.float32)).T[None]
    return torch.nn.functional.instance_norm(x)[0].T.numpy()


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=5, help="random 2 s crops per utterance")
    args = parser.parse_args()
    files = sorted(DATA.glob("*/*.flac"))
    if not files:
        raise SystemExit(f"no LibriSpeech recordings under {DATA}")
    frames = crop_frames(2.0, VT)
    samples = (frames - 2) * VT.shift + VT.window - VT.shift  # loadWAV's max_frames*160+240
    front, bins, crop_all, crop_inner, half = [], [], [], [], []
    for n, path in enumerate(files):
        wave = load_audio(path)[0]
        vt = compute_fbank(wave, VT)
        kaldi = normalise(compute_fbank(wave, KALDI))
        vt_aligned = normalise(vt[1 : 1 + len(kaldi)])
        front.append(rms(kaldi, vt_aligned))
        bins.append([np.corrcoef(kaldi[:, f], vt_aligned[:, f])[0, 1] for f in range(40)])
        half.append(rms(normalise(vt), normalise(vt.astype(np.float16))))
        rng = keyed_rng("frontend-bench", n)
        for _ in range(args.crops):
            if len(wave) < samples + VT.shift:
                break
            k = int(rng.integers(0, (len(wave) - samples) // VT.shift + 1))
            own = normalise(compute_fbank(wave[k * VT.shift : k * VT.shift + samples], VT))
            cut = normalise(vt[k : k + frames])
            crop_all.append(rms(own, cut))
            crop_inner.append(rms(own[2:-1], cut[2:-1]))
    b = np.asarray(bins)
    print(f"{len(files)} utterances, {len(crop_all)} crops of {frames} frames")
    print(
        f"kaldi vs voxceleb_trainer: RMS {np.mean(front):.3f} std; per-bin correlation "
        f"lowest bin {b[:, 0].mean():.3f}, median bin {np.median(b.mean(0)):.3f}"
    )
    print(
        f"store crop vs per-crop:    RMS {np.mean(crop_all):.4f} std over the crop, "
        f"{np.mean(crop_inner):.4f} over frames 2..{frames - 2} (max {np.max(crop_all):.4f})"
    )
    print(f"float16 store:             RMS {np.mean(half):.5f} std")


if __name__ == "__main__":
    main()
