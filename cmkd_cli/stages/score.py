"""`cmkd score`: a score for every trial of a list, as Kaldi and wespeaker write them.

Reads a trial list (VoxCeleb's `label utt1 utt2`, or `utt1 utt2` without labels), a
student and where the utterances are: `--manifest` (trial names are manifest ids, with or
without the extension; `--fbank` reads their stored features), `--root` (trial names are
files under it) or `--embeddings` (the folder `cmkd embed` wrote: its crops for speaker
students). Writes OUT with one `utt1 utt2 score [label]` line per trial, in the list's order
(`metrics.trials.write_scores`). Speaker students are scored as `cmkd eval` scores them
(the stored crop policy and scoring, `Student.crop_embeddings`, `score_trials`), so with the
same inputs the file holds eval's scores; with labels the result also gives EER and minDCF.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from cmkd_cli import units
from cmkd_cli.data.speaker import utterance_key
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.metrics.trials import Scoring, Trials, read_trial_pairs, score_trials, write_scores
from cmkd_cli.metrics.verification import compute_eer, compute_min_dcf
from cmkd_cli.options.common import EmbedOptions
from cmkd_cli.progress import track
from cmkd_cli.stages.embed import CROPS, EMBEDDINGS, IDS, INFO
from cmkd_cli.stages.evaluate import check_store, embed_utterances, utterance_fbanks
from cmkd_cli.student.api import Student, load
from cmkd_cli.tasks.speaker import scoring as speaker_scoring


class ScoreOptions(EmbedOptions):
    """`cmkd score`: which student, which trials, where the utterances are."""

    checkpoint: Path | None = Field(None, description="student.pt or a run's best.pt")
    trials: Path = Field(description="trial list")
    out: Path = Field(description="score file to write")
    manifest: Path | None = Field(None, description="trial names are this manifest's ids")
    fbank: Path | None = Field(None, description="fbank store of the manifest's utterances")
    root: Path | None = Field(None, description="trial names are files under this folder")
    embeddings: Path | None = Field(None, description="a `cmkd embed` output folder")
    score: str | None = Field(None, description="cosine | distance (default: stored)")
    p_target: float | None = Field(None, description="minDCF target prior (default: stored)")
    c_miss: float | None = Field(None, description="minDCF miss cost (default: stored)")
    c_fa: float | None = Field(None, description="minDCF false-alarm cost (default: stored)")


class ScoreResult(BaseModel):
    trials: str
    out: str
    n_trials: int
    n_target: int | None
    utterances: int
    scoring: Scoring
    eer: float | None = None
    min_dcf: float | None = None


def stored_embeddings(folder: Path, trials: Trials) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows of a `cmkd embed` folder in the order of `trials.utterances` (crops when there),
    and the student's scoring recorded there (speaker students; else cosine)."""
    ids_path = folder / IDS
    if not ids_path.is_file():
        raise DataError(f"--embeddings {folder}: no {IDS} (run `cmkd embed` first)")
    row = {uid: i for i, uid in enumerate(ids_path.read_text().splitlines())}
    emb = np.load(folder / (CROPS if (folder / CROPS).is_file() else EMBEDDINGS), mmap_mode="r")
    rows = []
    for name in trials.utterances:
        i = row.get(name, row.get(utterance_key(name)))
        if i is None:
            raise DataError(f"--embeddings {folder}: utterance {name} has no embedding in {IDS}")
        rows.append(i)
    info = folder / INFO
    scoring = (json.loads(info.read_text()).get("scoring") if info.is_file() else None) or {}
    return np.asarray(emb[rows], dtype=np.float32), scoring


def computed_embeddings(student: Student, trials: Trials, o: ScoreOptions) -> torch.Tensor:
    """Each trial utterance embedded once by the student (`[U, K, D]` for speakers)."""
    names = trials.utterances
    if o.manifest is not None:
        if not student.is_speaker:
            raise UsageError("--manifest scoring is for speaker students; give --root")
        check_store(student, o.fbank)
        feats = utterance_fbanks(student, o.manifest, o.fbank, None, None)
        return embed_utterances(student, [utterance_key(n) for n in names], feats, o.batch_size)
    if o.root is None:
        raise UsageError("give --manifest, --root or --embeddings: where the utterances are")
    chunks = [names[i : i + o.batch_size] for i in range(0, len(names), o.batch_size)]
    out = []
    for chunk in track(chunks, len(names), "embedding utterances", size=len):
        decoded = student.graph_inputs([o.root / n for n in chunk])
        out.append(student.embed_decoded(decoded, o.batch_size))
    return torch.cat(out)


def run(options: ScoreOptions) -> ScoreResult:
    o = options
    trials = read_trial_pairs(o.trials)
    sources = [x for x in (o.manifest, o.root, o.embeddings) if x is not None]
    if len(sources) > 1:
        raise UsageError("give one of --manifest, --root and --embeddings")
    emb: Any
    given = {"score": o.score, "p_target": o.p_target, "c_miss": o.c_miss, "c_fa": o.c_fa}
    if o.embeddings is not None:
        emb, recorded = stored_embeddings(o.embeddings, trials)
        stored = {**Scoring().model_dump(), **recorded}
        scoring = speaker_scoring(
            "--", **stored, **{k: v for k, v in given.items() if v is not None}
        )
    else:
        if o.checkpoint is None:
            raise UsageError("--checkpoint is required unless --embeddings is given")
        student = load(o.checkpoint, o.device).with_crops(o.crops, o.crop_seconds)
        scoring = student.scoring_with(**given)
        emb = computed_embeddings(student, trials, o)
    scores = score_trials(trials, emb, score=scoring.score)
    write_scores(o.out, trials, scores)
    labelled = bool((trials.labels >= 0).all())
    result = ScoreResult(
        trials=str(o.trials),
        out=str(o.out),
        n_trials=len(trials),
        n_target=trials.num_target if labelled else None,
        utterances=len(trials.utterances),
        scoring=scoring,
    )
    if labelled and 0 < trials.num_target < len(trials):
        s = scoring
        result.eer = compute_eer(scores, trials.labels)[0]
        result.min_dcf = compute_min_dcf(scores, trials.labels, s.p_target, s.c_miss, s.c_fa)[0]
    return result


def render(result: ScoreResult) -> str:
    line = f"{result.n_trials} trials ({result.utterances} utterances) scored into {result.out}"
    if result.eer is not None:
        line += f"; EER {units.percent(result.eer)}, minDCF {result.min_dcf:.3f}"
    return line
