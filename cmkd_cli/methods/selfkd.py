"""Self-knowledge distillation baselines of paper B Table 6: `dlb`, `zipf_ls`, `uskd`.

They use no teacher (`uses_teacher = False`): the student distils from itself. Each adds one
term from `cmkd_cli/losses/selfkd.py` to the task loss.

`dlb`: Self-Distillation from the Last Mini-Batch (Shen et al., CVPR 2022); official code
Meta-knowledge-Lab/DLB `dlb.py`. The method keeps the previous batch (inputs, labels and the
logits it got then, detached), re-forwards its inputs with the current weights, and adds
`weight * dlb_loss(z_prev_now, z_prev_then, T)`; the task loss is over the previous and the
current batch together (`cross_entropy(cat(out_pre, out), cat(pre_label, label))`), as the
official loop. Choices: the official loader gives every sample two augmented views and the
re-forward uses the second; our datasets give one view, so the previous batch is re-forwarded
as it was (the consistency is across one update of the weights, not across views). The kept
batch is not checkpointed: the first step after a resume (or the very first step) has no
previous batch and trains on the task loss alone. T 3, weight (alpha) 1: the paper's values.

`zipf_ls`: Zipf's label smoothing (Liang et al., ECCV 2022); official code
megvii-research/zipfls. `task + weight * zipf_label_smoothing_loss`; the ranks come from the
logits themselves, or (`dense: true`, the official recipe's `--dense`) from the classes the
student's classifier predicts at each location of its last stage, which needs a classifier
applied right after pooling that stage (as a ResNet's). Official weight (`loss_lambda`) 1.0
by default, 0.1 in its CIFAR/ImageNet recipes.

`uskd`: USKD, the self-KD half of NKD's paper (Yang et al., ICCV 2023); official code
yzd-v/cls_KD `USKDLoss` (alpha 1, beta 0.1, mu 0.005; `channel=256` for a ResNet-18 student:
its weak linear head reads the *pooled second-to-last stage*, `student_stage: -2`). The weak
head is a module of the method. The student's task loss is kept (`task_weight`, as for every
method here; USKD's target term is a re-weighted CE on top of it).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from cmkd_cli.errors import UsageError
from cmkd_cli.losses.selfkd import dlb_loss, uskd_loss, zipf_dense_votes, zipf_label_smoothing_loss
from cmkd_cli.methods._feature_common import FeatureSpec, feature_source
from cmkd_cli.methods._logit_common import LogitConfig
from cmkd_cli.methods.base import Method, StepOutput, register_method
from cmkd_cli.models.base import ModelOutput


def _pooled(f: torch.Tensor) -> torch.Tensor:
    """`[B, C, ...]` -> `[B, C]` by global average pooling (vectors unchanged)."""
    return f.flatten(2).mean(dim=2) if f.dim() > 2 else f


class DLBConfig(LogitConfig):
    name: Literal["dlb"] = "dlb"
    T: float = Field(3.0, gt=0, description="softmax temperature (loss scaled by T^2)")
    weight: float = Field(1.0, ge=0, description="alpha: weight of the last-batch KL")


@register_method("dlb")
class DLB(Method):
    Config = DLBConfig
    uses_teacher = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the previous batch: (inputs, labels, its logits then), all detached
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def resume_extras(self) -> dict[str, Any]:
        """The previous batch too: a run resumed mid-epoch distils from it as it would have."""
        return {**super().resume_extras(), "last": list(self.last) if self.last else None}

    def load_resume_extras(self, state: dict[str, Any]) -> None:
        last = state.get("last")
        self.last = tuple(last) if last else None
        super().load_resume_extras({k: v for k, v in state.items() if k != "last"})

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: DLBConfig = self.cfg  # type: ignore[assignment]
        x, y = batch[self.input_key], batch["y"]
        out = self.student(x)
        last, self.last = self.last, (x.detach(), y.detach(), out.logits.detach())
        if last is None or last[0].shape[1:] != x.shape[1:]:
            return StepOutput(out.logits, {"task": cfg.task_weight * self.task.loss(out, batch)})
        x_pre, y_pre, z_pre = last
        out_pre = self.student(x_pre)
        both = ModelOutput(
            torch.cat([out_pre.embedding, out.embedding]), torch.cat([out_pre.logits, out.logits])
        )
        task = self.task.loss(both, {**batch, "y": torch.cat([y_pre, y])})
        return StepOutput(
            out.logits,
            {
                "task": cfg.task_weight * task,
                "dlb": cfg.weight * dlb_loss(out_pre.logits, z_pre, cfg.T),
            },
        )


class ZipfLSConfig(LogitConfig):
    name: Literal["zipf_ls"] = "zipf_ls"
    weight: float = Field(1.0, ge=0, description="loss_lambda: weight of the Zipf KL")
    power: float = Field(1.0, gt=0, description="Zipf exponent of the soft labels")
    loss_mask: bool = Field(False, description="average over correctly predicted samples only")
    dense: bool = Field(False, description="rank classes by per-location votes of the last stage")


@register_method("zipf_ls")
class ZipfLS(Method):
    Config = ZipfLSConfig
    uses_teacher = False

    def __init__(self, cfg: ZipfLSConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.dense = None
        if cfg.dense:
            head = getattr(self.student, "head", None)
            self.dense = feature_source(self, self.student, -1, "method.dense")
            reads_stage = isinstance(head, nn.Linear) and self.dense.taps is not None
            if not reads_stage or head.in_features != self.dense.channels:
                self._no_dense()
        self._dense_checked = False

    def _no_dense(self) -> None:
        raise UsageError(
            "method.dense: the student's classifier does not read the pooled last stage "
            "directly, so it cannot vote at each location; set it to false"
        )

    def dense_votes(self, out: ModelOutput) -> torch.Tensor:
        """Class votes of the student's head applied at every location of its last stage."""
        f = self.dense.read(out).flatten(2)  # [B, C, L]
        if not self._dense_checked:  # once: the embedding must be that stage, pooled
            if not torch.allclose(f.mean(dim=2), out.embedding, rtol=1e-4, atol=1e-5):
                self._no_dense()
            self._dense_checked = True
        votes = self.student.head(f.transpose(1, 2)).argmax(dim=-1)
        return zipf_dense_votes(votes, out.logits.shape[1])

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: ZipfLSConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        scores = None
        if self.dense is not None:
            with torch.no_grad():
                scores = self.dense_votes(out)
        zipf = zipf_label_smoothing_loss(out.logits, batch["y"], scores, cfg.power, cfg.loss_mask)
        return StepOutput(
            out.logits,
            {"task": cfg.task_weight * self.task.loss(out, batch), "zipf": cfg.weight * zipf},
        )


class USKDConfig(LogitConfig):
    name: Literal["uskd"] = "uskd"
    student_stage: FeatureSpec = Field(
        -2, description="feature of the weak head: stage index, module path or `embedding`"
    )
    alpha: float = Field(1.0, ge=0, description="weight of the normalized target term")
    beta: float = Field(0.1, ge=0, description="weight of the Zipf non-target term")
    mu: float = Field(0.005, ge=0, description="weight of the weak-head supervision")


@register_method("uskd")
class USKD(Method):
    Config = USKDConfig
    uses_teacher = False

    def __init__(self, cfg: USKDConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.mid = feature_source(self, self.student, cfg.student_stage, "method.student_stage")
        self.weak_head = nn.Linear(self.mid.channels, self.num_classes)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"weak_head": self.weak_head}

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: USKDConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        weak = self.weak_head(_pooled(self.mid.read(out)))
        uskd = uskd_loss(out.logits, weak, batch["y"], cfg.alpha, cfg.beta, cfg.mu)
        return StepOutput(
            out.logits, {"task": cfg.task_weight * self.task.loss(out, batch), "uskd": uskd}
        )
