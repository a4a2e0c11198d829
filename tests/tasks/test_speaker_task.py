"""The speaker task's validation: its trial score and minDCF weights come from task_params."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cmkd_cli.errors import UsageError
from cmkd_cli.metrics.trials import Trials, score_trials
from cmkd_cli.metrics.verification import compute_eer, compute_min_dcf
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.tasks import build_task


class CropMean(nn.Module):
    """An 'encoder' whose embedding of a crop is its mean frame."""

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(x.mean(dim=1), None)


def _loader(n_utts: int = 16, k: int = 4):
    rng = np.random.default_rng(0)
    spk = np.arange(n_utts) % 4
    centre = rng.normal(size=(4, 1, 1, 6))
    noise = 2 * rng.normal(size=(n_utts, k, 5, 6))
    x = torch.from_numpy((centre[spk] + noise).astype(np.float32))
    pairs = np.array([(a, b) for a in range(n_utts) for b in range(a + 1, n_utts)])
    labels = (spk[pairs[:, 0]] == spk[pairs[:, 1]]).astype(np.int8)
    trials = Trials([f"u{i}" for i in range(n_utts)], pairs, labels)
    dataset = type("D", (), {"trials": trials, "__len__": lambda self: n_utts})()
    batch = {"x": x, "index": torch.arange(n_utts)}
    loader = type("L", (), {"dataset": dataset, "__iter__": lambda self: iter([batch])})()
    return loader, trials, x.mean(dim=2)  # crop embeddings [U, K, D]


@pytest.mark.parametrize("score", ["cosine", "distance"])
def test_validation_scores_with_the_task_params(score) -> None:
    loader, trials, emb = _loader()
    params = {"score": score, "p_target": 0.5, "c_miss": 1.0, "c_fa": 0.1}
    task = build_task("speaker", 4, params)
    got = task.evaluate(CropMean(), loader, torch.device("cpu"))
    scores = score_trials(trials, emb, score=score)
    assert got["eer"] == pytest.approx(compute_eer(scores, trials.labels)[0])
    dcf = compute_min_dcf(scores, trials.labels, p_target=0.5, c_miss=1.0, c_fa=0.1)[0]
    assert got["min_dcf"] == pytest.approx(dcf)
    assert got["min_dcf"] != pytest.approx(compute_min_dcf(scores, trials.labels)[0])


def test_defaults_are_paper_a_and_bad_values_name_the_field() -> None:
    s = build_task("speaker", 4, {}).scoring
    assert (s.score, s.p_target, s.c_miss, s.c_fa) == ("cosine", 0.01, 1.0, 1.0)
    with pytest.raises(UsageError, match="task_params.score 'euclid'"):
        build_task("speaker", 4, {"score": "euclid"})
    with pytest.raises(UsageError, match="task_params.p_target 1.0"):
        build_task("speaker", 4, {"p_target": 1.0})
