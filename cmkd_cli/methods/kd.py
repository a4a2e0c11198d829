"""`kd`: Hinton et al. (2015) logit distillation from the teacher's soft labels.

Dense predictions (`[B, C, H, W]` logits, label maps): the KL per labelled pixel, averaged
over the labelled pixels of the batch (`_logit_common.pixel_samples`), as CIRKD's pixel-wise
`CriterionKD` (which averages over every pixel; ignored pixels are left out here).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cmkd_cli.losses.kd import kd_loss
from cmkd_cli.methods._logit_common import pixel_samples
from cmkd_cli.methods.base import Method, StepOutput, register_method
from cmkd_cli.schema import MethodConfig


class KDConfig(MethodConfig):
    name: Literal["kd"] = "kd"
    T: float = Field(4.0, gt=0, description="softmax temperature (loss scaled by T^2)")
    weight: float = Field(1.0, ge=0, description="lambda: weight of the KD term")
    task_weight: float = Field(1.0, ge=0, description="weight of the task (CE) term")


@register_method("kd")
class KD(Method):
    """L = task_weight * CE(z_s, y) + weight * T^2 * KL(p_t^T || p_s^T) (paper B Eq. 1)."""

    Config = KDConfig
    needs_teacher_logits = True

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        out = self.student(batch[self.input_key])
        t_out = self.run_teacher(batch)
        cfg: KDConfig = self.cfg  # type: ignore[assignment]
        (z_s, z_t), _, _ = pixel_samples(self, batch, out.logits, t_out.logits.detach())
        return StepOutput(
            out.logits,
            {
                "task": cfg.task_weight * self.task.loss(out, batch),
                "kd": cfg.weight * kd_loss(z_s, z_t, cfg.T),
            },
        )
