"""`cmkd analyze RUN_DIR...`: the papers' analyses of a run or a study, as tables and PNGs.

- kept (paper B Fig. 3): per epoch, the fraction of training samples OFSD keeps
  (`stats/kept`, i.e. 1 - the share with KRC <= omega), one line per variant.
- krc (paper B Fig. 1b): per test sample, the Kendall tau-b between the teacher's and the
  student's logits; mean, share <= 0 and a histogram.
- cka (paper B Sec. 5, Fig. 6): linear CKA between student and teacher features: every stage
  (global-average-pooled to [N, C]) and the embedding, as a heat-map; stages are paired by
  relative depth and embedding with embedding.
- embeddings (paper A Fig. 8): a 2-D PCA (or t-SNE) of the teacher, projected teacher
  (`Method.shared_space`) and student embeddings, coloured by class, marker by source.
- cost (paper B appendix E, Table 3): mean training time per epoch and peak CUDA memory
  per variant.

Reads RUN_DIR/metrics.jsonl, config.yaml and best.pt (each VARIANT/seed-S/ of a study);
writes OUT/*.png and OUT/analysis.json (OUT defaults to the first RUN_DIR's analysis/).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from rich.console import Group
from rich.table import Table

from cmkd_cli.errors import UsageError
from cmkd_cli.io import atomic_write_json, read_jsonl
from cmkd_cli.schema import StrictModel

ANALYSES = ("kept", "krc", "cka", "embeddings", "cost")
CHECKPOINT_ANALYSES = ("krc", "cka", "embeddings")
SPLITS = ("train", "val", "test")
EMBEDDING = "embedding"


# ---------------------------------------------------------------------------- result model
class AnalyzeOptions(StrictModel):
    roots: list[Path] = Field(description="run or study directories")
    analyses: list[str] | None = Field(None, description="analyses asked (None: all that apply)")
    split: str = Field("test", description="train|val|test")
    max_samples: int = Field(2000, description="samples of the split used (seeded draw)")
    tsne: bool = Field(False, description="t-SNE instead of PCA")
    out: Path | None = Field(None, description="output folder (default RUN_DIR/analysis)")
    device: str = Field("auto", description="auto|cpu|cuda")


class KeptSeries(BaseModel):
    variant: str
    seeds: int
    source: str  # "epoch rows" (train/stats/kept) or "step rows" (mean of logged steps)
    epochs: list[int]
    kept: list[float]


class KrcRow(BaseModel):
    run: str
    checkpoint: str
    n: int
    mean: float
    median: float
    frac_nonpositive: float


class CkaPair(BaseModel):
    student: str
    teacher: str
    cka: float


class CkaResult(BaseModel):
    run: str
    checkpoint: str
    n: int
    student_features: list[str]
    teacher_features: list[str]
    matrix: list[list[float]]
    matched: list[CkaPair]
    plot: str


class EmbeddingPlot(BaseModel):
    run: str
    checkpoint: str
    n: int
    reducer: str
    panels: list[list[str]]  # the sources drawn (and reduced together) in each panel
    plot: str


class CostRow(BaseModel):
    variant: str
    method: str
    runs: int
    epochs: int
    epoch_time_s: float
    epoch_time_std: float
    peak_mem_mb: float | None  # None: not measured (CPU runs)


class AnalyzeResult(BaseModel):
    roots: list[str]
    out_dir: str
    split: str
    analyses: list[str]
    kept: list[KeptSeries] | None = None
    krc: list[KrcRow] | None = None
    cka: list[CkaResult] | None = None
    embeddings: list[EmbeddingPlot] | None = None
    cost: list[CostRow] | None = None
    plots: list[str] = []
    notes: list[str] = []


# ---------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One run directory: `label` is its variant (study) or its folder name (single run)."""

    dir: Path
    label: str
    seed: int | None
    method: str
    task: str
    rows: list[dict[str, Any]] = field(repr=False)

    @property
    def name(self) -> str:
        return self.label if self.seed is None else f"{self.label} seed {self.seed}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-").replace(" ", "-")


def discover(roots: list[Path]) -> list[Run]:
    """The runs under each root (a run directory, or a study's VARIANT/seed-S/ folders)."""
    import yaml

    from cmkd_cli.stages.distill import STUDY_FILE
    from cmkd_cli.stages.report import _run_dirs

    runs = []
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"{root} is not a directory")
        dirs = _run_dirs(root)
        if not dirs:
            raise UsageError(f"{root} holds no metrics.jsonl (is it a run or study directory?)")
        for d in dirs:
            config = d / "config.yaml"
            if not config.is_file():
                raise UsageError(f"{config} is missing (not a run written by `cmkd distill`)")
            recipe = yaml.safe_load(config.read_text()) or {}
            in_study = d.name.startswith("seed-") and (d.parent.parent / STUDY_FILE).is_file()
            study = d != root or in_study
            label = d.resolve().parent.name if study else d.resolve().name
            if d != root and len(roots) > 1:
                label = f"{root.resolve().name}/{label}"
            runs.append(
                Run(
                    dir=d,
                    label=label,
                    seed=int(d.name.removeprefix("seed-")) if study else None,
                    method=str((recipe.get("method") or {}).get("name", "?")),
                    task=str(recipe.get("task", "classification")),
                    rows=read_jsonl(d / "metrics.jsonl"),
                )
            )
    return runs


def _number(v: Any) -> float | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _by_label(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    return groups


# ---------------------------------------------------------------------------- kept (Fig. 3)
def kept_per_epoch(rows: list[dict[str, Any]]) -> tuple[dict[int, float], str] | None:
    """Per epoch, the fraction of samples the selector kept: the epoch row's
    `train/stats/kept` (the mean over every step), else the mean of the logged step rows'
    `stats/kept`; None when the run logged neither."""
    exact = {
        int(r["epoch"]): v
        for r in rows
        if r.get("kind") == "epoch" and (v := _number(r.get("train/stats/kept"))) is not None
    }
    if exact:
        return exact, "epoch rows"
    steps: dict[int, list[float]] = {}
    for r in rows:
        if r.get("kind") == "step" and (v := _number(r.get("stats/kept"))) is not None:
            steps.setdefault(int(r["epoch"]), []).append(v)
    if steps:
        return {e: statistics.fmean(v) for e, v in steps.items()}, "step rows"
    return None


def kept_series(runs: list[Run]) -> list[KeptSeries]:
    """One series per variant: the per-epoch kept fraction averaged over its seeds."""
    out = []
    for label, group in _by_label(runs).items():
        found = [k for r in group if (k := kept_per_epoch(r.rows)) is not None]
        if not found:
            continue
        epochs = sorted({e for per, _ in found for e in per})
        out.append(
            KeptSeries(
                variant=label,
                seeds=len(found),
                source=", ".join(sorted({src for _, src in found})),
                epochs=epochs,
                kept=[statistics.fmean(per[e] for per, _ in found if e in per) for e in epochs],
            )
        )
    return out


def plot_kept(series: list[KeptSeries], path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    from cmkd_cli.metrics.plots import _figure, _save

    fig = _figure()
    ax = fig.add_subplot()
    for s in series:
        ax.plot([e + 1 for e in s.epochs], s.kept, marker=".", label=s.variant)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of samples kept (score > omega)")
    ax.set_ylim(0, 1.02)
    ax.set_title("OFSD sample selection over training (C2KD Fig. 3)")
    ax.grid(True, alpha=0.4)
    ax.legend()
    return _save(fig, path)


# ------------------------------------------------------------------------ cost (appendix E)
def cost_rows(runs: list[Run]) -> list[CostRow]:
    """Per variant: mean (and std) of `epoch_time_s` over its epoch rows, and the largest
    `peak_mem_bytes` of its runs (None when no run measured it: CPU runs)."""
    out = []
    for label, group in _by_label(runs).items():
        epochs = [r for run in group for r in run.rows if r.get("kind") == "epoch"]
        times = [t for r in epochs if (t := _number(r.get("epoch_time_s"))) is not None]
        if not times:
            continue
        mem = [m for r in epochs if (m := _number(r.get("peak_mem_bytes"))) is not None]
        out.append(
            CostRow(
                variant=label,
                method=group[0].method,
                runs=len(group),
                epochs=len(times),
                epoch_time_s=statistics.fmean(times),
                epoch_time_std=statistics.pstdev(times),
                peak_mem_mb=max(mem) / 2**20 if mem else None,
            )
        )
    return out


def plot_cost(rows: list[CostRow], path: Path) -> Path:
    """Bars of time per epoch and, when measured (CUDA), of peak memory per variant."""
    from cmkd_cli.metrics.plots import _figure, _save

    memory = any(r.peak_mem_mb is not None for r in rows)
    fig = _figure(rows=2 if memory else 1, height=3.2)
    axes = fig.subplots(2 if memory else 1, 1, squeeze=False)[:, 0]
    names = [r.variant for r in rows]
    axes[0].bar(names, [r.epoch_time_s for r in rows], yerr=[r.epoch_time_std for r in rows])
    axes[0].set_ylabel("time per epoch (s)")
    axes[0].set_title(
        "training cost per method (C2KD appendix E)"
        + ("" if memory else "\npeak memory: n/a on CPU")
    )
    if memory:
        axes[1].bar(names, [r.peak_mem_mb or 0.0 for r in rows], color="tab:orange")
        axes[1].set_ylabel("peak CUDA memory (MB)")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)


# -------------------------------------------------------------------- checkpoint features
@dataclass
class Features:
    """Outputs of student and teacher on one split: labels, logits and pooled features
    (`[N, C]` per stage path, then `embedding`)."""

    y: torch.Tensor
    student_logits: torch.Tensor | None
    teacher_logits: torch.Tensor | None
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]


def pool(f: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a `[B, C, ...]` feature to `[B, C]`."""
    return f.float().flatten(2).mean(-1) if f.dim() > 2 else f.float()


def split_subset(dataset: Any, split: str, max_samples: int) -> Any:
    """At most `max_samples` samples of `dataset`, a seeded draw when it is larger."""
    from torch.utils.data import Subset

    from cmkd_cli.data.datasets import keyed_rng

    if len(dataset) <= max_samples:
        return dataset
    idx = keyed_rng("analyze", split).choice(len(dataset), max_samples, replace=False)
    return Subset(dataset, sorted(int(i) for i in idx))


@torch.no_grad()
def extract(method: Any, dataset: Any, batch_size: int, device: torch.device) -> Features:
    """Run student (`batch[input_key]`) and teacher (`batch["t"]`) over `dataset`."""
    from torch.utils.data import DataLoader

    from cmkd_cli.methods._feature_common import feature_source

    sources = {
        role: [
            feature_source(method, model, i, f"{role}.stage_paths[{i}]")
            for i in range(len(getattr(model, "stage_paths", [])))
        ]
        for role, model in (("student", method.student), ("teacher", method.teacher))
    }
    feats: dict[str, dict[str, list[torch.Tensor]]] = {"student": {}, "teacher": {}}
    logits: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    ys = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        outs = {
            "student": method.student(batch[method.input_key].to(device)),
            "teacher": method.teacher(batch["t"].to(device)),
        }
        for role, out in outs.items():
            for src in sources[role]:
                feats[role].setdefault(src.path, []).append(pool(src.read(out)).cpu())
            feats[role].setdefault(EMBEDDING, []).append(pool(out.embedding).cpu())
            if out.logits is not None:
                logits[role].append(out.logits.float().cpu())
        ys.append(torch.as_tensor(batch["y"]))

    def cat(parts: list[torch.Tensor]) -> torch.Tensor | None:
        return torch.cat(parts) if parts else None

    return Features(
        y=torch.cat(ys),
        student_logits=cat(logits["student"]),
        teacher_logits=cat(logits["teacher"]),
        student={k: torch.cat(v) for k, v in feats["student"].items()},
        teacher={k: torch.cat(v) for k, v in feats["teacher"].items()},
    )


# ------------------------------------------------------------------------- KRC (Fig. 1b)
def krc_values(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per sample, Kendall's tau-b between the teacher's and the student's logits
    (C2KD Eq. 3); NaN rows (a constant logit vector) are dropped."""
    from cmkd_cli.losses.rank import kendall_tau_b

    tau = kendall_tau_b(teacher_logits, student_logits).double()
    return tau[torch.isfinite(tau)]


def plot_krc(values: dict[str, torch.Tensor], path: Path) -> Path:
    from cmkd_cli.metrics.plots import _figure, _save

    fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(-1, 1, 41)
    for name, v in values.items():
        v = v.numpy()
        ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=f"{name} (mean {v.mean():.3f})")
    ax.axvline(0.0, color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("KRC of teacher and student logits (Kendall tau-b)")
    ax.set_ylabel("samples")
    ax.set_title("soft-label rank agreement per sample (C2KD Fig. 1b)")
    ax.grid(True, alpha=0.4)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


# -------------------------------------------------------------------------- CKA (Fig. 6)
def depth_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Stages at the same relative depth: each stage of the shallower network with the stage
    of the deeper one that ends at the same fraction of its depth."""
    k = min(n_student, n_teacher)

    def at(n: int, i: int) -> int:
        return round((i + 1) * n / k) - 1

    return [(at(n_student, i), at(n_teacher, i)) for i in range(k)]


def cka_matrix(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
) -> list[list[float]]:
    """Linear CKA of every student feature (rows) with every teacher feature (columns)."""
    from cmkd_cli.metrics.similarity import linear_cka

    return [[linear_cka(s, t) for t in teacher.values()] for s in student.values()]


def matched_pairs(
    student: list[str], teacher: list[str], matrix: list[list[float]]
) -> list[CkaPair]:
    """Stage pairs by relative depth (`depth_pairs`), then embedding with embedding."""
    s_stages, t_stages = student[:-1], teacher[:-1]  # the last feature is the embedding
    pairs = depth_pairs(len(s_stages), len(t_stages)) + [(len(student) - 1, len(teacher) - 1)]
    return [CkaPair(student=student[i], teacher=teacher[j], cka=matrix[i][j]) for i, j in pairs]


def plot_cka(result: CkaResult, path: Path) -> Path:
    from cmkd_cli.metrics.plots import _figure, _save

    m = np.array(result.matrix, dtype=np.float64)
    fig = _figure(height=1.2 + 0.6 * len(result.student_features))
    ax = fig.add_subplot()
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    matched = {(p.student, p.teacher) for p in result.matched}
    for i, s in enumerate(result.student_features):
        for j, t in enumerate(result.teacher_features):
            bold = "bold" if (s, t) in matched else "normal"
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w", weight=bold)
    ax.set_xticks(range(len(result.teacher_features)), result.teacher_features, rotation=20)
    ax.set_yticks(range(len(result.student_features)), result.student_features)
    ax.set_xlabel("teacher feature")
    ax.set_ylabel("student feature")
    ax.set_title(
        f"linear CKA (C2KD Fig. 6): {result.run}\nbold: features at matching depth",
        fontsize="medium",
    )
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


# ------------------------------------------------------------------ embeddings (A Fig. 8)
_MARKERS = {"teacher": "o", "projected teacher": "^", "student": "s"}


def embedding_panels(
    method: Any, feats: Features, device: torch.device
) -> tuple[list[dict[str, torch.Tensor]], str | None]:
    """The sources to embed together, per panel, and a note when they cannot share one.

    With a projection (`shared_space` overridden): teacher, projected teacher and student
    in one panel, or the raw teacher in a panel of its own when its width differs. Without
    one: student and teacher in separate panels."""
    from cmkd_cli.methods.base import Method

    s_emb, t_emb = feats.student[EMBEDDING], feats.teacher[EMBEDDING]
    name = method.method_name
    if type(method).shared_space is Method.shared_space:
        note = f"method `{name}` has no shared space: student and teacher drawn in separate panels"
        return [{"student": s_emb}, {"teacher": t_emb}], note
    with torch.no_grad():
        s, t = method.shared_space(s_emb.to(device), t_emb.to(device))
    s, t = s.float().cpu(), t.float().cpu()
    if t.shape[-1] == t_emb.shape[-1]:
        return [{"teacher": t_emb, "projected teacher": t, "student": s}], None
    note = (
        f"method `{name}`: the teacher embedding ({t_emb.shape[-1]}-d) is not in the shared "
        f"space ({t.shape[-1]}-d), so it is drawn in a panel of its own"
    )
    return [{"projected teacher": t, "student": s}, {"teacher": t_emb}], note


def reduce_2d(x: torch.Tensor, tsne: bool) -> np.ndarray:
    """`[N, D]` -> `[N, 2]`: PCA (the top two eigenvectors of the covariance), or t-SNE
    (sklearn, PCA-initialised, seeded) with BLAS limited to torch's threads."""
    x = x.double() - x.double().mean(0)
    if not tsne:
        _, vecs = torch.linalg.eigh(x.T @ x)  # eigenvalues ascending
        return (x @ vecs[:, -2:].flip(-1)).numpy()
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
    with threadpool_limits(torch.get_num_threads()):
        return TSNE(2, init="pca", random_state=0, perplexity=perplexity).fit_transform(x.numpy())


def plot_embeddings(
    panels: list[dict[str, torch.Tensor]], y: torch.Tensor, tsne: bool, title: str, path: Path
) -> Path:
    from matplotlib.lines import Line2D

    from cmkd_cli.metrics.plots import _figure, _save

    fig = _figure(rows=len(panels), height=4.2)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    labels = y.numpy()
    n_classes = int(labels.max()) + 1
    cmap = "tab10" if n_classes <= 10 else "tab20" if n_classes <= 20 else "viridis"
    for ax, sources in zip(axes, panels, strict=True):
        xy = reduce_2d(torch.cat(list(sources.values())), tsne)
        parts = np.split(xy, np.cumsum([len(v) for v in sources.values()])[:-1])
        for (src, _), pts in zip(sources.items(), parts, strict=True):
            sc = ax.scatter(
                pts[:, 0],
                pts[:, 1],
                c=labels,
                cmap=cmap,
                vmin=0,
                vmax=max(n_classes - 1, 1),
                marker=_MARKERS[src],
                s=14,
                alpha=0.7,
                linewidths=0,
            )
        handles = [
            Line2D([], [], marker=_MARKERS[s], color="grey", linestyle="", label=s) for s in sources
        ]
        ax.legend(handles=handles, loc="best", fontsize="small")
        ax.set_title(" + ".join(sources), fontsize="medium")
        ax.grid(True, alpha=0.3)
        fig.colorbar(sc, ax=ax, label="class")
    axes[0].set_title(f"{title}\n{axes[0].get_title()}", fontsize="medium")
    return _save(fig, path)


# ------------------------------------------------------------------------------------ run
def _checkpoint_reason(run: Run) -> str | None:
    """Why the checkpoint analyses cannot use `run` (None: they can)."""
    from cmkd_cli.methods import METHODS

    if run.task != "classification":
        return f"{run.dir}: task `{run.task}` is not classification"
    if run.method not in METHODS or not METHODS.get(run.method).uses_teacher:
        return f"{run.dir}: method `{run.method}` has no teacher to compare the student with"
    if not (run.dir / "best.pt").is_file():
        return f"{run.dir}/best.pt does not exist (has the run finished an epoch?)"
    return None


def run(options: AnalyzeOptions) -> AnalyzeResult:
    """Run the asked `analyses` (None: every one that applies) on the runs under `roots`."""
    roots, analyses, split = options.roots, options.analyses, options.split
    max_samples, tsne, out, device = options.max_samples, options.tsne, options.out, options.device
    if not roots:
        raise UsageError("give at least one RUN_DIR (a run or study directory)")
    if split not in SPLITS:
        raise UsageError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if max_samples < 3:
        raise UsageError(f"--max-samples {max_samples}: at least 3 samples are needed")
    explicit = analyses is not None
    wanted = list(analyses) if explicit else list(ANALYSES)
    runs = discover(roots)
    out_dir = out or roots[0] / "analysis"
    res = AnalyzeResult(
        roots=[str(r) for r in roots], out_dir=str(out_dir), split=split, analyses=[]
    )

    def unavailable(name: str, reason: str) -> None:
        if explicit:
            raise UsageError(f"--{name}: {reason}")
        res.notes.append(f"{name}: skipped, {reason}")

    if "kept" in wanted:
        series = kept_series(runs)
        if series:
            res.kept = series
            res.plots.append(str(plot_kept(series, out_dir / "kept.png")))
        else:
            unavailable("kept", "no run logged `stats/kept` (methods with a KRC filter, e.g. c2kd)")

    asked = [a for a in CHECKPOINT_ANALYSES if a in wanted]
    if asked:
        reasons = {r.dir: _checkpoint_reason(r) for r in runs}
        usable = [r for r in runs if reasons[r.dir] is None]
        if not usable:
            for a in asked:
                unavailable(a, reasons[runs[0].dir] or "")
        else:
            skipped = [reasons[r.dir] for r in runs if reasons[r.dir]]
            res.notes += [f"{', '.join(asked)}: skipped {reason}" for reason in skipped]
            _checkpoint_analyses(res, usable, asked, split, max_samples, tsne, out_dir, device)

    if "cost" in wanted:
        rows = cost_rows(runs)
        if rows:
            res.cost = rows
            res.plots.append(str(plot_cost(rows, out_dir / "cost.png")))
            if all(r.peak_mem_mb is None for r in rows):
                res.notes.append("cost: peak memory is n/a on CPU (measured on CUDA only)")
        else:
            unavailable("cost", "no run has an epoch row with `epoch_time_s` in metrics.jsonl")

    res.analyses = [a for a in ANALYSES if getattr(res, a) is not None]
    atomic_write_json(out_dir / "analysis.json", res.model_dump())
    return res


def _checkpoint_analyses(
    res: AnalyzeResult,
    runs: list[Run],
    asked: list[str],
    split: str,
    max_samples: int,
    tsne: bool,
    out_dir: Path,
    device: str,
) -> None:
    """KRC, CKA and embeddings of each run's best.pt on `split` (one forward pass each)."""
    from cmkd_cli.engine.distributed import select_device
    from cmkd_cli.stages.distill import DataCache
    from cmkd_cli.stages.experiment import method_from_checkpoint

    dev = select_device(device)
    datasets = DataCache()
    krc: dict[str, torch.Tensor] = {}
    for r in runs:
        ckpt = r.dir / "best.pt"
        method, recipe = method_from_checkpoint(ckpt)
        method.to(dev)
        dataset = split_subset(getattr(datasets.get(recipe), split), split, max_samples)
        feats = extract(method, dataset, recipe.data.eval_batch_size, dev)
        n = len(feats.y)
        if "krc" in asked:
            if feats.student_logits is None or feats.teacher_logits is None:
                res.notes.append(f"krc: {r.name} skipped, its student or teacher gives no logits")
            else:
                v = krc_values(feats.teacher_logits, feats.student_logits)
                krc[r.name] = v
                res.krc = (res.krc or []) + [
                    KrcRow(
                        run=r.name,
                        checkpoint=str(ckpt),
                        n=len(v),
                        mean=float(v.mean()),
                        median=float(v.median()),
                        frac_nonpositive=float((v <= 0).double().mean()),
                    )
                ]
        if "cka" in asked:
            s_names, t_names = list(feats.student), list(feats.teacher)
            matrix = cka_matrix(feats.student, feats.teacher)
            cka = CkaResult(
                run=r.name,
                checkpoint=str(ckpt),
                n=n,
                student_features=s_names,
                teacher_features=t_names,
                matrix=matrix,
                matched=matched_pairs(s_names, t_names, matrix),
                plot=str(out_dir / f"cka-{r.slug}.png"),
            )
            res.plots.append(str(plot_cka(cka, Path(cka.plot))))
            res.cka = (res.cka or []) + [cka]
        if "embeddings" in asked:
            panels, note = embedding_panels(method, feats, dev)
            if note:
                res.notes.append(f"embeddings: {r.name}: {note}")
            reducer = "t-SNE" if tsne else "PCA"
            path = out_dir / f"embeddings-{r.slug}.png"
            title = f"{r.name}: {reducer} of {split} embeddings (soft CMKD Fig. 8)"
            res.plots.append(str(plot_embeddings(panels, feats.y, tsne, title, path)))
            res.embeddings = (res.embeddings or []) + [
                EmbeddingPlot(
                    run=r.name,
                    checkpoint=str(ckpt),
                    n=n,
                    reducer=reducer,
                    panels=[list(p) for p in panels],
                    plot=str(path),
                )
            ]
    if krc:
        res.plots.append(str(plot_krc(krc, out_dir / "krc.png")))


def render(result: AnalyzeResult) -> Group:
    """One table per analysis, then the notes and the plots written."""
    parts: list[Any] = []
    if result.kept:
        t = Table(title="fraction of samples OFSD keeps, per epoch (C2KD Fig. 3)")
        for c in ("variant", "seeds", "from", "kept per epoch"):
            t.add_column(c)
        for s in result.kept:
            t.add_row(s.variant, str(s.seeds), s.source, " ".join(f"{v:.3f}" for v in s.kept))
        parts.append(t)
    if result.krc:
        t = Table(title=f"KRC of teacher vs student logits, {result.split} split (C2KD Fig. 1b)")
        for c in ("run", "samples", "mean KRC", "median", "KRC <= 0"):
            t.add_column(c)
        for r in result.krc:
            t.add_row(
                r.run,
                str(r.n),
                f"{r.mean:.4f}",
                f"{r.median:.4f}",
                f"{100 * r.frac_nonpositive:.1f}%",
            )
        parts.append(t)
    if result.cka:
        t = Table(
            title=f"linear CKA of student vs teacher features, {result.split} split (C2KD Fig. 6)"
        )
        for c in ("run", "student feature", "teacher feature", "CKA"):
            t.add_column(c)
        for c in result.cka:
            for p in c.matched:
                t.add_row(c.run, p.student, p.teacher, f"{p.cka:.4f}")
        parts.append(t)
    if result.embeddings:
        t = Table(title=f"2-D embeddings, {result.split} split (soft CMKD Fig. 8)")
        for c in ("run", "samples", "reducer", "panels", "plot"):
            t.add_column(c)
        for e in result.embeddings:
            panels = " | ".join(" + ".join(p) for p in e.panels)
            t.add_row(e.run, str(e.n), e.reducer, panels, e.plot)
        parts.append(t)
    if result.cost:
        t = Table(title="training cost per method (C2KD appendix E)")
        for c in ("variant", "method", "runs", "epochs", "time / epoch", "peak memory"):
            t.add_column(c)
        for r in result.cost:
            mem = "n/a on CPU" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f} MB"
            time = f"{r.epoch_time_s:.2f} ± {r.epoch_time_std:.2f} s"
            t.add_row(r.variant, r.method, str(r.runs), str(r.epochs), time, mem)
        parts.append(t)
    parts += [f"note: {n}" for n in result.notes]
    parts += [f"wrote {p}" for p in result.plots]
    if not parts:
        parts.append(f"nothing to analyse under {', '.join(result.roots)}")
    return Group(*parts)
