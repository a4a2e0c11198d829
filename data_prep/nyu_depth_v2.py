"""NYU-Depth V2, labelled set (Silberman et al., ECCV 2012): paper B Sec. 4.2 / Table 4's
RGB <-> depth semantic segmentation (1,449 aligned RGB-D images, 795 train / 654 test, 40
classes; `--classes 13` for the 13-class setting).

Layout (what users download): ROOT/nyu_depth_v2_labeled.mat, a MATLAB v7.3 (HDF5) file read
with h5py, whose datasets come in h5py's (transposed) axis order:

- `images` `[N, 3, W, H]` uint8 (N = 1449, W = 640, H = 480),
- `depths` `[N, W, H]` float, metres (the in-painted depths of the labelled set),
- `labels` `[N, W, H]` uint16, the 894 raw classes, 0 = unlabelled;

the standard split `splits.mat` (`--splits`, default ROOT/splits.mat): `trainNdxs` (795) and
`testNdxs` (654), 1-based image numbers; and the 40-class mapping `classMapping40.mat`
(`--mapping`, default ROOT/classMapping40.mat; Gupta et al., CVPR 2013). Both small files may
be MATLAB v5 (read with scipy.io.loadmat) or v7.3/HDF5 (h5py).

Mapping structure assumed (that of the distributed `classMapping40.mat`): a numeric variable
`mapClass` with one entry per raw class 1..M (M = 894), each the target class 1..K or 0
(unmapped), and optionally a cell array `className` of the K class names (K = its length;
without it K = max(mapClass)). Any file with that structure works. Raw label 0 and classes
mapped to 0 become 255 (ignore); class k becomes k - 1, so written labels are 0..K-1 or
255. A raw label above M skips the image (reported in OUT/skipped.jsonl).

13 classes (`--classes 13`; Couprie et al. 2013's setting, as in the SceneNet/"nyuv2-meta-
data" files): the 40-class labels are mapped once more through `class13Mapping.mat`
(`--mapping13`, default ROOT/class13Mapping.mat), whose real structure is a struct
`classMapping13` with fields `labels13` (40 numbers: the 13-class number 1..13 of each of the
40 classes, 0 = unmapped) and `classNames` (a cell of the 13 names: bed, books, ceiling, ...).

Writes, per image number n (1-based, `%04d`): OUT/rgb/n.png (8-bit RGB), OUT/depth/n.png,
OUT/label/n.png (8-bit, 0..K-1, 255 = ignore), OUT/classes.txt (`k<TAB>name`) and
OUT/manifest.jsonl, whose records hold `image`, `depth`, `depth_encoding`, `label_map`,
`width`, `height` and `split` (train/test). Depth encodings (`--depth-encoding`):
`mm16`: one channel, 16-bit PNG in millimetres (lossless to 1 mm); `jet`: three 8-bit
channels, the depth over [0, `--depth-max`] metres through the jet colour map (the
"colorized depth" of Eitel et al., IROS 2015). Non-finite depths become 0 (noted).
"""

from __future__ import annotations

import io
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from cmkd_cli.data.manifest import write_classes
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.io import atomic_path
from data_prep.common import (
    OfficialSize,
    Outcome,
    PrepareOptions,
    PrepareResult,
    Task,
    prepare_tasks,
    register_reader,
    require_dir,
)

MAT = "nyu_depth_v2_labeled.mat"
SPLITS = "splits.mat"
MAPPING = "classMapping40.mat"
MAPPING13 = "class13Mapping.mat"
#: Silberman et al., "Indoor Segmentation and Support Inference from RGBD Images", ECCV 2012:
#: 1,449 labelled images; the standard split (splits.mat, Gupta et al. CVPR 2013) 795 / 654
NYU_SOURCE = "Silberman et al., ECCV 2012; splits.mat"
NYU_SIZES = (OfficialSize(795, NYU_SOURCE, ("train",)), OfficialSize(654, NYU_SOURCE, ("test",)))
IGNORE = 255
#: the names of the 40 classes of Gupta et al., used when a 40-class mapping has no className
NYU40 = (
    "wall floor cabinet bed chair sofa table door window bookshelf picture counter blinds desk "
    "shelves curtain dresser pillow mirror floor_mat clothes ceiling books refrigerator "
    "television paper towel shower_curtain box whiteboard person night_stand toilet sink lamp "
    "bathtub bag otherstructure otherfurniture otherprop"
).split()


class NYUOptions(PrepareOptions):
    splits: Path | None = Field(None, description="splits.mat (default ROOT/splits.mat)")
    mapping: Path | None = Field(
        None, description="class mapping .mat (default ROOT/classMapping40.mat)"
    )
    classes: Literal[40, 13] = Field(
        40, description="40 classes, or 13 through --mapping13 (class13Mapping.mat)"
    )
    mapping13: Path | None = Field(
        None, description="class13Mapping.mat for --classes 13 (default ROOT/class13Mapping.mat)"
    )
    depth_encoding: Literal["mm16", "jet"] = Field(
        "mm16", description="mm16: 1-channel 16-bit millimetres; jet: 3-channel colour map"
    )
    depth_max: float = Field(10.0, gt=0, description="jet: depth in metres at the map's top")


# ------------------------------------------------------------------- MATLAB files, v5 or v7.3


def _load_v5(path: Path) -> dict[str, Any]:
    import scipy.io  # lazy: one of the two .mat formats needs each reader

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise UsageError(f"{path}: not a readable MATLAB file ({exc})") from None


@lru_cache(maxsize=4)
def _h5(path: str, mtime_ns: int) -> Any:
    import h5py  # lazy: one of the two .mat formats needs each reader

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UsageError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({exc})") from None


def open_h5(path: Path) -> Any:
    """The (cached, read-only) h5py file of a MATLAB v7.3 file."""
    return _h5(str(path), path.stat().st_mtime_ns)


def _is_h5(path: Path) -> bool:
    import h5py  # lazy: one of the two .mat formats needs each reader

    return h5py.is_hdf5(str(path))


def mat_numbers(path: Path, name: str) -> np.ndarray:
    """A numeric MATLAB variable, flattened (MATLAB v5 or v7.3)."""
    if _is_h5(path):
        f = open_h5(path)
        value = np.asarray(f[name]) if name in f else None
    else:
        value = _load_v5(path).get(name)
    if value is None:
        raise UsageError(f"{path}: has no variable `{name}`")
    try:
        return np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise UsageError(f"{path}: variable `{name}` is not numeric") from None


def mat_strings(path: Path, name: str) -> list[str] | None:
    """A cell array of strings (None when absent): v5 cells, or v7.3 object references to
    uint16 character arrays."""
    if _is_h5(path):
        f = open_h5(path)
        if name not in f:
            return None
        refs = np.asarray(f[name]).ravel()
        return ["".join(map(chr, np.asarray(f[r]).ravel())) for r in refs]
    value = _load_v5(path).get(name)
    return None if value is None else [str(v) for v in np.atleast_1d(value)]


def mat_struct_field(path: Path, struct: str, field: str) -> Any:
    """Field `field` of the MATLAB struct `struct` (v5: a numpy record; v7.3: an HDF5 group);
    v7.3 cells of strings come back as lists of str."""
    if _is_h5(path):
        f = open_h5(path)
        if struct not in f or field not in f[struct]:
            raise UsageError(f"{path}: has no struct `{struct}` with a field `{field}`")
        node = f[struct][field]
        if node.dtype.kind == "O":  # a cell: references to char arrays
            return ["".join(map(chr, np.asarray(f[r]).ravel())) for r in np.asarray(node).ravel()]
        return np.asarray(node)
    value = _load_v5(path).get(struct)
    names = getattr(getattr(value, "dtype", None), "names", None) or ()
    if field not in names:
        raise UsageError(f"{path}: has no struct `{struct}` with a field `{field}`")
    return value[field].item() if value.ndim == 0 else value[field]


# ------------------------------------------------------------------------ splits and mapping


def read_splits(path: Path, n_images: int) -> dict[int, str]:
    """0-based image index -> `train` / `test` from `trainNdxs` / `testNdxs` (1-based)."""
    out: dict[int, str] = {}
    for split, name in (("train", "trainNdxs"), ("test", "testNdxs")):
        values = mat_numbers(path, name)
        if values.size == 0 or np.any(values != np.round(values)):
            raise UsageError(f"{path}: `{name}` must hold whole image numbers")
        for v in map(int, values):
            if not 1 <= v <= n_images:
                raise UsageError(f"{path}: `{name}` holds {v}, outside the images 1..{n_images}")
            if v - 1 in out:
                raise UsageError(f"{path}: image {v} is listed twice (`{name}`)")
            out[v - 1] = split
    return out


@lru_cache(maxsize=4)
def _mapping(path: str, mtime_ns: int) -> tuple[np.ndarray, tuple[str, ...]]:
    file = Path(path)
    classes = mat_numbers(file, "mapClass")
    names = mat_strings(file, "className")
    k = len(names) if names else int(classes.max(initial=0))
    if classes.size == 0 or np.any(classes != np.round(classes)) or classes.min() < 0:
        raise UsageError(f"{file}: `mapClass` must hold class numbers 0..K, one per raw class")
    if classes.max() > k or not 1 <= k < IGNORE:
        raise UsageError(f"{file}: `mapClass` reaches {int(classes.max())} but there are {k} names")
    lut = np.full(classes.size + 1, IGNORE, dtype=np.uint8)
    mapped = classes.astype(int)
    lut[1:] = np.where(mapped > 0, mapped - 1, IGNORE)
    if not names:
        names = list(NYU40) if k == len(NYU40) else [str(i + 1) for i in range(k)]
    return lut, tuple(names)


def read_mapping(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """(raw label -> class index or 255 lookup table, class names) of a mapping file."""
    return _mapping(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _mapping13(path: str, mtime_ns: int) -> tuple[np.ndarray, tuple[str, ...]]:
    file = Path(path)
    try:
        labels = np.asarray(mat_struct_field(file, "classMapping13", "labels13"), np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"{file}: `classMapping13.labels13` is not numeric") from None
    names = [str(n) for n in np.atleast_1d(mat_struct_field(file, "classMapping13", "classNames"))]
    labels = labels.ravel()
    if labels.size != 40 or np.any(labels != np.round(labels)) or labels.min() < 0:
        raise UsageError(
            f"{file}: `classMapping13.labels13` must hold 40 class numbers (one per NYU-40 "
            f"class), got {labels.size} values"
        )
    if labels.max() > len(names):
        raise UsageError(
            f"{file}: `labels13` reaches {int(labels.max())} but `classNames` has {len(names)}"
        )
    table = np.full(IGNORE + 1, IGNORE, dtype=np.uint8)  # 40-class index (or 255) -> 13
    table[:40] = np.where(labels > 0, labels - 1, IGNORE).astype(np.uint8)
    return table, tuple(names)


def read_mapping13(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """(40-class index or 255 -> 13-class index or 255 table of 256 entries, the 13 names)
    of a `class13Mapping.mat`."""
    return _mapping13(str(path), path.stat().st_mtime_ns)


def class_lut(mapping: Path, mapping13: Path | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """(raw label -> class index or 255, class names): through `mapping` (40 classes), then
    through `mapping13` when given."""
    lut, names = read_mapping(mapping)
    if mapping13 is None:
        return lut, names
    if len(names) != 40:
        raise UsageError(f"--classes 13: {mapping} maps to {len(names)} classes, not NYU's 40")
    table, names13 = read_mapping13(mapping13)
    return table[lut], names13


# ----------------------------------------------------------------------------- the images


def _layout(mat: Path) -> int:
    """The number of images of the labelled .mat after checking its three datasets."""
    if not _is_h5(mat):
        raise UsageError(f"{mat}: not a MATLAB v7.3 (HDF5) file, which the labelled set is")
    f = open_h5(mat)
    missing = [k for k in ("images", "depths", "labels") if k not in f]
    if missing:
        raise UsageError(f"{mat}: has no `{missing[0]}` dataset")
    shape = f["images"].shape
    if len(shape) != 4 or shape[1] != 3:
        raise UsageError(f"{mat}: `images` is {shape}, not [N, 3, W, H]")
    n, _, w, h = shape
    for key in ("depths", "labels"):
        if f[key].shape != (n, w, h):
            raise UsageError(f"{mat}: `{key}` is {f[key].shape}, not {(n, w, h)} as `images`")
    return n


def jet(x: np.ndarray) -> np.ndarray:
    """MATLAB's jet colour map of `x` in [0, 1] -> uint8 `[..., 3]` (piecewise linear)."""
    rgb = [np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)]
    return np.round(np.stack(rgb, axis=-1) * 255).astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _worker(task: Task) -> Outcome:
    p = task.params
    mat, out, i = Path(p["mat"]), Path(p["out"]), p["index"]
    f = open_h5(mat)
    lut, _ = class_lut(Path(p["mapping"]), p["mapping13"] and Path(p["mapping13"]))
    raw = np.asarray(f["labels"][i]).T
    if raw.max(initial=0) >= len(lut):
        raise DataError(
            f"{mat}: label outside the class mapping (image {task.key} holds "
            f"{int(raw.max())}; mapClass covers 1..{len(lut) - 1})"
        )
    rgb = np.ascontiguousarray(np.asarray(f["images"][i], dtype=np.uint8).transpose(2, 1, 0))
    depth = np.asarray(f["depths"][i], dtype=np.float64).T
    notes = []
    if not np.isfinite(depth).all():
        depth = np.where(np.isfinite(depth), depth, 0.0)
        notes.append("non-finite depth set to 0")
    if p["encoding"] == "mm16":
        encoded = np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16)
    else:
        encoded = jet(np.clip(depth / p["depth_max"], 0, 1))
    files = {key: f"{key}/{task.key}.png" for key in ("rgb", "depth", "label")}
    _write_png(out / files["rgb"], rgb)
    _write_png(out / files["depth"], encoded)
    _write_png(out / files["label"], lut[raw])
    record = {
        "id": task.key,
        "split": p["split"],
        "image": files["rgb"],
        "depth": files["depth"],
        "depth_encoding": p["encoding"],
        "label_map": files["label"],
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "notes": notes or None,
    }
    outputs = [str(out / v) for v in files.values()]
    return Outcome(key=task.key, record=record, outputs=outputs, decoded=1)


def _existing(path: Path, option: str) -> Path:
    if not path.is_file():
        raise UsageError(f"{option} {path}: file does not exist")
    return path


@register_reader(
    "nyu-depth-v2",
    NYUOptions,
    "Read NYU-Depth V2's labelled set (ROOT/nyu_depth_v2_labeled.mat, splits.mat, "
    "classMapping40.mat [+ class13Mapping.mat with --classes 13]); write "
    "OUT/{rgb,depth,label}/NNNN.png, OUT/classes.txt, "
    "OUT/manifest.jsonl, OUT/skipped.jsonl.",
)
def prepare_nyu_depth_v2(opts: NYUOptions) -> PrepareResult:
    """The labelled .mat -> one RGB, depth and 40- (or 13-) class label PNG per image."""
    started = time.perf_counter()
    root = require_dir(opts.root, "--root")
    mat = _existing(root / MAT, "--root")
    splits = _existing(opts.splits or root / SPLITS, "--splits")
    mapping = _existing(opts.mapping or root / MAPPING, "--mapping")
    mapping13 = None
    if opts.classes == 13:
        mapping13 = _existing(opts.mapping13 or root / MAPPING13, "--mapping13")
    n = _layout(mat)
    split_of = read_splits(splits, n)
    _, names = class_lut(mapping, mapping13)
    tasks = [
        Task(
            f"{i + 1:04d}",
            tuple(str(f) for f in (mat, splits, mapping, mapping13) if f is not None),
            {
                "mat": str(mat),
                "mapping": str(mapping),
                "mapping13": mapping13 and str(mapping13),
                "index": i,
                "split": split,
                "encoding": opts.depth_encoding,
                "depth_max": opts.depth_max,
                "out": str(opts.out),
            },
        )
        for i, split in sorted(split_of.items())
    ]
    result = prepare_tasks("nyu-depth-v2", opts, tasks, _worker, (), started, NYU_SIZES)
    write_classes(opts.out, [(str(k), name) for k, name in enumerate(names)])
    result.extra = {"classes": len(names), "depth_encoding": opts.depth_encoding}
    return result
