"""`cmkd eval`: evaluate a trained student without its teacher.

Speaker checkpoints: embed every unique utterance of a trial list once (ten 4 s crops,
wrap-padded), score trials by the mean over the 10x10 crop pairs, report EER and minDCF
(P_target 0.01, C_miss = C_fa = 1), optionally after mixing MUSAN noise into every test
utterance at a given SNR (paper A Eq. 13, seeded per utterance so both sides of a trial
are reproducible). Classification checkpoints: accuracy on the recipe's test split.
Segmentation checkpoints: mIoU, pixel accuracy and the IoU of each class (`per_class`, null
for a class absent from both predictions and labels) on the test split at full resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from rich.table import Table

from cmkd_cli import console
from cmkd_cli.config import validate_recipe
from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.datasets import build_data
from cmkd_cli.data.fbank import FbankConfig, FbankStore, compute_fbank, crop_frames
from cmkd_cli.data.manifest import read_manifest, resolve
from cmkd_cli.data.noise import NoiseBank
from cmkd_cli.data.speaker import evenly_spaced_crops, open_store, utterance_key
from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.engine.distributed import init_distributed, select_device
from cmkd_cli.engine.loop import make_loaders
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.metrics.plots import plot_det
from cmkd_cli.metrics.trials import Scoring, Trials, read_trials, score_trials
from cmkd_cli.metrics.verification import compute_eer, compute_min_dcf, det_curve
from cmkd_cli.models.registry import create_model
from cmkd_cli.progress import track
from cmkd_cli.stages.options import EmbedOptions
from cmkd_cli.tasks import build_task
from cmkd_cli.tasks.speaker import scoring

#: standard trial lists: name -> (original file, cleaned file)
TRIAL_LISTS = {
    "voxceleb1-o": ("veri_test.txt", "veri_test2.txt"),
    "voxceleb1-e": ("list_test_all.txt", "list_test_all2.txt"),
    "voxceleb1-h": ("list_test_hard.txt", "list_test_hard2.txt"),
    "cnceleb": ("trials.txt", "trials.txt"),
}


class EvalOptions(EmbedOptions):
    """`cmkd eval` and `cmkd noise-test` (which asks for several `snrs`)."""

    checkpoint: Path = Field(description="a run's best.pt/last.pt")
    trials: list[str] = Field(default_factory=list, description="trial list names or files")
    manifest: Path | None = Field(None, description="manifest of the test utterances")
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


class EvalResult(BaseModel):
    checkpoint: str
    task: str
    results: list[TrialResult] = []
    metrics: dict[str, float] = {}
    per_class: dict[str, float | None] = {}


def load_student(
    checkpoint: Path, device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The student of a run checkpoint (best.pt/last.pt), rebuilt from its stored recipe
    (without its `pretrained` initial weights, which the checkpoint replaces anyway), with
    that recipe and the checkpoint's `data_spec`."""
    ckpt = load_checkpoint(checkpoint)
    recipe = ckpt.get("recipe") or {}
    if "student" not in ckpt or "student" not in recipe:
        raise UsageError(f"{checkpoint} is not a cmkd run checkpoint (no student or recipe)")
    spec = ckpt.get("data_spec") or {}
    params = {k: v for k, v in recipe["student"]["params"].items() if k != "pretrained"}
    model = create_model(
        recipe["student"]["name"], spec.get("num_classes"), params, field="student"
    )
    model.load_state_dict(ckpt["student"])
    return model.to(device).eval(), recipe, spec


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
    manifest: Path, fbank: Path | None, cfg: FbankConfig, noise: Any, snr: float | None
) -> Callable[[str], np.ndarray]:
    """id -> fbank frames: from the store when clean, else decoded (and noised) audio."""
    if fbank is not None and snr is None:
        store = FbankStore(fbank)
        return lambda uid: np.asarray(store[uid], dtype=np.float32)
    audio = {r.id: resolve(manifest, r.audio) for r in read_manifest(manifest) if r.audio}

    def compute(uid: str) -> np.ndarray:
        if uid not in audio:
            raise DataError(f"utterance {uid} is not in the manifest {manifest}")
        wave, _ = load_audio(audio[uid], cfg.sample_rate)
        if snr is not None:
            wave = noise.mix(wave, uid, snr)
        return compute_fbank(wave, cfg, key=uid)

    return compute


@torch.no_grad()
def embed_utterances(
    model: torch.nn.Module,
    ids: list[str],
    features: Callable[[str], np.ndarray],
    device: torch.device,
    crops: int = 10,
    seconds: float = 4.0,
    batch_size: int = 8,
    cfg: FbankConfig | None = None,
) -> torch.Tensor:
    """`[U, crops, D]` embeddings, `batch_size` utterances per forward pass; a crop of
    `seconds` has the frames `cfg`'s front-end gives it (`fbank.crop_frames`)."""
    frames = crop_frames(seconds, cfg or FbankConfig())
    out = []
    chunks = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    for chunk in track(chunks, len(ids), "embedding utterances", size=len):
        x = np.stack([evenly_spaced_crops(features(u), frames, crops) for u in chunk])
        emb = model(torch.from_numpy(x).to(device).flatten(0, 1)).embedding.float()
        out.append(emb.view(len(chunk), crops, -1).cpu())
    return torch.cat(out)


def verify(
    model: torch.nn.Module,
    trials: Trials,
    path: Path,
    features: Callable[[str], np.ndarray],
    device: torch.device,
    snr: float | None,
    det: Path | None,
    batch_size: int,
    crops: int = 10,
    crop_seconds: float = 4.0,
    cfg: FbankConfig | None = None,
    scoring: Scoring | None = None,
) -> TrialResult:
    scoring = scoring or Scoring()
    ids = [utterance_key(u) for u in trials.utterances]
    emb = embed_utterances(model, ids, features, device, crops, crop_seconds, batch_size, cfg)
    scores = score_trials(trials, emb, score=scoring.score)
    eer, _ = compute_eer(scores, trials.labels)
    min_dcf, _ = compute_min_dcf(
        scores, trials.labels, scoring.p_target, scoring.c_miss, scoring.c_fa
    )
    png = None
    if det is not None:
        far, frr = det_curve(scores, trials.labels)
        png = str(plot_det(far, frr, det, label=f"{path.name} EER {100 * eer:.2f}%"))
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
    )


def run(options: EvalOptions) -> EvalResult:
    o = options
    dev = select_device(o.device)
    model, recipe, spec = load_student(o.checkpoint, dev)
    task = recipe.get("task", "classification")
    if task != "speaker":
        return evaluate_classification(o.checkpoint, model, recipe, dev)
    scoring = scoring_for(recipe, score=o.score, p_target=o.p_target, c_miss=o.c_miss, c_fa=o.c_fa)
    if o.manifest is None:
        raise UsageError("--manifest is required for speaker checkpoints (the test utterances)")
    if any(s is not None for s in o.snrs) and o.musan is None:
        raise UsageError("--musan DIR is required with --musan-snr/--snr")
    noise = None
    if o.musan is not None:
        noise = NoiseBank(o.musan)
    cfg = student_features(recipe, spec)
    if o.fbank is not None:
        cfg = open_store(str(o.fbank), cfg, "--fbank").config
    results = []
    names = o.trials or ["voxceleb1-o"]
    for name in names:
        path = resolve_trials(name, o.lists, o.manifest, o.original)
        parsed = read_trials(path)
        for snr in o.snrs:
            feats = utterance_fbanks(o.manifest, o.fbank, cfg, noise, snr)
            png = det_path(o.det, path, snr, several=len(names) * len(o.snrs) > 1)
            results.append(
                verify(
                    model,
                    parsed,
                    path,
                    feats,
                    dev,
                    snr,
                    png,
                    o.batch_size,
                    o.crops,
                    o.crop_seconds,
                    cfg,
                    scoring,
                )
            )
            if png is not None:
                console.info(f"DET curve: {png}")
    return EvalResult(checkpoint=str(o.checkpoint), task=task, results=results)


def det_path(det: Path | None, trials: Path, snr: float | None, several: bool) -> Path | None:
    """Where the DET PNG of one trial list and noise level goes: `--det` itself for a single
    curve; `<stem>-<list>[-snrN].png` beside it when one evaluation draws several."""
    if det is None or not several:
        return det
    tag = trials.stem + ("" if snr is None else f"-snr{snr:g}")
    return det.with_name(f"{det.stem}-{tag}{det.suffix or '.png'}")


def scoring_for(recipe: dict[str, Any], **given: Any) -> Scoring:
    """The values `given` (score, p_target, c_miss, c_fa; None: not given), else those of
    the checkpoint recipe's speaker task (`task_params`; the task's defaults for a recipe
    that sets none: cosine, 0.01, 1, 1)."""
    stored = build_task("speaker", 0, recipe.get("task_params") or {}).scoring
    return scoring(
        "--", **{**stored.model_dump(), **{k: v for k, v in given.items() if v is not None}}
    )


def student_features(recipe: dict[str, Any], spec: dict[str, Any]) -> FbankConfig:
    """The features a speaker student was trained on: recorded in its checkpoint's
    `data_spec`; for a checkpoint from before that, its training store's config when the
    store is still there, else the Kaldi defaults (the only front-end then)."""
    if spec.get("features"):
        return FbankConfig.model_validate(spec["features"])
    store = recipe.get("data", {}).get("params", {}).get("train_fbank")
    if store and Path(store).is_dir():
        return FbankStore(store).config
    return FbankConfig()


def evaluate_classification(
    checkpoint: Path, model: torch.nn.Module, recipe: dict[str, Any], device: torch.device
) -> EvalResult:
    """The task's metrics of the student on the recipe's test split (+ per-class IoU)."""
    r = validate_recipe(recipe, origin=f"{checkpoint} (stored recipe)")
    data = build_data(r.data)
    loaders = make_loaders(data, r, init_distributed(str(device.type)))
    task = build_task(r.task, data.num_classes, r.task_params)
    if not hasattr(task, "confusion"):
        metrics = task.evaluate(model, loaders["test"], device)
        return EvalResult(checkpoint=str(checkpoint), task=r.task, metrics=metrics)
    cm = task.confusion(model, loaders["test"], device)
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
            t.add_row(k, f"{v:.4f}")
        for name, iou in result.per_class.items():
            t.add_row(f"IoU {name}", "-" if iou is None else f"{iou:.4f}")
        return t
    for c in ("trials", "noise", "trials (target)", "EER", "minDCF"):
        t.add_column(c)
    for r in result.results:
        noise = "clean" if r.snr_db is None else f"{r.snr_db:g} dB"
        t.add_row(
            r.trials,
            noise,
            f"{r.n_trials} ({r.n_target})",
            f"{100 * r.eer:.2f}%",
            f"{r.min_dcf:.3f}",
        )
    return t
