"""The decoded-input cache: rows equal the decoded files bit for bit, keyed by preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cmkd_cli.data.datasets import KeyedDataset
from cmkd_cli.data.input_cache import META, InputCache, build_cache
from cmkd_cli.data.multimodal import manifest_dataset
from cmkd_cli.errors import DataError
from tests.fixtures_layouts import prepared_av_digits

# 16 kHz, 101 frames (1.03 s): most FSDD digits are shorter (a static view), a few longer
AUDIO = {"sample_rate": 16000, "window": 512, "overlap": 353, "length": 101}
IMAGE = {"size": 20, "channels": 3}  # RandomResizedCrop + flip in training


@pytest.fixture(scope="module")
def av_digits(tmp_path_factory) -> Path:
    return prepared_av_digits(tmp_path_factory.mktemp("av-digits"), takes=2)


def v2a(manifest: Path, **params):
    return manifest_dataset(
        str(manifest), "audio", "image", audio=AUDIO, image=IMAGE, augment_teacher=True, **params
    )


def items(ds, epoch: int) -> list[dict]:
    ds.set_epoch(epoch, seed=7)
    return [ds[i] for i in range(len(ds))]


def same(a: list[dict], b: list[dict]) -> bool:
    return all(
        torch.equal(x["x"], y["x"]) and torch.equal(x["t"], y["t"])
        for x, y in zip(a, b, strict=True)
    )


def test_cached_items_equal_decoded_items_in_every_split_and_epoch(av_digits, tmp_path):
    plain, cached = v2a(av_digits), v2a(av_digits)
    cached.input_cache(tmp_path, 0, 2**40)
    train = cached.train
    # the audio side: a spectrogram per short clip, the waveform of a clip longer than 1.03 s
    audio = train.caches[("audio", True)]
    long = [i for i in range(len(train)) if audio.decoded(i) is not None]
    assert long and len(long) < len(train)
    assert all(audio.static(i) is None for i in long)
    assert audio.static(0).dtype == np.float32 and audio.static(0).shape == (257, 101)
    # the augmented image side: the decode (uint8 at the file's 28 x 28), cropped when drawn
    image = train.caches[("image", True)]
    assert image.decoded(0).dtype == np.uint8 and image.decoded(0).shape == (1, 3, 28, 28)
    # evaluation splits: the resized pixels, normalised when read
    assert cached.val.caches[("image", False)].static(0).shape == (3, 20, 20)
    for epoch in (0, 1):
        assert same(items(plain.train, epoch), items(cached.train, epoch))
    assert same(items(plain.val, 0), items(cached.val, 0))
    assert same(items(plain.test, 0), items(cached.test, 0))
    assert not same(items(cached.train, 0), items(cached.train, 1))  # still augmented
    # workers read the memory maps too
    loader = DataLoader(cached.train, batch_size=16, num_workers=1)
    first = next(iter(loader))
    assert torch.equal(first["x"][3], cached.train[3]["x"])


def test_the_key_follows_preprocessing_and_files(av_digits, tmp_path):
    v2a(av_digits).input_cache(tmp_path, 0, 2**40)
    folders = set(os.listdir(tmp_path))
    assert len(folders) == 6  # 3 splits x (audio, image)
    v2a(av_digits).input_cache(tmp_path, 0, 2**40)  # the same data: nothing new
    assert set(os.listdir(tmp_path)) == folders
    resized = manifest_dataset(
        str(av_digits),
        "audio",
        "image",
        audio=AUDIO,
        image={**IMAGE, "size": 24},
        augment_teacher=True,
    )
    resized.input_cache(tmp_path, 0, 2**40)  # new val and test pixels; the training decode is kept
    assert len(set(os.listdir(tmp_path)) - folders) == 2
    folders = set(os.listdir(tmp_path))
    bundle = v2a(av_digits)
    wav = bundle.test.samples[0].audio
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the file changed
    try:
        bundle.input_cache(tmp_path, 0, 2**40)
    finally:
        os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(set(os.listdir(tmp_path)) - folders) == 1  # the test audio cache again


def test_a_killed_build_leaves_nothing_and_a_bad_file_fails_when_drawn(tmp_path):
    def row(i: int):
        if i == 3:
            raise KeyboardInterrupt  # killed half-way
        return np.full((2, i + 1), i, dtype=np.float32), None

    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "c", 5, row)
    assert not (tmp_path / "c").exists() and not list(tmp_path.iterdir())

    cache = build_cache(tmp_path / "c", 5, lambda i: (None, None) if i == 1 else row(i % 3))
    assert (tmp_path / "c" / META).is_file() and len(cache) == 5
    assert cache.static(1) is None and cache.decoded(1) is None
    assert np.array_equal(cache.static(4), np.full((2, 2), 1, np.float32))
    assert isinstance(InputCache(tmp_path / "c").static(2), np.ndarray)


def test_an_unreadable_image_is_decoded_when_drawn_and_named(av_digits, tmp_path):
    bundle = v2a(av_digits)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image\n")
    bundle.test.samples[2].image = broken
    bundle.input_cache(tmp_path / "cache", 0, 2**40)
    assert bundle.test.caches[("image", False)].static(2) is None
    assert bundle.test[1]["t"].shape == (3, 20, 20)
    with pytest.raises(DataError, match="broken.png"):
        bundle.test[2]


def test_ave_frames_augmented_and_evaluated_from_the_cache(tmp_path):
    from data_prep.ave import AVEOptions, prepare_ave
    from tests.fixtures_layouts import ave_tree

    out = tmp_path / "ave"
    prepare_ave(AVEOptions(root=ave_tree(tmp_path / "AVE_Dataset"), out=out, workers=1))
    params = {"frames": 2, "audio": {"length": 100}, "image": {"size": 32}}
    plain = manifest_dataset(str(out), "frames", "audio", **params)
    cached = manifest_dataset(str(out), "frames", "audio", **params)
    cached.input_cache(tmp_path / "cache", 0, 2**40)
    decoded = cached.train.caches[("frames", True)].decoded(0)
    assert decoded.ndim == 4 and decoded.shape[0] == len(cached.train.samples[0].frames)
    assert cached.test.caches[("frames", False)].static(0).shape == (2, 3, 32, 32)
    for split in ("train", "test"):
        assert same(items(getattr(plain, split), 2), items(getattr(cached, split), 2))


class Draws(KeyedDataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> float:
        return float(self.rng(index).random())


def test_persistent_workers_see_each_epoch():
    ds = Draws()
    loader = DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True)
    seen = []
    for epoch in range(3):
        ds.set_epoch(epoch, seed=11)
        seen.append(next(iter(loader)).tolist())
        assert seen[-1] == [ds[i] for i in range(4)]  # as drawn in this process
    assert seen[0] != seen[1] != seen[2]


def test_a_cache_over_the_budget_is_not_written(av_digits, tmp_path, capsys):
    bundle = v2a(av_digits)
    spectrogram = 257 * 101 * 4
    bundle.input_cache(tmp_path, 0, 30 * spectrogram)  # val/test audio (20 each) fit, train not
    assert ("audio", True) not in bundle.train.caches
    assert ("audio", False) in bundle.val.caches
    assert "would take about" in capsys.readouterr().err
    plain = v2a(av_digits)
    assert same(items(plain.train, 0), items(bundle.train, 0))
