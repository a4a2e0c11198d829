"""Speaker verification: angular prototypical + softmax CE; EER and minDCF on trials.

Paper A Sec. 4.1.1: "The loss function is a combination of angular prototypical loss and
cross-entropy loss" (voxceleb_trainer's `softmaxproto`, learnable scale w=10, bias b=-5).
Validation embeds each utterance with K fixed crops and scores a trial over the K x K crop
pairs (`score`: mean cosine, or minus the mean distance of the normalised crops as
voxceleb_trainer and paper A's "mean distance"; `metrics.trials.score_trials`); minDCF with
`p_target`, `c_miss`, `c_fa` (paper A: 0.01, 1, 1; voxceleb_trainer's default P_target is 0.05).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from cmkd_cli.engine.distributed import all_reduce_sum, to_device
from cmkd_cli.errors import UsageError
from cmkd_cli.losses.speaker import (
    ANGLEPROTO_INIT_B,
    ANGLEPROTO_INIT_W,
    angular_prototypical_loss,
)
from cmkd_cli.metrics.trials import Scoring, score_trials
from cmkd_cli.metrics.verification import compute_eer, compute_min_dcf
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.tasks import TASKS


def scoring(prefix: str, **values: Any) -> Scoring:
    """`Scoring(**values)`; a bad value is a UsageError naming `prefix` + the field (with
    `prefix="--"`, the CLI flag: `--p-target`)."""
    try:
        return Scoring(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0])
        name = name.replace("_", "-") if prefix == "--" else name
        raise UsageError(f"{prefix}{name} {err['input']!r}: {err['msg']}") from None


@TASKS.register("speaker")
class SpeakerTask(nn.Module):
    metrics = ("eer", "min_dcf")

    def __init__(
        self,
        num_classes: int | None = None,
        utterances_per_speaker: int = 2,
        ap_weight: float = 1.0,
        ce_weight: float = 1.0,
        p_target: float = 0.01,
        c_miss: float = 1.0,
        c_fa: float = 1.0,
        score: str = "cosine",
    ) -> None:
        super().__init__()
        self.m = utterances_per_speaker
        self.ap_weight, self.ce_weight = ap_weight, ce_weight
        self.scoring = scoring(
            "task_params.", score=score, p_target=p_target, c_miss=c_miss, c_fa=c_fa
        )
        self.w = nn.Parameter(torch.tensor(ANGLEPROTO_INIT_W))
        self.b = nn.Parameter(torch.tensor(ANGLEPROTO_INIT_B))

    def loss(self, output: ModelOutput, batch: dict[str, Any]) -> torch.Tensor:
        emb, y = output.embedding, batch["y"]
        if emb.shape[0] % self.m or not torch.equal(y[0 :: self.m], y[self.m - 1 :: self.m]):
            raise UsageError(
                f"task speaker: a batch must hold {self.m} utterances per speaker, speaker by "
                "speaker (use the speaker dataset, whose sampler builds such batches)"
            )
        total = emb.new_zeros(())
        if self.ap_weight:
            ap = angular_prototypical_loss(emb.view(-1, self.m, emb.shape[-1]), self.w, self.b)
            total = total + self.ap_weight * ap
        if self.ce_weight and output.logits is not None:
            total = total + self.ce_weight * F.cross_entropy(output.logits, y)
        return total

    @torch.no_grad()
    def embed(
        self, model: nn.Module, loader: Any, device: torch.device, input_key: str = "x"
    ) -> torch.Tensor:
        """`[N, K, D]` crop embeddings of every item of the loader's dataset (all ranks)."""
        was_training = model.training
        model.eval()
        out: torch.Tensor | None = None
        n = len(loader.dataset)
        for batch in loader:
            x = to_device(batch[input_key], device)  # [B, K, ...]
            b, k = x.shape[:2]
            emb = model(x.flatten(0, 1)).embedding.float().view(b, k, -1)
            if out is None:
                out = torch.zeros(n, k, emb.shape[-1], device=device)
            out[batch["index"].to(device)] = emb
        model.train(was_training)
        if out is None:
            raise UsageError("evaluation split is empty")
        return all_reduce_sum(out)

    def evaluate(
        self, model: nn.Module, loader: Any, device: torch.device, input_key: str = "x"
    ) -> dict[str, float]:
        trials = getattr(loader.dataset, "trials", None)
        if trials is None:
            raise UsageError("task speaker: the evaluation split has no trial list")
        emb = self.embed(model, loader, device, input_key)
        s = self.scoring
        scores = score_trials(trials, emb, score=s.score)
        eer, _ = compute_eer(scores, trials.labels)
        min_dcf, _ = compute_min_dcf(scores, trials.labels, s.p_target, s.c_miss, s.c_fa)
        return {"eer": float(eer), "min_dcf": float(min_dcf)}
