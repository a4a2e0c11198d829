"""Paper A (Zhao et al., "Cross-Modal Distillation For Widely Differing Modalities", Sec. 3):
soft constrained distillation at the feature level (`soft_feature`) and at the classifier
level (`soft_classifier`), both reading the frozen teacher's embedding through the trainable
projection head of Sec. 3.2. There is no official code; every choice is stated here or next
to the loss functions (`cmkd_cli/losses/soft.py`, `cmkd_cli/models/projection.py`).

Shared by both methods:
- teacher feature: E_T, the teacher's embedding (detached: the teacher is frozen), and
  F_T = alpha * S E_T + (1 - alpha) * MLP(E_T) (Eq. 2-4, `ProjectionHead`; alpha 0.6 as
  Sec. 4.1.1/4.2.1; `hidden` defaults to the teacher's width; S is the identity when the
  widths agree, else a learned bias-free linear map to the student's embedding width). The
  head is trained by the distillation loss (group `projection`). `projection: false` uses
  E_T itself, which needs equal widths.
- student feature: F_S, the student's embedding (the feature its classifier reads).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from cmkd_cli.engine.distributed import all_gather_cat
from cmkd_cli.errors import UsageError
from cmkd_cli.losses.soft import (
    feature_distance,
    logit_distance,
    margin_from_spec,
    margin_hinge,
    quality_weights,
    soft_classifier_loss,
    update_moving_stats,
    update_running_quantile,
)
from cmkd_cli.methods._feature_common import embed_dims
from cmkd_cli.methods.base import Method, StepOutput, register_method
from cmkd_cli.models.projection import ProjectionHead
from cmkd_cli.schema import MethodConfig, StrictModel

DEFAULT_ANGLE_DEG = 30.0  # paper A Sec. 4.1.1 / Table 6: cos(30 deg) for the cosine metric


class SoftConfig(MethodConfig):
    """The projection head fields of both paper A methods."""

    projection: bool = Field(True, description="trainable projection head on E_T (Sec. 3.2)")
    alpha: float = Field(0.6, ge=0, le=1, description="skip mixing ratio of Eq. 4")
    hidden: int | None = Field(None, ge=1, description="MLP width (default: the teacher's)")
    weight: float = Field(1.0, ge=0, description="weight of the distillation term")


class SoftMethod(Method):
    """Builds F_T = projection(E_T) at the student's embedding width (Eq. 2-4)."""

    def __init__(self, cfg: SoftConfig, student: nn.Module, teacher: nn.Module, *args, **kwargs):
        super().__init__(cfg, student, teacher, *args, **kwargs)
        s_dim, t_dim = embed_dims(student, teacher, cfg.projection, "method.projection")
        self.projection = (
            ProjectionHead(t_dim, cfg.hidden, cfg.alpha, out_dim=s_dim) if cfg.projection else None
        )

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"projection": self.projection} if self.projection is not None else {}

    def teacher_feature(self, e_t: torch.Tensor) -> torch.Tensor:
        return self.projection(e_t) if self.projection is not None else e_t

    def shared_space(
        self, student_emb: torch.Tensor, teacher_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F_S and the projected F_T (Eq. 4), the space the soft losses align."""
        return super().shared_space(student_emb, self.teacher_feature(teacher_emb))


# ------------------------------------------------------------------------------ feature level


class QualityConfig(StrictModel):
    """Quality-based adaptive weight (paper A Sec. 3.4, Eq. 11)."""

    enabled: bool = False
    source: Literal["teacher", "student", "both"] = Field(
        "teacher", description="whose feature norm is the quality score"
    )
    w_base: float = Field(1.0, description="base weight")
    h: float = Field(0.3333, gt=0, description="spread of the weights (1/3)")
    momentum: float = Field(0.99, ge=0, lt=1, description="moving-statistics momentum")
    clip: float | None = Field(1.0, gt=0, description="clip of the normalised score (null: none)")


class SoftFeatureConfig(SoftConfig):
    name: Literal["soft_feature"] = "soft_feature"
    metric: Literal["cosine", "l2", "sql2"] = Field("cosine", description="L_dis of Eq. 5")
    margin: float | None = Field(None, ge=0, description="hinge threshold m on the distance")
    margin_angle_deg: float | None = Field(
        None, ge=0, le=180, description="margin as an angle theta (default 30 when no margin)"
    )
    margin_quantile: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="margin as the running q-quantile of the distances (a share q of the "
        "samples inside it at every step: a margin that binds)",
    )
    margin_momentum: float = Field(
        0.9, ge=0, lt=1, description="`margin_quantile`: momentum of the running quantile"
    )
    normalize: bool = Field(True, description="l2-normalise both features before l2/sql2")
    task_weight: float = Field(1.0, ge=0, description="weight of the task term")
    quality: QualityConfig = Field(default_factory=QualityConfig)

    @model_validator(mode="after")
    def _one_margin(self) -> SoftFeatureConfig:
        given = [
            k
            for k in ("margin", "margin_angle_deg", "margin_quantile")
            if getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"method.{given[1]}: give one of margin, margin_angle_deg and margin_quantile, "
                f"not {' and '.join(given)}"
            )
        return self

    def margin_value(self) -> float:
        """m of Eq. 6 (`losses.soft.margin_from_spec`); none set: 30 degrees; with
        `margin_quantile` the starting value (the first batch sets the running one)."""
        angle = self.margin_angle_deg
        if self.margin is None and angle is None:
            angle = 0.0 if self.margin_quantile is not None else DEFAULT_ANGLE_DEG
        return margin_from_spec(self.metric, self.margin, angle)


QUALITY_SOURCES = {"teacher": ("teacher",), "student": ("student",), "both": ("teacher", "student")}


@register_method("soft_feature")
class SoftFeature(SoftMethod):
    """Paper A feature-level soft constraint (Eq. 1, 5, 6, 11):

        L = task_weight * L_task + weight * mean_i w_i * max(dist(F_S_i, F_T_i) - m, 0)

    `metric` cosine (1 - cos), l2 or sql2 (`normalize`: on l2-normalised features, default);
    the margin is `margin` (a number on that distance) or `margin_angle_deg` (an angle,
    mapped by `margin_from_spec`: 1 - cos(theta) for cosine); with neither, 30 degrees
    (Sec. 4.1.1). Paper A's image recipe: `metric: sql2, margin: 0.09` (0.3^2, ResNet18).

    Quality (`quality.enabled`, paper A's "feature+quality"): w_i of Eq. 11 from the l2 norm
    of the raw teacher embedding E_T (`source: teacher`; the frozen encoder's norm, not the
    trainable head's), of the student embedding F_S (`student`), or the product of both
    weights (`both`: a sample is down-weighted when either modality is of low quality).
    The moving mean and standard deviation of each score are persistent buffers
    (`quality_mu`, `quality_sigma`, `quality_updates`: checkpoints and resumed runs keep
    them), set from the first training batch and then updated with `momentum` before the
    weights are computed (AdaFace's order), from the scores all-gathered over processes so
    that every DDP process holds the same statistics; the weights are detached. Without
    quality, w_i = 1.

    `margin_quantile: q`: m is the running q-quantile of the per-sample distances
    (`losses.soft.update_running_quantile`, momentum `margin_momentum`, from the distances
    all-gathered over processes; updated before the hinge, as the quality statistics), so
    it binds wherever the features are; kept in the buffer `margin_running` (checkpoints and
    resumed runs keep it).

    Stats: `inside_margin` (the fraction of samples whose hinge is 0), `distance` (the mean
    distance), `margin` (m), `weight` (the mean w_i, with quality only).
    """

    Config = SoftFeatureConfig

    def __init__(self, cfg: SoftFeatureConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.margin = cfg.margin_value()
        if cfg.margin_quantile is not None:
            self.register_buffer("margin_running", torch.tensor(self.margin))
            self.register_buffer("margin_updates", torch.zeros((), dtype=torch.long))
        self.sources = QUALITY_SOURCES[cfg.quality.source] if cfg.quality.enabled else ()
        if self.sources:
            n = len(self.sources)
            self.register_buffer("quality_mu", torch.zeros(n))
            self.register_buffer("quality_sigma", torch.ones(n))
            self.register_buffer("quality_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_quality(self, scores: list[torch.Tensor]) -> None:
        """One moving-statistics step per quality source (first batch: its own statistics)."""
        momentum = self.cfg.quality.momentum if self.quality_updates > 0 else 0.0
        for i, q in enumerate(scores):
            mu, sigma = update_moving_stats(
                self.quality_mu[i], self.quality_sigma[i], all_gather_cat(q.float()), momentum
            )
            self.quality_mu[i], self.quality_sigma[i] = mu, sigma
        self.quality_updates += 1

    def sample_weights(self, e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """w_i of Eq. 11 (a product over the quality sources), `[B]`, detached."""
        q = self.cfg.quality
        feats = {"teacher": e_t, "student": e_s}
        scores = [feats[s].detach().flatten(1).norm(dim=1) for s in self.sources]
        if self.training:
            self.update_quality(scores)
        w = torch.ones_like(scores[0])
        for i, score in enumerate(scores):
            mu, sigma = self.quality_mu[i], self.quality_sigma[i]
            w = w * quality_weights(score, mu, sigma, q.w_base, q.h, q.clip)
        return w

    def current_margin(self, dist: torch.Tensor) -> float | torch.Tensor:
        """m: fixed, or the running quantile updated by this batch when training."""
        cfg: SoftFeatureConfig = self.cfg  # type: ignore[assignment]
        if cfg.margin_quantile is None:
            return self.margin
        if self.training:
            with torch.no_grad():
                self.margin_running.copy_(
                    update_running_quantile(
                        self.margin_running,
                        all_gather_cat(dist.detach()),
                        cfg.margin_quantile,
                        cfg.margin_momentum,
                        first=bool(self.margin_updates == 0),
                    )
                )
                self.margin_updates += 1
        return self.margin_running

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: SoftFeatureConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        e_t = self.run_teacher(batch).embedding.detach()
        f_s, f_t = out.embedding, self.teacher_feature(e_t)
        weights = self.sample_weights(f_s, e_t) if self.sources else None
        dist = feature_distance(f_s, f_t, cfg.metric, cfg.normalize)
        margin = self.current_margin(dist)
        loss = margin_hinge(dist, margin, weights)  # = soft_feature_loss, one distance
        dist = dist.detach()
        stats = {
            "inside_margin": (dist <= margin).float().mean(),
            "distance": dist.mean(),
            "margin": torch.as_tensor(margin, dtype=dist.dtype),
        }
        if weights is not None:
            stats["weight"] = weights.mean()
        return StepOutput(
            out.logits,
            {
                "task": cfg.task_weight * self.task.loss(out, batch),
                "soft_feature": cfg.weight * loss,
            },
            stats,
        )


# --------------------------------------------------------------------------- classifier level


class SoftClassifierConfig(SoftConfig):
    name: Literal["soft_classifier"] = "soft_classifier"
    beta: float = Field(1.0, ge=0, description="weight of the hard logit term (Eq. 10)")
    dist: Literal["mse", "l2", "sql2"] = Field("mse", description="L_dis(L_s, L_t) of Eq. 10")
    task_ce: Literal["mixed", "separate"] = Field(
        "mixed",
        description="`mixed`: one CE over the 2b samples is the student's task loss; "
        "`separate`: the task loss plus the teacher half's CE",
    )
    task_weight: float = Field(1.0, ge=0, description="weight of the task term (`separate`)")


@register_method("soft_classifier")
class SoftClassifier(SoftMethod):
    """Paper A classifier-level soft constraint (Eq. 8-10): the student's own classifier
    head (`student.forward_head`) is shared; it classifies the student features F_S (its
    ordinary logits L_s) and the projected teacher features F_T (L_t), both with the batch's
    labels.

    How it combines with the task loss (`task_ce`):
    - `mixed` (default): the loss is weight * (CE over the 2b mixed logits [L_s; L_t] +
      beta * dist(L_s, L_t)) (`losses.soft.soft_classifier_loss`), and no separate task
      term: the student half of the mixed CE *is* the student's task CE (so the mixed CE
      equals (CE_s + CE_t) / 2). The task's own loss is logged as the stat `task` only; this
      suits a classification task whose loss is the head's plain CE.
    - `separate`: task_weight * task loss (whatever the task's loss is, e.g. a speaker
      task's) + weight * (CE(L_t, y) + beta * dist(L_s, L_t)): the teacher half is added to
      the task loss instead of being averaged with it.
    beta 1 for text -> image (Sec. 4.2.1), 0 for face -> speech (Sec. 4.1.1); `dist` mse.
    Gradients: the shared head learns from both halves, the projection head from the teacher
    half (and the hard term), the student backbone from its half (and the hard term).
    """

    Config = SoftClassifierConfig

    def __init__(self, cfg: SoftClassifierConfig, student: nn.Module, *args, **kwargs) -> None:
        super().__init__(cfg, student, *args, **kwargs)
        if (
            not callable(getattr(student, "forward_head", None))
            or getattr(student, "head", None) is None
        ):
            raise UsageError(
                f"method.name: soft_classifier shares the student's classifier head, but "
                f"{type(student).__name__} has none"
            )

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: SoftClassifierConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        f_t = self.teacher_feature(self.run_teacher(batch).embedding.detach())
        logits_t = self.student.forward_head(f_t)
        y = batch["y"]
        if cfg.task_ce == "mixed":
            term = soft_classifier_loss(out.logits, logits_t, y, cfg.beta, cfg.dist)
            losses = {"soft_classifier": cfg.weight * term}
            stats = {"task": self.task.loss(out, batch).detach()}
        else:
            term = F.cross_entropy(logits_t, y)
            if cfg.beta:
                term = term + cfg.beta * logit_distance(out.logits, logits_t, cfg.dist)
            losses = {
                "task": cfg.task_weight * self.task.loss(out, batch),
                "soft_classifier": cfg.weight * term,
            }
            stats = {}
        stats["teacher_accuracy"] = (logits_t.detach().argmax(1) == y).float().mean()
        return StepOutput(out.logits, losses, stats)
