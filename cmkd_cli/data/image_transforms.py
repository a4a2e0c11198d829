"""Image and frame transforms whose randomness comes from the sample's keyed generator.

Paper B appendix C.1 ("random cropping and flipping") and paper A Sec. 4.2 (images
"randomly cropped and horizontally flipped ... and normalized"; centrally cropped for
testing). Training: `random_resized` (torchvision's RandomResizedCrop, scale/ratio fields)
or `random_pad` (the CIFAR crop: zero-pad by `padding`, crop `size`), then a horizontal flip
with probability `hflip`. Evaluation: `resize` to `size` (paper B, OGM-GE's test transform)
or `center_crop` (shorter side to size / `crop_fraction`, then the centre). Then scaling to
[0, 1] and normalisation.

Every random number is drawn from the numpy generator the dataset passes in (its
`self.rng(index)`), never from torch's global RNG, so a sample is identical in every
process, worker and resumed run. The frames of one sample share one set of parameters.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from pydantic import Field, field_validator
from torch import nn

from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.schema import StrictModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransformConfig(StrictModel):
    """Image settings of one dataset (recipe field `data.params.image`)."""

    size: int | tuple[int, int] = Field(224, description="output size (H, W) or one side")
    channels: Literal[1, 3] = Field(3, description="3 = RGB, 1 = grey")
    train_crop: Literal["random_resized", "random_pad", "none"] = "random_resized"
    scale: tuple[float, float] = Field((0.08, 1.0), description="random_resized: area range")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="random_resized: aspect")
    padding: int = Field(4, ge=0, description="random_pad: zero padding on each side")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    eval_mode: Literal["resize", "center_crop"] = "resize"
    crop_fraction: float = Field(0.875, gt=0, le=1, description="center_crop: size / resize")
    mean: tuple[float, ...] | None = Field(None, description="default ImageNet's (RGB) or 0.5")
    std: tuple[float, ...] | None = Field(None, description="default ImageNet's (RGB) or 0.5")

    @field_validator("size")
    @classmethod
    def _positive(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        if min((v, v) if isinstance(v, int) else v) < 1:
            raise ValueError("every side must be at least 1 pixel")
        return v

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    def stats(self) -> tuple[list[float], list[float]]:
        default = (IMAGENET_MEAN, IMAGENET_STD) if self.channels == 3 else ((0.5,), (0.5,))
        mean, std = list(self.mean or default[0]), list(self.std or default[1])
        if len(mean) != self.channels or len(std) != self.channels:
            raise UsageError(
                f"data.params.image.mean/std: give {self.channels} value(s) each for "
                f"{self.channels}-channel images"
            )
        return mean, std


class PixelNormalize(nn.Module):
    """Float images `[B, C, H, W]` -> `(x * scale - mean) / std` per channel.

    `scale` maps the input to [0, 1] (1 for images already there; 1 / (1000 * depth_max) for
    depth in millimetres), `clamp` clips to [0, 1] after it, and a 1-channel input is
    repeated to `len(mean)` channels. The last step of every image view of the datasets and
    the image front-end `cmkd export` ships, so both normalise with the same arithmetic.
    """

    def __init__(
        self,
        mean: tuple[float, ...] | list[float],
        std: tuple[float, ...] | list[float],
        scale: float = 1.0,
        clamp: bool = False,
    ) -> None:
        super().__init__()
        self.scale, self.clamp, self.channels = float(scale), clamp, len(mean)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.scale != 1.0:
            x = x * self.scale
        if self.clamp:
            x = torch.clamp(x, 0.0, 1.0)
        if x.shape[1] == 1 and self.channels > 1:
            x = x.repeat(1, self.channels, 1, 1)
        return (x - self.mean) / self.std


def load_image(path: str | os.PathLike[str], channels: int = 3) -> torch.Tensor:
    """Decode an image file to uint8 `[channels, H, W]`; DataError names an unreadable file."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            return TF.pil_to_tensor(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


@dataclass(frozen=True)
class CropParams:
    """One sample's draw: a crop box in source pixels (may leave the image: zero fill) + flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def random_resized_box(
    h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params with numpy draws: (top, left, height, width)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: the central crop of the clamped aspect ratio
    if in_ratio < min(ratio):
        cw, ch = w, round(w / min(ratio))
    elif in_ratio > max(ratio):
        ch, cw = h, round(h * max(ratio))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class ImageTransform:
    """`transform(images, rng)`: uint8 `[C, H, W]` images of one sample -> float `[N, C, H, W]`.

    `rng` given: the training transform (one draw shared by all `images`); None: evaluation.
    """

    def __init__(self, cfg: ImageTransformConfig) -> None:
        self.cfg = cfg
        self.normalize = PixelNormalize(*cfg.stats())

    def draw(self, h: int, w: int, rng: np.random.Generator) -> CropParams:
        cfg = self.cfg
        if cfg.train_crop == "random_resized":
            top, left, ch, cw = random_resized_box(h, w, cfg.scale, cfg.ratio, rng)
        elif cfg.train_crop == "random_pad":  # on the image resized to `size`
            oh, ow = cfg.hw
            p = cfg.padding
            top, left = int(rng.integers(0, 2 * p + 1)) - p, int(rng.integers(0, 2 * p + 1)) - p
            ch, cw = oh, ow
        else:
            top, left, ch, cw = 0, 0, h, w
        return CropParams(top, left, ch, cw, bool(rng.random() < cfg.hflip))

    def train_source(self, img: torch.Tensor) -> torch.Tensor:
        """The part of the training transform that draws nothing: `random_pad` resizes to
        `size` first (a cache may keep this; `train_one` then skips it)."""
        size = list(self.cfg.hw)
        if self.cfg.train_crop == "random_pad" and list(img.shape[-2:]) != size:
            return TF.resize(img, size, antialias=True)
        return img

    def train_one(self, img: torch.Tensor, p: CropParams) -> torch.Tensor:
        size = list(self.cfg.hw)
        if self.cfg.train_crop == "random_pad":
            img = TF.crop(self.train_source(img), p.top, p.left, p.height, p.width)
        else:
            img = TF.resized_crop(img, p.top, p.left, p.height, p.width, size, antialias=True)
        return TF.horizontal_flip(img) if p.flip else img

    def eval_one(self, img: torch.Tensor) -> torch.Tensor:
        size = list(self.cfg.hw)
        if self.cfg.eval_mode == "resize":
            return TF.resize(img, size, antialias=True) if list(img.shape[-2:]) != size else img
        short = [round(s / self.cfg.crop_fraction) for s in size]
        scale = max(short[0] / img.shape[-2], short[1] / img.shape[-1])
        resized = [
            max(size[0], round(img.shape[-2] * scale)),
            max(size[1], round(img.shape[-1] * scale)),
        ]
        return TF.center_crop(TF.resize(img, resized, antialias=True), size)

    def pixels(
        self, images: list[torch.Tensor], rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        """The cropped / resized uint8 images `[N, C, H, W]`, before scaling."""
        if rng is None:
            out = [self.eval_one(img) for img in images]
        else:
            params = self.draw(images[0].shape[-2], images[0].shape[-1], rng)
            out = [self.train_one(img, params) for img in images]
        return torch.stack(out)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels `[N, C, H, W]` scaled to [0, 1] and normalised (`PixelNormalize`)."""
        return self.normalize(TF.to_dtype(pixels, torch.float32, scale=True))

    def __call__(
        self, images: list[torch.Tensor], rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        return self.from_pixels(self.pixels(images, rng))
