"""Log-mel filterbank features and their sharded, memory-mapped store.

Paper A Sec. 4.1.1: 40-dimensional Fbank with a 25 ms window and a 10 ms step. Two
front-ends compute it (`FbankConfig.frontend`):

* `kaldi` (default; every store made before the option): `torchaudio.compliance.kaldi.fbank`
  (Kaldi's compute-fbank-feats: samples scaled to the int16 range, DC removal, per-frame
  pre-emphasis 0.97, povey window, 20 Hz low cut, `snip_edges`: `1 + (N - win) // hop`
  frames), optionally mean-normalised per utterance (CMN); computed by `KaldiFbank`.
* `voxceleb_trainer`: the front-end of clovaai/voxceleb_trainer's ResNetSE34V2, the
  setup paper A trains in: whole-signal pre-emphasis `y[n] = x[n] - 0.97 x[n-1]` (the first
  sample against a reflected `x[1]`) of the [-1, 1] samples soundfile reads, a power
  `MelSpectrogram` (n_fft 512, hamming window 400, hop 160, f_min 0, f_max sr/2, HTK mel,
  no filter normalisation, centred framing with reflect padding: `1 + N // hop` frames),
  then `log(x + 1e-6)`; no CMN, since the model's InstanceNorm normalises each crop (the
  reference applies it in the model as well: `resnet34_asp(input_norm=True)`); computed by
  `VoxcelebTrainerFbank`.

Both are `nn.Module` graphs of fixed buffers and index arithmetic (no length-dependent
branch), which `cmkd export` puts in front of the exported student, so the features of the
feature store, of `cmkd eval` from audio, of the Python API and of the exported graph are
one computation. They run in float64 (float32 out): torchaudio's float32 FFT is off by up to
3e-3 in rare low-energy bins of real speech (tested), float64 by about 1e-5, so eager and
exported front-ends agree to float32 rounding.

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
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
from pydantic import Field, model_validator
from torch import nn

from cmkd_cli.data.audio import load_audio, stable_seed
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_jsonl,
    iter_jsonl,
    read_jsonl,
)
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


#: Kaldi's floor on the mel energies before the log (torchaudio: float32 machine epsilon)
MEL_FLOOR = 1.1920928955078125e-07


class KaldiFbank(nn.Module):
    """Kaldi's compute-fbank-feats: waveform `[B, N]` in [-1, 1] -> `[B, T, n_mels]`.

    The steps of `torchaudio.compliance.kaldi.fbank` with cmkd's settings (snip_edges,
    remove_dc_offset, pre-emphasis 0.97 per frame, povey window = Hann^0.85, FFT size the
    next power of two, power spectrum, its triangular mel banks from 20 Hz to Nyquist, log
    floored at `MEL_FLOOR`), then CMN over time when `cfg.cmn`. `noise` (`[B, T, window]`,
    the dither draw) is added to the frames before DC removal, as Kaldi dithers.
    """

    def __init__(self, cfg: FbankConfig) -> None:
        super().__init__()
        self.window, self.shift, self.fft, self.cmn = cfg.window, cfg.shift, cfg.n_fft, cfg.cmn
        self.scale, self.floor = WAVE_SCALE, MEL_FLOOR  # attributes: TorchScript reads no globals
        mel, _ = kaldi.get_mel_banks(
            cfg.n_mels, self.fft, float(cfg.sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0
        )
        mel = F.pad(mel, (0, 1)).double()  # [n_mels, fft // 2 + 1]: the Nyquist bin has weight 0
        self.register_buffer("mel", mel.T.contiguous(), persistent=False)
        povey = torch.hann_window(cfg.window, periodic=False, dtype=torch.float64).pow(0.85)
        self.register_buffer("povey", povey, persistent=False)
        self.register_buffer("offsets", torch.arange(cfg.window), persistent=False)

    def forward(self, wave: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        x = wave.double() * self.scale
        n_frames = (x.shape[-1] - self.window) // self.shift + 1
        starts = torch.arange(n_frames, device=x.device) * self.shift
        frames = x[:, starts[:, None] + self.offsets[None, :]]  # [B, T, window]
        if noise is not None:
            frames = frames + noise.double()
        frames = frames - frames.mean(dim=-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - 0.97 * previous) * self.povey
        power = torch.fft.rfft(frames, n=self.fft).abs().pow(2)
        feats = torch.log(torch.clamp(power @ self.mel, min=self.floor))
        if self.cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        return feats.float()


class VoxcelebTrainerFbank(nn.Module):
    """voxceleb_trainer's ResNetSE34V2 front-end: waveform `[B, N]` -> `[B, 1 + N // hop, n_mels]`.

    Whole-signal pre-emphasis (`x[-1]` the reflected `x[1]`), then what its torchaudio
    `MelSpectrogram` computes: reflect padding of n_fft / 2 on both sides, frames every hop,
    the periodic hamming window of `window` samples centred in n_fft, power spectrum, HTK
    mel filters from 0 Hz to Nyquist without normalisation; then `log(x + 1e-6)` and CMN
    when `cfg.cmn`. In float64 like `KaldiFbank`: the reference's float32 computation is off
    by up to 1.3e-4 in quiet bins of real speech (tested), and float32 FFTs of two runtimes
    differ by as much, which an exported graph would then not reproduce. `noise` is accepted
    for `KaldiFbank`'s signature (this front-end has no dither).
    """

    def __init__(self, cfg: FbankConfig) -> None:
        super().__init__()
        self.fft, self.shift, self.cmn = cfg.n_fft, cfg.shift, cfg.cmn
        self.coef, self.floor = PRE_EMPHASIS, LOG_FLOOR
        left = (self.fft - cfg.window) // 2
        window = torch.zeros(self.fft, dtype=torch.float64)
        window[left : left + cfg.window] = torch.hamming_window(cfg.window, dtype=torch.float64)
        self.register_buffer("hamming", window, persistent=False)
        banks = AF.melscale_fbanks(
            self.fft // 2 + 1, 0.0, cfg.sample_rate // 2, cfg.n_mels, cfg.sample_rate, None, "htk"
        )
        self.register_buffer("mel", banks.double(), persistent=False)  # [n_freqs, n_mels]
        self.register_buffer("offsets", torch.arange(self.fft), persistent=False)

    def forward(self, wave: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        x = wave.double()
        previous = torch.cat([x[:, 1:2], x[:, :-1]], dim=1)
        x = x - self.coef * previous
        half = self.fft // 2
        x = F.pad(x[:, None], (half, half), mode="reflect")[:, 0]
        n_frames = (x.shape[-1] - self.fft) // self.shift + 1
        starts = torch.arange(n_frames, device=x.device) * self.shift
        frames = x[:, starts[:, None] + self.offsets[None, :]] * self.hamming  # [B, T, n_fft]
        power = torch.fft.rfft(frames, n=self.fft).abs().pow(2)
        feats = torch.log(power @ self.mel + self.floor)
        if self.cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        return feats.float()


def compute_fbank(samples: np.ndarray, cfg: FbankConfig, key: str = "") -> np.ndarray:
    """Log-mel fbank [T, n_mels] (float32) of a mono signal in [-1, 1] at cfg.sample_rate,
    by `cfg.frontend` (`fbank_module`).

    Dither noise (kaldi, cfg.dither > 0) is drawn from a generator seeded by `key`, so the
    same utterance gives the same features in every run. Raises DataError when the signal is
    shorter than one frame (window).
    """
    if len(samples) < cfg.window:
        raise DataError(f"{len(samples)} samples are fewer than one {cfg.frame_length_ms} ms frame")
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]
    noise = None
    if cfg.dither > 0:
        shape = (1, n_frames(len(samples), cfg), cfg.window)
        gen = torch.Generator().manual_seed(stable_seed("dither", key))
        noise = torch.randn(shape, generator=gen) * cfg.dither
    with torch.no_grad():
        feats = fbank_module(cfg)(wave, noise)[0]
    if not torch.isfinite(feats).all():
        raise DataError("non-finite features (NaN or Inf) from finite samples")
    return feats.numpy()


def fbank_module(cfg: FbankConfig) -> nn.Module:
    """The front-end module of `cfg` (`KaldiFbank` or `VoxcelebTrainerFbank`), built once
    per process and setting."""
    c = cfg
    return _fbank_module(
        c.frontend, c.n_mels, c.frame_length_ms, c.frame_shift_ms, c.sample_rate, c.cmn
    )


@functools.lru_cache(maxsize=8)
def _fbank_module(
    frontend: str, n_mels: int, length_ms: float, shift_ms: float, rate: int, cmn: bool
) -> nn.Module:
    cfg = FbankConfig(
        frontend=frontend,
        n_mels=n_mels,
        frame_length_ms=length_ms,
        frame_shift_ms=shift_ms,
        sample_rate=rate,
        cmn=cmn,
    )
    return new_fbank_module(cfg).eval()


def new_fbank_module(cfg: FbankConfig) -> nn.Module:
    """A fresh front-end module of `cfg` (one to put in an exported graph)."""
    return VoxcelebTrainerFbank(cfg) if cfg.frontend == "voxceleb_trainer" else KaldiFbank(cfg)


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
        except Exception as exc:  # noqa: BLE001 - one bad utterance never fails the store
            text = str(exc).removeprefix(f"{audio}: ")
            if not isinstance(exc, DataError):
                text = f"{type(exc).__name__}: {text}"
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


def _index_columns(index: Path, names: dict[str, int]) -> list[np.ndarray]:
    """index.jsonl as columns: utf-8 ids, shard numbers (positions in `names`, filled here),
    offsets, frame counts. Converted 16 k rows at a time, so the Python objects of a large
    index never exist at once (1.09 M rows: 67 MB resident after, 36 MB of it the arrays,
    not 155 MB)."""
    parts = []
    rows = iter_jsonl(index)
    while chunk := list(itertools.islice(rows, 1 << 14)):
        parts.append(
            (
                np.array([r["id"].encode() for r in chunk], dtype=np.bytes_),
                np.array([names.setdefault(r["shard"], len(names)) for r in chunk], np.int32),
                np.array([r["offset"] for r in chunk], np.int64),
                np.array([r["n_frames"] for r in chunk], np.int32),
            )
        )
    if not parts:
        return [np.zeros(0, t) for t in (np.bytes_, np.int32, np.int64, np.int32)]
    return [np.concatenate(c) for c in zip(*parts, strict=True)]


class FbankStore:
    """Read-only access to a store: `store[id]` -> [T, n_mels] memory-mapped frames.

    The index is held as numpy columns (utf-8 ids sorted for binary search, shard numbers,
    offsets, frame counts): the id's bytes + 16 B per utterance, no Python object each, so a
    VoxCeleb2-size index (1.09 M utterances) takes tens of MB, and forked DataLoader workers
    share its pages instead of copying them. An id listed twice reads its last entry.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        index = self.root / INDEX
        if not index.is_file():
            raise DataError(f"{index} does not exist (run `cmkd extract-fbank` first)")
        self.config = FbankConfig.model_validate(json.loads((self.root / CONFIG).read_text()))
        names: dict[str, int] = {}
        keys, shards, offsets, frames = _index_columns(index, names)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.ones(len(keys), dtype=bool)  # the first row of each id
        first[1:] = keys[1:] != keys[:-1]
        last = np.ones_like(first)
        last[:-1] = first[1:]
        rows = order[last]
        self._names = list(names)
        self._keys = keys[first]
        self._shard_of, self._offset, self._frames = shards[rows], offsets[rows], frames[rows]
        self._shards: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self._position(uid) >= 0

    def isin(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` (an array of utf-8 bytes) the store holds, as a boolean array."""
        if not len(self._keys) or not len(ids):
            return np.zeros(len(ids), dtype=bool)
        at = np.minimum(np.searchsorted(self._keys, ids), len(self._keys) - 1)
        return self._keys[at] == ids

    @property
    def ids(self) -> list[str]:
        """The ids the store holds, sorted."""
        return [k.decode() for k in self._keys]

    def n_frames(self, uid: str) -> int:
        return self._entry(uid)[2]

    def _position(self, uid: str) -> int:
        """The id's row of the sorted index, or -1."""
        key = uid.encode()
        if len(key) > self._keys.itemsize:  # longer than every id (and no cast of the index)
            return -1
        at = int(np.searchsorted(self._keys, key))
        return at if at < len(self._keys) and self._keys[at] == key else -1

    def _entry(self, uid: str) -> tuple[str, int, int]:
        at = self._position(uid)
        if at < 0:
            raise KeyError(f"{uid!r} is not in {self.root / INDEX}")
        return self._names[self._shard_of[at]], int(self._offset[at]), int(self._frames[at])

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
