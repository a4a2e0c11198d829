"""Shared plumbing of the logit-based methods (KD filters, C2KD, DML, SHAKE, self-KD).

- `SelectorConfig` / `SampleSelector`: paper B's per-sample filters (Eq. 3-4 KRC, Fig. 4
  Cos / Pearson / GradCos, Table 2 Random) as recipe fields, and the random selector's
  generator; the scores, masks and filtered KLs are in `losses/c2kd.py`.
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

from typing import Any

import torch
import torch.distributed as dist
from pydantic import Field

from cmkd_cli.errors import UsageError
from cmkd_cli.losses.c2kd import Selector, TargetMode, select_samples
from cmkd_cli.methods.base import Method
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.models.deeplab import upsample
from cmkd_cli.schema import MethodConfig


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


class SampleSelector:
    """Which samples a filtered KL keeps: `keep, krc = selector(student, teacher, y, T, nt)`,
    `losses.c2kd.select_samples` with the method's `selector` and `omega` (see there for the
    scores, `groups` for dense predictions, and the `random` selector).

    `random` draws with a generator on the logits' device seeded from `seed` (default
    `torch.initial_seed()`, i.e. the run's seed) plus the process rank; its state goes into
    last.pt (`state_dict`), so a resumed run draws the same sequence as an uninterrupted one.
    """

    def __init__(self, selector: Selector, omega: float, seed: int | None = None) -> None:
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

    def state_dict(self) -> dict[str, Any]:
        """The random selector's generator state (empty before its first draw)."""
        if self._generator is None:
            return {}
        return {"generator": self._generator.get_state(), "device": str(self._generator.device)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.generator(torch.device(state["device"])).set_state(state["generator"])

    def __call__(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        y: torch.Tensor,
        T: float = 1.0,
        non_target: TargetMode | None = None,
        groups: tuple[torch.Tensor, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        generator = self.generator(student.device) if self.selector == "random" else None
        return select_samples(
            student, teacher, y, self.selector, self.omega, T, non_target, groups, generator
        )


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
