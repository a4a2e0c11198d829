"""The `nyu` dataset: a prepared NYU-Depth V2 manifest as (student, teacher) views of a scene
with its label map (paper B Sec. 4.2: RGB -> depth and depth -> RGB segmentation).

Reads the folder `cmkd prepare nyu-depth-v2` writes: records with `image` (RGB PNG), `depth`
(`depth_encoding` `mm16`: 16-bit millimetres, or `jet`: 3-channel colour map), `label_map`
(8-bit, 0..K-1, 255 = ignore) and `split`; OUT/classes.txt names the K classes.
`student_modality` / `teacher_modality`: `rgb` (3 channels, ImageNet mean/std) or `depth`
(`mm16`: metres / `depth_max`; `jet`: the colour map / 255; both then mapped from [0, 1] to
[-1, 1]) with `depth_channels` channels: 1 (`mm16` only) or 3 (`jet`, or `mm16` repeated
three times, which an RGB stem reads like a 1-channel stem whose kernel is the sum of its
RGB kernels, so ImageNet weights serve both modalities unchanged). Items follow the
engine's contract: `x` and `t` `[C, H, W]` float, `y` `[H, W]` int64.

Training augmentation (CIRKD's, whose settings paper B follows): one draw from
`self.rng(index)` (keyed by seed, epoch and index) applied identically to both views and the
label map: a random scale in `scale_range` (bilinear for images, nearest for labels), padding
to at least `crop_size` at the bottom/right (0 = the mean after normalisation; labels 255),
a random `crop_size` crop and a horizontal flip with probability `hflip`. Evaluation views are
the full-resolution images, unchanged. The teacher input is augmented with the student's, so
`teacher_static` is false while `augment` is on; with `augment: false` a frozen teacher's
outputs are cached on disk (dense logits: 40 x 480 x 640 floats, about 49 MB an image; set
`train.teacher_cache: false` to avoid that).

NYU-Depth V2 has no validation split: `val_split` defaults to `test`, as the segmentation KD
codes validate on the test images; the NYU recipes therefore validate only after the last
epoch, so no checkpoint is selected on the test set.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from cmkd_cli import console
from cmkd_cli.data.datasets import DataBundle, KeyedDataset, register_dataset
from cmkd_cli.data.manifest import MANIFEST, read_classes, read_manifest, resolve
from cmkd_cli.data.preprocess import SceneInput, decode_pixels, view_normalizer, view_pixels
from cmkd_cli.errors import DataError, UsageError

MODALITIES = ("rgb", "depth")
DEPTH_ENCODINGS = ("mm16", "jet")
IGNORE = 255


@dataclass(frozen=True)
class Scene:
    id: str
    rgb: Path
    depth: Path
    encoding: str
    label: Path


@dataclass(frozen=True)
class Augment:
    crop: tuple[int, int]
    scale: tuple[float, float]
    hflip: float


def load_view(scene: Scene, modality: str, depth_max: float, depth_channels: int) -> torch.Tensor:
    """One modality of `scene` as a normalised float `[C, H, W]` (see the module docstring)."""
    pixels = decode_pixels(scene.rgb if modality == "rgb" else scene.depth)
    norm = view_normalizer(modality, scene.encoding, depth_max, depth_channels)
    return norm(view_pixels(pixels, modality, scene.encoding)[None])[0]


def augment(
    views: list[torch.Tensor], label: torch.Tensor, cfg: Augment, rng: np.random.Generator
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random scale, pad, crop and flip, one draw for every view and the label map."""
    h, w = label.shape
    s = rng.uniform(*cfg.scale)
    size = [max(1, round(h * s)), max(1, round(w * s))]
    views = [TF.resize(v, size, antialias=False) for v in views]
    label = TF.resize(label[None], size, InterpolationMode.NEAREST)[0]
    pad = (0, max(cfg.crop[1] - size[1], 0), 0, max(cfg.crop[0] - size[0], 0))
    if any(pad):
        views = [F.pad(v, pad, value=0.0) for v in views]
        label = F.pad(label, pad, value=IGNORE)
    top = int(rng.integers(0, label.shape[0] - cfg.crop[0] + 1))
    left = int(rng.integers(0, label.shape[1] - cfg.crop[1] + 1))
    views = [v[:, top : top + cfg.crop[0], left : left + cfg.crop[1]] for v in views]
    label = label[top : top + cfg.crop[0], left : left + cfg.crop[1]]
    if rng.random() < cfg.hflip:
        views, label = [v.flip(-1) for v in views], label.flip(-1)
    return views, label


class SegmentationSplit(KeyedDataset):
    """One split: items `{index, x, y, t}`, augmented when `augment` is given."""

    def __init__(
        self,
        scenes: list[Scene],
        student: str,
        teacher: str,
        augment: Augment | None,
        depth_max: float,
        depth_channels: int,
    ) -> None:
        super().__init__()
        self.scenes, self.student, self.teacher = scenes, student, teacher
        self.augment, self.depth_max, self.depth_channels = augment, depth_max, depth_channels

    def __len__(self) -> int:
        return len(self.scenes)

    def raw_input(self, index: int) -> Path:
        """The student view's PNG."""
        scene = self.scenes[index]
        return scene.rgb if self.student == "rgb" else scene.depth

    def sample_id(self, index: int) -> str:
        return self.scenes[index].id

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scenes[index]
        views = [
            load_view(scene, m, self.depth_max, self.depth_channels)
            for m in (self.student, self.teacher)
        ]
        label = torch.from_numpy(decode_pixels(scene.label).astype(np.int64))
        if any(v.shape[-2:] != label.shape for v in views):
            raise DataError(f"sample {scene.id}: its RGB, depth and label maps differ in size")
        if self.augment is not None:
            views, label = augment(views, label, self.augment, self.rng(index))
        return {"index": index, "x": views[0], "y": label, "t": views[1]}


def _pair(value: int | list[int] | tuple[int, ...], field: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise UsageError(f"data.params.{field}: give [height, width] of at least 1 pixel")
    return int(pair[0]), int(pair[1])


@register_dataset("nyu")
def nyu_dataset(
    manifest: str,
    student_modality: str = "depth",
    teacher_modality: str = "rgb",
    train_split: str = "train",
    val_split: str = "test",
    test_split: str = "test",
    crop_size: int | list[int] = (480, 640),
    scale_range: list[float] = (0.5, 2.0),
    hflip: float = 0.5,
    augment: bool = True,
    depth_max: float = 10.0,
    depth_channels: int | None = None,
) -> DataBundle:
    """A prepared NYU-Depth V2 folder (or its manifest.jsonl) as a `DataBundle`.

    `crop_size` `[H, W]` and `scale_range` `[lo, hi]` are the training augmentation's (CIRKD's
    random scale 0.5-2.0; the default crop is NYU's whole 480 x 640 frame), `hflip` its flip
    probability, `augment: false` turns it off; `depth_max` (metres) scales `mm16` depth;
    `depth_channels` (default: the encoding's, 1 for `mm16`, 3 for `jet`) the depth view's.
    """
    for field, value in (
        ("student_modality", student_modality),
        ("teacher_modality", teacher_modality),
    ):
        if value not in MODALITIES:
            raise UsageError(
                f"data.params.{field}: unknown modality {value!r}; choose one of: "
                f"{', '.join(MODALITIES)}"
            )
    crop = _pair(crop_size, "crop_size")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise UsageError("data.params.scale_range: give [low, high] with 0 < low <= high")
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 <= hflip <= 1 or depth_max <= 0:
        raise UsageError("data.params: hflip must lie in [0, 1] and depth_max be positive")
    path = Path(manifest).expanduser()
    path = path / MANIFEST if path.is_dir() else path
    names = [name for _, name in read_classes(path.parent)]
    chosen: dict[str, list[Scene]] = {"train": [], "val": [], "test": []}
    dropped: Counter[str] = Counter()
    wanted = {"train": train_split, "val": val_split, "test": test_split}
    for r in read_manifest(path):
        extra = r.model_extra or {}
        if not (r.image and extra.get("depth") and extra.get("label_map")):
            dropped["no image, depth or label_map"] += 1
            continue
        encoding = extra.get("depth_encoding", "mm16")
        if encoding not in DEPTH_ENCODINGS:
            raise DataError(f"{path}: record {r.id}: unknown depth_encoding {encoding!r}")
        scene = Scene(
            r.id,
            resolve(path, r.image),
            resolve(path, extra["depth"]),
            encoding,
            resolve(path, extra["label_map"]),
        )
        for key, split in wanted.items():
            if r.split == split:
                chosen[key].append(scene)
    for key, split in wanted.items():
        if not chosen[key]:
            raise UsageError(f"data.params.{key}_split: {path} has no `{split}` records")
    encodings = {s.encoding for scenes in chosen.values() for s in scenes}
    if len(encodings) > 1:
        raise DataError(f"{path}: records mix depth encodings; prepare the folder again")
    encoding = encodings.pop()
    channels = depth_channels or (1 if encoding == "mm16" else 3)
    if channels not in (1, 3) or (encoding == "jet" and channels != 3):
        raise UsageError(
            f"data.params.depth_channels: {channels} channels cannot hold {encoding} depth "
            "(mm16: 1 or 3, jet: 3)"
        )
    if dropped:
        console.warn(f"{path}: left out {sum(dropped.values())} records ({dict(dropped)})")
    train_aug = Augment(crop, (lo, hi), hflip) if augment else None

    def split(key: str, aug: Augment | None) -> SegmentationSplit:
        return SegmentationSplit(
            chosen[key], student_modality, teacher_modality, aug, depth_max, channels
        )

    return DataBundle(
        train=split("train", train_aug),
        val=split("val", None),
        test=split("test", None),
        num_classes=len(names),
        class_names=names,
        info={
            "manifest": str(path),
            **{key: len(v) for key, v in chosen.items()},
            "student": student_modality,
            "teacher": teacher_modality,
            "depth_encoding": encoding,
            "depth_channels": channels,
        },
        teacher_static=not augment,
        student_input=SceneInput(
            modality=student_modality,
            encoding=encoding,
            depth_max=depth_max,
            depth_channels=channels,
        ),
    )
