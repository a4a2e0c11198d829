"""C2KD: customized cross-modal knowledge distillation (paper B, Huo et al., CVPR 2024).

Paper B Eq. 6 trains the student S, the (partially) tuned teacher T and their two proxies
(``f^pro``, Eq. 5) with

    L_all = H(f_S, Y) + H(f_T, Y)
          + l1 [D(f_T, f_T^pro) + D(f_T^pro, f_T)] + l2 [D(f_S, f_S^pro) + D(f_S^pro, f_S)]
          + l3 eta [D(f^_S^pro, f^_T^pro) + D(f^_T^pro, f^_S^pro)]

:func:`bidirectional_kl` is each ``l1`` / ``l2`` line (unimodal, model <-> its proxy). The
``l3`` line, On-the-Fly Selection Distillation (OFSD), is one :func:`filtered_kl` per direction
(or :func:`filtered_dist`, paper B Table 4 "Ours+[17]") over the samples ``eta`` keeps;
:func:`select_samples` computes ``eta``: KRC > omega (Eq. 3-4) or one of the alternatives of
Fig. 4 and Table 2 (cosine, Pearson, GradCos, random). Every KL target is detached, as in the
released code (``F.softmax(x.detach())`` as ``KLDivLoss`` target). The methods `c2kd` and
`kd_filter` compose these functions; `methods._logit_common.SampleSelector` only holds the
random selector's generator.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .kd import kd_loss, kl_div_per_sample
from .logit import dist_loss, nontarget_kl, nontarget_view
from .rank import cosine_rows, kendall_tau_b, pearson_rows, random_mask_like, selection_mask

__all__ = [
    "KRC_CHUNK_ROWS",
    "Selector",
    "TargetMode",
    "bidirectional_kl",
    "chunked_kendall_tau_b",
    "filtered_dist",
    "filtered_kl",
    "gradcos_score",
    "group_mean",
    "per_sample_kl",
    "select_samples",
]

Selector = Literal["krc", "cosine", "pearson", "gradcos", "random", "none"]
#: how the target class is handled by a KL: `zero`: target logit set to 0, softmax over all
#: C (released C2KD `ntkl`); `remove`: target dropped (DKD's NCKD); None: the full KL
TargetMode = Literal["zero", "remove"]
#: rows per call of `kendall_tau_b` (its sorts hold a few 32/64-bit copies of the rows):
#: bounds the memory of per-pixel KRC over a batch of full-resolution label maps
KRC_CHUNK_ROWS = 1 << 18


def bidirectional_kl(
    logits_a: torch.Tensor, logits_b: torch.Tensor, T: float = 1.0
) -> torch.Tensor:
    """``KL(p_a.detach() || p_b) + KL(p_b.detach() || p_a)``, each a batch mean (paper B Eq. 6,
    lines 2-3: a model and its proxy teach each other).

    ``p = softmax(z / T)``; each direction is :func:`~cmkd_cli.losses.kd.kd_loss` with its
    target detached, hence scaled by ``T^2`` (the identity at the paper's ``T = 1``; the
    released code uses ``KLDivLoss(reduction="batchmean")`` without temperature). The gradient
    of the first term reaches only ``b``, of the second only ``a``.
    """
    return kd_loss(logits_b, logits_a.detach(), T) + kd_loss(logits_a, logits_b.detach(), T)


def per_sample_kl(
    student: torch.Tensor,
    target: torch.Tensor,
    y: torch.Tensor,
    T: float,
    non_target: TargetMode | None,
) -> torch.Tensor:
    """`KL(p_target.detach() || p_student)` per sample, `[B]`, without the `T^2` factor:
    over every class (`non_target=None`) or the non-target classes (`zero` / `remove`,
    :func:`~cmkd_cli.losses.logit.nontarget_kl`)."""
    if non_target is None:
        return kl_div_per_sample(student, target.detach(), T)
    return nontarget_kl(student, target.detach(), y, T, non_target)


def filtered_kl(
    student: torch.Tensor,
    target: torch.Tensor,
    y: torch.Tensor,
    keep: torch.Tensor,
    T: float,
    non_target: TargetMode | None,
) -> torch.Tensor:
    """`T^2 / B * sum_b keep_b KL_b` (one direction of paper B's OFSD, Eq. 6 line 4).

    Divided by the whole batch `B`, not by the number kept, as the released code
    (`(mask * kl.sum(1)).mean()`), so filtering shrinks the term and it is an exact 0 (still
    on the graph) when nothing is kept; with every sample kept it is `kd_loss` (full KL) or
    `nckd_loss` (`remove`). `T^2` is the identity at the released code's `T = 1`.
    """
    per = per_sample_kl(student, target, y, T, non_target)
    return (per * keep.to(per.dtype)).mean() * T**2


def filtered_dist(
    student: torch.Tensor,
    target: torch.Tensor,
    y: torch.Tensor,
    keep: torch.Tensor,
    T: float,
    non_target: TargetMode | None,
) -> torch.Tensor:
    """DIST (`losses.logit.dist_loss`, beta = gamma = 1, tau = `T`) from `target.detach()` to
    `student` over the kept rows, times the kept fraction: the "C2KD + DIST" variant (paper B
    Table 4, "Ours+[17]": "we replace KL loss with the advanced DIST loss") in the place of
    `filtered_kl`. The rows read the same logits as the KL would (`non_target`: target logit
    zeroed or removed, `losses.logit.nontarget_view`). Like `filtered_kl` it is the plain
    batch loss when every row is kept and an exact 0 when none is (DIST correlates rows with
    each other, so it cannot be a per-row sum: the fraction plays the role of the 1/B)."""
    rows = keep.detach().nonzero().squeeze(1)
    if rows.numel() == 0:
        return student.sum() * 0.0
    y_kept = y.index_select(0, rows)
    z_s = nontarget_view(student.index_select(0, rows), y_kept, non_target)
    z_t = nontarget_view(target.detach().index_select(0, rows), y_kept, non_target)
    return dist_loss(z_s, z_t, 1.0, 1.0, T) * (rows.numel() / keep.numel())


def gradcos_score(
    student: torch.Tensor,
    target: torch.Tensor,
    y: torch.Tensor,
    T: float,
    non_target: TargetMode | None,
) -> torch.Tensor:
    """Paper B's GradCos (Fig. 4, after SCKD / PCGrad): per sample, the cosine between the
    gradients of the distillation loss and of the task loss.

    Choice (the paper gives no code): both gradients are taken with respect to the
    student's *logits* of that sample, `d KL_b / d z_b` and `d CE_b / d z_b` (each sample's
    losses depend on its own row only, so one autograd call on the batch sums gives every
    row), not with respect to the network's parameters, which would need one backward pass
    per sample. The KL is the method's distillation direction (teacher -> student).
    """
    with torch.enable_grad():
        z = student.detach().requires_grad_(True)
        g_kd = torch.autograd.grad(per_sample_kl(z, target, y, T, non_target).sum(), z)[0]
        g_ce = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)[0]
    return cosine_rows(g_kd, g_ce)


def group_mean(values: torch.Tensor, group: torch.Tensor, n: int) -> torch.Tensor:
    """The mean of `values` `[N]` per group (`group` `[N]` in `0..n-1`) -> `[n]`, NaN values
    left out; NaN for a group with no (non-NaN) value."""
    ok = ~values.isnan()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    sums = values.new_zeros(n).index_add_(0, group, torch.where(ok, values, zero))
    counts = values.new_zeros(n).index_add_(0, group, ok.to(values.dtype))
    return sums / counts


def chunked_kendall_tau_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`losses.rank.kendall_tau_b` over `KRC_CHUNK_ROWS` rows at a time (same result)."""
    if a.shape[0] <= KRC_CHUNK_ROWS:
        return kendall_tau_b(a, b)
    step = KRC_CHUNK_ROWS
    return torch.cat(
        [kendall_tau_b(a[i : i + step], b[i : i + step]) for i in range(0, len(a), step)]
    )


def select_samples(
    student: torch.Tensor,
    teacher: torch.Tensor,
    y: torch.Tensor,
    selector: Selector,
    omega: float,
    T: float = 1.0,
    non_target: TargetMode | None = None,
    groups: tuple[torch.Tensor, int] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples OFSD keeps: `(keep, krc)`, paper B Eq. 3-4 and its alternatives.

    `krc` is Kendall's tau-b between the teacher's and the student's logit rows, target
    included (Eq. 3, the released code's `kendalltau(tea_logits[i], stu_logits[i])`); it is
    always computed (the `krc` statistic, and the count the `random` selector matches).
    `keep = 1[score > omega]` (Eq. 4, strict; NaN scores dropped), a float mask, with the
    score of `selector`: `krc`; `cosine` / `pearson` of the logit rows or `gradcos`
    (:func:`gradcos_score`) (Fig. 4); `random`: as many samples as KRC keeps, drawn with
    `generator` (Table 2 "+Random"); `none`: every sample, whatever `omega`. Everything stays
    on the logits' device (no host synchronisation).

    `groups=(group, n)` (dense predictions, one row per labelled pixel): each row's score is
    averaged over its group (its image, NaN pixels left out, :func:`group_mean`) and the
    decision is taken per group, so `keep` and `krc` are `[n]` (an image without a labelled
    pixel has a NaN score: not kept). This is our reading of OFSD on segmentation (paper B
    Sec. 4.2 gives no formula); with one row per group it is the per-sample filter.
    """

    def pooled(score: torch.Tensor) -> torch.Tensor:
        return score if groups is None else group_mean(score, *groups)

    s, t = student.detach(), teacher.detach()
    krc = pooled(chunked_kendall_tau_b(t, s))
    if selector == "none":
        return torch.ones_like(krc), krc
    if selector == "krc":
        score = krc
    elif selector == "random":
        return random_mask_like(selection_mask(krc, omega), generator), krc
    elif selector == "gradcos":
        score = pooled(gradcos_score(student, teacher, y, T, non_target))
    elif selector == "cosine":
        score = pooled(cosine_rows(t, s))
    elif selector == "pearson":
        score = pooled(pearson_rows(t, s))
    else:
        raise ValueError(f"unknown selector {selector!r}; expected one of {Selector.__args__}")
    return selection_mask(score, omega), krc
