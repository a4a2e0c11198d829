"""Face-frame extraction from a real H.264 mp4 (the VoxCeleb2 container) with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmkd_cli.data.video import frame_times, read_frames, save_frames
from cmkd_cli.errors import DataError
from tests.fixtures_layouts import shared_data, write_empty, write_text


def test_frame_times_are_slice_centres() -> None:
    assert frame_times(4.0, 1) == [2.0]
    assert frame_times(4.0, 4) == [0.5, 1.5, 2.5, 3.5]


def test_saved_frames_are_distinct_full_size_jpegs(tmp_path: Path) -> None:
    video = shared_data("faces", "video.mp4")
    outs = save_frames(video, [tmp_path / "f_00.jpg", tmp_path / "f_01.jpg"])
    images = [Image.open(p) for p in outs]
    assert [im.format for im in images] == ["JPEG", "JPEG"]
    assert [im.size for im in images] == [(1920, 1080), (1920, 1080)]
    a, b = (np.asarray(im, dtype=np.float32) for im in images)
    assert np.abs(a - b).mean() > 1.0  # 1.05 s and 3.15 s into a moving crowd differ
    middle = np.asarray(read_frames(video, 1)[0], dtype=np.float32)
    assert middle.shape == (1080, 1920, 3) and np.abs(middle - a).mean() > 0.5


@pytest.mark.parametrize(
    "make", [lambda d: write_empty(d / "v.mp4"), lambda d: write_text(d / "v.mp4")]
)
def test_unreadable_video_is_a_data_error(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=str(path)):
        read_frames(path)


def test_a_still_image_named_like_a_video_is_not_a_video(tmp_path: Path) -> None:
    jpeg = next(shared_data("faces", "test_images").glob("*/1.jpg"))
    fake = tmp_path / "clip.flv"
    fake.write_bytes(jpeg.read_bytes())
    with pytest.raises(DataError, match=r"clip\.flv: not a video: a still image \(jpeg\)"):
        save_frames(fake, [tmp_path / f"f_{k}.jpg" for k in range(3)])
    assert not list(tmp_path.glob("f_*.jpg"))


def test_a_truncated_video_is_named_not_padded(tmp_path: Path) -> None:
    from tests.fixtures_layouts import remux

    flv = remux(shared_data("faces", "video.mp4"), tmp_path / "full.flv", "flv")
    assert len(read_frames(flv, 3)) == 3  # the whole file is fine
    cut = tmp_path / "cut.flv"
    cut.write_bytes(flv.read_bytes()[: flv.stat().st_size * 2 // 5])
    with pytest.raises(DataError, match=r"cut\.flv: truncated video: its frames end at "):
        read_frames(cut, 3)
