"""The `manifest` dataset on prepared real data: views, keyed randomness, both directions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd_cli.data.datasets import build_data
from cmkd_cli.data.image_transforms import ImageTransform, ImageTransformConfig, random_resized_box
from cmkd_cli.data.multimodal import manifest_dataset
from cmkd_cli.errors import UsageError
from cmkd_cli.schema import DataConfig
from tests.fixtures_layouts import prepared_av_digits

AUDIO = {"sample_rate": 8000, "window": 256, "overlap": 96, "length": 50}
IMAGE = {"size": 28, "channels": 1, "train_crop": "random_pad", "padding": 2, "hflip": 0.0}


@pytest.fixture(scope="module")
def av_digits(tmp_path_factory) -> Path:
    return prepared_av_digits(tmp_path_factory.mktemp("av-digits"), takes=1)


def bundle(manifest: Path, **params):
    return manifest_dataset(str(manifest), audio=AUDIO, image=IMAGE, **params)


def test_both_directions_shapes_labels_and_static_teacher(av_digits: Path) -> None:
    a2v = bundle(av_digits, student_modality="image", teacher_modality="audio")
    assert (a2v.num_classes, a2v.class_names[7]) == (10, "seven")
    assert (len(a2v.train), len(a2v.val), len(a2v.test)) == (40, 10, 10)
    item = a2v.train[3]
    assert item["x"].shape == (1, 28, 28) and item["t"].shape == (129, 50)
    digit = int(a2v.train.samples[3].id.split("_")[0])
    assert item["y"] == digit and item["index"] == 3
    assert a2v.teacher_static
    v2a = bundle(av_digits, student_modality="audio", teacher_modality="image")
    flipped = v2a.train[3]
    assert flipped["x"].shape == (129, 50) and flipped["t"].shape == (1, 28, 28)
    assert torch.equal(flipped["x"], item["t"])  # the same unaugmented audio view
    # through the registry, as a recipe builds it
    params = {
        "manifest": str(av_digits),
        "student_modality": "image",
        "audio": AUDIO,
        "image": IMAGE,
    }
    cfg = DataConfig(name="manifest", params=params)
    assert len(build_data(cfg).train) == 40


def test_randomness_is_keyed_by_seed_epoch_and_index(av_digits: Path) -> None:
    data = bundle(av_digits, student_modality="image", teacher_modality="label_prompt")
    train = data.train
    train.set_epoch(0, seed=1)
    first = train[5]
    assert torch.equal(first["x"], train[5]["x"])  # same key, same sample
    xs = []
    for epoch in range(6):
        train.set_epoch(epoch, seed=1)
        xs.append(train[5]["x"])
    assert any(not torch.equal(xs[0], x) for x in xs[1:])  # the crop moves between epochs
    assert first["t"][0] == first["y"] and first["t"].shape == (2,)  # [label, template draw]
    assert not data.teacher_static  # a new template per step
    # evaluation views never change
    data.val.set_epoch(0)
    v0 = data.val[2]["x"]
    data.val.set_epoch(3)
    assert torch.equal(v0, data.val[2]["x"])
    # an augmented teacher is no longer static
    assert not bundle(
        av_digits, student_modality="image", teacher_modality="audio", augment_teacher=True
    ).teacher_static


def test_bad_parameters_name_the_field(av_digits: Path) -> None:
    with pytest.raises(UsageError, match="data.params.student_modality: unknown modality 'video'"):
        bundle(av_digits, student_modality="video")
    with pytest.raises(UsageError, match="data.params.audio.*smaller than the window"):
        manifest_dataset(
            str(av_digits), student_modality="audio", audio={"window": 64, "overlap": 64}
        )
    with pytest.raises(UsageError, match="data.params.image.train_crop"):
        manifest_dataset(str(av_digits), student_modality="image", image={"train_crop": "zoom"})
    # av-digits has no text: every record lacks the student modality
    with pytest.raises(UsageError, match="data.params.train_split: .* no usable `train` records"):
        bundle(av_digits, student_modality="text", teacher_modality="image")


def test_image_transform_draws_from_the_given_generator() -> None:
    cfg = ImageTransformConfig(size=16, channels=3, hflip=0.5)
    tf = ImageTransform(cfg)
    img = torch.arange(3 * 40 * 30, dtype=torch.int64).reshape(3, 40, 30).to(torch.uint8)
    a = tf([img, img], np.random.default_rng(7))
    b = tf([img, img], np.random.default_rng(7))
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b) and torch.equal(a[0], a[1])
    assert not torch.equal(a, tf([img, img], np.random.default_rng(8)))
    torch.manual_seed(0)  # torch's global RNG plays no part
    assert torch.equal(a, tf([img, img], np.random.default_rng(7)))
    for s in range(30):
        top, left, h, w = random_resized_box(
            40, 30, (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(s)
        )
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 30
        assert 0.08 * 1200 - 40 <= h * w <= 1200
    ev = tf([img])  # evaluation: a plain resize
    assert ev.shape == (1, 3, 16, 16)
    centre = ImageTransform(cfg.model_copy(update={"eval_mode": "center_crop"}))([img])
    assert centre.shape == (1, 3, 16, 16) and not torch.equal(centre, ev)


def test_ave_frames_and_event_segment_audio(tmp_path: Path) -> None:
    from cmkd_cli.data.audio import load_audio
    from cmkd_cli.data.spectrogram import SpectrogramConfig, spectrogram
    from data_prep.ave import AVEOptions, prepare_ave
    from tests.fixtures_layouts import ave_tree

    out = tmp_path / "ave"
    prepare_ave(AVEOptions(root=ave_tree(tmp_path / "AVE_Dataset"), out=out, workers=1))
    audio = {"length": 100}
    data = manifest_dataset(str(out), "frames", "audio", frames=1, audio=audio, image={"size": 32})
    item = data.test[0]  # 5KEPA_ORiVI: the event is 2-4 s
    assert item["x"].shape == (1, 3, 32, 32) and item["t"].shape == (257, 100)
    wave, _ = load_audio(out / "wav" / "5KEPA_ORiVI" / "bark.wav", 16000)
    expected = spectrogram(wave[32000:64000], SpectrogramConfig(length=100))
    assert torch.allclose(item["t"], expected)  # the centre of the event, not of the clip
    assert not torch.allclose(item["t"], spectrogram(wave, SpectrogramConfig(length=100)))
    assert data.class_names[:2] == ["Bark", "Church bell"] and item["y"] == 0


def test_crisismmd_text_view_with_the_bundled_minilm(tmp_path: Path) -> None:
    from data_prep.crisismmd import CrisisMMDOptions, prepare_crisismmd
    from tests.fixtures_layouts import crisismmd_tree

    out = tmp_path / "crisis"
    prepare_crisismmd(
        CrisisMMDOptions(root=crisismmd_tree(tmp_path / "CrisisMMD"), out=out, workers=1)
    )
    data = manifest_dataset(str(out), "text", "image", image={"size": 32}, text={"max_length": 24})
    item = data.train[1]
    ids, mask = item["x"]
    assert item["x"].shape == (2, 24) and item["x"].dtype == torch.int64
    assert ids[0] == 101 and mask.sum() > 10 and mask[-1] == 0  # [CLS] ..., padded
    assert item["t"].shape == (3, 32, 32) and data.teacher_static  # the image is not augmented
    assert data.class_names[1] == "rescue volunteering or donation effort"
    from transformers import AutoTokenizer

    from cmkd_cli.models.text import minilm_path

    text = AutoTokenizer.from_pretrained(minilm_path()).decode(ids[mask.bool()][1:-1])
    assert text == "volunteers are collecting water and blankets at the church, please donate"


def test_labelled_fraction_is_stratified_nested_and_seeded(av_digits: Path) -> None:
    full = bundle(av_digits, student_modality="image", teacher_modality="audio")
    ids = {f: None for f in (0.25, 0.5)}
    for f in ids:
        part = bundle(
            av_digits, student_modality="image", teacher_modality="audio", labelled_fraction=f
        )
        labels = [s.label for s in part.train.samples]
        assert sorted(labels) == sorted(list(range(10)) * round(4 * f))  # 4 per class here
        ids[f] = {s.id for s in part.train.samples}
    assert ids[0.25] < ids[0.5] < {s.id for s in full.train.samples}  # nested
    other = bundle(
        av_digits,
        student_modality="image",
        teacher_modality="audio",
        labelled_fraction=0.5,
        subset_seed=1,
    )
    assert {s.id for s in other.train.samples} != ids[0.5]
    assert len(full.val) == len(other.val) and len(full.test) == len(other.test)
    with pytest.raises(UsageError, match="data.params.labelled_fraction: must be in"):
        bundle(av_digits, labelled_fraction=0.0)


def test_several_train_splits(av_digits: Path) -> None:
    both = bundle(
        av_digits, student_modality="image", teacher_modality="image", train_split=["train", "val"]
    )
    assert len(both.train) == 40 + 10  # 4 training speakers + the validation speaker
    with pytest.raises(UsageError, match="no usable `nope`/`other` records"):
        bundle(av_digits, train_split=["nope", "other"])


def test_cache_gives_the_same_views_and_decodes_once(av_digits: Path, monkeypatch) -> None:
    import cmkd_cli.data.multimodal as mm

    plain = bundle(av_digits, student_modality="audio", teacher_modality="image")
    cached = bundle(av_digits, student_modality="audio", teacher_modality="image", cache=True)
    calls = {"audio": 0, "image": 0}
    real_audio, real_image = mm.load_audio, mm.load_image

    def count(kind, fn):
        def wrapped(*a, **k):
            calls[kind] += 1
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(mm, "load_audio", count("audio", real_audio))
    monkeypatch.setattr(mm, "load_image", count("image", real_image))
    for epoch in range(2):
        for split in ("train", "val"):
            getattr(plain, split).set_epoch(epoch, seed=3)
            getattr(cached, split).set_epoch(epoch, seed=3)
            for i in range(len(getattr(plain, split))):
                a, b = getattr(plain, split)[i], getattr(cached, split)[i]
                assert torch.equal(a["x"], b["x"]) and torch.equal(a["t"], b["t"])
    n = len(plain.train) + len(plain.val)
    # without the cache every draw decodes; with it each file once
    assert calls == {"audio": 2 * n + n, "image": 2 * n + n}
