"""CIFAR-100 reader on a tiny archive in the real python-pickle format, made from real MNIST
digits (32x32 RGB), with one out-of-range label, a missing member and a truncated archive."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmkd_cli.data.manifest import read_classes, read_manifest, resolve
from cmkd_cli.errors import DataError
from data_prep.cifar import CifarOptions, prepare_cifar100
from data_prep.common import pick_seeded
from tests.fixtures_layouts import cifar100_archive, mnist_digits


def test_cifar100_pngs_labels_splits_and_bad_row(tmp_path: Path) -> None:
    cifar100_archive(tmp_path / "data", train=30, test=10)
    out = tmp_path / "out"
    res = prepare_cifar100(
        CifarOptions(root=tmp_path / "data", out=out, val_fraction=0.2, workers=1)
    )

    records = {r.id: r for r in read_manifest(out)}
    _, digits = mnist_digits(40)
    assert len(records) == 39 and "train/00029" not in records  # label 100 is skipped
    assert records["test/00003"].label == f"class_{digits[33]:02d}"
    assert records["train/00000"].label == f"class_{digits[0]:02d}"
    # validation: round(0.2 * 30) = 6 seeded training rows (the bad row may be one of them)
    val = pick_seeded([f"train/{i:05d}" for i in range(30)], 6, 0) - {"train/00029"}
    assert {k for k, r in records.items() if r.split == "val"} == val
    assert res.splits == {"test": 10, "train": 29 - len(val), "val": len(val)}
    png = Image.open(resolve(out, records["test/00003"].image))
    assert png.size == (32, 32) and png.mode == "RGB"
    # pixels survive the RGB-plane layout: the PNG equals the archive's row
    arr = np.asarray(png)
    src = Image.fromarray(mnist_digits(34)[0][33]).convert("RGB").resize((32, 32))
    assert np.array_equal(arr, np.asarray(src))
    assert [n for n, _ in read_classes(out)] == [f"class_{i:02d}" for i in range(100)]
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and "fine label 100 is outside 0..99" in skipped[0]["reason"]

    again = prepare_cifar100(CifarOptions(root=tmp_path / "data", out=out, val_fraction=0.2))
    assert again.decoded == 0 and again.records == 39


def test_missing_member_and_truncated_archive_are_one_error(tmp_path: Path) -> None:
    cifar100_archive(tmp_path / "a", drop="test")
    with pytest.raises(
        DataError, match=r"cifar-100-python\.tar\.gz:test: the CIFAR-100 `test` file is missing"
    ):
        prepare_cifar100(CifarOptions(root=tmp_path / "a", out=tmp_path / "o1", workers=1))
    archive = cifar100_archive(tmp_path / "b")
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz: not a readable tar\.gz"):
        prepare_cifar100(CifarOptions(root=tmp_path / "b", out=tmp_path / "o2", workers=1))


def test_unpacked_folder_is_read_too(tmp_path: Path) -> None:
    archive = cifar100_archive(tmp_path / "c", train=6, test=4)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "c", filter="data")
    archive.unlink()
    res = prepare_cifar100(CifarOptions(root=tmp_path / "c", out=tmp_path / "o", val_fraction=0.0))
    assert res.records == 9 and res.splits == {"test": 4, "train": 5}


class _Payload:
    """What a hostile `meta` pickle holds: unpickling it would create a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_a_pickle_that_would_run_code_is_refused_unexecuted(cli, tmp_path: Path) -> None:
    import pickle

    archive = cifar100_archive(tmp_path / "d", train=6, test=4)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "d", filter="data")
    archive.unlink()
    target = tmp_path / "pwned.txt"
    meta = tmp_path / "d" / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({b"fine_label_names": _Payload(target)}, protocol=2))
    assert pickle.loads(meta.read_bytes()) and target.exists()  # the payload does work...
    target.unlink()

    res = cli("prepare", "cifar100", "--root", tmp_path / "d", "--out", tmp_path / "o")
    assert res.code == 1, res.stderr
    assert "meta: refused: the pickle asks for `io.open`" in res.stderr
    assert not target.exists()  # ...but never ran
