"""A student's evaluation preprocessing, as data: what turns a file into its model input.

Every dataset states the preprocessing of its student side (`DataBundle.student_input`);
the engine stores it in checkpoints and `student.pt`, and `cmkd_cli.load`, `cmkd embed`,
`cmkd score`, `cmkd export` and `cmkd eval` rebuild inputs from it, so nothing else (the
recipe, the data folders, a feature store) is needed to use a student. One kind per view:

- `fbank` (speaker students): the log-mel fbank of 16 kHz audio by the store's front-end
  (`FbankConfig`: kaldi or voxceleb_trainer; rounded to the store's dtype as the feature
  store keeps it), then `crops` evenly spaced crops of `crop_seconds` (paper A: 10 x 4 s,
  wrap-padded when shorter; `fbank.crop_frames` frames each). Inference uses no dither
  (wespeaker's extraction convention): the store's `dither` is a training setting.
- `spectrogram`: the log-magnitude STFT of a clip fitted to the config's length (centre).
- `image`: `ImageTransformConfig`'s evaluation resize, [0, 1] scaling and normalisation;
  `frames` > 0 stacks that many frames (`[frames, C, H, W]`, the `frames` modality).
- `scene`: an NYU view at full resolution (RGB, or depth as `mm16` millimetres or `jet`).
- `text`: token ids and attention mask from a local tokenizer (`TextConfig`).

Each kind splits its work in two. `graph_input` decodes user inputs (paths, waveforms with
their rate, PIL images, arrays, strings) to the tensor a graph takes: a waveform at the
model's rate, an image resized and scaled to [0, 1], token ids. `frontend()` is an
`nn.Module` from that tensor to the model input (fbank and crops, STFT, normalisation).
Eager inference runs `frontend()(graph_input(x))`; `cmkd export` puts the same module in
front of the model, so the exported graph and the API compute the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from pydantic import Field, TypeAdapter, ValidationError
from torch import nn

from cmkd_cli.data.audio import load_audio, resample
from cmkd_cli.data.fbank import FbankConfig, crop_frames, new_fbank_module
from cmkd_cli.data.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    ImageTransformConfig,
    PixelNormalize,
    load_image,
)
from cmkd_cli.data.spectrogram import LogSpectrogram, SpectrogramConfig
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.hf_local import load_tokenizer, minilm_path
from cmkd_cli.schema import StrictModel

PathLike = str | os.PathLike[str]


def read_waveform(x: Any, sample_rate: int) -> np.ndarray:
    """A mono float32 waveform at `sample_rate` from a file path or a `(waveform, rate)` pair
    (numpy or torch, `[N]` or `[channels, N]`; other rates are resampled, channels averaged)."""
    if isinstance(x, str | os.PathLike):
        return load_audio(x, sample_rate)[0]
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], int | np.integer):
        wave = x[0].detach().cpu().numpy() if isinstance(x[0], torch.Tensor) else np.asarray(x[0])
        if wave.ndim == 2:
            wave = wave.mean(axis=0)
        if wave.ndim != 1 or wave.size == 0:
            raise DataError(f"a waveform must be [N] or [channels, N] samples, got {wave.shape}")
        return np.ascontiguousarray(resample(wave.astype(np.float32), int(x[1]), sample_rate))
    raise UsageError(
        f"an audio input is a file path or a (waveform, sample_rate) pair, not {type(x).__name__}"
    )


def read_image(x: Any, channels: int) -> torch.Tensor:
    """`[C, H, W]` from a path, a PIL image, an `[H, W(, C)]` numpy array or a `[C, H, W]`
    tensor; uint8 stays uint8 (0..255), floats are taken as [0, 1]."""
    if isinstance(x, str | os.PathLike):
        return load_image(x, channels)
    if hasattr(x, "convert") and hasattr(x, "size"):  # a PIL image
        return TF.pil_to_tensor(x.convert("RGB" if channels == 3 else "L"))
    if isinstance(x, np.ndarray):
        arr = x if x.ndim == 3 else x[..., None]
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise UsageError(
            "an image input is a path, a PIL image, an [H, W(, C)] array or a [C, H, W] tensor"
        )
    if x.shape[0] == 1 and channels > 1:
        x = x.expand(channels, -1, -1)
    if x.shape[0] != channels:
        raise DataError(
            f"the image array has {x.shape[0]} channels but the student takes {channels} "
            "(give a path or a PIL image to have it converted)"
        )
    return x


# ---------------------------------------------------------------- speaker crops


def crop_indices(total: torch.Tensor, n_frames: int, k: int) -> torch.Tensor:
    """`[k, n_frames]` frame indices of k crops of an utterance of `total` (0-dim) frames.

    The crops start at `i * (total - n_frames) // (k - 1)`, i = 0..k-1 (evenly spaced, first
    and last flush with the ends; exact integers, where voxceleb_trainer's
    `numpy.linspace(...).astype(int)` may round an exact start one frame down). An
    utterance shorter than `n_frames` is wrap-padded (`loadWAV(evalmode=True)`): every crop
    is its frames repeated from the start. Index arithmetic only, so the exported speaker
    graph (`cmkd export`) crops as evaluation does.
    """
    span = torch.clamp(total - n_frames, min=0)
    starts = torch.arange(k, device=total.device) * span // max(k - 1, 1)
    return (starts[:, None] + torch.arange(n_frames, device=total.device)[None, :]) % total


def evenly_spaced_crops(feats: np.ndarray, n_frames: int, k: int) -> np.ndarray:
    """`[k, n_frames, F]` float32: the k evenly spaced crops of `crop_indices`."""
    idx = crop_indices(torch.tensor(len(feats)), n_frames, k).numpy()
    return np.asarray(feats, dtype=np.float32)[idx]


# ---------------------------------------------------------------- NYU views


def decode_pixels(path: Path) -> np.ndarray:
    """An image file's pixels as stored (uint8 RGB, 16-bit depth, 8-bit labels)."""
    try:
        with Image.open(path) as img:
            return np.array(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def view_normalizer(
    modality: str, encoding: str, depth_max: float, depth_channels: int
) -> PixelNormalize:
    """The normalisation of an NYU view (`data.segmentation`): RGB in [0, 1] with ImageNet's
    mean and std; `mm16` depth from millimetres (/ (1000 depth_max), clipped to [0, 1]) and `jet`
    depth from [0, 1], both then mapped to [-1, 1]."""
    if modality == "rgb":
        return PixelNormalize(IMAGENET_MEAN, IMAGENET_STD)
    half = (0.5,) * (depth_channels if encoding == "mm16" else 3)
    if encoding == "mm16":
        return PixelNormalize(half, half, scale=1.0 / (1000.0 * depth_max), clamp=True)
    return PixelNormalize(half, half)


def view_pixels(pixels: np.ndarray, modality: str, encoding: str) -> torch.Tensor:
    """Decoded pixels as the float `[C, H, W]` a `view_normalizer` takes: RGB and jet / 255,
    `mm16` depth in millimetres."""
    if modality == "depth" and encoding == "mm16":
        return torch.from_numpy(pixels.astype(np.float32))[None]
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------- text


class TextConfig(StrictModel):
    """Tokenisation of the `text` modality (recipe field `data.params.text`)."""

    tokenizer: str | None = Field(
        None, description="local transformers folder (default: the bundled MiniLM)"
    )
    max_length: int = Field(64, ge=2, description="tokens per text (padded or truncated)")


def load_tokens(texts: list[str], cfg: TextConfig) -> torch.Tensor:
    """`[N, 2, max_length]` token ids and attention masks from a LOCAL tokenizer folder."""
    path = Path(cfg.tokenizer).expanduser() if cfg.tokenizer else minilm_path()
    try:
        tok = load_tokenizer(path)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"data.params.text.tokenizer: cannot load a tokenizer from {path} ({exc})"
        ) from None
    enc = tok(
        texts,
        padding="max_length",
        truncation=True,
        max_length=cfg.max_length,
        return_tensors="pt",
    )
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).long()


# ---------------------------------------------------------------- the kinds


class FbankInput(StrictModel):
    """Speaker students: Kaldi fbank, then `crops` evenly spaced crops of `crop_seconds`."""

    kind: Literal["fbank"] = "fbank"
    fbank: FbankConfig
    crops: int = Field(10, ge=1, description="evenly spaced crops per utterance (paper A: 10)")
    crop_seconds: float = Field(4.0, gt=0, description="length of each crop (paper A: 4 s)")

    @property
    def sample_rate(self) -> int:
        return self.fbank.sample_rate

    @property
    def crop_frames(self) -> int:
        """Frames per crop as the front-end cuts `crop_seconds` (`fbank.crop_frames`)."""
        return crop_frames(self.crop_seconds, self.fbank)

    def with_crops(self, crops: int | None, crop_seconds: float | None) -> FbankInput:
        """This preprocessing with another crop policy (None keeps the stored one)."""
        update = {"crops": crops, "crop_seconds": crop_seconds}
        return self.model_copy(update={k: v for k, v in update.items() if v is not None})

    def graph_input(self, items: list[Any]) -> list[torch.Tensor]:
        """One `[1, N]` waveform per item (utterances differ in length)."""
        out = []
        for x in items:
            wave = read_waveform(x, self.sample_rate)
            if len(wave) < self.fbank.window:
                raise DataError(
                    f"{_name(x)}: {len(wave)} samples are fewer than one "
                    f"{self.fbank.frame_length_ms} ms frame"
                )
            out.append(torch.from_numpy(wave)[None])
        return out

    def frontend(self) -> SpeakerFrontend:
        return SpeakerFrontend(self)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "waveform",
            "shape": ["batch", "samples"],
            "dtype": "float32",
            "meaning": f"mono audio in [-1, 1] at {self.sample_rate} Hz (one utterance a row; "
            "rows of one batch have one length)",
        }


class SpeakerFrontend(nn.Module):
    """Waveforms `[B, N]` -> crops `[B, K, n, n_mels]`: fbank, the store's dtype rounding,
    `crop_indices` (evaluation's crops); `features` stops before the crops."""

    def __init__(self, cfg: FbankInput) -> None:
        super().__init__()
        self.fbank = new_fbank_module(cfg.fbank)
        self.half = cfg.fbank.dtype == "float16"
        self.frames, self.crops = cfg.crop_frames, cfg.crops

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.fbank(wave)
        return feats.half().float() if self.half else feats

    def crop(self, feats: torch.Tensor) -> torch.Tensor:
        """`[B, T, F]` -> `[B, K, n, F]`."""
        total = torch.scalar_tensor(feats.shape[1], dtype=torch.long, device=feats.device)
        return feats[:, crop_indices(total, self.frames, self.crops)]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.crop(self.features(wave))


class SpectrogramInput(StrictModel):
    """Audio classifiers: `LogSpectrogram` of the clip fitted to the config's length."""

    kind: Literal["spectrogram"] = "spectrogram"
    audio: SpectrogramConfig

    @property
    def sample_rate(self) -> int:
        return self.audio.sample_rate

    def graph_input(self, items: list[Any]) -> list[torch.Tensor]:
        return [torch.from_numpy(read_waveform(x, self.sample_rate))[None] for x in items]

    def frontend(self) -> nn.Module:
        return LogSpectrogram(self.audio)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "waveform",
            "shape": ["batch", "samples"],
            "dtype": "float32",
            "meaning": f"mono audio in [-1, 1] at {self.sample_rate} Hz, any length (the graph "
            f"takes its centre {self.audio.n_samples} samples, or repeats a shorter clip)",
        }


class ImageInput(StrictModel):
    """Image students: evaluation resize (or centre crop), [0, 1], normalisation."""

    kind: Literal["image"] = "image"
    image: ImageTransformConfig
    frames: int = Field(0, ge=0, description="0: one image [C, H, W]; k: a stack [k, C, H, W]")

    def graph_input(self, items: list[Any]) -> list[torch.Tensor]:
        """`[1, C, H, W]` (or `[1, k, C, H, W]`) in [0, 1] at the student's size. A frame
        stack is a `[k, C, H, W]` tensor; one image stands for every frame."""
        resize = ImageTransform(self.image).eval_one
        out = []
        for x in items:
            if self.frames and isinstance(x, torch.Tensor) and x.dim() == 4:
                frames = [read_image(f, self.image.channels) for f in x]
            else:
                frames = [read_image(x, self.image.channels)] * max(self.frames, 1)
            stack = torch.stack([_unit(resize(f)) for f in frames])
            out.append(stack[None] if self.frames else stack)
        return out

    def frontend(self) -> nn.Module:
        return StackNormalize(*self.image.stats())

    def describe(self) -> dict[str, Any]:
        h, w = self.image.hw
        c = self.image.channels
        shape = ["batch", *([self.frames] if self.frames else []), c, h, w]
        how = "resized" if self.image.eval_mode == "resize" else "resized and centre-cropped"
        return {
            "name": "image",
            "shape": shape,
            "dtype": "float32",
            "meaning": f"{'RGB' if c == 3 else 'grey'} pixels / 255 in [0, 1], {how} to "
            f"{h}x{w} (the graph normalises them)",
        }


class StackNormalize(nn.Module):
    """`PixelNormalize` over `[B, C, H, W]` or frame stacks `[B, k, C, H, W]`."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.norm = PixelNormalize(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            return self.norm(x.flatten(0, 1)).view(x.shape)
        return self.norm(x)


class SceneInput(StrictModel):
    """NYU segmentation students: one view at full resolution (`data.segmentation`)."""

    kind: Literal["scene"] = "scene"
    modality: Literal["rgb", "depth"]
    encoding: Literal["mm16", "jet"] = "mm16"
    depth_max: float = Field(10.0, gt=0)
    depth_channels: int = Field(1, ge=1)

    def graph_input(self, items: list[Any]) -> list[torch.Tensor]:
        out = []
        for x in items:
            pixels = decode_pixels(Path(x)) if isinstance(x, str | os.PathLike) else np.asarray(x)
            out.append(view_pixels(pixels, self.modality, self.encoding)[None])
        return out

    def frontend(self) -> nn.Module:
        return view_normalizer(self.modality, self.encoding, self.depth_max, self.depth_channels)

    def describe(self) -> dict[str, Any]:
        if self.modality == "depth" and self.encoding == "mm16":
            what, channels = "depth in millimetres (16-bit PNG values)", 1
        else:
            what, channels = f"{self.modality} pixels / 255 in [0, 1]", 3
        return {
            "name": "image",
            "shape": ["batch", channels, "height", "width"],
            "dtype": "float32",
            "meaning": f"{what} at full resolution (the graph normalises them)",
        }


class TextInput(StrictModel):
    """Text students: token ids and attention mask of a local tokenizer (`TextConfig`)."""

    kind: Literal["text"] = "text"
    text: TextConfig

    def graph_input(self, items: list[Any]) -> list[torch.Tensor]:
        if not all(isinstance(x, str) for x in items):
            raise UsageError("a text student's inputs are strings")
        return list(load_tokens(list(items), self.text)[:, None])

    def frontend(self) -> nn.Module:
        return nn.Identity()

    def describe(self) -> dict[str, Any]:
        where = self.text.tokenizer or "the bundled all-MiniLM-L6-v2"
        n = self.text.max_length
        return {
            "name": "tokens",
            "shape": ["batch", 2, n],
            "dtype": "int64",
            "meaning": f"row 0 token ids, row 1 attention mask, from the tokenizer in {where} "
            f"(padded or truncated to {n}; tokenising stays outside the graph)",
        }


Preprocessing = Annotated[
    FbankInput | SpectrogramInput | ImageInput | SceneInput | TextInput,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Preprocessing)


def parse_preprocessing(value: dict[str, Any], origin: str) -> Any:
    """A stored preprocessing dict as its model; an unknown kind names `origin`."""
    try:
        return _ADAPTER.validate_python(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UsageError(f"{origin}: preprocessing {err['loc']}: {err['msg']}") from None


def _unit(img: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [0, 1] as `ImageTransform` scales; floats are taken as [0, 1]."""
    return TF.to_dtype(img, torch.float32, scale=True)


def _name(x: Any) -> str:
    return str(x) if isinstance(x, str | os.PathLike) else "the waveform"
