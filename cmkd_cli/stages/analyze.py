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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, Field
from rich.console import Group
from rich.table import Table
from torch.utils.data import Subset

from cmkd_cli.data.datasets import keyed_rng
from cmkd_cli.engine.distributed import select_device
from cmkd_cli.errors import UsageError
from cmkd_cli.io import atomic_write_json, read_jsonl
from cmkd_cli.methods import METHODS
from cmkd_cli.metrics.features import embedding_panels, extract, reduce_panel
from cmkd_cli.metrics.plots import plot_cka, plot_cost, plot_embeddings, plot_kept, plot_krc
from cmkd_cli.metrics.similarity import CkaPair, cka_matrix, krc_values, matched_pairs
from cmkd_cli.metrics.training import CostRow, KeptSeries, RunLog, cost_rows, kept_series
from cmkd_cli.runs import STUDY_FILE, run_dirs
from cmkd_cli.schema import StrictModel
from cmkd_cli.stages.distill import DataCache
from cmkd_cli.stages.experiment import method_from_checkpoint

ANALYSES = ("kept", "krc", "cka", "embeddings", "cost")
CHECKPOINT_ANALYSES = ("krc", "cka", "embeddings")
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------- result model
class AnalyzeOptions(StrictModel):
    roots: list[Path] = Field(description="run or study directories")
    analyses: list[str] | None = Field(None, description="analyses asked (None: all that apply)")
    split: str = Field("test", description="train|val|test")
    max_samples: int = Field(2000, description="samples of the split used (seeded draw)")
    tsne: bool = Field(False, description="t-SNE instead of PCA")
    out: Path | None = Field(None, description="output folder (default RUN_DIR/analysis)")
    device: str = Field("auto", description="auto|cpu|cuda")


class KrcRow(BaseModel):
    run: str
    checkpoint: str
    n: int
    mean: float
    median: float
    frac_nonpositive: float


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
class Run(RunLog):
    """One run directory: `label` is its variant (study) or its folder name (single run)."""

    dir: Path
    seed: int | None
    task: str

    @property
    def name(self) -> str:
        return self.label if self.seed is None else f"{self.label} seed {self.seed}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-").replace(" ", "-")


def find_runs(roots: list[Path]) -> list[Run]:
    """The runs under each root (`runs.run_dirs`: a run directory, a study's VARIANT/seed-S/
    folders, or those of one variant or grid point, labelled VARIANT/grid-K)."""
    runs = []
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"{root} is not a directory")
        dirs = run_dirs(root)
        if not dirs:
            raise UsageError(f"{root} holds no metrics.jsonl (is it a run or study directory?)")
        for d in dirs:
            config = d / "config.yaml"
            if not config.is_file():
                raise UsageError(f"{config} is missing (not a run written by `cmkd distill`)")
            recipe = yaml.safe_load(config.read_text()) or {}
            in_study = d.name.startswith("seed-") and (d.parent.parent / STUDY_FILE).is_file()
            study = d != root or in_study
            parent = d.resolve().parent  # VARIANT, or VARIANT/grid-K for a tuning run
            label = parent.name if study else d.resolve().name
            if study and parent.name.startswith("grid-"):
                label = f"{parent.parent.name}/{parent.name}"
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


def split_subset(dataset: Any, split: str, max_samples: int) -> Any:
    """At most `max_samples` samples of `dataset`, a seeded draw when it is larger."""
    if len(dataset) <= max_samples:
        return dataset
    idx = keyed_rng("analyze", split).choice(len(dataset), max_samples, replace=False)
    return Subset(dataset, sorted(int(i) for i in idx))


# ------------------------------------------------------------------------------------ run
def _checkpoint_reason(run: Run) -> str | None:
    """Why the checkpoint analyses cannot use `run` (None: they can)."""
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
    runs = find_runs(roots)
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
            bold = [(p.student, p.teacher) for p in cka.matched]
            plot = plot_cka(matrix, s_names, t_names, bold, r.name, Path(cka.plot))
            res.plots.append(str(plot))
            res.cka = (res.cka or []) + [cka]
        if "embeddings" in asked:
            panels, note = embedding_panels(method, feats, dev)
            if note:
                res.notes.append(f"embeddings: {r.name}: {note}")
            reducer = "t-SNE" if tsne else "PCA"
            path = out_dir / f"embeddings-{r.slug}.png"
            title = f"{r.name}: {reducer} of {split} embeddings (soft CMKD Fig. 8)"
            views = [reduce_panel(p, tsne) for p in panels]
            res.plots.append(str(plot_embeddings(views, feats.y, title, path)))
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
        t = Table(title="share of samples OFSD keeps, per epoch (C2KD Fig. 3)")
        for c in ("variant", "seeds", "from", "kept per epoch (%)"):
            t.add_column(c)
        for s in result.kept:
            t.add_row(s.variant, str(s.seeds), s.source, " ".join(f"{100 * v:.1f}" for v in s.kept))
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
