"""`kd_filter`: KD or NCKD on the samples a filter keeps (paper B Sec. 3.1, Table 2 "+KRC"
and "+Random").

Paper B filters out the samples whose teacher and student logits are rank-misaligned
(Kendall tau <= 0, Eq. 3-4) before distilling, and, as a control, the same number of samples
chosen at random. Each kept sample's KL is summed and divided by the whole batch size (the
reduction of the released C2KD code's filtered KL, `losses.c2kd.filtered_kl`):

    base kd:   L = task_weight * CE + weight * T^2 / B * sum_b eta_b KL(p_t^T || p_s^T)
    base nckd: L = task_weight * CE + weight * T^2 / B * sum_b eta_b KL(p^_t^T || p^_s^T)

`p^` the softmax over the non-target classes (target removed, DKD's NCKD). With
`selector: none` these are exactly `losses.kd.kd_loss` and `losses.logit.nckd_loss`.

Choices: the KRC is taken between the main heads' logits (teacher, student) over all classes,
target included; `omega` 0 as paper B; `weight` 1 for both bases (the weight of the paper's
NCKD-only row is not stated; DKD's beta 8 is the `dkd` method's); the teacher is a fixed
target. Statistics: `kept` (fraction of the batch kept) and `krc` (mean KRC).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cmkd_cli.losses.c2kd import filtered_kl
from cmkd_cli.methods._logit_common import SampleSelector, SelectorConfig, selection_stats
from cmkd_cli.methods.base import Method, StepOutput, register_method


class KDFilterConfig(SelectorConfig):
    name: Literal["kd_filter"] = "kd_filter"
    base: Literal["kd", "nckd"] = Field("kd", description="the KL filtered: Hinton KD or NCKD")
    T: float = Field(4.0, gt=0, description="softmax temperature (loss scaled by T^2)")
    weight: float = Field(1.0, ge=0, description="weight of the filtered KL term")


@register_method("kd_filter")
class KDFilter(Method):
    Config = KDFilterConfig
    needs_teacher_logits = True

    def __init__(self, cfg: KDFilterConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.select = SampleSelector(cfg.selector, cfg.omega, cfg.seed)

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: KDFilterConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        z_s, z_t, y = out.logits, self.run_teacher(batch).logits.detach(), batch["y"]
        nt = "remove" if cfg.base == "nckd" else None
        keep, krc = self.select(z_s, z_t, y, cfg.T, nt)
        return StepOutput(
            z_s,
            {
                "task": cfg.task_weight * self.task.loss(out, batch),
                cfg.base: cfg.weight * filtered_kl(z_s, z_t, y, keep, cfg.T, nt),
            },
            selection_stats(keep, krc),
        )
