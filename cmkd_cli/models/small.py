"""Small models for the quickstart: a CNN for 8x8 digit images and an MLP for vectors.

Normalisation defaults to GroupNorm (`norm="group"`) in the CNN so a DDP run equals a
single-process run without SyncBN; `batch` and `none` are the alternatives.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cmkd_cli.errors import UsageError
from cmkd_cli.models.registry import register_model
from cmkd_cli.models.staged import ImageClassifier, StagedClassifier

NORMS = ("batch", "group", "none")


def make_norm(kind: str, channels: int, spatial: bool) -> nn.Module:
    """`kind` batch|group|none for `channels` features (`spatial`: 2-D maps, else vectors)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise UsageError(f"model.params.norm: unknown norm {kind!r}; choose one of: {', '.join(NORMS)}")


class DigitsCNN(nn.Module):
    """conv3x3(w)-norm-ReLU (`block1`), conv3x3(2w)-norm-ReLU-maxpool2 (`block2`), dropout, fc."""

    def __init__(
        self, in_channels: int, width: int, embed_dim: int, norm: str, dropout: float
    ) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=norm == "none"),
            make_norm(norm, width, spatial=True),
            nn.ReLU(inplace=True),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=norm == "none"),
            make_norm(norm, 2 * width, spatial=True),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)  # 8x8 input: a no-op; other sizes: 4x4 maps
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width * 16, embed_dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block2(self.block1(x)))
        return self.relu(self.fc(self.dropout(x.flatten(1))))


@register_model("digits_cnn")
def digits_cnn(
    num_classes: int | None,
    in_channels: int = 1,
    width: int = 32,
    embed_dim: int = 128,
    norm: str = "group",
    dropout: float = 0.0,
) -> ImageClassifier:
    """Small CNN for `[B, 1, 8, 8]` digits (channels `width`, `2*width`; embedding `embed_dim`)."""
    if width < 1 or embed_dim < 1:
        raise UsageError("model.params.width and model.params.embed_dim must be at least 1")
    backbone = DigitsCNN(in_channels, width, embed_dim, norm, dropout)
    return ImageClassifier(
        backbone,
        embed_dim,
        num_classes,
        stage_paths=["backbone.block1", "backbone.block2"],
        top_paths=["backbone.block2", "backbone.fc"],
        in_channels=in_channels,
    )


class MLP(nn.Sequential):
    """`block{i}` = Linear-norm-ReLU-dropout for each hidden size; input flattened to `[B, -1]`.

    A `Sequential` of the named blocks, so TorchScript can compile the loop over them.
    """

    def __init__(self, in_dim: int, hidden: list[int], norm: str, dropout: float) -> None:
        blocks = OrderedDict()
        for i, (d_in, d_out) in enumerate(zip([in_dim, *hidden[:-1]], hidden, strict=True), 1):
            blocks[f"block{i}"] = nn.Sequential(
                nn.Linear(d_in, d_out),
                make_norm(norm, d_out, spatial=False),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            )
        super().__init__(blocks)
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_dim:
            raise UsageError(
                f"mlp input has {x.shape[1]} features per sample but model.params.in_dim is "
                f"{self.in_dim}"
            )
        for block in self:
            x = block(x)
        return x


@register_model("mlp")
def mlp(
    num_classes: int | None,
    in_dim: int = 64,
    hidden: list[int] | tuple[int, ...] = (256, 256),
    norm: str = "none",
    dropout: float = 0.0,
) -> StagedClassifier:
    """MLP for vector input (`in_dim` 64 = a flattened 8x8 digit); embedding `hidden[-1]`."""
    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 1 or in_dim < 1:
        raise UsageError(
            "model.params.hidden: give at least one hidden size, each at least 1 "
            "(and model.params.in_dim at least 1)"
        )
    paths = [f"backbone.block{i}" for i in range(1, len(hidden) + 1)]
    return StagedClassifier(
        MLP(in_dim, hidden, norm, dropout),
        hidden[-1],
        num_classes,
        stage_paths=paths,
        top_paths=paths[-1:],
    )
