"""Shared plumbing of the logit-based methods (KD filters, C2KD, DML, SHAKE, self-KD).

- `SampleSelector`: paper B's per-sample filters (Eq. 3-4 KRC, Fig. 4 Cos / Pearson /
  GradCos, Table 2 Random), vectorised on the logits' device with no host synchronisation.
- `filtered_kl`: one direction of a KL (full or non-target) averaged over the whole batch
  with the kept samples only, as the released C2KD code reduces its OFSD term.
- `peer_task_loss`: the supervised loss of a tuned teacher (paper B Eq. 6, first line) or
  of an extra head.
- `dense_to_samples` / `pixel_samples`: paper B's segmentation setting (Sec. 4.2) at pixel
  level: dense logits `[B, C, H, W]` and label maps `[B, H, W]` become `[N, C]` rows and `[N]`
  labels of the N labelled pixels, so every logit loss of `losses/` applies unchanged;
  classification logits `[B, C]` pass through. `SampleSelector(groups=...)` then averages a
  per-pixel score (KRC) per image and decides per image (C2KD's OFSD on dense predictions).

No loss maths lives here: the KLs, ranks and scores come from `cmkd_cli/losses/`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field

from cmkd_cli.errors import UsageError
from cmkd_cli.losses.c2kd import selection_score
from cmkd_cli.losses.kd import kl_div_per_sample
from cmkd_cli.losses.logit import dist_loss, nontarget_kl, nontarget_view
from cmkd_cli.losses.rank import cosine_rows, kendall_tau_b, random_mask_like, selection_mask
from cmkd_cli.methods.base import Method
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.models.deeplab import upsample
from cmkd_cli.schema import MethodConfig

#: rows per call of `kendall_tau_b` (its sorts hold a few 32/64-bit copies of the rows):
#: bounds the memory of per-pixel KRC over a batch of full-resolution label maps
KRC_CHUNK_ROWS = 1 << 18

Selector = Literal["krc", "cosine", "pearson", "gradcos", "random", "none"]
#: how the target class is handled by a KL: `zero`: target logit set to 0, softmax over all
#: C (released C2KD `ntkl`); `remove`: target dropped (DKD's NCKD); None: the full KL
TargetMode = Literal["zero", "remove"]


class LogitConfig(MethodConfig):
    """Fields every logit-based method has: the weight of the student's task term."""

    task_weight: float = Field(1.0, ge=0, description="weight of the task (CE) term")


class SelectorConfig(LogitConfig):
    """Paper B's sample filter: which score, and its threshold omega (Eq. 4)."""

    selector: Selector = Field(
        "krc",
        description="per-sample filter: krc (Eq. 3), cosine / pearson / gradcos (Fig. 4), random "
        "(as many as KRC keeps, Table 2 +Random) or none (keep every sample)",
    )
    omega: float = Field(0.0, description="keep a sample when its score > omega (strict, Eq. 4)")
    seed: int | None = Field(
        None, description="`random` selector: seed of its generator (default: the run's seed)"
    )


def per_sample_kl(
    student: torch.Tensor,
    target: torch.Tensor,
    y: torch.Tensor,
    T: float,
    non_target: TargetMode | None,
) -> torch.Tensor:
    """`KL(p_target.detach() || p_student)` per sample, `[B]`, without the `T^2` factor:
    over every class (`non_target=None`) or the non-target classes (`zero` / `remove`)."""
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
    (`(mask * kl.sum(1)).mean()`), so it is an exact 0 when nothing is kept; with every sample
    kept it is `kd_loss` (full KL) or `nckd_loss` (`remove`) of `losses/`.
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


class SampleSelector:
    """Which samples a filtered KL keeps: `keep, krc = selector(student, teacher, y, T, nt)`.

    `krc` is Kendall's tau-b between the two logit rows (always computed: it is the `krc`
    statistic, and the count the `random` selector matches); `keep` is a float `[B]` mask.
    Everything stays on the logits' device; nothing calls `.item()`.

    `groups=(group, n)` (dense predictions, `group` from `dense_to_samples`): each row's score
    (KRC, cosine, Pearson or GradCos, per pixel) is averaged over its group (its image, NaN
    pixels left out) and the decision is taken per group: `keep` and `krc` are then `[n]`,
    one value per image (an image without a labelled pixel has a NaN score: not kept). This
    is our reading of OFSD on segmentation (paper B Sec. 4.2 gives no formula): a pixel's
    soft labels over the C classes are ranked like a sample's, and an image is filtered out
    when its pixels disagree on average. With one row per group it is the per-sample filter.

    `random` keeps, in every batch, as many samples as KRC would keep (paper B Table 2
    "+Random"), chosen with a generator on the logits' device seeded from `seed` (default
    `torch.initial_seed()`, i.e. the run's seed) plus the process rank; its state is not
    checkpointed, so a resumed run draws a different (equally random) sequence.
    """

    def __init__(self, selector: str, omega: float, seed: int | None = None) -> None:
        self.selector = selector
        self.omega = omega
        self.seed = seed
        self._generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            seed = (torch.initial_seed() if self.seed is None else self.seed) + 7919 * rank
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(seed % 2**63)
        return self._generator

    def __call__(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        y: torch.Tensor,
        T: float = 1.0,
        non_target: TargetMode | None = None,
        groups: tuple[torch.Tensor, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        def pooled(score: torch.Tensor) -> torch.Tensor:
            return score if groups is None else group_mean(score, *groups)

        krc = pooled(chunked_kendall_tau_b(teacher.detach(), student.detach()))
        if self.selector == "none":  # keep all, whatever omega
            return torch.ones_like(krc), krc
        if self.selector == "krc":
            score = krc
        elif self.selector == "random":
            mask = selection_mask(krc, self.omega)
            return random_mask_like(mask, self.generator(mask.device)), krc
        elif self.selector == "gradcos":
            score = pooled(gradcos_score(student, teacher, y, T, non_target))
        else:
            score = pooled(selection_score(student, teacher, self.selector))
        return selection_mask(score, self.omega), krc


def selection_stats(keep: torch.Tensor, krc: torch.Tensor) -> dict[str, torch.Tensor]:
    """`kept`: the fraction of the batch kept; `krc`: the mean KRC (NaN rows ignored)."""
    return {"kept": keep.detach().float().mean(), "krc": krc.detach().float().nanmean()}


def peer_task_loss(method: Method, out: ModelOutput, batch: dict[str, Any]) -> torch.Tensor:
    """The task loss of a second network's prediction: a tuned teacher (paper B Eq. 6
    `H(f_T, Y)`, DML's peer) or an extra head (SHAKE's shadow head).

    It reuses the task's loss, which is only right for a task whose loss has no parameters
    of its own (classification): a margin classifier belongs to the student's embedding.
    """
    if any(True for _ in method.task.parameters()):
        raise UsageError(
            f"task: method `{method.method_name}` also trains a second network with the task's "
            "loss, which needs a task whose loss has no parameters of its own (classification)"
        )
    return method.task.loss(out, batch)


def dense_to_samples(
    logits: list[torch.Tensor], y: torch.Tensor, ignore_index: int | None
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Pixels as samples: `(rows, labels, image)` for the logit losses of `losses/`.

    Dense: `y` `[B, H, W]` label maps and each of `logits` `[B, C, h, w]` (resized bilinearly
    to `H x W` when `h x w` differs, e.g. a proxy head at stride 16) -> each `[N, C]` (the
    class vector of every pixel whose label is not `ignore_index`, image by image in raster
    order), `labels` `[N]` and `image` `[N]` (the batch index of each row, for per-image
    decisions). Any channel-first map works (features too). Classification: `y` `[B]` and
    `[B, C]` logits are returned as given, with `image = arange(B)`. The selection of the
    labelled pixels has a data-dependent size (one host synchronisation per call).
    """
    if y.dim() == 1:
        return list(logits), y, torch.arange(y.shape[0], device=y.device)
    if y.dim() != 3 or any(z.dim() != 4 or z.shape[0] != y.shape[0] for z in logits):
        shapes = [list(z.shape) for z in logits]
        raise UsageError(
            f"pixel-level distillation needs logits [B, C, H, W] and label maps [B, H, W]; got "
            f"{shapes} and labels {list(y.shape)} (a segmentation model with a dense dataset)"
        )
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    rows = [upsample(z, y.shape[-2:]).movedim(1, -1)[valid] for z in logits]
    return rows, y[valid], valid.nonzero()[:, 0]


def pixel_samples(
    method: Method, batch: dict[str, Any], *logits: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """`dense_to_samples` of `logits` with the batch's labels and the task's ignore index."""
    return dense_to_samples(list(logits), batch["y"], getattr(method.task, "ignore_index", None))


def is_dense(model: torch.nn.Module | None) -> bool:
    """Whether `model` predicts per pixel (`dense_prediction`, e.g. `models.deeplab`)."""
    return bool(getattr(model, "dense_prediction", False))
