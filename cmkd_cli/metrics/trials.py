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

_VOX_LABELS = {"1": 1, "0": 0}
_CNCELEB_LABELS = {"1": 1, "0": 0, "target": 1, "nontarget": 0}


@dataclass(frozen=True)
class Trials:
    """A parsed trial list.

    `utterances`: sorted distinct utterance names (paths as written in the list).
    `pairs`: int64 `[N, 2]`, row indices into `utterances` (enrollment side, test side).
    `labels`: int8 `[N]`, 1 for a target (same speaker) trial, 0 for a non-target one.
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
    """Parse three-field lines; `layout` names the columns, one of them `label`."""
    path = Path(path)
    li = layout.split().index("label")
    ai, bi = (c for c in range(3) if c != li)
    known = None if known_utterances is None else set(known_utterances)
    first, second, labels = [], [], []
    for n, line in _lines(path):
        tok = line.split()
        if not tok:
            raise DataError(f"{path}:{n}: blank line in the trial list")
        if len(tok) != 3:
            raise DataError(
                f"{path}:{n}: expected 3 fields ({layout}), found {len(tok)}: {line.strip()!r}"
            )
        label = labels_ok.get(tok[li].lower())
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
    -H). With `known_utterances`, every utterance must be one of them. A blank line, a label
    other than 0/1, a line without exactly three fields or an unknown utterance is a
    `DataError` naming the file and line.
    """
    return _parse(path, "label utt1 utt2", _VOX_LABELS, known_utterances)


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
    "same speaker".

    `embeddings` (torch or numpy) has one row per `trials.utterances` entry, in that order:
    `[U, D]`, or `[U, K, D]` for K crops per utterance. With `n_i`, `m_j` the L2-normalised
    crops of the two utterances (a zero crop stays zero):

    * `cosine`: the mean cosine over all K x K crop pairs (10 x 10 = 100 in paper A),
      computed exactly through the identity

          mean_ij cos(a_i, b_j) = mean_ij <n_i, m_j> = <sum_i n_i, sum_j m_j> / K^2

      The crop sums are formed once per utterance (in torch, on the embeddings' device),
      then trials are scored `batch` at a time in numpy on the CPU, so memory is
      O(U * D + batch * D) whatever the number of trials. The default chunk keeps the
      gathered rows in the CPU cache; numpy runs it on one thread, so it stays fast on a busy
      machine (`benchmarks/scoring.py`).
    * `distance`: minus the mean Euclidean distance over the K x K pairs,
      `-mean_ij ||n_i - m_j||` (voxceleb_trainer's `evaluateFromList` with a normalising
      loss, and paper A's "mean distance"), `batch // K` trials at a time in numpy on the
      CPU (equal to the reference's per-trial `torch.cdist` to float32 rounding).
      It ranks trials almost as `cosine` does (`||n - m|| = sqrt(2 - 2 cos)` is monotone
      per pair, not for the mean), so EERs differ in the second decimal at most; with one
      embedding per utterance the two orders are identical.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    emb = (
        embeddings
        if isinstance(embeddings, torch.Tensor)
        else torch.from_numpy(np.asarray(embeddings))
    )
    if emb.dim() not in (2, 3):
        raise ValueError(f"embeddings must be [U, D] or [U, K, D], got shape {tuple(emb.shape)}")
    if emb.shape[0] != len(trials.utterances):
        raise DataError(
            f"the embeddings have {emb.shape[0]} rows but the trial list names "
            f"{len(trials.utterances)} utterances"
        )
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    emb = emb.detach()
    if not emb.is_floating_point() or emb.dtype in (torch.float16, torch.bfloat16):
        emb = emb.float()
    if emb.dim() == 2:
        emb = emb.unsqueeze(1)
    k = emb.shape[1]
    if score == "distance":
        crops = F.normalize(emb, dim=-1).float().cpu().numpy()
        return _mean_distance_scores(trials, crops, max(1, batch // k))
    # [U, D] with <sums[a], sums[b]> the mean crop-pair cosine of a and b
    sums = (F.normalize(emb, dim=-1).sum(dim=1) / k).float().cpu().numpy()
    out = np.empty(len(trials), dtype=np.float32)
    for lo in range(0, len(trials), batch):
        p = trials.pairs[lo : lo + batch]
        np.einsum("ij,ij->i", sums[p[:, 0]], sums[p[:, 1]], out=out[lo : lo + batch])
    return out


def _mean_distance_scores(trials: Trials, crops: np.ndarray, chunk: int) -> np.ndarray:
    """`-mean_ij ||n_i - m_j||` per trial from normalised crops `[U, K, D]`, `chunk` trials
    at a time in numpy (memory O(chunk * K * D)).

    `||n - m||^2 = |n|^2 + |m|^2 - 2 <n, m>` takes one batched matmul per chunk; where that
    is below `NEAR` (near-identical crops, where the expansion loses the digits the square
    root then magnifies) the pair is recomputed from its difference, as `torch.cdist` does.
    """
    sq = np.einsum("ukd,ukd->uk", crops, crops)
    out = np.empty(len(trials), dtype=np.float32)
    for lo in range(0, len(trials), chunk):
        p = trials.pairs[lo : lo + chunk]
        a, b = crops[p[:, 0]], crops[p[:, 1]]
        d2 = sq[p[:, 0], :, None] + sq[p[:, 1], None, :] - 2 * np.matmul(a, b.transpose(0, 2, 1))
        t, i, j = np.nonzero(d2 < NEAR)
        if len(t):
            diff = a[t, i] - b[t, j]
            d2[t, i, j] = np.einsum("nd,nd->n", diff, diff)
        out[lo : lo + chunk] = -np.sqrt(np.maximum(d2, 0)).mean(axis=(1, 2))
    return out
