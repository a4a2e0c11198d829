"""`cmkd report RUN_DIR`: the metrics table of a run (or the table of a study) and PNG curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Group
from rich.table import Table

from cmkd_cli.errors import UsageError
from cmkd_cli.io import read_jsonl
from cmkd_cli.metrics.plots import plot_curves, plot_study
from cmkd_cli.runs import STUDY_FILE, run_dirs
from cmkd_cli.schema import StrictModel


class ReportOptions(StrictModel):
    run_dir: Path = Field(description="a run or study directory")
    plots: bool = Field(True, description="write PNG curves")


class RunReport(BaseModel):
    run_dir: str
    epochs: list[dict[str, Any]]
    final: dict[str, Any] | None
    plots: list[str]


class ReportResult(BaseModel):
    root: str
    study: dict[str, Any] | None
    runs: list[RunReport]
    plots: list[str] = []  # the study-level figure (plots/study.png)


def report_run(run_dir: Path, plots: bool) -> RunReport:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    final = (
        json.loads((run_dir / "final.json").read_text())
        if (run_dir / "final.json").exists()
        else None
    )
    written: list[str] = []
    if plots and rows:
        steps = [r for r in rows if r.get("kind") == "step"]
        groups = {
            "losses": sorted({k for r in steps for k in r if k.startswith("loss/")}),
            "validation": sorted({k for r in epochs for k in r if k.startswith("val/")}),
            "lr": sorted({k for r in steps for k in r if k.startswith("lr/")}),
            "stats": sorted({k for r in steps for k in r if k.startswith("stats/")}),
        }
        for name, keys in groups.items():
            source = epochs if name == "validation" else steps
            if keys:
                path = run_dir / "plots" / f"{name}.png"
                plot_curves(source, keys, path)
                written.append(str(path))
    return RunReport(run_dir=str(run_dir), epochs=epochs, final=final, plots=written)


def run(options: ReportOptions) -> ReportResult:
    run_dir, plots = options.run_dir, options.plots
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory")
    dirs = run_dirs(run_dir)
    if not dirs:
        raise UsageError(f"{run_dir} holds no metrics.jsonl (is it a run directory?)")
    results = run_dir / "results.json"
    study = load_study(run_dir) if results.exists() and len(dirs) > 1 else None
    written = []
    if study is not None and plots:
        from cmkd_cli.stages.distill import CI_NAMES  # loads torch: studies only

        path = plot_study(
            [row.model_dump() for row in study.table],
            run_dir / "plots" / "study.png",
            study.metric,
            CI_NAMES.get(study.ci, study.ci),
            scale=100.0 if study.metric == "accuracy" else 1.0,
            title=f"{study.name}: test {study.metric}",
        )
        written.append(str(path))
    return ReportResult(
        root=str(run_dir),
        study=study.model_dump() if study else None,
        runs=[report_run(d, plots) for d in dirs],
        plots=written,
    )


def load_study(root: Path) -> Any:
    """A study's `results.json`, its table recomputed from the runs with the statistics and
    baselines of its `study.yaml` (so a study tabulated by an older cmkd gets them too)."""
    from cmkd_cli.stages import distill  # loads torch (engine): a single run's report never

    path = root / "results.json"
    try:
        result = distill.DistillResult.model_validate_json(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: not a cmkd results file ({str(exc).splitlines()[0]})") from None
    if (root / STUDY_FILE).is_file():
        recipe = distill.load_resumed(root)
        table = distill.tabulate(
            result.runs, result.metric, distill.baselines(recipe), recipe.compare.ci
        )
        result = result.model_copy(update={"table": table, "ci": recipe.compare.ci})
    return result


def render(result: ReportResult) -> Any:
    per_run = [p for r in result.runs for p in r.plots]
    if result.study:
        from cmkd_cli.stages import distill  # loads torch: studies only

        table = distill.render(distill.DistillResult.model_validate(result.study))
        wrote = [f"wrote {p}" for p in result.plots]
        if per_run:  # a study's runs: one line, not one per PNG
            wrote.append(f"wrote {len(per_run)} training-curve PNGs in RUN/plots/ of each run")
        return Group(table, *wrote)
    return Group(_run_table(result), *[f"wrote {p}" for p in per_run])


def _run_table(result: ReportResult) -> Table:
    rep = result.runs[0]
    keys = sorted({k for r in rep.epochs for k in r if k.startswith(("train/loss/", "val/"))})
    t = Table(title=f"{rep.run_dir}" + (f"  test: {rep.final['test']}" if rep.final else ""))
    t.add_column("epoch")
    for k in keys:
        t.add_column(k.replace("train/loss/", "loss "))
    t.add_column("time")
    for r in rep.epochs:
        t.add_row(
            str(r["epoch"] + 1),
            *[f"{r[k]:.4f}" if isinstance(r.get(k), float) else "-" for k in keys],
            f"{r.get('epoch_time_s', 0):.1f}s",
        )
    return t
