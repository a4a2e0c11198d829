"""`c2kd`: Customized Cross-modal Knowledge Distillation (paper B, Huo et al., CVPR 2024).

Official code: huofushuo/C2KD (`ave/utils/helper.py` `train_network_distill`, `ntkl`;
`ave/utils/module.py` `Tea`/`Stu`; `main_overlap_tag.py`: SGD over student, teacher and both
proxies, `--krc 0.0`). Paper B Eq. 6, as that code trains it:

    L = CE(f_S) + CE(f_T)                                      (`task`, `task_teacher`)
      + l1 [KL(f_T -> f_T^pro) + KL(f_T^pro -> f_T)]            (`proxy_t`)
      + l2 [KL(f_S -> f_S^pro) + KL(f_S^pro -> f_S)]            (`proxy_s`)
      + l3 / B sum_b eta_b [NT-KL(f_T^pro -> f_S^pro)]_b        (`ofsd_t2s`)
      + l3 / B sum_b eta_b [NT-KL(f_S^pro -> f_T^pro)]_b        (`ofsd_s2t`)

`A -> B` means B learns from A: every KL target is detached (`losses.c2kd.bidirectional_kl`
for the l1/l2 lines). eta = 1[KRC(f_T^pro, f_S^pro) > omega] (Eq. 3-4, Kendall tau-b over all
C classes, target included, on the device: `losses.rank.kendall_tau_b`); NT-KL is the KL on
the non-target classes with the target logit *zeroed* and the softmax over all C classes
(`losses.logit.nontarget_kl`, the released `ntkl`), summed over the kept samples and divided
by the whole batch (`losses.c2kd.filtered_kl`; eta from `losses.c2kd.select_samples`).
T 1, l1 = l2 = l3 = 1, omega 0. There is no direct KD between the two main heads. The
proxies (`models.proxy.ProxyHead`: GAP, 1x1 conv, BN, LeakyReLU(0.1), linear) read each
network's second-to-last stage (`layer3` of a ResNet, as the released
code), with their inputs *not* detached, so the l1/l2/l3 terms also train the backbones.

Teacher tuning is the recipe's `teacher.tune`: `full` (the released code; paper's Ours‡),
`partial` (the top stages and head, paper's Ours†; `Method` handles it) or `frozen` (then the
teacher proxy still learns, from the fixed teacher and from the student proxy). `CE(f_T)` is
added whenever some teacher parameter is tuned.

Variants for paper B's analyses (fields of this one method):
- `selector`: `krc` (Eq. 3), `cosine` / `pearson` / `gradcos` (Fig. 4), `random` (as many
  samples as KRC keeps, Table 2 "+Random"), `none` (no selection: Table 5's "OFS" off).
  GradCos is the per-sample cosine between the gradients of the t->s OFSD term and of the CE
  of the student proxy, both taken with respect to the student proxy's logits (see
  `losses.c2kd.gradcos_score`). `omega` is the threshold of every score (strict `>`).
- `non_target` (Table 5 "NT"): off = the full-class KL; `target: remove` drops the target
  class instead of zeroing its logit (DKD's NCKD form).
- `bidirectional` (Table 5 "BD"): off = knowledge flows only from teacher to student: no
  `ofsd_s2t`, the teacher main head does not learn from its proxy, and the teacher proxy reads
  a detached teacher feature, so no KD gradient reaches the teacher (which `CE(f_T)` still
  trains when `teacher.tune` is not `frozen`).
- `proxy` (Table 5 "Proxy"): off = no proxies; OFSD runs between the two main heads.
  Table 5 row (a), vanilla KD at T 1, is `proxy: false, bidirectional: false,
  non_target: false, selector: none` with a frozen teacher; row (b) adds `bidirectional`
  and a tuned teacher.

- `loss` (paper B Table 4 "Ours+[17]", "we replace KL loss with the advanced DIST loss"):
  `dist` replaces the KL of the two OFSD terms (the cross-modal transfer) by DIST over the
  kept samples (`losses.c2kd.filtered_dist`, tau = T, on the same non-target logits); the
  unimodal model <-> proxy terms stay KL (our reading: the paper does not say which KLs).

Dense predictions (paper B Sec. 4.2, NYU-Depth V2 with DeepLabV3+; models with
`dense_prediction`): the proxies are per pixel (`DenseProxyHead`: ProxyHead's layers without
the GAP, on the stride-16 stage -2 of each network, logits resized bilinearly to the labels),
every KL is over the labelled pixels (`_logit_common.pixel_samples`), and OFSD's KRC is
computed per pixel over the C classes, averaged per image over its labelled pixels, and eta
decided per image (`SampleSelector(groups=...)`): an image whose pixels' proxy soft labels
disagree on average is left out of both OFSD terms.
The OFSD terms are averaged over all labelled pixels of the batch (the dense analogue of
"divided by the whole batch").

Statistics: `kept` (fraction of the batch, of the images for dense predictions, eta keeps)
and `krc` (mean KRC of the pair OFSD compares; per-image means for dense predictions), as
device tensors.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cmkd_cli.errors import UsageError
from cmkd_cli.losses.c2kd import TargetMode, bidirectional_kl, filtered_dist, filtered_kl
from cmkd_cli.losses.kd import kd_loss
from cmkd_cli.methods._feature_common import FeatureSpec, feature_source
from cmkd_cli.methods._logit_common import (
    SampleSelector,
    SelectorConfig,
    is_dense,
    peer_task_loss,
    pixel_samples,
    selection_stats,
)
from cmkd_cli.methods.base import Method, StepOutput, register_method
from cmkd_cli.models.proxy import ProxyHead


class C2KDConfig(SelectorConfig):
    name: Literal["c2kd"] = "c2kd"
    student_stage: FeatureSpec = Field(
        -2, description="student proxy input: stage index (-2: layer3 of a ResNet) or path"
    )
    teacher_stage: FeatureSpec = Field(
        -2, description="teacher proxy input: stage index (-2: layer3 of a ResNet) or path"
    )
    proxy_hidden: int | None = Field(
        None, ge=1, description="width of the proxies' 1x1 conv (default: the stage's width)"
    )
    lambda1: float = Field(1.0, ge=0, description="teacher <-> teacher proxy KL weight")
    lambda2: float = Field(1.0, ge=0, description="student <-> student proxy KL weight")
    lambda3: float = Field(1.0, ge=0, description="OFSD weight (between the proxies)")
    T: float = Field(1.0, gt=0, description="softmax temperature of every KL (scaled by T^2)")
    teacher_task_weight: float = Field(1.0, ge=0, description="weight of CE(f_T) when tuned")
    non_target: bool = Field(True, description="NT: OFSD on the non-target classes only")
    target: TargetMode = Field(
        "zero", description="NT: zero the target logit (released code) or remove the class"
    )
    bidirectional: bool = Field(True, description="BD: the student also teaches the teacher")
    proxy: bool = Field(True, description="distil through proxies (off: between the heads)")
    loss: Literal["kl", "dist"] = Field(
        "kl", description="OFSD's loss: KL (Eq. 6) or DIST (Table 4, C2KD + DIST)"
    )


class DenseProxyHead(ProxyHead):
    """The proxy per pixel: ProxyHead's 1x1 conv, BN, LeakyReLU(0.1) and linear classifier
    at every position of a `[B, C, H, W]` map (no GAP) -> logits `[B, num_classes, H, W]`."""

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if feature.dim() != 4 or feature.shape[1] != self.in_channels:
            raise UsageError(
                f"dense proxy head input has shape {list(feature.shape)} but expects "
                f"[B, {self.in_channels}, H, W] (check method.student_stage/teacher_stage)"
            )
        return F.conv2d(self.adapt(feature), self.fc.weight[:, :, None, None], self.fc.bias)


@register_method("c2kd")
class C2KD(Method):
    Config = C2KDConfig
    needs_teacher_logits = True

    def __init__(self, cfg: C2KDConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.select = SampleSelector(cfg.selector, cfg.omega, cfg.seed)
        self.teacher_tuned = bool(self.teacher_trainable_params())
        if is_dense(self.student) != is_dense(self.teacher):
            raise UsageError(
                "teacher.model: c2kd needs a student and a teacher that both predict per pixel "
                "or both per sample"
            )
        if cfg.proxy:
            self.s_feat = feature_source(
                self, self.student, cfg.student_stage, "method.student_stage"
            )
            self.t_feat = feature_source(
                self, self.teacher, cfg.teacher_stage, "method.teacher_stage"
            )
            head = DenseProxyHead if is_dense(self.student) else ProxyHead
            self.proxy_s = head(self.s_feat.channels, cfg.proxy_hidden, self.num_classes)
            self.proxy_t = head(self.t_feat.channels, cfg.proxy_hidden, self.num_classes)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"proxy_s": self.proxy_s, "proxy_t": self.proxy_t} if self.cfg.proxy else {}

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: C2KDConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        t_out = self.run_teacher(batch)
        T = cfg.T
        losses = {"task": cfg.task_weight * self.task.loss(out, batch)}
        if self.teacher_tuned:
            losses["task_teacher"] = cfg.teacher_task_weight * peer_task_loss(self, t_out, batch)
        maps = [out.logits, t_out.logits]
        if cfg.proxy:
            f_t = self.t_feat.read(t_out)
            p_s = self.proxy_s(self.s_feat.read(out))
            p_t = self.proxy_t(f_t if cfg.bidirectional else f_t.detach())
            maps += [p_s, p_t]
        rows, y, image = pixel_samples(self, batch, *maps)  # labelled pixels as samples
        z_s, z_t = rows[:2]
        if cfg.proxy:
            p_s, p_t = rows[2:]
            losses["proxy_s"] = cfg.lambda2 * bidirectional_kl(z_s, p_s, T)
            if cfg.bidirectional and self.teacher_tuned:
                losses["proxy_t"] = cfg.lambda1 * bidirectional_kl(z_t, p_t, T)
            else:  # only the proxy learns, from the fixed (or KD-free) teacher head
                losses["proxy_t"] = cfg.lambda1 * kd_loss(p_t, z_t.detach(), T)
            a_s, a_t = p_s, p_t
        else:
            a_s, a_t = z_s, z_t
        nt = cfg.target if cfg.non_target else None
        keep, krc = self.select(a_s, a_t, y, T, nt, groups=(image, out.logits.shape[0]))
        kept_rows = keep[image]  # each sample (pixel) follows its image's decision
        ofsd = filtered_dist if cfg.loss == "dist" else filtered_kl
        losses["ofsd_t2s"] = cfg.lambda3 * ofsd(a_s, a_t, y, kept_rows, T, nt)
        if cfg.bidirectional and (cfg.proxy or self.teacher_tuned):
            losses["ofsd_s2t"] = cfg.lambda3 * ofsd(a_t, a_s, y, kept_rows, T, nt)
        return StepOutput(out.logits, losses, selection_stats(keep, krc))
