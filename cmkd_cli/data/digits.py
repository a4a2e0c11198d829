"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images) for the quickstart.

Paper A's text->image setting in miniature: the student sees the image, the teacher sees
the class label formatted into a text prompt (`t = [label, template draw]`).
"""

from __future__ import annotations

import numpy as np
import torch

from cmkd_cli.data.datasets import DataBundle, KeyedDataset, register_dataset, stratified_subset
from cmkd_cli.data.image_transforms import ImageTransformConfig
from cmkd_cli.data.preprocess import ImageInput
from cmkd_cli.errors import UsageError

#: the images as the student sees them: 8x8 grey in [0, 1] (ink high), not normalised; an
#: image of another size is resized to 8x8
EVAL_IMAGE = ImageTransformConfig(size=8, channels=1, train_crop="none", mean=(0.0,), std=(1.0,))
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DigitsSplit(KeyedDataset):
    def __init__(
        self, images: np.ndarray, labels: np.ndarray, augment: bool, teacher_view: str = "prompt"
    ) -> None:
        super().__init__()
        self.teacher_view = teacher_view
        self.images = torch.from_numpy(images).float().unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
        self.labels = torch.from_numpy(labels).long()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def raw_input(self, index: int) -> np.ndarray:
        """The 8x8 image in [0, 1]."""
        return self.images[index, 0].numpy()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        rng = self.rng(index)
        x = self.images[index]
        if self.augment:
            dy, dx = rng.integers(-1, 2, size=2)  # random 1-pixel translation, zero fill
            x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(1, 2))
            if dy:
                x[:, 0 if dy > 0 else -1, :] = 0
            if dx:
                x[:, :, 0 if dx > 0 else -1] = 0
        y = int(self.labels[index])
        draw = int(rng.integers(0, 2**31 - 1))
        if self.teacher_view == "image":  # the clean image, for teachers with feature maps
            t = self.images[index]
        else:
            t = torch.tensor([y, draw])
        return {"index": index, "x": x, "y": y, "t": t}


@register_dataset("digits")
def digits(
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    labelled_fraction: float = 1.0,
    split_seed: int = 0,
    augment: bool = True,
    teacher_view: str = "prompt",
) -> DataBundle:
    """Fixed stratified train/val/test split; `labelled_fraction` keeps that share of the
    training images per class (the low-data regime of paper A Fig. 9; nested subsets,
    `datasets.stratified_subset`).

    `teacher_view`: `prompt` gives the teacher `t = [label, template draw]` (a text
    teacher, paper A 4.2); `image` gives it the clean image (a same-modality teacher with
    feature maps, used to exercise feature- and proxy-based methods).
    """
    if teacher_view not in ("prompt", "image"):
        raise UsageError(f"data.params.teacher_view: {teacher_view!r} is not `prompt` or `image`")
    from sklearn.datasets import load_digits  # lazy: sklearn takes seconds, only digits uses it
    from sklearn.model_selection import train_test_split

    for name, v in [("val_fraction", val_fraction), ("test_fraction", test_fraction)]:
        if not 0 < v < 0.5:
            raise UsageError(f"data.params.{name}: must be in (0, 0.5), got {v}")
    if not 0 < labelled_fraction <= 1:
        raise UsageError(
            f"data.params.labelled_fraction: must be in (0, 1], got {labelled_fraction}"
        )
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    labels = d.target.astype(np.int64)
    idx = np.arange(len(labels))
    rest, test_idx = train_test_split(
        idx, test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    train_idx, val_idx = train_test_split(
        rest,
        test_size=val_fraction / (1 - test_fraction),
        stratify=labels[rest],
        random_state=split_seed,
    )
    if labelled_fraction < 1:
        keep = stratified_subset(labels[train_idx], labelled_fraction, split_seed)
        train_idx = np.sort(train_idx[keep])
    return DataBundle(
        train=DigitsSplit(images[train_idx], labels[train_idx], augment, teacher_view),
        val=DigitsSplit(images[val_idx], labels[val_idx], False, teacher_view),
        test=DigitsSplit(images[test_idx], labels[test_idx], False, teacher_view),
        num_classes=10,
        class_names=DIGIT_NAMES,
        info={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        teacher_static=teacher_view == "image",
        student_input=ImageInput(image=EVAL_IMAGE),
    )
