"""`cmkd distill`: run a recipe once per seed and per `compare:` variant, then tabulate.

One run: `runs/NAME/`. A study (several seeds or variants): `runs/NAME/VARIANT/seed-S/`
per run, plus `runs/NAME/study.yaml` and `runs/NAME/results.json`. Finished runs
(final.json present) are not redone; a killed run resumes from its last.pt.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field
from rich.table import Table

from cmkd_cli import console, units
from cmkd_cli.config import (
    dump_recipe,
    grid_points,
    load_recipe,
    validate_recipe,
    variant_recipe,
)
from cmkd_cli.data.datasets import DataBundle, build_data
from cmkd_cli.engine.distributed import DistInfo, init_distributed
from cmkd_cli.engine.loop import fit
from cmkd_cli.errors import UsageError
from cmkd_cli.io import atomic_write_json, atomic_write_text
from cmkd_cli.methods import METHODS
from cmkd_cli.metrics.paired import CiMethod, interval, paired_delta, sample_std
from cmkd_cli.runs import STUDY_FILE, run_root, study_run_dir
from cmkd_cli.schema import Recipe, Variant
from cmkd_cli.stages import train_teacher
from cmkd_cli.stages.experiment import build_experiment, preflight
from cmkd_cli.stages.options import RecipeOptions


class DistillOptions(RecipeOptions):
    seeds: list[int] | None = Field(None, description="seeds to run (default: the recipe's)")
    resume: Path | None = Field(None, description="continue the run or study in this directory")
    variants: list[str] = Field(default_factory=list, description="only these compare variants")


class RunSummary(BaseModel):
    variant: str
    method: str
    seed: int
    run_dir: str
    best_epoch: int
    best_val: dict[str, float]
    test: dict[str, float]
    wall_time_s: float
    status: str  # trained | resumed | done


class Row(BaseModel):
    """One variant over its seeds: mean ± sample std, the 95% interval of the mean, and
    the delta against its baseline row paired by seed (`metrics.paired`)."""

    variant: str
    method: str
    metric: str
    mean: float
    std: float
    n: int
    seeds: list[int] = []
    values: list[float]
    mean_ci: list[float] | None = None
    baseline: str | None = None
    delta: float | None = None
    delta_std: float | None = None
    delta_ci: list[float] | None = None
    delta_seeds: list[int] = []
    excludes_zero: bool = False
    wall_time_s: float


class GridPoint(BaseModel):
    set: dict[str, Any]
    val: list[float]  # best validation metric per tune seed
    mean: float


class Selection(BaseModel):
    """How a variant's `grid:` was decided: on the validation split of the tune seeds only."""

    tune_seeds: list[int]
    points: list[GridPoint]
    chosen: int

    @property
    def chosen_set(self) -> dict[str, Any]:
        return self.points[self.chosen].set


class DistillResult(BaseModel):
    name: str
    root: str
    metric: str
    ci: str = "t"
    teacher: dict | None
    runs: list[RunSummary]
    table: list[Row]
    selection: dict[str, Selection] = {}


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(
            f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2,3"
        ) from None


def load_resumed(resume: Path) -> Recipe:
    for name in (STUDY_FILE, "config.yaml"):
        path = resume / name
        if path.is_file():
            return validate_recipe(yaml.safe_load(path.read_text()), origin=str(path))
    raise UsageError(
        f"--resume {resume}: no {STUDY_FILE} or config.yaml there (not a run directory)"
    )


def rows(recipe: Recipe) -> list[tuple[str, Recipe]]:
    """(row name, its recipe): the recipe's own row, then each `compare:` variant."""
    own = recipe.row_names()[0]
    if any(v.name == own for v in recipe.compare.variants):
        raise UsageError(
            f"compare: the recipe's own row is named `{own}` (its method), as is a variant; "
            "name it with compare.base_name"
        )
    return [(own, recipe)] + [
        (v.name, variant_recipe(recipe, v.name)) for v in recipe.compare.variants
    ]


def plan(recipe: Recipe, seeds: list[int]) -> list[tuple[str, Recipe, int]]:
    return [(name, r, s) for name, r in rows(recipe) for s in seeds]


def baselines(recipe: Recipe) -> dict[str, str | None]:
    """Each row's baseline row: its own `baseline`, else `compare.baseline`, else the first
    row without distillation (method `baseline`); a row is never its own baseline."""
    named = rows(recipe)
    default = recipe.compare.baseline or next(
        (name for name, r in named if r.method.name == "baseline"), None
    )
    own = {v.name: v.baseline for v in recipe.compare.variants}
    out = {}
    for name, _ in named:
        b = own.get(name) or default
        out[name] = b if b != name else None
    return out


class DataCache:
    """Datasets built once per distinct `data` section (variants may change it)."""

    def __init__(self) -> None:
        self._built: dict[str, DataBundle] = {}

    def get(self, recipe: Recipe) -> DataBundle:
        key = recipe.data.model_dump_json()
        if key not in self._built:
            self._built[key] = build_data(recipe.data)
        return self._built[key]


def finished_run(run_dir: Path, variant: str, method: str, seed: int) -> RunSummary | None:
    """The summary of a finished run (its final.json), None while it is not finished."""
    final = run_dir / "final.json"
    if not final.exists():
        return None
    f = json.loads(final.read_text())
    return RunSummary(
        variant=variant,
        method=method,
        seed=seed,
        run_dir=str(run_dir),
        best_epoch=f["best_epoch"],
        best_val=f["best_val"],
        test=f["test"],
        wall_time_s=f["wall_time_s"],
        status="done",
    )


def run_one(
    recipe: Recipe, run_dir: Path, dist: DistInfo, teacher: Path | None, data: DataBundle
) -> RunSummary:
    variant = run_dir.parent.name if run_dir.name.startswith("seed-") else recipe.method.name
    done = finished_run(run_dir, variant, recipe.method.name, recipe.train.seed)
    if done is not None:
        return done
    resumed = (run_dir / "last.pt").exists()
    exp = build_experiment(recipe, teacher_checkpoint=teacher, data=data)
    res = fit(
        exp.method,
        exp.data,
        exp.task,
        recipe,
        run_dir,
        dist,
        extra_state={"teacher_ref": exp.teacher_ref},
    )
    return RunSummary(
        variant=variant,
        method=recipe.method.name,
        seed=recipe.train.seed,
        run_dir=str(run_dir),
        best_epoch=res.best_epoch,
        best_val=res.best_val,
        test=res.test,
        wall_time_s=res.wall_time_s,
        status="resumed" if resumed else "trained",
    )


def tabulate(
    runs: list[RunSummary],
    metric: str,
    baseline_of: dict[str, str | None] | None = None,
    ci: CiMethod = "t",
) -> list[Row]:
    """One row per variant (in run order) with its statistics over seeds."""
    by_variant: dict[str, dict[int, float]] = {}
    for r in runs:
        by_variant.setdefault(r.variant, {})[r.seed] = r.test.get(metric, float("nan"))
    table = []
    for variant, per_seed in by_variant.items():
        group = [r for r in runs if r.variant == variant]
        values = list(per_seed.values())
        base = (baseline_of or {}).get(variant)
        delta = paired_delta(per_seed, by_variant[base], ci) if base in by_variant else None
        mean_ci = interval(values, ci)
        table.append(
            Row(
                variant=variant,
                method=group[0].method,
                metric=metric,
                mean=statistics.fmean(values),
                std=sample_std(values),
                n=len(values),
                seeds=list(per_seed),
                values=values,
                mean_ci=list(mean_ci) if mean_ci else None,
                baseline=base,
                delta=delta.mean if delta else None,
                delta_std=delta.std if delta else None,
                delta_ci=list(delta.ci) if delta and delta.ci else None,
                delta_seeds=delta.seeds if delta else [],
                excludes_zero=bool(delta and delta.excludes_zero),
                wall_time_s=sum(r.wall_time_s for r in group),
            )
        )
    return table


def run(options: DistillOptions) -> DistillResult:
    recipe, sets, resume, variants = options.recipe, options.sets, options.resume, options.variants
    if resume is not None:
        if recipe is not None or sets:
            raise UsageError("--resume continues a run as it was configured; drop --recipe/--set")
        r = load_resumed(resume)
        root = resume
    elif recipe is None:
        raise UsageError("--recipe is required (see `cmkd recipes list`), or --resume RUN_DIR")
    else:
        r = load_recipe(recipe, sets, options.variables)
        root = run_root(r)
    seeds = options.seeds or r.seeds or [r.train.seed]
    r = r.model_copy(update={"seeds": seeds})
    dist = init_distributed(r.train.device)
    jobs = plan(r, seeds)
    single = not (root / STUDY_FILE).exists() if resume is not None else len(jobs) == 1
    if variants:
        names = list(dict.fromkeys(name for name, _, _ in jobs))
        unknown = set(variants) - set(names)
        if unknown:
            raise UsageError(
                f"--variant {sorted(unknown)[0]!r}: not a row of {r.name}; its rows: "
                + ", ".join(names)
            )
        jobs = [j for j in jobs if j[0] in variants]
    datasets = DataCache()
    for _, jr, _ in jobs:  # fail on a bad data, model or method setting before any training
        preflight(jr, datasets.get(jr))
    for v in r.compare.variants:
        if v.grid and any(name == v.name for name, _, _ in jobs):
            for point in grid_points(v):
                pr = variant_recipe(r, v.name, point=point)
                preflight(pr, datasets.get(pr))
    if not single and dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / STUDY_FILE, dump_recipe(r))
    # one pretrained teacher per distinct teacher (variants may change it, e.g. its backbone)
    teachers: dict[str, train_teacher.TeacherResult] = {}

    def teacher_for(jr: Recipe) -> Path | None:
        if not (_uses_teacher(jr) and jr.teacher.needs_pretraining()):
            return None
        key = train_teacher.teacher_key(jr)
        if key not in teachers:
            out = train_teacher.default_dir(jr, root)
            data = datasets.get(train_teacher.teacher_recipe(jr))  # pretrain.data_params
            teachers[key] = train_teacher.train(jr, out, dist, data)
        return Path(teachers[key].checkpoint)

    def train_one(name: str, jr: Recipe, seed: int, run_dir: Path) -> RunSummary:
        jr = jr.model_copy(update={"train": jr.train.model_copy(update={"seed": seed})})
        teacher = teacher_for(jr)
        console.info(f"[{name} seed {seed}] {run_dir}")
        return run_one(jr, run_dir, dist, teacher, datasets.get(jr))

    runs, selection = [], {}
    grids = {v.name: v for v in r.compare.variants if v.grid}
    for name in dict.fromkeys(name for name, _, _ in jobs):
        jr = next(j for n, j, _ in jobs if n == name)
        if name in grids:
            selection[name] = tune(r, grids[name], root / name, train_one)
            jr = variant_recipe(r, name, point=selection[name].chosen_set)
        for seed in [s for n, _, s in jobs if n == name]:
            run_dir = root if single else study_run_dir(root, name, seed)
            runs.append(train_one(name, jr, seed, run_dir))
    first = next(iter(teachers.values()), None)
    result = DistillResult(
        name=r.name,
        root=str(root),
        metric=r.eval.metric,
        teacher=first.model_dump() if first else None,
        runs=runs,
        table=tabulate(runs, r.eval.metric, baselines(r), r.compare.ci),
        ci=r.compare.ci,
        selection=selection,
    )
    if dist.is_main:
        atomic_write_json(root / "results.json", result.model_dump())
    return result


def tune(
    recipe: Recipe,
    variant: Variant,
    folder: Path,
    train_one: Callable[[str, Recipe, int, Path], RunSummary],
) -> Selection:
    """Train every point of `variant.grid` on `compare.tune_seeds` into FOLDER/grid-K/seed-S
    without testing (`eval.test: false`), and choose the point with the best mean
    validation metric (`eval.mode`; the first of equals)."""
    metric, points = recipe.eval.metric, []
    for k, point in enumerate(grid_points(variant)):
        pr = variant_recipe(recipe, variant.name, point=point)
        pr = pr.model_copy(update={"eval": pr.eval.model_copy(update={"test": False})})
        val = []
        for seed in recipe.compare.tune_seeds:
            done = train_one(
                f"{variant.name} grid {point}", pr, seed, study_run_dir(folder, f"grid-{k}", seed)
            )
            val.append(done.best_val.get(metric, float("nan")))
        points.append(GridPoint(set=point, val=val, mean=statistics.fmean(val)))
    sign = 1.0 if recipe.eval.mode == "max" else -1.0
    chosen = max(range(len(points)), key=lambda k: (sign * points[k].mean, -k))
    console.info(f"[{variant.name}] chose {points[chosen].set} on validation")
    return Selection(tune_seeds=recipe.compare.tune_seeds, points=points, chosen=chosen)


def _uses_teacher(recipe: Recipe) -> bool:
    return METHODS.get(recipe.method.name).uses_teacher


def render(result: DistillResult) -> Table:
    """The study table: mean ± std over seeds and the paired delta against the baseline row
    with its 95% interval; `*` marks a delta whose interval excludes 0."""
    scale, digits = units.scale(result.metric), 2 if units.is_rate(result.metric) else 4
    t = Table(
        title=f"{result.name}: test {result.metric}, mean ± std over seeds; Δ vs baseline "
        f"paired by seed, 95% CI ({CI_NAMES.get(result.ci, result.ci)}), * excludes 0"
    )
    bases = {row.baseline for row in result.table if row.baseline}
    several = len(bases) > 1
    columns = ["variant", "method", units.label(result.metric), "Δ [95% CI]", "seeds", "wall time"]
    if several:
        columns.insert(4, "vs")
    cells = []
    for row in result.table:
        line = [
            row.variant,
            row.method,
            f"{scale * row.mean:.{digits}f} ± {scale * row.std:.{digits}f}",
            _delta_cell(row, scale, digits, row.variant in bases),
        ]
        if several:
            line.append(row.baseline or "")
        cells.append([*line, str(row.n), f"{row.wall_time_s:.1f}s"])
    for i, c in enumerate(columns):  # a narrow terminal shortens the method names only
        width = max([len(c), *(len(line[i]) for line in cells)])
        t.add_column(c, no_wrap=True, min_width=4 if c == "method" else width)
    for line in cells:
        t.add_row(*line)
    return t


CI_NAMES = {"t": "paired t", "bootstrap": "bootstrap over seeds"}


def _delta_cell(row: Row, scale: float, digits: int, is_baseline: bool) -> str:
    if row.delta is None:
        return "(baseline)" if is_baseline else "-"
    text = f"{scale * row.delta:+.{digits}f}"
    if row.delta_ci:
        lo, hi = (scale * v for v in row.delta_ci)
        text += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return text + (" *" if row.excludes_zero else "")
