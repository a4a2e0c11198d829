"""`cmkd eval` pieces: utterance progress, where DET curves go."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cmkd_cli.data.fbank import FbankConfig
from cmkd_cli.data.preprocess import FbankInput
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.stages.evaluate import det_path, embed_utterances
from cmkd_cli.student.api import Student


class _MeanEmbedding(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(x.mean(dim=-1), None)


def _student(crops: int, seconds: float) -> Student:
    """A speaker `Student` around `_MeanEmbedding` (Kaldi features, `crops` x `seconds`)."""
    package = {
        "task": "speaker",
        "class_names": [],
        "input": FbankInput(fbank=FbankConfig(), crops=crops, crop_seconds=seconds).model_dump(),
        "source": {"checkpoint": "test"},
    }
    return Student(package, "cpu", model=_MeanEmbedding())


def test_progress_counts_utterances_not_batches(capsys) -> None:
    ids = [f"spk/{k}" for k in range(10)]
    feats = lambda uid: np.full((300, 4), float(uid.split("/")[1]), np.float32)  # noqa: E731
    emb = embed_utterances(_student(2, 1.0), ids, feats, 4)
    assert emb.shape == (10, 2, 100)  # 3 batches of at most 4 utterances
    err = capsys.readouterr().err
    assert "embedding utterances: 10/10" in err and "/3 " not in err


def test_det_goes_where_asked_for_one_curve(tmp_path: Path) -> None:
    det, trials = tmp_path / "det.png", Path("lists/veri_test2.txt")
    assert det_path(det, trials, None, several=False) == det
    assert det_path(det, trials, 5.0, several=True) == tmp_path / "det-veri_test2-snr5.png"
    assert det_path(None, trials, None, several=True) is None
