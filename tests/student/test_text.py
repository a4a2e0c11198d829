"""A text student (the bundled MiniLM fine-tuned as `text_transformer`) ships too: its
student.pt names its tokenizer, the API takes strings, TorchScript export traces it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cmkd_cli.data.preprocess import TextConfig, TextInput
from cmkd_cli.models.registry import create_model
from cmkd_cli.student.package import FORMAT, VERSION, write_student

TEXTS = ["flood waters rise in the city", "donations arrive at the shelter", "a sunny day"]


def _package() -> dict:
    torch.manual_seed(0)
    model = create_model("text_transformer", 3, {"dropout": 0.0}).eval()
    return {
        "format": FORMAT,
        "version": VERSION,
        "task": "classification",
        "model": {"name": "text_transformer", "params": {"dropout": 0.0}},
        "weights": model.state_dict(),
        "num_classes": 3,
        "class_names": ["affected", "donation", "other"],
        "scoring": None,
        "input": TextInput(text=TextConfig(max_length=16)).model_dump(mode="json"),
        "source": {"recipe": "text-test", "checkpoint": "in memory"},
        "recipe": {},
    }


def test_text_student_embeds_strings_and_exports_by_tracing(cli, tmp_path: Path) -> None:
    from cmkd_cli import load

    write_student(tmp_path / "student.pt", _package())
    student = load(tmp_path / "student.pt", device="cpu")
    emb = student.embed(TEXTS)
    assert emb.shape == (3, 384)
    tokens = torch.cat(student.graph_inputs(TEXTS))
    assert tokens.shape == (3, 2, 16) and tokens.dtype == torch.int64
    with torch.no_grad():
        ref = student.model(tokens).embedding.numpy()
    np.testing.assert_allclose(emb, ref, rtol=0, atol=1e-5)
    assert student.predict(TEXTS[0]).label in student.class_names

    inputs = []
    for i, text in enumerate(TEXTS):
        (tmp_path / f"{i}.txt").write_text(text + "\n")
        inputs += ["--input", tmp_path / f"{i}.txt"]
    out = tmp_path / "ts"
    res = cli(
        "--json", "export", "-c", tmp_path / "student.pt", "-f", "torchscript", "-o", out, *inputs
    )
    assert res.code == 0, res.stderr
    assert res.json()["how"].startswith("torch.jit.trace (not scriptable")
    spec = json.loads((out / "model.json").read_text())
    assert spec["inputs"][0]["shape"] == ["batch", 2, 16] and spec["inputs"][0]["dtype"] == "int64"
    assert "tokenise" in spec["outside_the_graph"][0]
    module = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        traced_emb, _ = module(tokens[:2])
    np.testing.assert_allclose(traced_emb.numpy(), emb[:2], rtol=0, atol=1e-4)
