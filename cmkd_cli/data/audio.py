"""Audio decoding for every reader and stage: any container in, 16 kHz mono float32 out.

soundfile (libsndfile) reads wav/flac/ogg; PyAV (its bundled FFmpeg, no system ffmpeg) reads
AAC in m4a/mp4 and the other FFmpeg containers. Other rates are resampled with
`torchaudio.functional.resample`, several channels are averaged to mono, and both are
reported in `AudioInfo.notes()` so a manifest never hides a conversion. Every failure is a
`DataError` naming the file (empty, truncated, not audio, no audio stream).

AAC priming and padding: an AAC encoder delays the signal by its priming samples (1,024 for
FFmpeg's encoder) and pads the last frame. An mp4/m4a declares both in its edit list
(media time 1024, duration = the real length), as FFmpeg-made files such as VoxCeleb2's
do; decoders that honour it drop the priming and cut the tail. PyAV's FFmpeg drops the
declared priming itself (checked: an m4a made with priming declared decodes aligned with its
source to the sample); `load_audio` then cuts the tail to the stream's declared duration
(less than one frame of padding). A file that declares no priming (edit list from 0, e.g.
`faces/video.mp4`, whose AAC was stream-copied) keeps whatever delay its encoder left in:
nothing in the file says how long it is.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmkd_cli.errors import DataError
from cmkd_cli.io import atomic_path

SAMPLE_RATE = 16000
SOUNDFILE_EXTS = frozenset({".wav", ".flac", ".ogg"})
AV_EXTS = frozenset({".m4a", ".mp4", ".aac", ".flv", ".mkv", ".webm", ".mp3", ".opus", ".avi"})
AUDIO_EXTS = SOUNDFILE_EXTS | AV_EXTS


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds (`source_*`) and what `load_audio` returned from it."""

    path: str
    source_rate: int
    source_channels: int
    sample_rate: int
    duration: float

    def notes(self) -> list[str]:
        """Conversions applied on loading, as short phrases for manifests and reports."""
        out = []
        if self.source_rate != self.sample_rate:
            out.append(f"resampled {self.source_rate}->{self.sample_rate} Hz")
        if self.source_channels > 1:
            out.append(f"downmixed {self.source_channels} channels to mono")
        return out


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")


def _check_riff_complete(path: Path) -> None:
    """Fail when a RIFF/WAVE header declares more sample bytes than the file holds.

    libsndfile silently reads what is there, so a copy cut short would pass unnoticed.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                available = size - pos - 8
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    raise DataError(
                        f"{path}: truncated wav: header declares {chunk_size} bytes of samples "
                        f"but the file holds {available}"
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)
    raise DataError(f"{path}: truncated wav: no complete `data` chunk")


def _uses_soundfile(path: Path) -> bool:
    return path.suffix.lower() in SOUNDFILE_EXTS


def _probe_soundfile(path: Path) -> tuple[int, int, float]:
    import soundfile as sf  # lazy: 0.4 s per worker, image-only readers never need it

    _check_riff_complete(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise DataError(f"{path}: not a readable audio file ({_one_line(exc)})") from None
    return int(info.samplerate), int(info.channels), float(info.frames) / info.samplerate


@contextmanager
def open_av_stream(path: Path, kind: str = "audio") -> Iterator[tuple[Any, Any]]:
    """Open `path` with PyAV and yield (container, its first `kind` stream: audio|video).

    A missing stream, and any FFmpeg error while the block runs (decoding included), become
    a DataError naming the file.
    """
    import av  # lazy: 0.2 s, only m4a/mp4 and video need PyAV

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = getattr(container.streams, kind)
            if not streams:
                raise DataError(f"{path}: the container has no {kind} stream")
            yield container, streams[0]
    except av.error.FFmpegError as exc:
        raise DataError(f"{path}: not a readable {kind} file ({_one_line(exc)})") from None


def stream_duration(container: Any, stream: Any) -> float:
    """Seconds of a PyAV stream (the container's duration when the stream has none)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / 1_000_000  # av.time_base: microseconds


def _probe_av(path: Path) -> tuple[int, int, float]:
    with open_av_stream(path) as (container, stream):
        return int(stream.rate), int(stream.layout.nb_channels), stream_duration(container, stream)


def probe_audio(path: str | os.PathLike[str], sample_rate: int | None = None) -> AudioInfo:
    """Read only the header (no decoding): source rate, channels and duration.

    `sample_rate` is the rate the caller will load at (default: the source's), so that
    `notes()` tells which conversions `load_audio` would apply.
    """
    path = Path(path)
    _check_file(path)
    rate, channels, duration = (_probe_soundfile if _uses_soundfile(path) else _probe_av)(path)
    if rate <= 0:
        raise DataError(f"{path}: header gives no sample rate")
    return AudioInfo(str(path), rate, channels, sample_rate or rate, duration)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf  # lazy: 0.4 s per worker, image-only readers never need it

    _check_riff_complete(path)
    try:
        with sf.SoundFile(str(path)) as fh:
            declared, rate = fh.frames, fh.samplerate
            data = fh.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise DataError(f"{path}: not a readable audio file ({_one_line(exc)})") from None
    if len(data) < declared:
        raise DataError(
            f"{path}: truncated: header declares {declared} frames, {len(data)} decoded"
        )
    return data.T, int(rate)


def _declared_samples(stream: Any, rate: int) -> int | None:
    """The stream's duration in samples as its container declares it (an mp4's edit list)."""
    if not stream.duration or stream.time_base is None:
        return None
    return round(float(stream.duration * stream.time_base) * rate)


def _read_av(path: Path) -> tuple[np.ndarray, int]:
    """Decoded samples `[channels, n]` and rate; the last frame's padding beyond the declared
    duration is cut (see the module docstring on AAC priming and padding)."""
    import av  # lazy: 0.2 s, only m4a/mp4 and video need PyAV

    chunks: list[np.ndarray] = []
    with open_av_stream(path) as (container, stream):
        rate = int(stream.rate)
        declared = _declared_samples(stream, rate)
        planar = av.AudioResampler(format="fltp")  # same rate and layout, planar float
        for frame in container.decode(stream):
            chunks.extend(out.to_ndarray() for out in planar.resample(frame))
        chunks.extend(out.to_ndarray() for out in planar.resample(None))
        frame_size = stream.codec_context.frame_size or 2048
    if not chunks:
        raise DataError(f"{path}: no audio samples could be decoded")
    samples = np.concatenate(chunks, axis=1)
    if declared is not None and 0 < samples.shape[1] - declared < frame_size:
        samples = samples[:, :declared]
    return samples, rate


def resample(samples: np.ndarray, source_rate: int, sample_rate: int) -> np.ndarray:
    """Resample a mono float32 signal with torchaudio's windowed-sinc resampler."""
    if source_rate == sample_rate:
        return samples
    import torch  # lazy: torch + torchaudio take seconds; only resampling needs them
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(samples)), source_rate, sample_rate)
    return out.numpy()


def load_audio(
    path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, AudioInfo]:
    """Decode `path` to a mono float32 array at `sample_rate` (in [-1, 1]) and its info.

    Channels are averaged; another rate is resampled. Raises DataError for an empty,
    truncated or non-audio file, one with no samples, or one with NaN/Inf samples (a
    float wav can hold them; no model can use them).
    """
    path = Path(path)
    _check_file(path)
    channels_first, rate = (_read_soundfile if _uses_soundfile(path) else _read_av)(path)
    if channels_first.shape[1] == 0:
        raise DataError(f"{path}: the file holds no audio samples")
    finite = np.isfinite(channels_first)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise DataError(f"{path}: non-finite samples: {bad} of {finite.size} are NaN or Inf")
    mono = channels_first.mean(axis=0, dtype=np.float32)
    out = np.ascontiguousarray(resample(mono, rate, sample_rate), dtype=np.float32)
    info = AudioInfo(str(path), rate, channels_first.shape[0], sample_rate, len(out) / sample_rate)
    return out, info


def write_wav(
    path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int = SAMPLE_RATE
) -> None:
    """Write mono 16-bit PCM wav atomically (values clipped to [-1, 1])."""
    import soundfile as sf  # lazy: 0.4 s per worker, image-only readers never need it

    clipped = np.clip(samples, -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), clipped, sample_rate, subtype="PCM_16", format="WAV")


def is_decoded_wav(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> bool:
    """True when `path` is a complete mono wav at `sample_rate` with samples (reusable output)."""
    try:
        info = probe_audio(path)
    except DataError:
        return False
    return info.source_rate == sample_rate and info.source_channels == 1 and info.duration > 0


def _one_line(exc: BaseException) -> str:
    """The last line of a library's error, without libsndfile's "Error opening 'PATH': "."""
    lines = str(exc).strip().splitlines()
    text = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^Error opening '.*?': ", "", text)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from `parts` (e.g. a seed and an utterance id) that is the same in every
    process and run, unlike Python's salted `hash()`."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
