"""`cmkd report RUN_DIR`: a run's epoch table and curves, or a study's comparison table.

A study's table is built from its `study.yaml` and the `final.json` of every run that has
finished, so it can be printed at any time, also while the study is still training (the
runs not finished are listed below it); once all are done it is the table `distill`
printed. Each run's training curves go to one figure, `RUN/plots/curves.png`; a study
also gets `plots/study.png`. Every path written is printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from rich.console import Group
from rich.table import Table
from rich.text import Text

from cmkd_cli import units
from cmkd_cli.errors import UsageError
from cmkd_cli.io import read_jsonl
from cmkd_cli.metrics.curves import best_epoch, run_curves
from cmkd_cli.metrics.plots import plot_run, plot_study
from cmkd_cli.options.runs import ReportOptions
from cmkd_cli.runs import METRICS_FILE, STUDY_FILE, run_dirs, study_run_dir


class RunReport(BaseModel):
    run_dir: str
    name: str  # the recipe's name, with the variant and seed of a study's run
    epochs: list[dict[str, Any]]
    final: dict[str, Any] | None
    best_epoch: int | None = None  # 1-based, as in the table and the figure
    plots: list[str]


class PendingRun(BaseModel):
    """A run of the study that has not finished: how many epochs it has closed."""

    variant: str
    seed: int
    run_dir: str
    epochs_done: int
    epochs: int


class ReportResult(BaseModel):
    root: str
    study: dict[str, Any] | None  # the comparison table over the finished runs (DistillResult)
    pending: list[PendingRun] = []
    runs: list[RunReport]
    plots: list[str] = []  # the study-level figure (plots/study.png)


def _stored_recipe(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def run_name(run_dir: Path, recipe: dict[str, Any]) -> str:
    """`quickstart / kd / seed 1` for a study's run, the recipe's name for a lone run."""
    name = str(recipe.get("name") or run_dir.name)
    if run_dir.name.startswith("seed-"):
        return f"{name} / {run_dir.parent.name} / seed {run_dir.name[5:]}"
    return name


def report_run(run_dir: Path, plots: bool) -> RunReport:
    rows = read_jsonl(run_dir / METRICS_FILE, growing=True)  # the run may be training
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    final_path = run_dir / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else None
    recipe = _stored_recipe(run_dir)
    ev = recipe.get("eval") or {}
    metric, mode = str(ev.get("metric", "accuracy")), str(ev.get("mode", "max"))
    best = final["best_epoch"] if final else best_epoch(epochs, metric, mode)
    name = run_name(run_dir, recipe)
    written: list[str] = []
    curves = run_curves(rows, metric, mode)
    if plots and curves.panels:
        curves.best_epoch = best
        status = (
            f"test {units.show_all(final['test'])}"
            if final
            else f"running: {len(epochs)}/{recipe.get('train', {}).get('epochs', '?')} epochs"
        )
        path = plot_run(curves, run_dir / "plots" / "curves.png", name, f"{run_dir}  ·  {status}")
        written.append(str(path))
    return RunReport(
        run_dir=str(run_dir), name=name, epochs=epochs, final=final, best_epoch=best, plots=written
    )


def run(options: ReportOptions) -> ReportResult:
    run_dir, plots = options.run_dir, options.plots
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory")
    is_study = (run_dir / STUDY_FILE).is_file()
    dirs = run_dirs(run_dir)
    if not dirs and not is_study:
        raise UsageError(f"{run_dir} holds no metrics.jsonl (is it a run directory?)")
    study, pending = None, []
    if is_study:
        study, pending = load_study(run_dir)
    elif (run_dir / "results.json").exists() and len(dirs) > 1:
        study = load_results(run_dir)  # a study tabulated before study.yaml existed
    written = []
    if study is not None and study.table and plots:
        from cmkd_cli.stages.distill import CI_NAMES  # loads torch: studies only

        path = plot_study(
            [row.model_dump() for row in study.table],
            run_dir / "plots" / "study.png",
            study.metric,
            CI_NAMES.get(study.ci, study.ci),
            scale=units.scale(study.metric),
            title=f"{study.name}: test {study.metric}",
        )
        written.append(str(path))
    return ReportResult(
        root=str(run_dir),
        study=study.model_dump() if study else None,
        pending=pending,
        runs=[report_run(d, plots) for d in dirs],
        plots=written,
    )


def load_study(root: Path) -> tuple[Any, list[PendingRun]]:
    """The study's comparison table over the runs that have finished (each run of
    `study.yaml`'s plan whose final.json exists), with its statistics and baselines, and
    the runs that have not."""
    from cmkd_cli.stages import distill  # loads torch (engine): a single run's report never

    recipe = distill.load_resumed(root)
    seeds = recipe.seeds or [recipe.train.seed]
    runs, pending = [], []
    for variant, jr, seed in distill.plan(recipe, seeds):
        run_dir = study_run_dir(root, variant, seed)
        done = distill.finished_run(run_dir, variant, jr.method.name, seed)
        if done is not None:
            runs.append(done)
            continue
        metrics = run_dir / METRICS_FILE
        closed = (
            [r for r in read_jsonl(metrics, growing=True) if r.get("kind") == "epoch"]
            if metrics.exists()
            else []
        )
        pending.append(
            PendingRun(
                variant=variant,
                seed=seed,
                run_dir=str(run_dir),
                epochs_done=len({r["epoch"] for r in closed}),
                epochs=jr.train.epochs,
            )
        )
    previous = root / "results.json"  # what distill wrote last: its teacher and grid choices
    prior = json.loads(previous.read_text()) if previous.exists() else {}
    result = distill.DistillResult(
        name=recipe.name,
        root=str(root),
        metric=recipe.eval.metric,
        ci=recipe.compare.ci,
        teacher=prior.get("teacher"),
        selection=prior.get("selection") or {},
        runs=runs,
        table=distill.tabulate(
            runs, recipe.eval.metric, distill.baselines(recipe), recipe.compare.ci
        ),
    )
    return result, pending


def load_results(root: Path) -> Any:
    """A study's `results.json` as `distill` wrote it."""
    from cmkd_cli.stages import distill  # loads torch: studies only

    path = root / "results.json"
    try:
        return distill.DistillResult.model_validate_json(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: not a cmkd results file ({str(exc).splitlines()[0]})") from None


def render(result: ReportResult) -> Group:
    """The study's table (and the runs still to finish), or the run's epoch table; then one
    `wrote PATH` line per file written."""
    parts: list[Any] = []
    if result.study:
        from cmkd_cli.stages import distill  # loads torch: studies only

        parts.append(distill.render(distill.DistillResult.model_validate(result.study)))
        if result.pending:
            parts.append(Text(_pending_line(result), style="yellow"))
    else:
        parts.append(_run_table(result.runs[0]))
    parts += [
        Text(f"wrote {p}") for p in [*result.plots, *(p for r in result.runs for p in r.plots)]
    ]
    return Group(*parts)


def _pending_line(result: ReportResult) -> str:
    finished = len(result.study["runs"]) if result.study else 0
    total = finished + len(result.pending)
    started = [
        f"{p.variant} seed {p.seed} ({p.epochs_done}/{p.epochs} epochs)"
        for p in result.pending
        if p.epochs_done
    ]
    waiting = len(result.pending) - len(started)
    line = f"{finished} of {total} runs finished"
    if started:
        line += "; unfinished: " + ", ".join(started)
    if waiting:
        line += f"; {waiting} not started"
    return line


def _run_table(rep: RunReport) -> Table:
    keys = sorted({k for r in rep.epochs for k in r if k.startswith(("train/loss/", "val/"))})
    title = rep.name + (f"  test: {units.show_all(rep.final['test'])}" if rep.final else "")
    t = Table(title=title, caption=f"{rep.run_dir}; * best epoch" if rep.best_epoch else None)
    t.add_column("epoch")
    for k in keys:
        short = k.replace("train/loss/", "loss ")
        t.add_column(units.label(short), justify="right")
    t.add_column("time", justify="right")
    for r in rep.epochs:
        epoch = r["epoch"]
        t.add_row(
            f"{epoch}{' *' if epoch == rep.best_epoch else ''}",
            *[units.show(k, r.get(k)) for k in keys],
            f"{r.get('epoch_time_s', 0):.1f}s",
        )
    return t
