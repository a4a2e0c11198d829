"""`cirkd`: Cross-Image Relational KD for semantic segmentation (Yang et al., CVPR 2022), the
segmentation-specific baseline of paper B Table 4. Dense predictions only.

Official code: winycg/CIRKD (`train_cirkd.py`, `losses/cirkd_mini_batch.py`,
`losses/cirkd_memory.py`), whose loss is

    L = CE + l_kd KD_T(z_s <- z_t) + l_pair PAIR(F_s, F_t)
      + l_pix MEM(P(F_s), F_t; pixel memory) + l_reg MEM(P(F_s), F_t; region memory)

- KD: `losses.kd.kd_loss` per labelled pixel (`_logit_common.pixel_samples`), T 1;
- PAIR: `losses.cirkd.pixel_pair_kd`, the pixel-to-pixel similarity maps of every pair of
  images of the mini-batch, tau 0.1;
- MEM: `losses.cirkd.memory_kd`, each labelled pixel's similarities to a contrast set drawn
  from two class-wise memories of L2-normalised *teacher* embeddings (tau 0.1, T 1): pixel
  embeddings (`pixel_memory_size` per class, `pixel_update_freq` random pixels of each class
  of each image enqueued per step) and region embeddings (the class's mean embedding per
  image, `region_memory_size` per class); the contrast set takes `*_contrast_size // K + 1`
  random entries of every class. The student's features go through a projection head P
  (1x1 conv, BN, ReLU, 1x1 conv, official `project_head`) to the teacher's width.
  Memories start as random unit vectors and are updated, with the batch's teacher
  embeddings (gathered from every process under DDP), before the contrast set is drawn.
Official weights: l_kd 1, l_pair 1, l_pix 0.1, l_reg 0.1.

Choices:
- features: the official code distils the features before the classifier
  (`s_outputs[-1]`); here the models' `embedding` (DeepLabV3+ decoder, stride 4) by default,
  average-pooled by `pool` (official `pooling` option: a 2x2 pool) before every relation, so
  that the B^2 maps of (HW)^2 similarities stay affordable at NYU's 480x640 (default 4:
  stride 16). Label maps are resized to the pooled size by nearest neighbour, as official.
- the official pixel-memory update draws its K pixels with `randperm(n_class_pixels)` used
  directly as pixel positions of the whole image (not of the class); we draw them among the
  class's own pixels, which is what the memory is meant to hold.
- a memory entry is written once per step even when more images of the batch than entries
  hold the class (tiny memories only); pointers follow the official update order.
- the memories and their pointers are `training_only_state`: `last.pt` keeps them (exact
  resume), `best.pt` leaves them out (40 x (20000 + 2000) x 256 floats = 900 MB with the official
  sizes on NYU's 40 classes).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cmkd_cli.engine.distributed import all_gather_cat
from cmkd_cli.errors import UsageError
from cmkd_cli.losses.cirkd import class_means, contrast_set, memory_kd, pixel_pair_kd
from cmkd_cli.losses.kd import kd_loss
from cmkd_cli.methods._feature_common import ChannelAdapter, FeatureSpec, feature_source
from cmkd_cli.methods._logit_common import LogitConfig, dense_to_samples, is_dense, pixel_samples
from cmkd_cli.methods.base import Method, StepOutput, register_method


class CIRKDConfig(LogitConfig):
    name: Literal["cirkd"] = "cirkd"
    student_stage: FeatureSpec = Field(
        "embedding", description="student feature: `embedding`, stage index or module path"
    )
    teacher_stage: FeatureSpec = Field(
        "embedding", description="teacher feature: `embedding`, stage index or module path"
    )
    pool: int = Field(4, ge=1, description="average-pool both features by this factor first")
    T: float = Field(1.0, gt=0, description="pixel KD temperature (--kd-temperature)")
    kd_weight: float = Field(1.0, ge=0, description="pixel KD weight (--lambda-kd)")
    pair_weight: float = Field(
        1.0, ge=0, description="mini-batch pixel-to-pixel weight (--lambda-minibatch-pixel)"
    )
    memory_pixel_weight: float = Field(
        0.1, ge=0, description="memory pixel-to-pixel weight (--lambda-memory-pixel)"
    )
    memory_region_weight: float = Field(
        0.1, ge=0, description="memory pixel-to-region weight (--lambda-memory-region)"
    )
    tau: float = Field(0.1, gt=0, description="similarity temperature (--contrast-temperature)")
    contrast_T: float = Field(
        1.0, gt=0, description="similarity KD temperature (--contrast-kd-temperature)"
    )
    pixel_memory_size: int = Field(20000, ge=1, description="pixel entries per class")
    region_memory_size: int = Field(2000, ge=1, description="region entries per class")
    pixel_contrast_size: int = Field(4096, ge=1, description="pixel contrast set (all classes)")
    region_contrast_size: int = Field(1024, ge=1, description="region contrast set (all classes)")
    pixel_update_freq: int = Field(16, ge=1, description="pixels enqueued per class and image")


def _unit_memory(classes: int, size: int, dim: int) -> torch.Tensor:
    return F.normalize(torch.randn(classes, size, dim), dim=2)


@register_method("cirkd")
class CIRKD(Method):
    Config = CIRKDConfig
    training_only_state = ("pixel_memory", "pixel_ptr", "region_memory", "region_ptr")
    needs_teacher_logits = True
    dense_only = True

    def __init__(self, cfg: CIRKDConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        if not (is_dense(self.student) and is_dense(self.teacher)):
            raise UsageError(
                "method.name: cirkd distils per-pixel predictions; the student and the teacher "
                "must be segmentation models (e.g. deeplabv3plus_resnet18)"
            )
        self.s_feat = feature_source(self, self.student, cfg.student_stage, "method.student_stage")
        self.t_feat = feature_source(self, self.teacher, cfg.teacher_stage, "method.teacher_stage")
        dim = self.t_feat.channels
        self.project = nn.Sequential(
            ChannelAdapter(self.s_feat.channels, dim, bias=False, norm=True, relu=True),
            ChannelAdapter(dim, dim, bias=False),
        )
        k = self.num_classes
        self.ignore_index = int(getattr(self.task, "ignore_index", 255))
        self.register_buffer("pixel_memory", _unit_memory(k, cfg.pixel_memory_size, dim))
        self.register_buffer("pixel_ptr", torch.zeros(k, dtype=torch.long))
        self.register_buffer("region_memory", _unit_memory(k, cfg.region_memory_size, dim))
        self.register_buffer("region_ptr", torch.zeros(k, dtype=torch.long))

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"project": self.project}

    def _pooled(self, f: torch.Tensor) -> torch.Tensor:
        p = self.cfg.pool
        return f if p == 1 else F.avg_pool2d(f, p, p, ceil_mode=True)

    @torch.no_grad()
    def enqueue(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Add the batch's (unit) teacher embeddings `[B, D, H, W]` to both memories."""
        feats, labels = all_gather_cat(feats), all_gather_cat(labels)
        k, ignore = self.num_classes, self.ignore_index
        # regions: each class's mean embedding of each image, image after image
        means, present = class_means(feats, labels, k, ignore)
        size = self.region_memory.shape[1]
        slot = (self.region_ptr + present.long().cumsum(0) - 1) % size  # [B, K]
        img, cls = present.nonzero(as_tuple=True)
        self.region_memory[cls, slot[img, cls]] = F.normalize(means[img, cls], dim=1)
        self.region_ptr.copy_((self.region_ptr + present.sum(0)) % size)
        # pixels: up to `pixel_update_freq` random pixels of each class of each image
        size, per = self.pixel_memory.shape[1], self.cfg.pixel_update_freq
        flat_f, flat_l = feats.flatten(2), labels.flatten(1)
        n = flat_l.shape[1]
        pos = torch.arange(n, device=flat_l.device)
        for f, lab in zip(flat_f, flat_l, strict=True):
            lab = torch.where(lab == ignore, k, lab)  # ignored pixels sort last
            counts = torch.bincount(lab, minlength=k + 1)[:k]
            order = torch.argsort(lab.double() + torch.rand(n, device=lab.device).double())
            lab_sorted = lab[order]
            starts = torch.cat([counts.cumsum(0) - counts, counts.sum().view(1)])
            rank = pos - starts[lab_sorted]  # position within its class, in random order
            take = (lab_sorted < k) & (rank < per)
            kk = counts.clamp(max=per)
            wrap = self.pixel_ptr + kk >= size  # official: write the last K slots, restart
            base = torch.where(wrap, size - kk, self.pixel_ptr)
            cls = lab_sorted[take]
            rows = F.normalize(f[:, order[take]].t(), dim=1)
            self.pixel_memory[cls, base[cls] + rank[take]] = rows
            moved = torch.where(wrap, 0, (self.pixel_ptr + kk) % size)
            self.pixel_ptr.copy_(torch.where(counts > 0, moved, self.pixel_ptr))

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        cfg: CIRKDConfig = self.cfg  # type: ignore[assignment]
        out = self.student(batch[self.input_key])
        t_out = self.run_teacher(batch)
        losses = {"task": cfg.task_weight * self.task.loss(out, batch)}
        (z_s, z_t), _, _ = pixel_samples(self, batch, out.logits, t_out.logits.detach())
        losses["kd"] = cfg.kd_weight * kd_loss(z_s, z_t, cfg.T)
        f_s = self._pooled(self.s_feat.read(out))
        f_t = self._pooled(self.t_feat.read(t_out).detach())
        if f_s.dim() != 4 or f_s.shape[-2:] != f_t.shape[-2:]:
            raise UsageError(
                f"method.student_stage/teacher_stage: cirkd relates pixels of two maps of one "
                f"size, got {list(f_s.shape)} and {list(f_t.shape)}"
            )
        losses["pair"] = cfg.pair_weight * pixel_pair_kd(f_s, f_t, cfg.tau)
        y = batch["y"][:, None].float()
        labels = F.interpolate(y, size=f_s.shape[-2:], mode="nearest")[:, 0].long()
        f_t = F.normalize(f_t, dim=1)
        (a_s, a_t), _, _ = dense_to_samples([self.project(f_s), f_t], labels, self.ignore_index)
        self.enqueue(f_t, labels)
        for term, memory, total, weight in (
            ("memory_pixel", self.pixel_memory, cfg.pixel_contrast_size, cfg.memory_pixel_weight),
            (
                "memory_region",
                self.region_memory,
                cfg.region_contrast_size,
                cfg.memory_region_weight,
            ),
        ):
            if a_s.shape[0] == 0:  # no labelled pixel at the feature resolution
                losses[term] = a_s.sum() * 0.0
                continue
            pick = torch.randperm(memory.shape[1], device=memory.device)[: total // len(memory) + 1]
            contrast = contrast_set(memory, pick)
            losses[term] = weight * memory_kd(a_s, a_t, contrast, cfg.tau, cfg.contrast_T)
        return StepOutput(out.logits, losses)
