"""Face frames from video files (VoxCeleb2 mp4) with PyAV, saved as JPEG.

Paper A Sec. 4.1.1 takes 1 frame per video; `frame_times` picks the middle one by default,
or N evenly spaced ones (the centres of N equal slices of the clip).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cmkd_cli.data.audio import open_av_stream, stream_duration
from cmkd_cli.errors import DataError
from cmkd_cli.io import atomic_path

#: how far past the last decoded frame a requested time may lie (rounding of durations)
LATE_S = 0.25


def frame_times(duration: float, n: int) -> list[float]:
    """Centres of `n` equal slices of [0, duration): n=1 gives the middle of the clip."""
    return [(i + 0.5) * duration / n for i in range(n)]


def read_frames(
    path: str | os.PathLike[str], n: int = 1, times: Sequence[float] | None = None
) -> list:
    """Decode `n` evenly spaced frames of the first video stream as RGB PIL images, or the
    frames at `times` (seconds from the stream's start, ascending; then `n` is ignored).

    Seeks once (to the keyframe before the first time) and decodes forward; a time at most
    `LATE_S` (or two frames) past the last frame gets the last frame. Raises DataError for
    a missing, empty or undecodable file, a still image in a video's name (a JPEG named
    .flv), and a truncated video (its frames end well before a time asked for).
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"{path}: video file is missing or empty")
    n = n if times is None else len(times)
    if n == 0:
        return []
    with open_av_stream(path, "video") as (container, stream):
        kind = container.format.name
        if kind.endswith("_pipe") or kind == "image2":
            raise DataError(f"{path}: not a video: a still image ({kind.removesuffix('_pipe')})")
        stream.thread_type = "AUTO"
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        if times is None:
            times = frame_times(stream_duration(container, stream), n)
        targets = [start + t for t in times]
        container.seek(int(targets[0] / stream.time_base), stream=stream, backward=True)
        images, last = [], None
        for frame in container.decode(stream):
            last = frame
            while len(images) < n and frame.time is not None and frame.time >= targets[len(images)]:
                images.append(frame.to_image())
            if len(images) == n:
                break
        rate, duration = float(stream.average_rate or 0), stream_duration(container, stream)
    if last is None:
        raise DataError(f"{path}: no video frame could be decoded")
    if len(images) < n and last.time is not None:
        late = targets[len(images)] - last.time
        if late > max(LATE_S, 2 / rate if rate else 0.0):
            raise DataError(
                f"{path}: truncated video: its frames end at {last.time - start:.2f} s, "
                f"before {targets[len(images)] - start:.2f} s (the header says {duration:.2f} s)"
            )
    while len(images) < n:
        images.append(last.to_image())
    return images


def save_frames(
    path: str | os.PathLike[str],
    outputs: list[Path],
    quality: int = 95,
    times: Sequence[float] | None = None,
) -> list[Path]:
    """Write len(outputs) evenly spaced frames of `path` (or those at `times`) as JPEG files,
    each atomically."""
    for image, out in zip(read_frames(path, len(outputs), times), outputs, strict=True):
        with atomic_path(out) as tmp:
            image.save(tmp, format="JPEG", quality=quality)
    return outputs
