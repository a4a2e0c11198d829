"""NYU-Depth V2 reader on a small labelled .mat in the real MATLAB v7.3 (HDF5) structure, with
splits.mat (v5) and classMapping40.mat (v7.3 or v5), written by the fixture: the RGB images
are real photos of ../shared/data/faces; the depths and labels are made up (see
`fixtures_layouts.nyu_depth_v2_tree`)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from cmkd_cli.data.manifest import read_classes, read_manifest, resolve
from cmkd_cli.errors import UsageError
from data_prep.nyu_depth_v2 import NYU40, NYUOptions, jet, prepare_nyu_depth_v2
from tests.fixtures_layouts import (
    NYU13_LABELS,
    NYU13_NAMES,
    nyu_depth_v2_tree,
    nyu_mapping,
    nyu_raw_labels,
    skip_reasons,
    write_class13_mapping,
)


def expected_labels(index: int) -> np.ndarray:
    """The 40-class map of fixture image `index` computed directly from the made-up data."""
    mapping, _ = nyu_mapping()
    raw = nyu_raw_labels(index).astype(int)
    out = np.full(raw.shape, 255)
    mapped = mapping[np.maximum(raw, 1) - 1].astype(int)
    keep = (raw > 0) & (mapped > 0)
    out[keep] = mapped[keep] - 1
    return out


def prepare(root: Path, out: Path, **fields) -> object:
    return prepare_nyu_depth_v2(NYUOptions(root=root, out=out, workers=1, **fields))


def test_rgb_depth_and_40_class_labels_with_the_standard_split(tmp_path: Path) -> None:
    root = nyu_depth_v2_tree(tmp_path / "nyu", train=(1, 3, 4, 6), test=(2, 5), bad_label=3)
    out = tmp_path / "out"
    res = prepare(root, out)

    records = {r.id: r for r in read_manifest(out)}
    assert sorted(records) == ["0001", "0002", "0004", "0005", "0006"]  # 0003: bad label
    assert res.splits == {"test": 2, "train": 3}
    assert [(c.split, c.found, c.expected) for c in res.completeness] == [
        ("train", 3, 795),
        ("test", 2, 654),
    ]
    assert records["0002"].split == "test" and records["0006"].split == "train"
    reasons = skip_reasons(out)
    assert list(reasons) == [str(root / "nyu_depth_v2_labeled.mat")]
    assert "label outside the class mapping (image 0003 holds 900" in next(iter(reasons.values()))

    with h5py.File(root / "nyu_depth_v2_labeled.mat") as f:
        images, depths = np.asarray(f["images"]), np.asarray(f["depths"])
    for key in ("0001", "0005"):
        i = int(key) - 1
        r = records[key]
        assert (r.model_extra["width"], r.model_extra["height"]) == (64, 48)
        rgb = np.asarray(Image.open(resolve(out, r.image)))
        np.testing.assert_array_equal(rgb, images[i].transpose(2, 1, 0))  # h5py order undone
        depth = Image.open(resolve(out, r.model_extra["depth"]))
        assert depth.mode == "I;16" and r.model_extra["depth_encoding"] == "mm16"
        mm = np.round(depths[i].T.astype(np.float64) * 1000)
        np.testing.assert_array_equal(np.asarray(depth), mm)
        label = np.asarray(Image.open(resolve(out, r.model_extra["label_map"])))
        np.testing.assert_array_equal(label, expected_labels(i))
    assert (expected_labels(0) == 255).any() and (expected_labels(0) < 40).any()
    assert read_classes(out) == [(str(k), name) for k, name in enumerate(NYU40)]
    assert res.extra == {"classes": 40, "depth_encoding": "mm16"}

    again = prepare(root, out)
    assert again.decoded == 0 and again.reused == 6 and again.records == 5  # skip remembered


def test_v5_mapping_and_jet_depth(tmp_path: Path) -> None:
    root = nyu_depth_v2_tree(tmp_path / "nyu", mapping_v73=False)
    assert not h5py.is_hdf5(root / "classMapping40.mat")
    assert "mapClass" in scipy.io.loadmat(root / "classMapping40.mat")
    out = tmp_path / "out"
    prepare(root, out, depth_encoding="jet", depth_max=5.0)
    r = {r.id: r for r in read_manifest(out)}["0002"]
    label = np.asarray(Image.open(resolve(out, r.model_extra["label_map"])))
    np.testing.assert_array_equal(label, expected_labels(1))
    depth = np.asarray(Image.open(resolve(out, r.model_extra["depth"])))
    assert depth.shape == (48, 64, 3) and r.model_extra["depth_encoding"] == "jet"
    with h5py.File(root / "nyu_depth_v2_labeled.mat") as f:
        metres = np.asarray(f["depths"][1], dtype=np.float64).T
    np.testing.assert_array_equal(depth, jet(np.clip(metres / 5.0, 0, 1)))
    # the jet map: dark blue at 0, green in the middle, dark red at 1
    assert jet(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]


def expected_labels13(index: int) -> np.ndarray:
    """The 13-class map: the 40-class map through the real labels13 (1-based), by hand."""
    forty = expected_labels(index)
    out = np.full(forty.shape, 255)
    keep = forty != 255
    out[keep] = np.array(NYU13_LABELS)[forty[keep]] - 1
    return out


@pytest.mark.parametrize("v73", [False, True])
def test_13_classes_through_the_real_class13mapping(tmp_path: Path, v73: bool) -> None:
    root = nyu_depth_v2_tree(tmp_path / "nyu")
    real = scipy.io.loadmat(root / "class13Mapping.mat")["classMapping13"]
    assert real.dtype.names == ("labels13", "classNames") and real[0, 0][0].shape == (1, 40)
    if v73:
        write_class13_mapping(root / "class13Mapping.mat", v73=True)
    out = tmp_path / "out"
    res = prepare(root, out, classes=13)
    assert res.extra["classes"] == 13
    assert read_classes(out) == [(str(k), n) for k, n in enumerate(NYU13_NAMES)]
    for r in read_manifest(out):
        label = np.asarray(Image.open(resolve(out, r.model_extra["label_map"])))
        np.testing.assert_array_equal(label, expected_labels13(int(r.id) - 1))
    assert (expected_labels13(0) < 13).any() and (expected_labels13(0) == 255).any()
    # as a 40-class mapping the struct file is refused with the reason
    with pytest.raises(UsageError, match=r"class13Mapping\.mat: has no variable `mapClass`"):
        prepare(root, tmp_path / "o40", mapping=root / "class13Mapping.mat")
    with pytest.raises(UsageError, match=r"--mapping13 .*nowhere\.mat: file does not exist"):
        prepare(root, tmp_path / "o13", classes=13, mapping13=tmp_path / "nowhere.mat")


def test_missing_or_wrong_files_are_one_sentence(tmp_path: Path) -> None:
    root = nyu_depth_v2_tree(tmp_path / "nyu")
    with pytest.raises(UsageError, match=r"--mapping .*nowhere\.mat: file does not exist"):
        prepare(root, tmp_path / "o1", mapping=tmp_path / "nowhere.mat")
    bad_split = tmp_path / "splits.mat"
    scipy.io.savemat(bad_split, {"trainNdxs": [[1], [9]], "testNdxs": [[2]]})
    with pytest.raises(UsageError, match=r"splits\.mat: `trainNdxs` holds 9, outside the images"):
        prepare(root, tmp_path / "o2", splits=bad_split)
    no_names = tmp_path / "map.mat"
    scipy.io.savemat(no_names, {"classes": [[1.0, 2.0]]})
    with pytest.raises(UsageError, match=r"map\.mat: has no variable `mapClass`"):
        prepare(root, tmp_path / "o3", mapping=no_names)
    other = nyu_depth_v2_tree(tmp_path / "v5")  # a fresh file: HDF5 keeps open ones cached
    (other / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 MAT-file, not the labelled set")
    with pytest.raises(UsageError, match=r"labeled\.mat: not a MATLAB v7\.3 \(HDF5\) file"):
        prepare(other, tmp_path / "o4")


def test_prepare_cli_exit_code_and_json(cli, tmp_path: Path) -> None:
    root = nyu_depth_v2_tree(tmp_path / "nyu")
    res = cli("--json", "prepare", "nyu-depth-v2", "--root", root, "--out", tmp_path / "out")
    assert res.code == 0, res.stderr
    assert res.json()["records"] == 6 and res.json()["splits"] == {"test": 2, "train": 4}
    args = ("prepare", "nyu-depth-v2", "--root", root, "--out", tmp_path / "o13")
    res13 = cli("--json", *args, "--classes", "13")
    assert res13.code == 0, res13.stderr
    assert res13.json()["extra"]["classes"] == 13
    assert cli(*args, "--classes", "20").code == 2
    bad = cli("prepare", "nyu-depth-v2", "--root", tmp_path / "missing", "--out", tmp_path / "o")
    assert bad.code == 2 and "--root" in bad.stderr and "does not exist" in bad.stderr
