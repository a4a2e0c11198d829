"""DeepLabV3+ (Chen et al., ECCV 2018) on torchvision ResNet-18 / MobileNetV2 backbones.

Paper B (C2KD) Sec. 4.2 / Table 4: "Both teacher and student networks deploy the DeepLab
V3+ architecture" with ResNet-18 and MobileNetV2 backbones, for RGB and depth alike. The
backbones are torchvision's builders (never downloaded; `pretrained` loads a local
torchvision ImageNet state dict, e.g. `resnet18-f37072fd.pth`); everything after them is built
here, in this module:

- output stride 16: the stride-2 convolution of the last stage becomes stride 1 and every
  later 3x3 convolution of that stage dilation 2 (torchvision's `replace_stride_with_dilation`
  rule, which its ResNet-18 BasicBlock and MobileNetV2 do not offer themselves);
- ASPP with rates (6, 12, 18) and 256 channels: torchvision's `ASPP` module (1x1 branch,
  three atrous 3x3 branches, image pooling; 1x1 projection, BN, ReLU, dropout 0.5);
- the DeepLabV3+ decoder: the stride-4 low-level feature reduced to 48 channels
  (1x1 conv, BN, ReLU), concatenated with the ASPP output upsampled to it, then two 3x3
  conv-BN-ReLU of 256 channels (the paper's "few 3x3 convolutions"); a 1x1 classifier
  `head`; logits upsampled bilinearly to the input resolution.

Backbone taps: ResNet-18 low level = `layer1` (64 ch, stride 4), high = `layer4` (512, 16);
MobileNetV2 low = `features.3` (24, 4), high = `features.17` (320, 16; the 1280-channel
`features.18` is dropped, as DeepLabV3+ implementations on MobileNetV2 do).

Model contract: `ModelOutput(embedding, logits)` with `logits` `[B, C, H, W]` at the input
resolution and `embedding` the decoder's feature map `[B, 256, H/4, W/4]` before the
classifier (`embed_dim` 256). `stage_paths` are the four backbone stages (shallow to deep),
so stage `-2` is `backbone.layer3` / `backbone.13` (stride 16), as a classifier's; `aspp` and
`decoder` are tappable by path. `partial_tune_modules()` is the last stage, ASPP, decoder and
head. `dense_prediction` tells methods the logits are per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP

from cmkd_cli.errors import UsageError
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.models.registry import register_model
from cmkd_cli.models.staged import replace_input_conv

ASPP_RATES = (6, 12, 18)
WIDTH = 256
LOW_LEVEL_WIDTH = 48


def upsample(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """`x` `[B, C, h, w]` resized bilinearly to `size` (no-op when it already has it).

    `size` is any sequence of two ints (a `torch.Size` too); typed `list[int]` for TorchScript.
    """
    size = [int(s) for s in size]
    if list(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def dilate_last_stage(modules: Sequence[nn.Module], dilation: int = 2) -> None:
    """Output stride 32 -> 16: the stride-2 conv of `modules` (in forward order) gets stride
    1; every later 3x3 conv gets `dilation` (the first block keeps dilation 1, as torchvision's
    `_make_layer(dilate=True)`). Kernels are unchanged, so pretrained weights still fit."""
    strided = False
    for module in modules:
        for m in module.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            if m.stride == (2, 2):
                m.stride, strided = (1, 1), True
            elif strided and m.kernel_size == (3, 3):
                m.dilation, m.padding = (dilation, dilation), (dilation, dilation)


class Decoder(nn.Module):
    """DeepLabV3+ decoder: low-level 1x1 to 48 channels, concat, two 3x3 conv-BN-ReLU."""

    def __init__(self, low_channels: int) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(low_channels, LOW_LEVEL_WIDTH, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(WIDTH + LOW_LEVEL_WIDTH, WIDTH, 3), conv_bn_relu(WIDTH, WIDTH, 3)
        )

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low)
        return self.fuse(torch.cat([upsample(high, low.shape[-2:]), low], dim=1))


class DeepLabV3Plus(nn.Module):
    """Backbone (`IntermediateLayerGetter` returning `low` and `high`), ASPP, decoder, head."""

    dense_prediction = True

    def __init__(
        self,
        backbone: IntermediateLayerGetter,
        low_channels: int,
        high_channels: int,
        num_classes: int | None,
        in_channels: int,
        stage_paths: list[str],
        top_paths: list[str],
    ) -> None:
        super().__init__()
        if not num_classes:
            raise UsageError("a DeepLabV3+ model needs the number of classes of the dataset")
        self.backbone = backbone
        self.aspp = ASPP(high_channels, ASPP_RATES, WIDTH)
        self.decoder = Decoder(low_channels)
        self.head = nn.Conv2d(WIDTH, num_classes, kernel_size=1)
        self.embed_dim = WIDTH
        self.in_channels = in_channels
        self.stage_paths = list(stage_paths)
        self.top_paths = [*top_paths, "aspp", "decoder"]

    def partial_tune_modules(self) -> list[nn.Module]:
        """Paper B's "partial" tuning: the last backbone stage, ASPP, decoder and head."""
        modules = dict(self.named_modules())
        return [modules[p] for p in self.top_paths] + [self.head]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if x.dim() == 3 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise UsageError(
                f"model input has shape {list(x.shape)} but the model expects "
                f"[B, {self.in_channels}, H, W] (set model.params.in_channels)"
            )
        feats = self.backbone(x)
        emb = self.decoder(self.aspp(feats["high"]), feats["low"])
        return ModelOutput(emb, upsample(self.head(emb), x.shape[-2:]))


def prepare_backbone(
    net: nn.Module, first_conv: str, in_channels: int, pretrained: str | None
) -> None:
    """Give `net` a first conv (module path `first_conv`) for `in_channels` inputs, then load
    the local ImageNet weights `pretrained` (when given) into it."""
    parent, _, name = first_conv.rpartition(".")
    owner = net.get_submodule(parent) if parent else net
    if in_channels != 3:
        setattr(owner, name, replace_input_conv(getattr(owner, name), in_channels))
    if pretrained:
        _load_pretrained(net, pretrained, first_conv, in_channels)


def _load_pretrained(net: nn.Module, path: str, first_conv: str, in_channels: int) -> None:
    """Load a local torchvision ImageNet state dict into `net` (its classifier is skipped).

    For `in_channels != 3` the first conv's RGB kernel is adapted as timm's
    `adapt_input_conv`: summed over RGB for one channel, else tiled and scaled by 3/in.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(
            f"model.params.pretrained: {file} does not exist (weights are only read from local "
            "paths; nothing is downloaded)"
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    key = f"{first_conv}.weight"
    if in_channels != 3 and key in state:
        w = state[key].float()
        if in_channels == 1:
            state[key] = w.sum(dim=1, keepdim=True)
        else:
            reps = -(-in_channels // 3)
            state[key] = w.repeat(1, reps, 1, 1)[:, :in_channels] * (3 / in_channels)
    own = net.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in kept and not k.startswith(("fc.", "classifier."))]
    if missing:
        raise UsageError(
            f"model.params.pretrained: {file} is not a torchvision state dict of this backbone "
            f"(missing or mis-shaped: {missing[:3]})"
        )
    net.load_state_dict(kept, strict=False)


@register_model("deeplabv3plus_resnet18")
def deeplabv3plus_resnet18(
    num_classes: int | None, in_channels: int = 3, pretrained: str | None = None
) -> DeepLabV3Plus:
    """DeepLabV3+ on torchvision's ResNet-18 (output stride 16; 3 = RGB, 1 or 3 = depth)."""
    net = tv_resnet18(weights=None)
    prepare_backbone(net, "conv1", in_channels, pretrained)
    dilate_last_stage([net.layer4])
    body = IntermediateLayerGetter(net, {"layer1": "low", "layer4": "high"})
    stages = [f"backbone.layer{i}" for i in range(1, 5)]
    return DeepLabV3Plus(body, 64, 512, num_classes, in_channels, stages, ["backbone.layer4"])


@register_model("deeplabv3plus_mobilenet_v2")
def deeplabv3plus_mobilenet_v2(
    num_classes: int | None, in_channels: int = 3, pretrained: str | None = None
) -> DeepLabV3Plus:
    """DeepLabV3+ on torchvision's MobileNetV2 (width 1.0, output stride 16)."""
    net = tv_mobilenet_v2(weights=None)
    prepare_backbone(net, "features.0.0", in_channels, pretrained)
    features = net.features[:18]  # drop features.18, the 1x1 conv to 1280 channels
    dilate_last_stage(list(features[14:]))
    body = IntermediateLayerGetter(features, {"3": "low", "17": "high"})
    stages = [f"backbone.{i}" for i in (3, 6, 13, 17)]
    top = [f"backbone.{i}" for i in range(14, 18)]
    return DeepLabV3Plus(body, 24, 320, num_classes, in_channels, stages, top)
