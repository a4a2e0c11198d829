"""`crd`: Contrastive Representation Distillation (Tian et al., ICLR 2020) with its memory
bank, and `ccl`: the in-batch cross-modal contrastive baseline of paper A (CCL, Chen et
al., CVPR 2021, paper A ref. [20]).

CRD official code: HobbitLong/RepDistiller (`crd/criterion.py` `CRDLoss`, `Embed`;
`crd/memory.py` `ContrastMemory`; `train_student.py` defaults `--feat_dim 128
--nce_k 16384 --nce_t 0.07 --nce_m 0.5`, `-b 0.8` in `scripts/run_cifar_distill.sh`).

    v_s = l2n(W_s e_s), v_t = l2n(W_t e_t)                 (embed heads, `feat_dim` 128)
    L = task_weight * CE + weight * (NCE(v_s | memory_t) + NCE(v_t | memory_s))   (Eq. 18)

Choices:
- features: the embeddings (official `feat[-1]`, the pooled penultimate features).
- memory: two buffers `[n_data, feat_dim]` (student and teacher), initialised uniformly in
  +-1/sqrt(feat_dim/3) as official, one row per training sample addressed by the batch's
  `index`; after scoring, the rows of the batch become l2n(m * row + (1 - m) * v) with
  m = `nce_m` 0.5 (`losses.contrastive.crd_momentum_update`).
- `n_data` must be the size of the training set: the method is not told the dataset, and
  the noise probability 1/n_data and the normalisation constants depend on it.
- negatives: `nce_k` indices drawn uniformly with replacement from the whole memory, as
  `ContrastMemory`'s alias sampler over uniform unigrams (which may draw the positive, as
  official); `nce_k` is capped to n_data - 1 on small sets. RepDistiller's CIFAR loader
  instead draws negatives from other classes (`mode='exact'`), which needs every sample's
  label; a method only sees the batch, so that variant is not offered.
- Z: one normalisation constant per direction, set from the first batch as official
  (`crd_normalization_constant`) and stored as buffers, so checkpoints and resumed runs keep
  them; the teacher feature is detached; the embed heads are trained (group `embed`).
- the memories and Z are `training_only_state`: `last.pt` keeps them (exact resume),
  `best.pt` leaves them out (evaluation needs only the student and the heads).

DDP: every process keeps a full copy of both memories (2 x n_data x feat_dim floats each).
The memory rows are updated from the embeddings and indices all-gathered from every process,
and Z is averaged over processes, so all copies stay identical (DDP's per-step buffer
broadcast from rank 0 would otherwise discard the other processes' updates); negatives are
drawn per process and the loss uses each process's own anchors. The gather needs equal
local batch sizes (keep `data.drop_last: true`).

CCL: see `CCL` below.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cmkd_cli.engine.distributed import all_gather_cat, all_reduce_sum
from cmkd_cli.errors import UsageError
from cmkd_cli.losses.contrastive import (
    ccl_nce_loss,
    crd_memory_scores,
    crd_momentum_update,
    crd_nce_loss,
    crd_normalization_constant,
    in_batch_contrastive_loss,
)
from cmkd_cli.methods._feature_common import (
    DistillConfig,
    GatherConfig,
    embed_dims,
    gather_batch,
    global_batch_grad,
    world_size,
)
from cmkd_cli.methods.base import Method, StepOutput, register_method


class CRDConfig(DistillConfig):
    name: Literal["crd"] = "crd"
    weight: float = Field(0.8, ge=0, description="weight of the CRD term (RepDistiller -b 0.8)")
    n_data: int | None = Field(
        None, ge=2, description="size of the training set: one memory row per sample (required)"
    )
    feat_dim: int = Field(128, ge=1, description="width of the embed heads / memory")
    nce_k: int = Field(16384, ge=1, description="negatives per anchor (capped to n_data - 1)")
    nce_t: float = Field(0.07, gt=0, description="temperature")
    nce_m: float = Field(0.5, ge=0, lt=1, description="memory momentum")


class EmbedHead(nn.Module):
    """RepDistiller's CRD `Embed`: flatten, linear to `dim_out`, L2-normalise."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@register_method("crd")
class CRD(Method):
    Config = CRDConfig
    training_only_state = ("memory_s", "memory_t", "z_s", "z_t")

    def __init__(self, cfg: CRDConfig, student: nn.Module, teacher: nn.Module, *args, **kwargs):
        super().__init__(cfg, student, teacher, *args, **kwargs)
        if cfg.n_data is None:
            raise UsageError(
                "method.n_data: CRD keeps one memory row per training sample; set it to the "
                "number of training samples"
            )
        s_dim, t_dim = embed_dims(student, teacher)
        self.embed = nn.ModuleDict(
            {"s": EmbedHead(s_dim, cfg.feat_dim), "t": EmbedHead(t_dim, cfg.feat_dim)}
        )
        stdv = 1.0 / math.sqrt(cfg.feat_dim / 3)
        for side in ("s", "t"):
            init = torch.rand(cfg.n_data, cfg.feat_dim).mul_(2 * stdv).add_(-stdv)
            self.register_buffer(f"memory_{side}", init)
            self.register_buffer(f"z_{side}", torch.tensor(-1.0))  # < 0: not set yet
        self.nce_k = min(cfg.nce_k, cfg.n_data - 1)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"embed": self.embed}

    def _contrast_idx(self, index: torch.Tensor) -> torch.Tensor:
        if int(index.max()) >= self.cfg.n_data or int(index.min()) < 0:
            raise UsageError(
                f"method.n_data: {self.cfg.n_data} is smaller than the training set (sample "
                f"index {int(index.max())} seen); set it to the number of training samples"
            )
        neg = torch.randint(0, self.cfg.n_data, (index.shape[0], self.nce_k), device=index.device)
        return torch.cat([index[:, None], neg], dim=1)

    def _nce(self, scores: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if z.item() < 0:  # first batch: Z = mean score * n_data, averaged over processes
            est = crd_normalization_constant(scores, self.cfg.n_data)
            z.fill_((all_reduce_sum(est) / world_size()).item())
        return crd_nce_loss(scores[:, 0], scores[:, 1:], self.cfg.n_data, z)

    @torch.no_grad()
    def _update_memory(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        index, v_s, v_t = (all_gather_cat(t.detach()) for t in (index, v_s, v_t))
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            rows = crd_momentum_update(memory[index], v.float(), self.cfg.nce_m)
            memory.index_copy_(0, index, rows.to(memory.dtype))

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: CRDConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        t_out = self.run_teacher(batch)
        index = torch.as_tensor(batch["index"], device=out.embedding.device).long()
        v_s = self.embed["s"](out.embedding)
        v_t = self.embed["t"](t_out.embedding.detach())
        idx = self._contrast_idx(index)
        out_s = crd_memory_scores(v_s, self.memory_t, idx, cfg.nce_t)  # student anchor
        out_t = crd_memory_scores(v_t, self.memory_s, idx, cfg.nce_t)  # teacher anchor
        loss = self._nce(out_s, self.z_s) + self._nce(out_t, self.z_t)
        self._update_memory(index, v_s, v_t)
        return StepOutput(
            out.logits,
            {"task": cfg.task_weight * self.task.loss(out, batch), "crd": cfg.weight * loss},
        )


# ----------------------------------------------------------------------------------------- CCL


class CCLConfig(GatherConfig):
    name: Literal["ccl"] = "ccl"
    weight: float = Field(1.0, ge=0, description="weight of the contrastive term")
    loss: Literal["ccl", "infonce"] = Field(
        "ccl", description="`ccl`: the official CCL NCE loss; `infonce`: symmetric InfoNCE"
    )
    temperature: float | None = Field(
        None, gt=0, description="softmax temperature (default: 0.5 for ccl, 0.07 for infonce)"
    )
    positives: Literal["label", "pair"] = Field(
        "label", description="`label`: same-class samples are positives; `pair`: only the pair"
    )
    project_teacher: bool = Field(
        True, description="a trainable linear map of the teacher embedding to the student's width"
    )


@register_method("ccl")
class CCL(Method):
    """In-batch cross-modal contrast between the student embedding and the (projected)
    teacher embedding: paper A's CCL baseline (Tables 1, 4; ref. [20]).

    Official code: yanbeic/CCL (`loss/nce_loss.py` `NCELoss`, temperature 0.5 in `main.py`,
    both directions summed). `loss: ccl` is that loss, `ccl_nce_loss(s, t) + ccl_nce_loss(t,
    s)`; `loss: infonce` is the symmetric supervised InfoNCE `in_batch_contrastive_loss`.
    Positives are the samples of the anchor's class (`positives: label`, as CCL's supervised
    form) or only its own pair (`pair`). The teacher embedding goes through a linear map to
    the student's width (`project_teacher`, trained with the loss; CCL's compositional
    embeddings are not reproduced), the teacher itself is detached. Batch-relational: the
    local batch by default, the all-gathered batch (embeddings and labels) with `gather`.
    """

    Config = CCLConfig

    def __init__(self, cfg: CCLConfig, student: nn.Module, teacher: nn.Module, *args, **kwargs):
        super().__init__(cfg, student, teacher, *args, **kwargs)
        s_dim, t_dim = embed_dims(student, teacher, cfg.project_teacher, "method.project_teacher")
        self.proj = nn.Linear(t_dim, s_dim) if cfg.project_teacher else None

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"proj": self.proj} if self.proj is not None else {}

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: CCLConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        f_t = self.run_teacher(batch).embedding.detach()
        if self.proj is not None:
            f_t = self.proj(f_t)
        labels = batch["y"] if cfg.positives == "label" else None
        tensors = (out.embedding, f_t) if labels is None else (out.embedding, f_t, labels)
        gathered, world = gather_batch(cfg.gather, *tensors)
        f_s, f_t = gathered[:2]
        labels = gathered[2] if labels is not None else None
        if cfg.loss == "ccl":
            t = cfg.temperature or 0.5
            loss = ccl_nce_loss(f_s, f_t, labels, t) + ccl_nce_loss(f_t, f_s, labels, t)
        else:
            loss = in_batch_contrastive_loss(f_s, f_t, labels, cfg.temperature or 0.07)
        return StepOutput(
            out.logits,
            {
                "task": cfg.task_weight * self.task.loss(out, batch),
                "ccl": cfg.weight * global_batch_grad(loss, world),
            },
        )
