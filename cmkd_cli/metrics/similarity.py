"""Representation similarity between two networks or modalities: linear CKA and KRC."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel

from cmkd_cli.losses.rank import kendall_tau_b  # the loss room owns the rank maths


def _as_2d_float64(x: Any, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.dim() < 2:
        raise ValueError(f"{name} must be [N, ...] features, got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1).double()


def linear_cka(x: Any, y: Any) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019, "Similarity of Neural Network
    Representations Revisited": CKA with a linear kernel); a float in [0, 1].

    `x` is `[N, D1, ...]`, `y` is `[N, D2, ...]` (one row per example, features flattened);
    with `X`, `Y` the column-centred matrices,

        CKA = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)
            = <X X^T, Y Y^T>_F / (||X X^T||_F * ||Y Y^T||_F).

    The two forms are the same number; the cheaper one is used (feature-space when the
    features are narrower than the number of examples, Gram-space otherwise). CKA is 1 for
    `y = x`, and invariant to orthogonal transforms and isotropic scaling of either side.
    NaN when one side is constant over the examples. Computed in float64.
    """
    a = _as_2d_float64(x, "x")
    b = _as_2d_float64(y, "y").to(a.device)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x has {a.shape[0]} examples but y has {b.shape[0]}")
    a = a - a.mean(dim=0, keepdim=True)
    b = b - b.mean(dim=0, keepdim=True)
    n, d1, d2 = a.shape[0], a.shape[1], b.shape[1]
    if d1 * d1 + d2 * d2 + d1 * d2 <= 2 * n * n:
        num = (b.T @ a).square().sum()
        den = torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)
    else:
        ka, kb = a @ a.T, b @ b.T
        num = (ka * kb).sum()
        den = torch.linalg.matrix_norm(ka) * torch.linalg.matrix_norm(kb)
    return (num / den).item() if den > 0 else float("nan")


def mean_krc(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Mean over samples of the Kendall rank correlation (tau-b) between two `[B, C]` logit
    sets, as in C2KD (Huo et al., 2024), Eq. 3 / Fig. 1(b): the per-sample KRC of the class
    rankings of teacher and student, averaged. Calls `cmkd_cli.losses.rank.kendall_tau_b`.
    """
    return kendall_tau_b(logits_a.detach(), logits_b.detach()).double().mean().item()


class CkaPair(BaseModel):
    student: str
    teacher: str
    cka: float


def krc_values(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per sample, Kendall's tau-b between the teacher's and the student's logits
    (C2KD Eq. 3, `cmkd analyze --krc`, Fig. 1b); NaN rows (a constant logit vector) dropped."""
    tau = kendall_tau_b(teacher_logits, student_logits).double()
    return tau[torch.isfinite(tau)]


def depth_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Stages at the same relative depth: each stage of the shallower network with the stage
    of the deeper one that ends at the same fraction of its depth."""
    k = min(n_student, n_teacher)

    def at(n: int, i: int) -> int:
        return round((i + 1) * n / k) - 1

    return [(at(n_student, i), at(n_teacher, i)) for i in range(k)]


def cka_matrix(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
) -> list[list[float]]:
    """Linear CKA of every student feature (rows) with every teacher feature (columns)
    (C2KD Sec. 5, Fig. 6, `cmkd analyze --cka`)."""
    return [[linear_cka(s, t) for t in teacher.values()] for s in student.values()]


def matched_pairs(
    student: list[str], teacher: list[str], matrix: list[list[float]]
) -> list[CkaPair]:
    """Stage pairs by relative depth (`depth_pairs`), then embedding with embedding (the
    last feature of each list)."""
    s_stages, t_stages = student[:-1], teacher[:-1]
    pairs = depth_pairs(len(s_stages), len(t_stages)) + [(len(student) - 1, len(teacher) - 1)]
    return [CkaPair(student=student[i], teacher=teacher[j], cka=matrix[i][j]) for i, j in pairs]
