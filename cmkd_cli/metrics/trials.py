"""Verification trial lists: reading them and scoring them against utterance embeddings.

A `Trials` names each distinct utterance once (`utterances`, sorted), so every utterance is
embedded once however many trials use it; each trial is a pair of row indices into that list.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from cmkd_cli.errors import DataError
from cmkd_cli.io import atomic_write

_VOX_LABELS = {"1": 1, "0": 0}
_CNCELEB_LABELS = {"1": 1, "0": 0, "target": 1, "nontarget": 0}


@dataclass(frozen=True)
class Trials:
    """A parsed trial list.

    `utterances`: sorted distinct utterance names (paths as written in the list).
    `pairs`: int64 `[N, 2]`, row indices into `utterances` (enrollment side, test side).
    `labels`: int8 `[N]`, 1 for a target (same speaker) trial, 0 for a non-target one, -1
    where the list gives none (`read_trial_pairs`).
    """

    utterances: list[str]
    pairs: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_target(self) -> int:
        return int(self.labels.sum())


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            yield from enumerate(fh, 1)
    except FileNotFoundError:
        raise DataError(f"trial list {path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"trial list {path} is not a UTF-8 text file") from None
    except OSError as exc:
        raise DataError(f"trial list {path} cannot be read ({exc.strerror})") from None


def _parse(
    path: str | os.PathLike[str],
    layout: str,
    labels_ok: dict[str, int],
    known_utterances: Iterable[str] | None,
) -> Trials:
    """Parse lines of the fields `layout` names; without a `label` column labels are -1."""
    path = Path(path)
    columns = layout.split()
    li = columns.index("label") if "label" in columns else None
    ai, bi = (c for c in range(len(columns)) if c != li)
    known = None if known_utterances is None else set(known_utterances)
    first, second, labels = [], [], []
    for n, line in _lines(path):
        tok = line.split()
        if not tok or tok[0].startswith("#"):  # blank lines and comments
            continue
        if len(tok) != len(columns):
            raise DataError(
                f"{path}:{n}: expected {len(columns)} fields ({layout}), found {len(tok)}: "
                f"{line.strip()!r}"
            )
        label = -1 if li is None else labels_ok.get(tok[li].lower())
        if label is None:
            ok = " or ".join(repr(k) for k in labels_ok)
            raise DataError(f"{path}:{n}: label {tok[li]!r} is not {ok}")
        if known is not None:
            for utt in (tok[ai], tok[bi]):
                if utt not in known:
                    raise DataError(
                        f"{path}: utterance {utt} (line {n}) is not in the embedding set"
                    )
        first.append(tok[ai])
        second.append(tok[bi])
        labels.append(label)
    if not labels:
        raise DataError(f"trial list {path} has no trials")
    utterances = sorted(set(first) | set(second))
    row = {u: i for i, u in enumerate(utterances)}
    pairs = np.empty((len(labels), 2), dtype=np.int64)
    pairs[:, 0] = [row[u] for u in first]
    pairs[:, 1] = [row[u] for u in second]
    return Trials(utterances, pairs, np.asarray(labels, dtype=np.int8))


def read_trials(
    path: str | os.PathLike[str], known_utterances: Iterable[str] | None = None
) -> Trials:
    """Read a VoxCeleb-format trial list: one `label utt1 utt2` per line, label 1 or 0.

    E.g. `1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav` (VoxCeleb1-O, -E,
    -H). Blank lines and lines starting with `#` are ignored. With `known_utterances`,
    every utterance must be one of them. A label other than 0/1, a line without exactly
    three fields, an unknown utterance or a list without trials is a `DataError` naming the
    file and line.
    """
    return _parse(path, "label utt1 utt2", _VOX_LABELS, known_utterances)


def read_trial_pairs(path: str | os.PathLike[str]) -> Trials:
    """A VoxCeleb-format list (`label utt1 utt2`), or one without labels (`utt1 utt2` per
    line: labels -1), told apart by the first line's field count (`cmkd score`)."""
    lines = (line.strip() for _, line in _lines(Path(path)))
    first = next((line for line in lines if line and not line.startswith("#")), "")
    if len(first.split()) == 2:
        return _parse(path, "utt1 utt2", {}, None)
    return read_trials(path)


def read_cnceleb_trials(
    path: str | os.PathLike[str], known_utterances: Iterable[str] | None = None
) -> Trials:
    """Read a CN-Celeb `trials.lst`: one `enroll_id test_path label` per line.

    E.g. `id00800-enroll.wav id00800/singing-01-001.wav 1`; the label is 1/0 or
    target/nontarget. The enrollment ids are utterance names like any other (the caller
    provides one embedding per enrollment id). Errors as in `read_trials`.
    """
    return _parse(path, "enroll test label", _CNCELEB_LABELS, known_utterances)


#: trial scores over the K x K crop pairs of two utterances (`score_trials`)
SCORES: tuple[str, ...] = ("cosine", "distance")
#: squared crop distances below this are recomputed from the difference (`distance`)
NEAR = 1e-2


class Scoring(BaseModel):
    """How trials are scored (`score_trials`) and minDCF weighed (`compute_min_dcf`; paper A
    Eq. 12: P_target 0.01, C_miss = C_fa = 1; voxceleb_trainer's default P_target is 0.05)."""

    model_config = ConfigDict(extra="forbid")

    score: Literal["cosine", "distance"] = "cosine"
    p_target: float = Field(0.01, gt=0, lt=1)
    c_miss: float = Field(1.0, gt=0)
    c_fa: float = Field(1.0, gt=0)


def score_trials(
    trials: Trials, embeddings: Any, batch: int = 4096, score: str = "cosine"
) -> np.ndarray:
    """The score of every trial: float32 `[N]`, in the order of the trial list; higher means
    "same speaker" (`score_pairs` on the trial list's pairs).

    `embeddings` (torch or numpy) has one row per `trials.utterances` entry, in that order:
    `[U, D]`, or `[U, K, D]` for K crops per utterance.
    """
    rows = embeddings.shape[0]
    if rows != len(trials.utterances):
        raise DataError(
            f"the embeddings have {rows} rows but the trial list names "
            f"{len(trials.utterances)} utterances"
        )
    return score_pairs(embeddings, trials.pairs, batch, score)


def _as_crops(embeddings: Any) -> torch.Tensor:
    """`[U, K, D]` floating crops from torch or numpy `[U, D]` / `[U, K, D]`."""
    emb = (
        embeddings
        if isinstance(embeddings, torch.Tensor)
        else torch.from_numpy(np.asarray(embeddings))
    )
    if emb.dim() not in (2, 3):
        raise ValueError(f"embeddings must be [U, D] or [U, K, D], got shape {tuple(emb.shape)}")
    emb = emb.detach()
    if not emb.is_floating_point() or emb.dtype in (torch.float16, torch.bfloat16):
        emb = emb.float()
    return emb.unsqueeze(1) if emb.dim() == 2 else emb


def utterance_vectors(embeddings: Any) -> torch.Tensor:
    """`[U, D]` vectors whose dot products are the `cosine` trial scores: the mean of each
    utterance's L2-normalised crops (`[U, D]` input: one crop each). The `cmkd_cli.load`
    API's speaker `embed` returns them."""
    emb = _as_crops(embeddings)
    return (F.normalize(emb, dim=-1).sum(dim=1) / emb.shape[1]).float()


def score_pairs(
    embeddings: Any, pairs: np.ndarray, batch: int = 4096, score: str = "cosine"
) -> np.ndarray:
    """The score of each `(a, b)` row of `pairs` (indices into `embeddings`): float32 `[N]`.
    `cmkd eval`, `cmkd score` and `Student.score` all score here.

    `embeddings` (torch or numpy): `[U, D]`, or `[U, K, D]` for K crops per utterance. With
    `n_i`, `m_j` the L2-normalised crops of the two utterances (a zero crop stays zero):

    * `cosine`: the mean cosine over all K x K crop pairs (10 x 10 = 100 in paper A),
      computed exactly through the identity

          mean_ij cos(a_i, b_j) = mean_ij <n_i, m_j> = <sum_i n_i, sum_j m_j> / K^2

      The crop sums are formed once per utterance (`utterance_vectors`, in torch on the
      embeddings' device), then pairs are scored `batch` at a time in numpy on the CPU, so
      memory is O(U * D + batch * D) whatever the number of pairs. The default chunk keeps
      the gathered rows in the CPU cache; numpy runs it on one thread, so it stays fast on
      a busy machine (`benchmarks/scoring.py`).
    * `distance`: minus the mean Euclidean distance over the K x K pairs,
      `-mean_ij ||n_i - m_j||` (voxceleb_trainer's `evaluateFromList` with a normalising
      loss, and paper A's "mean distance"), `batch // K` pairs at a time in numpy on the
      CPU (equal to the reference's per-trial `torch.cdist` to float32 rounding).
      It ranks trials almost as `cosine` does (`||n - m|| = sqrt(2 - 2 cos)` is monotone
      per pair, not for the mean), so EERs differ in the second decimal at most; with one
      embedding per utterance the two orders are identical.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    emb = _as_crops(embeddings)
    if score == "distance":
        crops = F.normalize(emb, dim=-1).float().cpu().numpy()
        return _mean_distance_scores(pairs, crops, max(1, batch // emb.shape[1]))
    sums = utterance_vectors(emb).cpu().numpy()
    out = np.empty(len(pairs), dtype=np.float32)
    for lo in range(0, len(pairs), batch):
        p = pairs[lo : lo + batch]
        np.einsum("ij,ij->i", sums[p[:, 0]], sums[p[:, 1]], out=out[lo : lo + batch])
    return out


def _mean_distance_scores(pairs: np.ndarray, crops: np.ndarray, chunk: int) -> np.ndarray:
    """`-mean_ij ||n_i - m_j||` per pair from normalised crops `[U, K, D]`, `chunk` pairs
    at a time in numpy (memory O(chunk * K * D)).

    `||n - m||^2 = |n|^2 + |m|^2 - 2 <n, m>` takes one batched matmul per chunk; where that
    is below `NEAR` (near-identical crops, where the expansion loses the digits the square
    root then magnifies) the pair is recomputed from its difference, as `torch.cdist` does.
    """
    sq = np.einsum("ukd,ukd->uk", crops, crops)
    out = np.empty(len(pairs), dtype=np.float32)
    for lo in range(0, len(pairs), chunk):
        p = pairs[lo : lo + chunk]
        a, b = crops[p[:, 0]], crops[p[:, 1]]
        d2 = sq[p[:, 0], :, None] + sq[p[:, 1], None, :] - 2 * np.matmul(a, b.transpose(0, 2, 1))
        t, i, j = np.nonzero(d2 < NEAR)
        if len(t):
            diff = a[t, i] - b[t, j]
            d2[t, i, j] = np.einsum("nd,nd->n", diff, diff)
        out[lo : lo + chunk] = -np.sqrt(np.maximum(d2, 0)).mean(axis=(1, 2))
    return out


def write_scores(path: str | os.PathLike[str], trials: Trials, scores: np.ndarray) -> None:
    """Write one `utt1 utt2 score [label]` line per trial (Kaldi / wespeaker score files),
    atomically. Scores are printed with 9 significant digits, which read back as the same
    float32 values; the label (1 target, 0 non-target) is left out where it is unknown."""
    names = trials.utterances

    def write(fh: Any) -> None:
        for (a, b), score, label in zip(trials.pairs, scores, trials.labels, strict=True):
            tail = "" if label < 0 else f" {int(label)}"
            fh.write(f"{names[a]} {names[b]} {float(score):.9g}{tail}\n")

    atomic_write(path, write)
