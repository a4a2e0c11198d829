"""Noise mixing for paper A's robustness test (Sec. 4.1.1, Table 1, Eq. 13).

Eq. 13: Δdb = db_audio - db_noise. `mix_at_snr` scales the noise so that the clean speech
power over the added noise power is exactly Δdb decibels: 10·log10(P_speech / P_noise) = Δdb,
with the noise looped or cropped to the speech's length. `NoiseBank` picks, for each
utterance id, one MUSAN file and a start offset from a generator seeded only by
(seed, utterance id), so both sides of every trial get the same noise in every run. The
files are ordered by their key, the path relative to the MUSAN root without extension
(`noise/free-sound/noise-free-sound-0001`, the record id `cmkd prepare musan` writes), never
by the full path: the same MUSAN given as its root, as an absolute or as a relative manifest
path, on any machine, gives every utterance the same file and offset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cmkd_cli.data.audio import AUDIO_EXTS, SAMPLE_RATE, load_audio, stable_seed
from cmkd_cli.data.manifest import MANIFEST, read_manifest, resolve
from cmkd_cli.errors import DataError

MIN_NOISE_POWER = 1e-10  # -100 dBFS: quieter segments are silence, not noise
MAX_DRAWS = 32


def power(x: np.ndarray) -> float:
    """Mean power of a signal (float64)."""
    return float(np.mean(np.square(x, dtype=np.float64)))


def loop_to_length(noise: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """`n` samples of `noise` starting at `offset`, wrapping around (looped) when it is short."""
    if len(noise) == 0:
        raise DataError("the noise signal has no samples")
    return noise[(offset + np.arange(n)) % len(noise)]


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + g·noise with g chosen so that 10·log10(P_speech / P_(g·noise)) = snr_db (Eq. 13).

    The noise is looped/cropped to the speech's length from its start. Silent speech is
    returned unchanged (no noise level satisfies the ratio); silent noise is an error.
    """
    fitted = loop_to_length(np.asarray(noise, dtype=np.float64), len(speech))
    p_noise = power(fitted)
    if p_noise == 0.0:
        raise DataError("the noise segment is silent, so no gain reaches the requested SNR")
    gain = np.sqrt(power(speech) / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (np.asarray(speech, dtype=np.float64) + gain * fitted).astype(np.float32)


@dataclass(frozen=True)
class NoiseChoice:
    """The noise file (its key relative to the MUSAN root, and where it is read from) and the
    start sample that an utterance id maps to."""

    key: str
    path: str
    offset: int


class NoiseBank:
    """MUSAN noise files of `categories`, one reproducible segment per utterance id.

    `source` is a manifest from `cmkd prepare musan` (the file or its folder; records with a
    `category`, keyed by record id), or a raw MUSAN root holding
    `<category>/**/*.{wav,flac,ogg}` (keyed by path relative to the root, without extension).
    `files` are the paths in key order, `keys` their keys.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        categories: Sequence[str] = ("noise",),
        seed: int = 0,
        sample_rate: int = SAMPLE_RATE,
        cache_size: int = 32,
    ) -> None:
        self.categories = tuple(categories)
        self.seed = seed
        self.sample_rate = sample_rate
        self.cache_size = cache_size
        keyed = _noise_files(Path(source), self.categories)
        self.keys = [key for key, _ in keyed]
        self.files = [path for _, path in keyed]
        if not self.files:
            raise DataError(f"{source}: no noise files of categories {list(self.categories)}")
        self._load = lru_cache(maxsize=cache_size)(self._load_uncached)

    def _load_uncached(self, path: str) -> np.ndarray:
        return load_audio(path, self.sample_rate)[0]

    def segment(self, utt_id: str, n_samples: int) -> tuple[np.ndarray, NoiseChoice]:
        """`n_samples` of noise for `utt_id` (looped when the file is shorter) and where from.

        File and offset are drawn from a generator seeded by (seed, utt_id) only; a draw
        whose segment is digital silence (ESC-50 and MUSAN clips hold some) is followed by the
        next draw of the same generator, so the choice stays reproducible.
        """
        rng = np.random.default_rng(stable_seed(self.seed, utt_id))
        for _ in range(MAX_DRAWS):
            k = int(rng.integers(len(self.files)))
            audio = self._load(self.files[k])
            choice = NoiseChoice(self.keys[k], self.files[k], int(rng.integers(len(audio))))
            noise = loop_to_length(audio, n_samples, choice.offset)
            if power(noise) > MIN_NOISE_POWER:
                return noise, choice
        raise DataError(f"{utt_id}: {MAX_DRAWS} noise segments drawn for it were all silent")

    def mix(self, speech: np.ndarray, utt_id: str, snr_db: float) -> np.ndarray:
        """`speech` with its utterance's noise segment added at `snr_db` dB (Eq. 13)."""
        noise, choice = self.segment(utt_id, len(speech))
        try:
            return mix_at_snr(speech, noise, snr_db)
        except DataError as exc:
            raise DataError(f"{choice.path} (offset {choice.offset}): {exc}") from None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_load"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load = lru_cache(maxsize=self.cache_size)(self._load_uncached)


def _noise_files(source: Path, categories: tuple[str, ...]) -> list[tuple[str, str]]:
    """(key, audio path) of the files of `categories`, sorted by key: record ids of a musan
    manifest, or paths relative to a raw MUSAN folder without their extension."""
    if source.is_file() or (source / MANIFEST).is_file():
        records = read_manifest(source)
        return sorted(
            (r.id, str(resolve(source, r.audio)))
            for r in records
            if r.audio and (getattr(r, "category", None) or r.label) in categories
        )
    if not source.is_dir():
        raise DataError(f"{source}: neither a musan manifest nor a MUSAN folder")
    return sorted(
        (p.relative_to(source).with_suffix("").as_posix(), str(p))
        for c in categories
        for p in (source / c).rglob("*")
        if p.is_file() and p.suffix.lower() in AUDIO_EXTS
    )
