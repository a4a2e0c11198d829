"""Every method reads the student's input from `batch[method.input_key]`, never `batch["x"]`
(train-teacher trains a `baseline` student on the teacher's input `t` that way)."""

from __future__ import annotations

import pytest
import torch

from cmkd_cli.methods import METHODS
from tests.methods._feature_helpers import batch
from tests.methods._logit_helpers import build

#: what a method needs beyond its defaults to be built on the tiny models
SETUP = {"crd": {"n_data": 16, "nce_k": 4}, "dml": {"tune": "full"}}


@pytest.mark.parametrize(
    "name", [n for n, cls in METHODS.items() if not getattr(cls, "dense_only", False)]
)
def test_the_student_input_is_read_by_input_key(name: str) -> None:
    torch.manual_seed(0)
    method = build(name, **SETUP.get(name, {}))
    b = batch()
    b["x_other"] = b.pop("x")
    method.input_key = "x_other"
    out = method(b)
    assert out.losses and all(torch.isfinite(v) for v in out.losses.values())
