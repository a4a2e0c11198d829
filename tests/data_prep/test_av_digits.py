"""AV-digits reader on the real FSDD recordings and MNIST test images (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmkd_cli.data.manifest import read_classes, read_manifest, resolve
from cmkd_cli.errors import DataError, UsageError
from data_prep.av_digits import DIGIT_NAMES, AVDigitsOptions, load_mnist, prepare_av_digits
from tests.fixtures_layouts import link_or_copy, skip_reasons, write_text, write_truncated


def test_pairs_are_same_digit_seeded_and_split_by_speaker(
    tmp_path: Path, shared_data: Path
) -> None:
    out = tmp_path / "out"
    opts = dict(root=shared_data, takes=2, split="speaker", workers=1)
    res = prepare_av_digits(AVDigitsOptions(out=out, **opts))

    records = read_manifest(out)
    images, labels = load_mnist(shared_data / "mnist")
    assert len(records) == 120 and res.speakers == 6  # 6 speakers x 10 digits x takes 0-1
    for r in records:
        digit = int(r.id.split("_")[0])
        assert r.label == DIGIT_NAMES[digit] and labels[r.image_index] == digit
        assert np.array_equal(np.asarray(Image.open(resolve(out, r.image))), images[r.image_index])
        assert Path(r.audio).is_file() and r.duration > 0.1  # FSDD's 8 kHz wav, in place
    assert len({r.image_index for r in records}) == 120  # no image is used twice
    splits = {r.speaker: r.split for r in records}
    assert splits.pop("theo") == "test" and splits.pop("yweweler") == "val"
    assert set(splits.values()) == {"train"}
    assert read_classes(out) == [(n, n) for n in DIGIT_NAMES]

    pairs = {r.id: r.image_index for r in records}
    same = prepare_av_digits(AVDigitsOptions(out=tmp_path / "same", **opts))
    assert {r.id: r.image_index for r in read_manifest(tmp_path / "same")} == pairs
    assert same.records == 120
    prepare_av_digits(AVDigitsOptions(out=tmp_path / "other", seed=1, **opts))
    assert {r.id: r.image_index for r in read_manifest(tmp_path / "other")} != pairs
    # the reduced set pairs exactly as the full set does (pairing is ordered by take first)
    prepare_av_digits(AVDigitsOptions(out=tmp_path / "one", **{**opts, "takes": 1}))
    assert all(pairs[r.id] == r.image_index for r in read_manifest(tmp_path / "one"))


def test_take_split_bad_recording_and_missing_mnist(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "copy"
    wavs = sorted((shared_data / "fsdd" / "recordings").glob("*_lucas_*.wav"))
    for wav in [w for w in wavs if int(w.stem.split("_")[2]) in (0, 7, 12)]:
        link_or_copy(wav, root / "fsdd" / "recordings" / wav.name)
    write_truncated(wavs[0], root / "fsdd" / "recordings" / "3_lucas_20.wav")
    write_text(root / "fsdd" / "recordings" / "README.md", "recordings\n")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        link_or_copy(shared_data / "mnist" / name, root / "mnist" / name)
    out = tmp_path / "out"
    res = prepare_av_digits(AVDigitsOptions(root=root, out=out, workers=1))

    by_take = {r.take: r.split for r in read_manifest(out)}
    assert by_take == {0: "test", 7: "val", 12: "train"}  # FSDD's test takes 0-4; val 5-9
    reasons = {Path(k).name: v for k, v in skip_reasons(out).items()}
    assert "truncated wav" in reasons["3_lucas_20.wav"] and "not an FSDD" in reasons["README.md"]
    assert res.records == 30 and res.skipped == 2

    with pytest.raises(UsageError, match="--test-speaker theo: no such FSDD speaker"):
        prepare_av_digits(AVDigitsOptions(root=root, out=out, split="speaker"))
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte\.gz: MNIST labels file does not exist"
    ):
        prepare_av_digits(AVDigitsOptions(root=root, out=out))


def test_prepare_cli_registers_av_digits(cli, tmp_path: Path, shared_data: Path) -> None:
    res = cli(
        "--json",
        "prepare",
        "av-digits",
        "--root",
        shared_data,
        "--out",
        tmp_path / "o",
        "--takes",
        "1",
        "--workers",
        "1",
    )
    assert res.code == 0, res.stderr
    assert res.json()["records"] == 60 and res.json()["splits"] == {"test": 60}
    bad = cli("prepare", "av-digits", "--root", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert bad.code == 2 and "nowhere: folder does not exist" in bad.stderr


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    import gzip

    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_unpaired_images_are_the_mnist_images_no_recording_uses(
    tmp_path: Path, shared_data: Path
) -> None:
    images, labels = load_mnist(shared_data / "mnist")
    root = tmp_path / "root"  # the first 300 MNIST images (about 30 per digit), take 0 only
    _write_idx(root / "mnist" / "t10k-images-idx3-ubyte.gz", images[:300], 0x0803)
    _write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", labels[:300], 0x0801)
    for wav in (shared_data / "fsdd" / "recordings").glob("*_0.wav"):
        link_or_copy(wav, root / "fsdd" / "recordings" / wav.name)
    out = tmp_path / "out"
    res = prepare_av_digits(AVDigitsOptions(root=root, out=out, workers=1, unpaired=True))
    records = read_manifest(out)
    paired = [r for r in records if r.split != "unpaired"]
    unpaired = [r for r in records if r.split == "unpaired"]
    assert len(paired) == 60 and len(unpaired) == 240 and res.records == 300
    assert {r.image_index for r in paired} | {r.image_index for r in unpaired} == set(range(300))
    for r in unpaired:
        assert r.audio is None and r.id == f"mnist-{r.image_index:05d}"
        assert r.label == DIGIT_NAMES[labels[r.image_index]]
        assert np.array_equal(np.asarray(Image.open(resolve(out, r.image))), images[r.image_index])
    # without the flag (the default) the manifest holds the pairs alone
    plain = prepare_av_digits(AVDigitsOptions(root=root, out=tmp_path / "plain", workers=1))
    assert plain.records == 60
