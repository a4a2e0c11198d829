"""`cmkd distill`: run a recipe once per seed and per `compare:` variant, then tabulate.

One run: `runs/NAME/`. A study (several seeds or variants): `runs/NAME/VARIANT/seed-S/`
per run, plus `runs/NAME/study.yaml` and `runs/NAME/results.json`. A run directory's
identity is its recipe (engine/identity.py): a finished run of the same recipe is skipped,
an unfinished one resumed, one of another recipe refused (or replaced with --overwrite).
One process writes a directory at a time (engine/lock.py).
"""

from __future__ import annotations

import fnmatch
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field
from rich.table import Table

from cmkd_cli import console, units
from cmkd_cli.config import (
    apply_sets,
    dump_recipe,
    grid_points,
    load_recipe,
    validate_recipe,
    variant_recipe,
)
from cmkd_cli.data.datasets import DataBundle, build_data
from cmkd_cli.engine import identity
from cmkd_cli.engine.distributed import DistInfo, barrier, init_distributed
from cmkd_cli.engine.identity import CONFIG, FINAL, Status
from cmkd_cli.engine.lock import run_lock
from cmkd_cli.engine.loop import FitResult, fit
from cmkd_cli.errors import UsageError
from cmkd_cli.interrupts import resumable_with
from cmkd_cli.io import atomic_write_json, atomic_write_text, remove_stale_temporaries
from cmkd_cli.methods import METHODS
from cmkd_cli.metrics.paired import CiMethod, interval, paired_delta, sample_std
from cmkd_cli.options.common import RecipeOptions
from cmkd_cli.runs import STUDY_FILE, run_root, study_run_dir
from cmkd_cli.schema import Recipe, Variant
from cmkd_cli.stages import train_teacher
from cmkd_cli.stages.experiment import build_experiment, preflight


class DistillOptions(RecipeOptions):
    seeds: list[int] | None = Field(None, description="seeds to run (default: the recipe's)")
    resume: Path | None = Field(None, description="continue the run or study in this directory")
    variants: list[str] = Field(
        default_factory=list,
        description="only these compare variants (names or shell-style patterns)",
    )
    overwrite: bool = Field(
        False, description="replace run directories that hold another recipe (--overwrite)"
    )


class RunSummary(BaseModel):
    variant: str
    method: str
    seed: int
    run_dir: str
    best_epoch: int | None  # 1-based
    best_val: dict[str, float]
    test: dict[str, float]
    wall_time_s: float
    # trained | resumed | skipped (finished earlier with the same recipe) | done (report)
    status: str


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


def load_resumed(resume: Path, sets: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe stored in a run or study directory, with `--set` items applied."""
    for name in (STUDY_FILE, CONFIG):
        path = resume / name
        if path.is_file():
            data = yaml.safe_load(path.read_text())
            overrides = apply_sets(data, list(sets)) if isinstance(data, dict) else {}
            return validate_recipe(data, origin=str(path), overrides=overrides)
    raise UsageError(f"--resume {resume}: no {STUDY_FILE} or {CONFIG} there (not a run directory)")


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


@dataclass
class Job:
    """One run of a study: its variant, recipe (seed set), directory and what is there."""

    variant: str
    recipe: Recipe
    run_dir: Path
    status: Status = "new"
    tuned: bool = False  # a `grid:` variant: its recipe is the chosen point's, after tuning


class DataCache:
    """Datasets built once per distinct `data` section (variants may change it)."""

    def __init__(self) -> None:
        self._built: dict[str, DataBundle] = {}

    def get(self, recipe: Recipe) -> DataBundle:
        key = recipe.data.model_dump_json()
        if key not in self._built:
            self._built[key] = build_data(recipe.data)
        return self._built[key]


def finished_run(
    run_dir: Path, variant: str, method: str, seed: int, status: str = "done"
) -> RunSummary | None:
    """The summary of a finished run (its final.json), None while it is not finished."""
    final = run_dir / FINAL
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
        status=status,
    )


def _summary(job: Job, status: str, res: FitResult) -> RunSummary:
    return RunSummary(
        variant=job.variant,
        method=job.recipe.method.name,
        seed=job.recipe.train.seed,
        run_dir=str(job.run_dir),
        best_epoch=res.best_epoch,
        best_val=res.best_val,
        test=res.test,
        wall_time_s=res.wall_time_s,
        status=status,
    )


def run_one(job: Job, dist: DistInfo, teacher: Path | None, data: DataBundle) -> RunSummary:
    """Train (or resume) one run; a finished run of the same recipe is skipped."""
    r, run_dir = job.recipe, job.run_dir
    done = finished_run(run_dir, job.variant, r.method.name, r.train.seed, "skipped")
    if job.status == "finished" and done is not None:
        return done
    exp = build_experiment(r, teacher_checkpoint=teacher, data=data)
    res = fit(
        exp.method,
        exp.data,
        exp.task,
        r,
        run_dir,
        dist,
        extra_state={"teacher_ref": exp.teacher_ref},
    )
    return _summary(job, "resumed" if job.status == "unfinished" else "trained", res)


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
    """Run a recipe's study (or one run). Each run directory's identity is its recipe:
    finished with the same recipe is skipped, unfinished is resumed, another recipe is
    refused before any work (or, with `overwrite`, cleared and trained afresh)."""
    recipe, sets, resume, variants = options.recipe, options.sets, options.resume, options.variants
    seeds, overwrite = options.seeds, options.overwrite
    if resume is not None:
        if recipe is not None:
            raise UsageError("--resume continues a run as it was configured; drop --recipe")
        r = load_resumed(resume, sets)
        named = any(s.split("=", 1)[0].strip() == "output.name" for s in sets)
        root = resume.parent / r.output.name if named and r.output.name else resume
    elif recipe is None:
        raise UsageError("--recipe is required (see `cmkd recipes list`), or --resume RUN_DIR")
    else:
        r = load_recipe(recipe, sets, options.variables)
        root = run_root(r)
    if resume is not None and root == resume and not (root / STUDY_FILE).exists():
        if seeds or variants:
            raise UsageError(f"--resume {resume}: one run; --seeds and --variant apply to studies")
        # the stored run exactly: its own seed, not its study's seeds or variants
        variant = root.parent.name if root.name.startswith("seed-") else r.row_names()[0]
        jobs, single = [Job(variant, r, root)], True
    else:
        r = r.model_copy(update={"seeds": seeds or r.seeds or [r.train.seed]})
        jobs, single = _plan_jobs(r, root, variants)
    dist = init_distributed(r.train.device)
    points = _tune_jobs(r, root, jobs)
    _inspect(root, single, jobs + points, overwrite)  # a conflict fails here, before any work
    datasets = DataCache()
    for job in jobs + points:  # fail on a bad data, model or method setting before any training
        preflight(job.recipe, datasets.get(job.recipe))
    with (
        run_lock(root, enabled=dist.is_main),
        resumable_with(f"cmkd distill --resume {root}", "interrupted before training started"),
    ):
        _inspect(root, single, jobs + points, overwrite, clear_conflicts=dist.is_main)
        barrier()
        if not single and dist.is_main:
            atomic_write_text(root / STUDY_FILE, dump_recipe(r))
        runs, teachers, selection = _run_jobs(r, jobs, root, dist, datasets, overwrite)
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


def selected_rows(patterns: list[str], names: list[str], recipe: str) -> set[str]:
    """The rows `--variant` names: each a row's name or a shell-style pattern (`a2v-*`,
    `*-kd`); one that matches no row is an error listing the rows."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise UsageError(
                f"--variant {pattern!r}: not a row of {recipe}; its rows: " + ", ".join(names)
            )
        chosen.update(hits)
    return chosen


def _plan_jobs(r: Recipe, root: Path, variants: list[str]) -> tuple[list[Job], bool]:
    """The runs of recipe `r` (one per seed and compare variant, `variants` only when given)
    and whether it is a single run (written to `root` itself)."""
    planned = plan(r, r.seeds)
    single = len(planned) == 1
    if variants:
        chosen = selected_rows(variants, list(dict.fromkeys(n for n, _, _ in planned)), r.name)
        planned = [j for j in planned if j[0] in chosen]
    grids = {v.name for v in r.compare.variants if v.grid}
    jobs = [
        Job(name, _seeded(jr, seed), root if single else study_run_dir(root, name, seed))
        for name, jr, seed in planned
    ]
    for job in jobs:
        job.tuned = job.variant in grids
    return jobs, single


def _seeded(recipe: Recipe, seed: int) -> Recipe:
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"seed": seed})})


def _point_recipe(r: Recipe, variant: str, point: dict[str, Any]) -> Recipe:
    """A `grid:` point's recipe for tuning: validated, never tested (`eval.test: false`)."""
    pr = variant_recipe(r, variant, point=point)
    return pr.model_copy(update={"eval": pr.eval.model_copy(update={"test": False})})


def _tune_jobs(r: Recipe, root: Path, jobs: list[Job]) -> list[Job]:
    """The tuning runs (ROOT/VARIANT/grid-K/seed-S) of the `grid:` variants among `jobs`."""
    out = []
    for v in r.compare.variants:
        if v.grid and any(j.variant == v.name for j in jobs):
            for k, point in enumerate(grid_points(v)):
                pr = _point_recipe(r, v.name, point)
                for seed in r.compare.tune_seeds:
                    folder = study_run_dir(root / v.name, f"grid-{k}", seed)
                    out.append(Job(f"{v.name} grid {point}", _seeded(pr, seed), folder))
    return out


def _inspect(
    root: Path, single: bool, jobs: list[Job], overwrite: bool, clear_conflicts: bool = False
) -> None:
    """Set each job's status from what its directory holds; a directory of another recipe
    is a `RunConflict`, or with `overwrite` cleared (when `clear_conflicts`) and new. Jobs
    of `grid:` variants are inspected once their point is chosen."""
    if not single:
        try:
            identity.inspect_study(root)
        except identity.RunConflict:
            if not overwrite:
                raise
            if clear_conflicts:
                identity.clear(root)
    for job in jobs:
        if not job.tuned:
            _inspect_job(job, overwrite, clear_conflicts)
    teachers = {}  # a teacher a run still needs must be this recipe's (train() clears it)
    for job in jobs:
        if job.status != "finished" and not job.tuned and _pretrains_teacher(job.recipe):
            teachers.setdefault(train_teacher.default_dir(job.recipe, root), job.recipe)
    for out, jr in teachers.items():
        try:
            train_teacher.inspect_teacher(jr, out)
        except identity.RunConflict:
            if not overwrite:
                raise


def _inspect_job(job: Job, overwrite: bool, clear_conflicts: bool) -> None:
    try:
        job.status = identity.inspect_run(job.run_dir, job.recipe)
    except identity.RunConflict:
        if not overwrite:
            raise
        if clear_conflicts:
            identity.clear(job.run_dir)
        job.status = "new"


def _run_jobs(
    r: Recipe,
    jobs: list[Job],
    root: Path,
    dist: DistInfo,
    datasets: DataCache,
    overwrite: bool,
) -> tuple[list[RunSummary], dict[str, train_teacher.TeacherResult], dict[str, Selection]]:
    """Each job in turn (its teacher trained first when it needs one); a `grid:` variant's
    points are tuned first, then its seeds run at the chosen point."""
    teachers: dict[str, train_teacher.TeacherResult] = {}

    def teacher_for(jr: Recipe) -> Path | None:
        if not _pretrains_teacher(jr):
            return None
        key = train_teacher.teacher_key(jr)
        if key not in teachers:
            out = train_teacher.default_dir(jr, root)
            data = datasets.get(train_teacher.teacher_recipe(jr))  # pretrain.data_params
            teachers[key] = train_teacher.train(jr, out, dist, data, overwrite)
        return Path(teachers[key].checkpoint)

    def run_job(job: Job) -> RunSummary:
        label = f"[{job.variant} seed {job.recipe.train.seed}] {job.run_dir}"
        if job.status == "finished":
            console.info(f"{label}: skipped: finished with the same recipe")
            return run_one(job, dist, None, datasets.get(job.recipe))
        with run_lock(job.run_dir, enabled=dist.is_main):
            if job.status == "unfinished":
                console.info(f"{label}: resuming: unfinished with the same recipe")
            else:
                console.info(label)
            if dist.is_main:
                remove_stale_temporaries(job.run_dir)
                if job.status == "new":
                    atomic_write_text(job.run_dir / CONFIG, dump_recipe(job.recipe))
            teacher = teacher_for(job.recipe)
            return run_one(job, dist, teacher, datasets.get(job.recipe))

    def train_one(name: str, jr: Recipe, seed: int, run_dir: Path) -> RunSummary:
        job = Job(name, _seeded(jr, seed), run_dir)
        _inspect_job(job, overwrite, dist.is_main)
        barrier()
        return run_job(job)

    runs, selection = [], {}
    grids = {v.name: v for v in r.compare.variants if v.grid}
    for name in dict.fromkeys(job.variant for job in jobs):
        group = [job for job in jobs if job.variant == name]
        if name in grids:
            selection[name] = tune(r, grids[name], root / name, train_one)
            chosen = variant_recipe(r, name, point=selection[name].chosen_set)
            for job in group:
                job.recipe = _seeded(chosen, job.recipe.train.seed)
                _inspect_job(job, overwrite, dist.is_main)
            barrier()
        runs += [run_job(job) for job in group]
    return runs, teachers, selection


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
        pr = _point_recipe(recipe, variant.name, point)
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


def _pretrains_teacher(recipe: Recipe) -> bool:
    """The run needs a teacher trained (or a trained one reused) first."""
    uses = METHODS.get(recipe.method.name).uses_teacher
    return bool(uses and recipe.teacher.needs_pretraining())


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
