"""The model interface every backbone, student and teacher follows.

A model maps an input batch to `ModelOutput(embedding, logits)`: `embedding` is the
pooled feature a feature-level method distils (`[B, D]`), `logits` the class scores
(`[B, C]`, or `None` for an embedding-only model). Segmentation models (`dense_prediction`,
`models.deeplab`) return per-pixel logits `[B, C, H, W]` at the input resolution and, as
`embedding`, the decoder's feature map before the classifier. Intermediate features are
read with forward hooks by module path (see `cmkd_cli.models.taps`), so no model is
rewritten for a method.
"""

from typing import NamedTuple, Optional

import torch
from torch import nn


class ModelOutput(NamedTuple):
    """Spelled with `Optional` and without postponed annotations so that TorchScript can
    compile it (`torch.jit.script` reads these annotations at run time)."""

    embedding: torch.Tensor
    logits: Optional[torch.Tensor]  # noqa: UP045 - TorchScript does not read `X | None`


class Classifier(nn.Module):
    """A backbone (input -> `[B, D]` embedding) followed by a linear head (`head`)."""

    def __init__(self, backbone: nn.Module, embed_dim: int, num_classes: int | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = embed_dim
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, embedding: torch.Tensor) -> Optional[torch.Tensor]:  # noqa: UP045
        head = self.head
        return head(embedding) if head is not None else None

    def forward(self, x: torch.Tensor) -> ModelOutput:
        emb = self.forward_features(x)
        return ModelOutput(emb, self.forward_head(emb))
