"""Log-mel filterbank features and their sharded, memory-mapped store.

Paper A Sec. 4.1.1: 40-dimensional Fbank with a 25 ms window and a 10 ms step. Two
front-ends compute it (`FbankConfig.frontend`):

* `kaldi` (default; every store made before the option): `torchaudio.compliance.kaldi.fbank`
  (Kaldi's compute-fbank-feats: samples scaled to the int16 range, DC removal, per-frame
  pre-emphasis 0.97, povey window, 20 Hz low cut, `snip_edges`: `1 + (N - win) // hop`
  frames), optionally mean-normalised per utterance (CMN).
* `voxceleb_trainer`: the front-end of clovaai/voxceleb_trainer's ResNetSE34V2, the
  setup paper A trains in: whole-signal pre-emphasis `y[n] = x[n] - 0.97 x[n-1]` (the first
  sample against a reflected `x[1]`) of the [-1, 1] samples soundfile reads, a power
  `MelSpectrogram` (n_fft 512, hamming window 400, hop 160, f_min 0, f_max sr/2, HTK mel,
  no filter normalisation, centred framing with reflect padding: `1 + N // hop` frames),
  then `log(x + 1e-6)`; no CMN, since the model's InstanceNorm normalises each crop (the
  reference applies it in the model as well: `resnet34_asp(input_norm=True)`).

Store layout (written by `cmkd extract-fbank`, read by `FbankStore`):
    OUT/config.json            the FbankConfig used (a different one is refused)
    OUT/shard-00000.npy        frames of many utterances concatenated, [sum T, n_mels]
    OUT/shard-00000.jsonl      that shard's entries (id, audio, stamp, offset, n_frames) or
                               skipped ids; written after the .npy, so it marks the shard done
    OUT/index.jsonl            id -> shard, offset, n_frames for the manifest's ids
    OUT/skipped.jsonl          audio that could not be read
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from pydantic import Field, model_validator

from cmkd_cli.data.audio import load_audio, stable_seed
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.io import atomic_write, atomic_write_json, atomic_write_jsonl, read_jsonl
from cmkd_cli.schema import StrictModel

CONFIG = "config.json"
INDEX = "index.jsonl"
WAVE_SCALE = 32768.0  # Kaldi computes features of int16-valued samples
_SHARD = re.compile(r"^shard-(\d{5,})\.(npy|jsonl)$")


Frontend = Literal["kaldi", "voxceleb_trainer"]
FRONTENDS: tuple[str, ...] = ("kaldi", "voxceleb_trainer")
PRE_EMPHASIS = 0.97  # voxceleb_trainer's PreEmphasis coefficient
LOG_FLOOR = 1e-6  # voxceleb_trainer: log(mel + 1e-6)


class FbankConfig(StrictModel):
    """Feature settings; stored with the features so a store is never mixed."""

    frontend: Frontend = Field(
        "kaldi", description="kaldi (compute-fbank-feats) or voxceleb_trainer (ResNetSE34V2's)"
    )
    n_mels: int = Field(40, ge=1, description="mel bands (paper A: 40)")
    frame_length_ms: float = Field(25.0, gt=0)
    frame_shift_ms: float = Field(10.0, gt=0)
    sample_rate: int = Field(16000, gt=0)
    cmn: bool = Field(
        True,
        description="subtract each utterance's mean over time (default: on for kaldi, off "
        "for voxceleb_trainer, whose model normalises each crop instead)",
    )
    dither: float = Field(0.0, ge=0, description="Kaldi dither; seeded per utterance id")
    dtype: Literal["float16", "float32"] = "float16"

    @model_validator(mode="before")
    @classmethod
    def _frontend_defaults(cls, data: Any) -> Any:
        """`cmn` left out (or None) takes the front-end's default."""
        if isinstance(data, dict) and data.get("cmn") is None:
            data = {**data, "cmn": data.get("frontend", "kaldi") == "kaldi"}
        return data

    @model_validator(mode="after")
    def _no_dither_for_voxceleb_trainer(self) -> FbankConfig:
        if self.frontend == "voxceleb_trainer" and self.dither > 0:
            raise ValueError("dither: the voxceleb_trainer front-end has no dither (use 0)")
        return self

    @property
    def window(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def n_fft(self) -> int:
        """FFT size: the window rounded up to a power of two (400 -> 512), in both front-ends."""
        return 1 << (self.window - 1).bit_length()

    def same_features(self, other: FbankConfig) -> bool:
        """Whether a model trained on one store's features may read the other's (storage
        dtype, dither and CMN aside: the speaker model normalises each crop itself)."""
        keys = ("frontend", "n_mels", "frame_length_ms", "frame_shift_ms", "sample_rate")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def describe(self) -> str:
        return f"{self.frontend} front-end, {self.n_mels} mels"


def n_frames(n_samples: int, cfg: FbankConfig) -> int:
    """Frames of `n_samples` (0 when shorter than one window): kaldi (snip-edges)
    `1 + (N - window) // shift`; voxceleb_trainer (centred) `1 + N // shift`."""
    if n_samples < cfg.window:
        return 0
    if cfg.frontend == "voxceleb_trainer":
        return 1 + n_samples // cfg.shift
    return 1 + (n_samples - cfg.window) // cfg.shift


def crop_frames(seconds: float, cfg: FbankConfig) -> int:
    """Frames of a `seconds` crop, counted as voxceleb_trainer cuts it: `F` nominal frames
    (`seconds / frame shift`) are `F * shift + window - shift` samples (`max_frames * 160 +
    240`), which the front-end turns into `n_frames` of them: kaldi F (2 s -> 200, 4 s ->
    400), voxceleb_trainer F + 2 (202, 402), as the reference's model sees its crops."""
    nominal = round(seconds * 1000 / cfg.frame_shift_ms)
    return n_frames(nominal * cfg.shift + cfg.window - cfg.shift, cfg)


@functools.lru_cache(maxsize=4)
def _mel_spectrogram(sample_rate: int, n_fft: int, window: int, shift: int, n_mels: int) -> Any:
    """voxceleb_trainer's `torchaudio.transforms.MelSpectrogram`, every default spelled out."""
    import torchaudio  # lazy: seconds to import; only the voxceleb_trainer front-end uses it

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=n_fft,
        win_length=window,
        hop_length=shift,
        f_min=0.0,
        f_max=None,
        n_mels=n_mels,
        window_fn=torch.hamming_window,
        power=2.0,
        normalized=False,
        center=True,
        pad_mode="reflect",
        norm=None,
        mel_scale="htk",
    )


def pre_emphasis(samples: np.ndarray, coef: float = PRE_EMPHASIS) -> np.ndarray:
    """`y[n] = x[n] - coef * x[n-1]` over the whole signal, `x[-1]` taken as the reflected
    `x[1]` (voxceleb_trainer's PreEmphasis: reflect pad of one sample, then a 2-tap conv)."""
    x = np.asarray(samples, dtype=np.float32)
    y = np.empty_like(x)
    y[1:] = x[1:] - np.float32(coef) * x[:-1]
    y[0] = x[0] - np.float32(coef) * x[1]
    return y


def _voxceleb_trainer_fbank(samples: np.ndarray, cfg: FbankConfig) -> torch.Tensor:
    """`[T, n_mels]` log(mel power + 1e-6) of the pre-emphasised signal (module docstring)."""
    mel = _mel_spectrogram(cfg.sample_rate, cfg.n_fft, cfg.window, cfg.shift, cfg.n_mels)
    with torch.no_grad():
        power = mel(torch.from_numpy(pre_emphasis(samples)))  # [n_mels, T]
    return (power + LOG_FLOOR).log().T.contiguous()


def compute_fbank(samples: np.ndarray, cfg: FbankConfig, key: str = "") -> np.ndarray:
    """Log-mel fbank [T, n_mels] (float32) of a mono signal in [-1, 1] at cfg.sample_rate,
    by `cfg.frontend` (module docstring).

    Dither noise (kaldi, cfg.dither > 0) is drawn from a generator seeded by `key`, so the
    same utterance gives the same features in every run. Raises DataError when the signal is
    shorter than one frame (window).
    """
    if len(samples) < cfg.window:
        raise DataError(f"{len(samples)} samples are fewer than one {cfg.frame_length_ms} ms frame")
    if cfg.frontend == "voxceleb_trainer":
        feats = _voxceleb_trainer_fbank(samples, cfg)
    else:
        feats = _kaldi_fbank(samples, cfg, key)
    if cfg.cmn:
        feats = feats - feats.mean(dim=0, keepdim=True)
    return feats.numpy()


def _kaldi_fbank(samples: np.ndarray, cfg: FbankConfig, key: str) -> torch.Tensor:
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32) * WAVE_SCALE)[None]
    kwargs: dict[str, Any] = {
        "num_mel_bins": cfg.n_mels,
        "frame_length": cfg.frame_length_ms,
        "frame_shift": cfg.frame_shift_ms,
        "sample_frequency": float(cfg.sample_rate),
        "dither": cfg.dither,
    }
    if cfg.dither > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed("dither", key))
            return kaldi.fbank(wave, **kwargs)
    return kaldi.fbank(wave, **kwargs)


# ---------------------------------------------------------------- writing shards


def shard_name(number: int, ext: str = "npy") -> str:
    return f"shard-{number:05d}.{ext}"


def audio_stamp(path: str) -> list[int] | None:
    """[size, mtime_ns] of an audio file (None when missing): a changed file is recomputed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class ShardJob:
    """Utterances (id, absolute audio path) to compute into one shard of `out`."""

    out: str
    number: int
    items: tuple[tuple[str, str], ...]
    config: dict[str, Any]


@dataclass(frozen=True)
class ShardReport:
    number: int
    utterances: int
    skipped: int
    frames: int
    seconds: float


def write_shard(job: ShardJob) -> ShardReport:
    """Compute every utterance of `job` and write its .npy, then its .jsonl (atomically)."""
    cfg = FbankConfig.model_validate(job.config)
    out = Path(job.out)
    feats, rows, skipped, offset, seconds = [], [], 0, 0, 0.0
    for uid, audio in job.items:
        stamp = audio_stamp(audio)
        try:
            samples, info = load_audio(audio, cfg.sample_rate)
            f = compute_fbank(samples, cfg, uid)
        except DataError as exc:
            text = str(exc).removeprefix(f"{audio}: ")
            rows.append({"id": uid, "audio": audio, "stamp": stamp, "skipped": text})
            skipped += 1
            continue
        feats.append(f.astype(cfg.dtype))
        rows.append(
            {"id": uid, "audio": audio, "stamp": stamp, "offset": offset, "n_frames": len(f)}
        )
        offset += len(f)
        seconds += info.duration
    if feats:
        data = np.concatenate(feats)
        atomic_write(out / shard_name(job.number), lambda fh: np.save(fh, data), mode="wb")
    atomic_write_jsonl(out / shard_name(job.number, "jsonl"), rows)
    return ShardReport(job.number, len(feats), skipped, offset, seconds)


def plan_shards(
    items: list[tuple[str, str]], out: Path, cfg: FbankConfig, shard_size: int, first: int
) -> list[ShardJob]:
    """Split `items` into jobs of `shard_size` utterances numbered from `first`."""
    config = cfg.model_dump()
    return [
        ShardJob(str(out), first + n, tuple(items[i : i + shard_size]), config)
        for n, i in enumerate(range(0, len(items), shard_size))
    ]


# ---------------------------------------------------------------- resuming and the index


def check_config(out: Path, cfg: FbankConfig, overwrite: bool) -> None:
    """Refuse a store made with another config unless `overwrite` (which empties it)."""
    path = out / CONFIG
    if path.is_file():
        old = FbankConfig.model_validate_json(path.read_text())
        if old != cfg and not overwrite:
            diff = ", ".join(
                f"{k} {v!r} -> {getattr(cfg, k)!r}"
                for k, v in old.model_dump().items()
                if v != getattr(cfg, k)
            )
            raise UsageError(
                f"{path}: the store was made with another config ({diff}); "
                "pass --overwrite to recompute it"
            )
    if overwrite:
        for p in out.glob("shard-*"):
            if _SHARD.match(p.name):
                p.unlink()
        for name in (INDEX, "skipped.jsonl", CONFIG):
            (out / name).unlink(missing_ok=True)
    atomic_write_json(path, cfg.model_dump())


def shard_numbers(out: Path) -> list[int]:
    return sorted({int(m.group(1)) for p in out.glob("shard-*") if (m := _SHARD.match(p.name))})


def finished_entries(out: Path) -> dict[str, dict[str, Any]]:
    """id -> its entry in the finished shards (a later shard wins), with `shard` filled in."""
    entries: dict[str, dict[str, Any]] = {}
    for number in shard_numbers(out):
        sidecar = out / shard_name(number, "jsonl")
        if not sidecar.is_file():
            continue  # killed between the .npy and its .jsonl: not finished
        for row in read_jsonl(sidecar):
            entries[row["id"]] = {**row, "shard": shard_name(number)}
    return entries


def is_current(entry: dict[str, Any] | None, audio: str) -> bool:
    """An entry still valid for this audio path and file (same size and mtime)."""
    return entry is not None and entry["audio"] == audio and entry["stamp"] == audio_stamp(audio)


def write_index(out: Path, ids: list[str], entries: dict[str, dict[str, Any]]) -> int:
    """Write OUT/index.jsonl for `ids` that have features; returns how many."""
    rows = [
        {k: entries[i][k] for k in ("id", "shard", "offset", "n_frames")}
        for i in ids
        if i in entries and "skipped" not in entries[i]
    ]
    atomic_write_jsonl(out / INDEX, rows)
    return len(rows)


# ---------------------------------------------------------------- reading


class FbankStore:
    """Read-only access to a store: `store[id]` -> [T, n_mels] memory-mapped frames."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        index = self.root / INDEX
        if not index.is_file():
            raise DataError(f"{index} does not exist (run `cmkd extract-fbank` first)")
        self.config = FbankConfig.model_validate(json.loads((self.root / CONFIG).read_text()))
        self._index = {r["id"]: (r["shard"], r["offset"], r["n_frames"]) for r in read_jsonl(index)}
        self._shards: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, uid: object) -> bool:
        return uid in self._index

    @property
    def ids(self) -> list[str]:
        return list(self._index)

    def n_frames(self, uid: str) -> int:
        return self._entry(uid)[2]

    def _entry(self, uid: str) -> tuple[str, int, int]:
        try:
            return self._index[uid]
        except KeyError:
            raise KeyError(f"{uid!r} is not in {self.root / INDEX}") from None

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            self._shards[name] = np.load(self.root / name, mmap_mode="r")
        return self._shards[name]

    def __getitem__(self, uid: str) -> np.ndarray:
        shard, offset, n = self._entry(uid)
        return self._shard(shard)[offset : offset + n]

    def crop(self, uid: str, n_frames: int, rng: np.random.Generator) -> np.ndarray:
        """`n_frames` consecutive frames at a random start (float32); an utterance shorter than
        that is repeated from its start (wrap padding) to fill them."""
        feats = self[uid]
        total = len(feats)
        if total >= n_frames:
            start = int(rng.integers(0, total - n_frames + 1))
            return np.asarray(feats[start : start + n_frames], dtype=np.float32)
        return np.asarray(feats, dtype=np.float32)[np.arange(n_frames) % total]

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for DataLoader workers: memory maps are reopened in each process."""
        return {**self.__dict__, "_shards": {}}
