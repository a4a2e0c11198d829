"""The Python API: `from cmkd_cli import load`; `student = load("runs/x/student.pt")`.

    student.embed("a.wav")                  # [D] numpy; a list of inputs gives [N, D]
    student.predict("cat.png")              # Prediction(label, index, probability, probs)
    student.score("a.wav", "b.wav")         # the trial score `cmkd eval` computes

Inputs follow the student's preprocessing (`data.preprocess`): audio students take a wav
(any file `load_audio` reads) or a `(waveform, sample_rate)` pair, image students an image
path, a PIL image or an array, text students a string; a `list` of them is a batch. Each
goes through exactly the evaluation preprocessing stored in the checkpoint (its `input`):
the graph input (`graph_input`), then the student's front-end module and the network, the
same modules `cmkd export` writes into the exported graph.

Speaker students embed an utterance as its `crops` evenly spaced crops (paper A: 10 x 4 s):
`embed` returns the mean of the L2-normalised crop embeddings, so `embed(a) @ embed(b)` is
the mean cosine over the crop pairs; `score(a, b)` is the score `cmkd eval` gives the trial
(`metrics.trials.score_pairs` with the stored `scoring`: that cosine, or minus the mean crop
distance for the paper's voxceleb_trainer setup; one code path); `embed(x, crops=True)`
returns the crops `[K, D]`. `cmkd eval` embeds its stored fbank features through
`crop_embeddings` here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmkd_cli.data.preprocess import FbankInput, parse_preprocessing
from cmkd_cli.engine.distributed import select_device
from cmkd_cli.errors import UsageError
from cmkd_cli.metrics.trials import Scoring, score_pairs, utterance_vectors
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.student.package import build_student_model, read_student
from cmkd_cli.tasks.speaker import scoring


@dataclass(frozen=True)
class Prediction:
    """A classifier's answer for one input: the top class and every class's probability."""

    label: str
    index: int
    probability: float
    probs: dict[str, float]


class Student:
    """A trained student with its evaluation preprocessing (see the module docstring)."""

    def __init__(
        self,
        package: dict[str, Any],
        device: str | torch.device = "auto",
        model: torch.nn.Module | None = None,
    ) -> None:
        """`model`: the network already built (e.g. a loaded method's student), else from
        the package's weights."""
        self.device = select_device(device) if isinstance(device, str) else device
        self.package = {k: v for k, v in package.items() if k != "weights"}
        self.task: str = package["task"]
        self.class_names: list[str] = list(package["class_names"])
        origin = str(package["source"].get("checkpoint"))
        self.input = parse_preprocessing(package["input"], origin)
        self.scoring = Scoring.model_validate(package.get("scoring") or {})
        self.model = (model or build_student_model(package)).to(self.device).eval()
        self.frontend = self.input.frontend().to(self.device).eval()

    @property
    def is_speaker(self) -> bool:
        return isinstance(self.input, FbankInput)

    def to(self, device: str | torch.device) -> Student:
        """Move the student (network and front-end) to `device`; returns itself."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self.frontend.to(self.device)
        return self

    def scoring_with(self, **given: Any) -> Scoring:
        """The stored scoring with the values `given` (score, p_target, c_miss, c_fa; None:
        keep); a bad value is a UsageError naming the CLI flag."""
        values = {**self.scoring.model_dump(), **{k: v for k, v in given.items() if v is not None}}
        return scoring("--", **values)

    def with_crops(self, crops: int | None, crop_seconds: float | None) -> Student:
        """Score speakers with another crop policy (e.g. `eval --crops 2`); returns itself."""
        if self.is_speaker and (crops or crop_seconds):
            self.input = self.input.with_crops(crops, crop_seconds)
            self.frontend = self.input.frontend().to(self.device).eval()
        return self

    # ---------------------------------------------------------------- the network

    @torch.no_grad()
    def forward(self, model_input: torch.Tensor) -> ModelOutput:
        """The network on a batch of model inputs (after the front-end), floats out."""
        out = self.model(model_input.to(self.device))
        logits = None if out.logits is None else out.logits.float()
        return ModelOutput(out.embedding.float(), logits)

    def graph_inputs(self, items: list[Any]) -> list[torch.Tensor]:
        """Each input decoded to the tensor the front-end (and an exported graph) takes:
        `[1, ...]` per input (a waveform at the model's rate, a resized image in [0, 1],
        token ids); a `DataError` names an unreadable input."""
        return self.input.graph_input(items)

    @torch.no_grad()
    def embed_decoded(self, decoded: list[torch.Tensor], batch_size: int = 16) -> torch.Tensor:
        """Embeddings (CPU) of `graph_inputs`: `[N, D]`; speakers: the crops, `[N, K, D]`."""
        if self.is_speaker:
            feats = (self.frontend.features(x.to(self.device))[0] for x in decoded)
            return self.crop_embeddings(feats, batch_size)
        out = []
        for lo in range(0, len(decoded), batch_size):
            for group in _same_shape(decoded[lo : lo + batch_size]):
                x = self.frontend(torch.cat(group).to(self.device))
                out.append(self.forward(x).embedding.cpu())
        return torch.cat(out)

    def _outputs(self, items: list[Any], batch_size: int) -> Iterator[ModelOutput]:
        """Network outputs for consecutive chunks of `items` (same-shape inputs batched)."""
        for lo in range(0, len(items), batch_size):
            for group in _same_shape(self.graph_inputs(items[lo : lo + batch_size])):
                with torch.no_grad():
                    x = self.frontend(torch.cat(group).to(self.device))
                yield self.forward(x)

    # ---------------------------------------------------------------- speakers

    @torch.no_grad()
    def features(self, x: Any) -> torch.Tensor:
        """A speaker input's fbank `[T, n_mels]` (float16-rounded as the feature store keeps it)."""
        self._need_speaker("features")
        wave = self.graph_inputs([x])[0].to(self.device)
        return self.frontend.features(wave)[0]

    @torch.no_grad()
    def crop_embeddings(self, features: Iterable[Any], batch_size: int = 8) -> torch.Tensor:
        """`[U, K, D]` crop embeddings (CPU) of utterances given as fbank features `[T, F]`
        (numpy or torch; from a feature store or `features`), `batch_size` utterances a pass."""
        self._need_speaker("crop_embeddings")
        out, chunk = [], []
        for feats in features:
            chunk.append(torch.as_tensor(np.asarray(feats, dtype=np.float32)))
            if len(chunk) == batch_size:
                out.append(self._embed_crops(chunk))
                chunk = []
        if chunk:
            out.append(self._embed_crops(chunk))
        if not out:
            raise UsageError("no utterances to embed")
        return torch.cat(out)

    def _embed_crops(self, feats: list[torch.Tensor]) -> torch.Tensor:
        crops = torch.cat([self.frontend.crop(f[None].to(self.device)) for f in feats])
        emb = self.forward(crops.flatten(0, 1)).embedding
        return emb.view(len(feats), crops.shape[1], -1).cpu()

    def _need_speaker(self, what: str) -> None:
        if not self.is_speaker:
            raise UsageError(f"{what} applies to speaker students; this one is `{self.task}`")

    # ---------------------------------------------------------------- the API

    def embed(self, x: Any, batch_size: int = 16, crops: bool = False) -> np.ndarray:
        """Embedding(s) of `x` (one input, or a list): `[D]` or `[N, D]` float32 numpy.

        Speakers: the mean of the L2-normalised crop embeddings (dot products are trial
        scores); `crops=True` gives the crops, `[K, D]` or `[N, K, D]`.
        """
        items, single = _as_list(x)
        out = torch.cat(
            [
                self.embed_decoded(self.graph_inputs(items[lo : lo + batch_size]), batch_size)
                for lo in range(0, len(items), batch_size)
            ]
        )
        if self.is_speaker and not crops:
            out = utterance_vectors(out)
        arr = out.numpy().astype(np.float32)
        return arr[0] if single else arr

    def predict(self, x: Any, batch_size: int = 16) -> Any:
        """Classifiers: a `Prediction` per input (a list for a list). Segmentation: the class
        index of every pixel, `[H, W]` int64 (names in `class_names`)."""
        items, single = _as_list(x)
        out: list[Any] = []
        for o in self._outputs(items, batch_size):
            if o.logits is None:
                raise UsageError("this student has no classifier head (embedding only)")
            if o.logits.dim() == 4:
                out.extend(o.logits.argmax(dim=1).cpu().numpy())
                continue
            for row in torch.softmax(o.logits, dim=-1).cpu():
                i = int(row.argmax())
                probs = dict(zip(self.class_names, row.tolist(), strict=True))
                out.append(Prediction(self.class_names[i], i, float(row[i]), probs))
        return out[0] if single else out

    def score(self, a: Any, b: Any) -> float:
        """Speakers: the trial score of `cmkd eval` (`scoring.score` over the K x K crop
        pairs: mean cosine, or minus the mean distance). Others: the embeddings' cosine."""
        if self.is_speaker:
            emb = self.embed([a, b], crops=True)
            return float(score_pairs(emb, np.array([[0, 1]]), score=self.scoring.score)[0])
        return float(score_pairs(self.embed([a, b]), np.array([[0, 1]]))[0])


def load(path: str | Path, device: str = "auto") -> Student:
    """A student from `student.pt` (or a run's `best.pt` / `last.pt`), on `device`
    (`auto`: CUDA when present, else CPU)."""
    return Student(read_student(path), device)


def _as_list(x: Any) -> tuple[list[Any], bool]:
    """(inputs, whether `x` was one input): a list is a batch; a (waveform, rate) tuple is one."""
    if isinstance(x, list):
        if not x:
            raise UsageError("an empty list of inputs")
        return x, False
    return [x], True


def _same_shape(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive runs of tensors of one shape (batched together), in order."""
    groups: list[list[torch.Tensor]] = []
    for t in tensors:
        if groups and groups[-1][0].shape == t.shape:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups
