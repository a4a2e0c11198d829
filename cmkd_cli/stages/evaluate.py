"""`cmkd eval`: evaluate a trained student without its teacher.

Speaker checkpoints (a run's best.pt or a student.pt): embed every unique utterance of a
trial list once with the student's stored crop policy (paper A: ten 4 s crops,
wrap-padded) through `Student.crop_embeddings`, the code path of the Python API, score
trials by the mean over the 10x10 crop pairs (`score_trials`), report EER and minDCF
(P_target 0.01, C_miss = C_fa = 1) and, with `--scores-out`, write every trial's score;
optionally after mixing MUSAN noise into every test utterance at a given SNR (paper A
Eq. 13, seeded per utterance so both sides of a trial are reproducible). Classification
checkpoints: accuracy on the recipe's test split (read from the stored recipe).
Segmentation checkpoints: mIoU, pixel accuracy and the IoU of each class (`per_class`, null
for a class absent from both predictions and labels) on the test split at full resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from rich.table import Table

from cmkd_cli import console, units
from cmkd_cli.config import rebind_variables, validate_recipe
from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.datasets import build_data
from cmkd_cli.data.fbank import FbankStore
from cmkd_cli.data.manifest import read_manifest, resolve
from cmkd_cli.data.noise import NoiseBank
from cmkd_cli.data.speaker import open_store, utterance_key
from cmkd_cli.engine.distributed import init_distributed
from cmkd_cli.engine.loop import make_loaders
from cmkd_cli.errors import CmkdError, DataError, UsageError
from cmkd_cli.metrics.plots import plot_det
from cmkd_cli.metrics.trials import Scoring, Trials, read_trials, score_trials, write_scores
from cmkd_cli.metrics.verification import compute_eer, compute_min_dcf, det_curve
from cmkd_cli.options.common import EmbedOptions
from cmkd_cli.progress import track
from cmkd_cli.student.api import Student, load
from cmkd_cli.tasks import build_task

#: standard trial lists: name -> (original file, cleaned file)
TRIAL_LISTS = {
    "voxceleb1-o": ("veri_test.txt", "veri_test2.txt"),
    "voxceleb1-e": ("list_test_all.txt", "list_test_all2.txt"),
    "voxceleb1-h": ("list_test_hard.txt", "list_test_hard2.txt"),
    "cnceleb": ("trials.txt", "trials.txt"),
}


class EvalOptions(EmbedOptions):
    """`cmkd eval` and `cmkd noise-test` (which asks for several `snrs`)."""

    checkpoint: Path = Field(description="student.pt or a run's best.pt/last.pt")
    trials: list[str] = Field(default_factory=list, description="trial list names or files")
    manifest: Path | None = Field(
        None, description="speaker: the test utterances; others: the dataset (default: the run's)"
    )
    variables: dict[str, str] = Field(
        default_factory=dict, description="the run's ${name} path variables given again"
    )
    fbank: Path | None = Field(None, description="fbank store of the test utterances")
    lists: Path | None = Field(None, description="folder of the trial lists")
    original: bool = Field(False, description="the original VoxCeleb lists, not the cleaned")
    musan: Path | None = Field(None, description="MUSAN root or its manifest")
    snrs: list[float | None] = Field([None], description="noise levels in dB (None: clean)")
    det: Path | None = Field(None, description="write DET curve PNG(s) here")
    score: str | None = Field(None, description="cosine | distance (None: the checkpoint's)")
    p_target: float | None = Field(None, description="minDCF P_target (None: the checkpoint's)")
    c_miss: float | None = Field(None, description="minDCF C_miss (None: the checkpoint's)")
    c_fa: float | None = Field(None, description="minDCF C_fa (None: the checkpoint's)")
    scores_out: Path | None = Field(None, description="write every trial's score here")


class TrialResult(BaseModel):
    trials: str
    path: str
    snr_db: float | None
    n_trials: int
    n_target: int
    utterances: int
    eer: float
    min_dcf: float
    scoring: Scoring = Scoring()
    det_png: str | None = None
    scores: str | None = None


class EvalResult(BaseModel):
    checkpoint: str
    task: str
    results: list[TrialResult] = []
    metrics: dict[str, float] = {}
    per_class: dict[str, float | None] = {}


def resolve_trials(name: str, lists: Path | None, manifest: Path, original: bool) -> Path:
    """A trial list by name (voxceleb1-o/-e/-h, cnceleb; cleaned unless `original`) or path."""
    if name not in TRIAL_LISTS:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"--trials {name}: neither a file nor one of {', '.join(TRIAL_LISTS)}")
        return path
    filename = TRIAL_LISTS[name][0 if original else 1]
    base = manifest if manifest.is_dir() else manifest.parent
    for folder in [p for p in (lists, base / "lists", base) if p is not None]:
        if (folder / filename).is_file():
            return folder / filename
    raise UsageError(
        f"--trials {name}: {filename} not found in --lists or next to the manifest {manifest}"
    )


def utterance_fbanks(
    student: Student, manifest: Path, fbank: Path | None, noise: Any, snr: float | None
) -> Callable[[str], Any]:
    """id -> fbank frames: from the store when clean, else the manifest's audio through the
    student's own front-end (`Student.features`), noised first when `snr` is given."""
    if fbank is not None and snr is None:
        store = FbankStore(fbank)
        return lambda uid: store[uid]
    audio = {r.id: resolve(manifest, r.audio) for r in read_manifest(manifest) if r.audio}
    rate = student.input.sample_rate

    def compute(uid: str) -> Any:
        if uid not in audio:
            raise DataError(f"utterance {uid} is not in the manifest {manifest}")
        wave, _ = load_audio(audio[uid], rate)
        if snr is not None:
            wave = noise.mix(wave, uid, snr)
        return student.features((wave, rate)).cpu()

    return compute


def check_store(student: Student, fbank: Path | None) -> None:
    """A feature store must hold the student's features (`open_store`: same front-end, mel
    bands and framing; storage dtype, dither and CMN may differ)."""
    if fbank is not None:
        open_store(str(fbank), student.input.fbank, "--fbank")


def check_available(trials: Trials, path: Path, manifest: Path, fbank: Path | None) -> None:
    """Every utterance of the list must have features (the store) or audio (the manifest);
    the first that has not is named with its line of the list."""
    if fbank is not None:
        have, where = set(FbankStore(fbank).ids), f"the fbank store {fbank}"
    else:
        have = {r.id for r in read_manifest(manifest) if r.audio}
        where = f"the manifest {manifest} (with audio)"
    missing = [u for u in trials.utterances if utterance_key(u) not in have]
    if not missing:
        return
    line = next(
        (
            n
            for n, text in enumerate(path.read_text().splitlines(), 1)
            if missing[0] in text.split()
        ),
        "?",
    )
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise DataError(f"{path}:{line}: utterance {missing[0]} is not in {where}{more}")


def verify(
    student: Student,
    trials: Trials,
    path: Path,
    features: Callable[[str], Any],
    snr: float | None,
    det: Path | None,
    scores_out: Path | None,
    batch_size: int,
    scoring: Scoring | None = None,
) -> TrialResult:
    """Embed each utterance of `trials` once (`Student.crop_embeddings`), score every trial
    (`score_trials` with `scoring.score`), report EER and minDCF; write the DET plot and the
    scores if asked."""
    scoring = scoring or Scoring()
    ids = [utterance_key(u) for u in trials.utterances]
    emb = embed_utterances(student, ids, features, batch_size)
    scores = score_trials(trials, emb, score=scoring.score)
    eer, _ = compute_eer(scores, trials.labels)
    min_dcf, _ = compute_min_dcf(
        scores, trials.labels, scoring.p_target, scoring.c_miss, scoring.c_fa
    )
    png = None
    if det is not None:
        far, frr = det_curve(scores, trials.labels)
        png = str(plot_det(far, frr, det, label=f"{path.name} EER {units.percent(eer)}"))
    if scores_out is not None:
        write_scores(scores_out, trials, scores)
    return TrialResult(
        trials=path.name,
        path=str(path),
        snr_db=snr,
        n_trials=len(trials),
        n_target=trials.num_target,
        utterances=len(ids),
        eer=float(eer),
        min_dcf=float(min_dcf),
        scoring=scoring,
        det_png=png,
        scores=None if scores_out is None else str(scores_out),
    )


def embed_utterances(
    student: Student, ids: list[str], features: Callable[[str], Any], batch_size: int
) -> torch.Tensor:
    """`[U, K, D]` crop embeddings of the utterances `ids` (`Student.crop_embeddings` over
    `features(id)`), `batch_size` utterances a pass; the progress counts utterances."""
    feats = track((features(u) for u in ids), total=len(ids), description="embedding utterances")
    return student.crop_embeddings(feats, batch_size)


def result_path(
    base: Path | None, trials: Path, snr: float | None, several: bool, suffix: str
) -> Path | None:
    """Where one trial list and noise level's file goes: `base` itself for a single result;
    `<stem>-<list>[-snrN]<suffix>` beside it when one evaluation has several."""
    if base is None or not several:
        return base
    tag = trials.stem + ("" if snr is None else f"-snr{snr:g}")
    return base.with_name(f"{base.stem}-{tag}{base.suffix or suffix}")


def det_path(det: Path | None, trials: Path, snr: float | None, several: bool) -> Path | None:
    """Where the DET PNG of one trial list and noise level goes (`result_path`)."""
    return result_path(det, trials, snr, several, ".png")


def run(options: EvalOptions) -> EvalResult:
    """Speaker students: EER/minDCF per trial list and noise level, with the stored crop
    policy and scoring unless the options give them. Others: the test split's metrics."""
    o = options
    student = load(o.checkpoint, o.device)
    if not student.is_speaker:
        return evaluate_classification(o.checkpoint, student, o.manifest, o.variables)
    if o.variables:
        raise UsageError(
            "--var: a speaker checkpoint reads its test data from --manifest/--fbank, "
            "not from the run's paths"
        )
    scoring = student.scoring_with(score=o.score, p_target=o.p_target, c_miss=o.c_miss, c_fa=o.c_fa)
    if o.manifest is None:
        raise UsageError("--manifest is required for speaker checkpoints (the test utterances)")
    if any(s is not None for s in o.snrs) and o.musan is None:
        raise UsageError("--musan DIR is required with --musan-snr/--snr")
    student.with_crops(o.crops, o.crop_seconds)
    noise = NoiseBank(o.musan) if o.musan is not None else None
    check_store(student, o.fbank)
    names = o.trials or ["voxceleb1-o"]
    several = len(names) * len(o.snrs) > 1
    results = []
    for name in names:
        path = resolve_trials(name, o.lists, o.manifest, o.original)
        parsed = read_trials(path)
        for snr in o.snrs:
            check_available(parsed, path, o.manifest, o.fbank if snr is None else None)
            feats = utterance_fbanks(student, o.manifest, o.fbank, noise, snr)
            png = det_path(o.det, path, snr, several)
            results.append(
                verify(
                    student,
                    parsed,
                    path,
                    feats,
                    snr,
                    png,
                    result_path(o.scores_out, path, snr, several, ".txt"),
                    o.batch_size,
                    scoring,
                )
            )
            if png is not None:
                console.info(f"DET curve: {png}")
    return EvalResult(checkpoint=str(o.checkpoint), task=student.task, results=results)


def evaluate_classification(
    checkpoint: Path,
    student: Student,
    manifest: Path | None = None,
    variables: dict[str, str] | None = None,
) -> EvalResult:
    """The task's metrics of the student on the recipe's test split (+ per-class IoU), read
    from the data the run used (its recorded absolute paths), from those paths with the
    `variables` given again (`--var data_root=/new/place`), or from `manifest` (the prepared
    dataset given with --manifest) in place of the recipe's `data.params.manifest`."""
    recipe = student.package["recipe"]
    if variables:
        recipe = rebind_variables(recipe, variables, str(checkpoint))
    r = validate_recipe(recipe, origin=f"{checkpoint} (stored recipe)")
    if manifest is not None:
        if "manifest" not in r.data.params:
            raise UsageError(
                f"--manifest: the data of {checkpoint} (`{r.data.name}`) reads no manifest"
            )
        params = {**r.data.params, "manifest": str(manifest.resolve())}
        r = r.model_copy(update={"data": r.data.model_copy(update={"params": params})})
    try:
        data = build_data(r.data)
    except CmkdError as exc:  # data that moved: say how to point eval at it
        used = ", ".join(f"{k}={v}" for k, v in r.variables.values.items())
        raise type(exc)(
            f"{exc}; give the test data with --manifest PATH"
            + (f" or --var NAME=PATH (the run used {used})" if used else "")
        ) from None
    if len(data.test) == 0:
        raise DataError(f"{checkpoint}: the recipe's test split ({r.data.name}) holds no samples")
    loaders = make_loaders(data, r, init_distributed(student.device.type))
    task = build_task(r.task, data.num_classes, r.task_params)
    model, dev = student.model, student.device
    if not hasattr(task, "confusion"):
        metrics = task.evaluate(model, loaders["test"], dev)
        return EvalResult(checkpoint=str(checkpoint), task=r.task, metrics=metrics)
    cm = task.confusion(model, loaders["test"], dev)
    ious = [None if v != v else v for v in cm.per_class_iou().tolist()]  # NaN: class unseen
    per_class = dict(zip(data.class_names, ious, strict=True))
    return EvalResult(
        checkpoint=str(checkpoint), task=r.task, metrics=cm.compute(), per_class=per_class
    )


def render(result: EvalResult) -> Table:
    t = Table(title=f"eval {result.checkpoint}")
    if not result.results:
        for c in ("metric", "value"):
            t.add_column(c)
        for k, v in result.metrics.items():
            t.add_row(k, units.show(k, v))
        for name, iou in result.per_class.items():
            t.add_row(f"IoU {name}", units.show("iou", iou))
        return t
    for c in ("trials", "noise", "trials (target)", "EER", "minDCF"):
        t.add_column(c)
    for r in result.results:
        noise = "clean" if r.snr_db is None else f"{r.snr_db:g} dB"
        t.add_row(
            r.trials,
            noise,
            f"{r.n_trials} ({r.n_target})",
            units.percent(r.eer),
            f"{r.min_dcf:.3f}",
        )
    return t
