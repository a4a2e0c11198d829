"""ResNet-34 speaker encoder with attentive statistics pooling (paper A, Sec. 4.1 "Model").

The layout follows voxceleb_trainer's ResNetSE34V2 (Chung et al. 2020): a 3x3 stride-1
stem, squeeze-excitation basic blocks [3, 4, 6, 3] with stage strides (1, 2, 2, 2), then
attentive statistics pooling (ASP, Okabe et al. 2018) over time and a linear layer to the
speaker embedding. Input: log-mel filterbanks `[B, T, n_mels]` (time-major, as the feature
store writes them) or `[B, 1, n_mels, T]`; any number of frames T.
"""

from __future__ import annotations

import torch
from torch import nn

from cmkd_cli.errors import UsageError
from cmkd_cli.models.registry import register_model
from cmkd_cli.models.staged import StagedClassifier

WIDTHS = {
    "quarter": (16, 32, 64, 128),
    "half": (32, 64, 128, 256),
    "full": (64, 128, 256, 512),
}
BLOCKS = (3, 4, 6, 3)


class SELayer(nn.Module):
    """Squeeze-excitation (Hu et al. 2018): channel gates from globally pooled features."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, max(channels // reduction, 1)),
            nn.ReLU(inplace=True),
            nn.Linear(max(channels // reduction, 1), channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class SEBasicBlock(nn.Module):
    """conv3x3-ReLU-BN-conv3x3-BN-SE plus shortcut (voxceleb_trainer's SEBasicBlock)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class AttentiveStatsPool(nn.Module):
    """ASP (Okabe et al. 2018): attention over time, then weighted mean and std, concatenated.

    `x: [B, D, T] -> [B, 2D]`; the attention is a 1x1-conv bottleneck of `bottleneck`
    channels with a softmax over time per feature (voxceleb_trainer's `ASP`):
    `w = softmax_t(W2 BN(ReLU(W1 x)))`, `mu = sum_t w x`, `sg = sqrt(sum_t w x^2 - mu^2)`.
    """

    def __init__(self, dim: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.Conv1d(dim, bottleneck, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(bottleneck),
            nn.Conv1d(bottleneck, dim, kernel_size=1),
            nn.Softmax(dim=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.attention(x)
        mu = torch.sum(x * w, dim=2)
        sg = torch.sqrt((torch.sum(x * x * w, dim=2) - mu * mu).clamp(min=1e-5))
        return torch.cat([mu, sg], dim=1)


class ResNetSE34(nn.Module):
    """The speaker backbone: fbank `[B, T, n_mels]` or `[B, 1, n_mels, T]` -> `[B, embed_dim]`."""

    def __init__(
        self,
        widths: tuple[int, ...],
        n_mels: int,
        embed_dim: int,
        input_norm: bool,
        stem_bias: bool = False,
    ) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.input_norm = nn.InstanceNorm1d(n_mels) if input_norm else nn.Identity()
        self.conv1 = nn.Conv2d(1, widths[0], 3, stride=1, padding=1, bias=stem_bias)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(widths[0])
        inplanes = widths[0]
        stages = zip(widths, BLOCKS, (1, 2, 2, 2), strict=True)
        for i, (planes, blocks, stride) in enumerate(stages, 1):
            layers = [SEBasicBlock(inplanes, planes, stride)]
            layers += [SEBasicBlock(planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
            inplanes = planes
        freq = n_mels
        for _ in range(3):  # three stride-2 stages: ceil-halving of the mel axis
            freq = (freq + 1) // 2
        self.pool = AttentiveStatsPool(widths[3] * freq)
        self.fc = nn.Linear(2 * widths[3] * freq, embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, n_mels]` -> `[B, 1, n_mels, T]` (already 4-D input is checked only)."""
        if x.dim() == 3 and x.shape[2] == self.n_mels:
            return self.input_norm(x.transpose(1, 2)).unsqueeze(1)
        if x.dim() == 4 and x.shape[1] == 1 and x.shape[2] == self.n_mels:
            return self.input_norm(x.squeeze(1)).unsqueeze(1)
        raise UsageError(
            f"speaker model input has shape {list(x.shape)} but expects [B, T, {self.n_mels}] "
            f"or [B, 1, {self.n_mels}, T] (set model.params.n_mels)"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.relu(self.conv1(self.to_image(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.flatten(1, 2)  # [B, C * F', T']
        return self.fc(self.pool(x))


@register_model("resnet34_asp")
def resnet34_asp(
    num_classes: int | None,
    width: str = "half",
    n_mels: int = 40,
    embed_dim: int = 512,
    input_norm: bool = True,
    stem_bias: bool = False,
) -> StagedClassifier:
    """ResNet-34 + ASP speaker encoder; `width` quarter|half|full sets the stage channels.

    `input_norm` normalises each mel bin over time per crop (voxceleb_trainer's
    InstanceNorm1d). `stem_bias` gives the first 3x3 conv a bias as ResNetSE34V2 has (with
    conv -> ReLU -> BN the BN does not absorb it: `width[0]` more parameters); it defaults
    to off so checkpoints saved before the option load unchanged, and paper A's recipes
    (`vox2-baseline` and those extending it) set it. Logits come from a linear head when
    `num_classes` is given (the AP+CE speaker loss uses both outputs).
    """
    if width not in WIDTHS:
        raise UsageError(
            f"model.params.width: unknown width {width!r}; choose one of: {', '.join(WIDTHS)}"
        )
    if n_mels < 1:
        raise UsageError(f"model.params.n_mels: must be at least 1, got {n_mels}")
    backbone = ResNetSE34(WIDTHS[width], n_mels, embed_dim, input_norm, stem_bias)
    return StagedClassifier(
        backbone,
        embed_dim,
        num_classes,
        stage_paths=[f"backbone.layer{i}" for i in range(1, 5)],
        top_paths=["backbone.layer4", "backbone.pool", "backbone.fc"],
    )
