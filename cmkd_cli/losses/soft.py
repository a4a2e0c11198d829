"""Soft constrained cross-modal distillation (paper A, Sec. 3, Eq. 1 and 5-11).

Paper A: "Cross-Modal Distillation For Widely Differing Modalities" (face -> speech, text ->
image). Three pieces, each a pure function here:

* feature level (Eq. 5-6): a hinge on a distance between the student feature ``F_S`` and the
  (projected) teacher feature ``F_T``: ``max(dist(F_S, F_T) - m, 0)``, so that the student is
  pulled towards the teacher only until it is within the margin ``m``;
* classifier level (Eq. 7-10): cross-entropy of the ``2b`` logits obtained by passing the
  student and teacher features through one shared classifier, plus ``beta`` times a hard
  distance between the two halves;
* quality-based adaptive weight (Eq. 11): per-sample weights ``w`` of Eq. 1 from a quality
  score (the feature norm), normalised by moving statistics.

The ambiguities of the paper and the choices made are written next to each function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "METRICS",
    "feature_distance",
    "margin_from_spec",
    "soft_feature_loss",
    "soft_classifier_loss",
    "logit_distance",
    "quality_weights",
    "update_moving_stats",
    "update_running_quantile",
]

METRICS = ("cosine", "l2", "sql2")
LOGIT_DISTANCES = ("mse", "l2", "sql2")


def _check_metric(metric: str, allowed: tuple[str, ...] = METRICS) -> None:
    if metric not in allowed:
        raise ValueError(f"unknown distance {metric!r}; expected one of {', '.join(allowed)}")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; expected 'mean', 'sum' or 'none'")


def _safe_norm(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN) gradient at 0, where the hinge is flat anyway."""
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, 1.0).sqrt(), 0.0)


def feature_distance(
    f_s: torch.Tensor, f_t: torch.Tensor, metric: str = "cosine", normalize: bool = True
) -> torch.Tensor:
    """Per-sample distance ``L_dis(F_S, F_T)`` of paper A Eq. 5; ``[B, ...] -> [B]``.

    Features are flattened after the batch dimension.

    * ``"cosine"``: ``1 - cos(F_S, F_T)``, in ``[0, 2]`` (scale-free; ``normalize`` is moot).
    * ``"l2"``: Euclidean distance ``||F_S - F_T||_2``.
    * ``"sql2"``: squared Euclidean distance ``||F_S - F_T||_2^2``.

    Normalisation (a choice; the paper does not say): with ``normalize=True`` (default) both
    features are l2-normalised first, so ``l2`` lies in ``[0, 2]`` and ``sql2 = 2 (1 - cos)``
    in ``[0, 4]``. Only then are the margins quoted by paper A for its image experiments
    (``0.1^2`` ... ``0.4^2``, Table 12) meaningful independently of the feature scale of a
    ResNet or of the CLIP text encoder; raw-feature distances would make them arbitrary.
    ``normalize=False`` measures the raw features. The Euclidean distance has a zero gradient
    (not NaN) where the two features coincide.
    """
    _check_metric(metric)
    if f_s.shape != f_t.shape:
        raise ValueError(f"feature shapes differ: {tuple(f_s.shape)} vs {tuple(f_t.shape)}")
    f_s, f_t = f_s.flatten(1), f_t.flatten(1)
    if metric == "cosine" or normalize:
        f_s, f_t = F.normalize(f_s, dim=1), F.normalize(f_t, dim=1)
    if metric == "cosine":
        return 1.0 - (f_s * f_t).sum(dim=1)
    sq = (f_s - f_t).pow(2).sum(dim=1)
    return sq if metric == "sql2" else _safe_norm(sq)


def margin_from_spec(
    metric: str, margin: float | None = None, angle_deg: float | None = None
) -> float:
    """The hinge threshold ``m`` of paper A Eq. 6 from a margin as the paper quotes it.

    Give exactly one of ``margin`` and ``angle_deg``.

    * ``margin``: a number is the threshold on the chosen distance *as is*. Paper A's image
      experiments (Sec. 4.2.1, Table 12) use "the l2 distance" with margins ``0.3^2``
      (ResNet18) and ``0.2^2`` (ResNet34): pass ``margin=0.3**2`` = 0.09. We read these as a
      threshold on the *squared* distance of normalised features (``metric="sql2"``), i.e.
      zero loss once ``||F_S - F_T|| <= 0.3`` (an angle of about 17.3 degrees): the squares
      quote a radius, and "l2 loss" is the squared error. With ``metric="l2"`` the same 0.09
      would be a Euclidean radius of 0.09 (about 5.2 degrees). Recipes that reproduce paper A
      should use ``metric="sql2", margin=0.3**2`` (or ``0.2**2``).
    * ``angle_deg``: an angular margin ``theta``: zero loss once the angle between ``F_S`` and
      ``F_T`` is at most ``theta``. Paper A's speaker experiments quote the cosine-distance
      margin as "cos(30 deg)" (Sec. 4.1.1, Table 6); taken literally ``m = 0.866`` on
      ``1 - cos`` would only act beyond an angle of 82 degrees, so we read it as the
      threshold on the cosine *similarity*: ``cos(F_S, F_T) >= cos(theta)``, which on the
      distance ``1 - cos`` is ``m = 1 - cos(theta)`` (0.134 for 30 deg). For the other metrics
      on normalised features the same angle gives ``m = 2 sin(theta / 2)`` (``"l2"``, the
      chord) and ``m = 2 (1 - cos(theta))`` (``"sql2"``). Table 6's "m = 0" row is
      ``angle_deg=0`` (or ``margin=0``).
    """
    _check_metric(metric)
    if (margin is None) == (angle_deg is None):
        raise ValueError("give exactly one of margin and angle_deg")
    if margin is not None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        return float(margin)
    if not 0.0 <= angle_deg <= 180.0:
        raise ValueError(f"angle_deg must be in [0, 180], got {angle_deg}")
    theta = math.radians(angle_deg)
    if metric == "cosine":
        return 1.0 - math.cos(theta)
    if metric == "l2":
        return 2.0 * math.sin(theta / 2.0)
    return 2.0 * (1.0 - math.cos(theta))


def soft_feature_loss(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    metric: str = "cosine",
    margin: float = 0.0,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
    normalize: bool = True,
) -> torch.Tensor:
    """Paper A Eq. 6 (with Eq. 1's ``w``): ``w_i * max(dist(F_S_i, F_T_i) - m, 0)``.

    ``dist`` is :func:`feature_distance` (``metric``, ``normalize``); ``margin`` is the
    threshold on that distance (see :func:`margin_from_spec`). ``weights`` (``[B]``, e.g. from
    :func:`quality_weights`) multiply the per-sample hinge. ``reduction="mean"`` divides by the
    batch size ``B`` (samples inside the margin count as zeros; the weights are not
    renormalised); ``"sum"`` and ``"none"`` ([B]) as usual. The gradient is exactly zero for
    the samples inside the margin. Gradients flow into both features; detach ``f_t`` for a
    fixed teacher (paper A trains the teacher's projection head through this loss).
    """
    return margin_hinge(feature_distance(f_s, f_t, metric, normalize), margin, weights, reduction)


def margin_hinge(
    distance: torch.Tensor,
    margin: float = 0.0,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The hinge of paper A Eq. 6 on per-sample distances ``[B]``: ``w_i * max(d_i - m, 0)``,
    reduced as :func:`soft_feature_loss` (which is this on :func:`feature_distance`)."""
    per_sample = (distance - margin).clamp_min(0.0)
    if weights is not None:
        per_sample = per_sample * weights
    return _reduce(per_sample, reduction)


def logit_distance(
    logits_s: torch.Tensor, logits_t: torch.Tensor, dist: str = "mse"
) -> torch.Tensor:
    """Batch-mean hard distance between paired logits, the ``L_dis(L_s, L_t)`` of Eq. 10.

    * ``"mse"`` (default): mean over classes of the squared difference, averaged over the batch,
      i.e. ``F.mse_loss`` / PyTorch's ``nn.MSELoss`` -- what "l2 loss" usually means in code;
      independent of the number of classes.
    * ``"sql2"``: squared Euclidean distance per sample (sum over classes), batch mean.
    * ``"l2"``: Euclidean distance per sample, batch mean (zero gradient at coincidence).
    """
    _check_metric(dist, LOGIT_DISTANCES)
    sq = (logits_s - logits_t).pow(2)
    if dist == "mse":
        return sq.mean()
    per_sample = sq.sum(dim=1)
    return (per_sample if dist == "sql2" else _safe_norm(per_sample)).mean()


def soft_classifier_loss(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    y: torch.Tensor,
    beta: float = 0.0,
    dist: str = "mse",
    y_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paper A Eq. 8-10: ``CE([L_s; L_t], [y_s; y_t]) + beta * L_dis(L_s, L_t)``.

    The caller applies the *shared* classifier to ``F_S`` and ``F_T`` (Eq. 9) and passes the two
    ``[b, C]`` logit tensors. The cross-entropy is the mean over the ``2b`` mixed samples (Eq.
    8's concatenation), labels ``y`` for the student half and ``y_t`` for the teacher half
    (default: ``y``, the samples are paired). ``beta`` weighs the hard term (paper A: 0 for
    face -> speech, 1 for text -> image, Table 11); ``dist`` is :func:`logit_distance`'s
    (default ``"mse"``; the paper only says "a hard constraint like l2"). Gradients reach both
    halves (the shared classifier and the teacher's projection head are trained by it).
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(f"logit shapes differ: {tuple(logits_s.shape)} vs {tuple(logits_t.shape)}")
    labels = torch.cat([y, y if y_t is None else y_t])
    loss = F.cross_entropy(torch.cat([logits_s, logits_t]), labels)
    if beta:
        loss = loss + beta * logit_distance(logits_s, logits_t, dist)
    return loss


def quality_weights(
    q: torch.Tensor,
    mu: torch.Tensor | float,
    sigma: torch.Tensor | float,
    w_base: float = 1.0,
    h: float = 1.0 / 3.0,
    clip: float | None = 1.0,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Paper A Eq. 11: ``w_i = w_base + clip((Q_i - mu_q) / (sigma_q / h), -clip, clip)``.

    ``q`` ([B]) is the quality score, the l2 norm of a sample's feature in paper A (after
    AdaFace, Kim et al. CVPR 2022, whose norm-adaptive margin this formula is). ``mu``,
    ``sigma`` are the moving mean and *standard deviation* of ``q``
    (:func:`update_moving_stats`); the paper calls ``sigma_q`` a variance, but the normalised
    term only has AdaFace's intended spread (about 68% of samples within ``+-h``) with the
    standard deviation, which AdaFace uses. Choices, following AdaFace's official code:

    * ``eps`` is added to ``sigma`` (AdaFace: ``eps=1e-3``) so that a zero spread is harmless;
    * the normalised term is clipped to ``[-clip, clip]`` (AdaFace clips to ``[-1, 1]``; the
      paper's Eq. 11 has no clip, ``clip=None`` reproduces it literally). With ``w_base = 1``
      the weights then stay in ``[0, 2]``, never negative;
    * the weights are detached: they rescale the distillation loss of Eq. 1 but are not a path
      for gradients into the feature norm (AdaFace detaches its norms too).

    Defaults: ``w_base = 1`` and ``h = 1/3`` (paper A Sec. 3.4, AdaFace's ``h = 0.333``).
    """
    z = (q.detach() - mu) / ((sigma + eps) / h)
    if clip is not None:
        z = z.clamp(-clip, clip)
    return w_base + z


def update_running_quantile(
    current: torch.Tensor, distance: torch.Tensor, q: float, momentum: float, first: bool
) -> torch.Tensor:
    """A margin that binds: the running ``q``-quantile of the per-sample distances.

    ``m' = momentum * m + (1 - momentum) * quantile_q(d)`` over one batch's distances ``d``
    (``first``: ``m' = quantile_q(d)``). Detached. A margin fixed in advance binds only if
    it lies inside the distances the features actually reach: in an AV-digits probe every
    sql2 distance exceeded paper A's 0.09 throughout training, so the hinge never reached 0
    and only shifted the loss (the same gradient as m = 0). Tied to the distribution, about
    a share ``q`` of the samples sits inside the margin at every step, contributes no
    gradient, and the rest is pulled in: the soft constraint of Eq. 6 with ``m`` read as
    "how close is close enough" relative to where the features are.
    """
    batch = torch.quantile(distance.detach().float().flatten(), q)
    if first:
        return batch
    return (momentum * current + (1.0 - momentum) * batch).detach()


def update_moving_stats(
    mu: torch.Tensor, sigma: torch.Tensor, q: torch.Tensor, momentum: float = 0.99
) -> tuple[torch.Tensor, torch.Tensor]:
    """New ``(mu, sigma)`` after one batch of quality scores ``q``; pure (returns new tensors).

    ``mu' = momentum * mu + (1 - momentum) * mean(q)`` and likewise ``sigma'`` with the
    (unbiased) standard deviation of ``q`` -- AdaFace's update with its ``t_alpha = 0.01``.
    Detached. A batch of one sample leaves ``sigma`` unchanged (its spread is undefined).
    AdaFace updates the statistics with the current batch *before* computing the weights;
    a method following it calls this first, then :func:`quality_weights` with the new values.
    """
    q = q.detach().flatten()
    new_mu = momentum * mu + (1.0 - momentum) * q.mean()
    if q.numel() < 2:
        return new_mu.detach(), torch.as_tensor(sigma).detach().clone()
    new_sigma = momentum * sigma + (1.0 - momentum) * q.std()
    return new_mu.detach(), new_sigma.detach()
