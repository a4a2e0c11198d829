"""`cmkd train-teacher`: train the recipe's teacher on its own modality with the task loss.

The teacher is trained as a `baseline` student whose input is the batch's teacher input
`t`, with `teacher.pretrain`'s optimiser, schedule and epochs, in the same engine. The
best weights go to OUT/teacher.pt, which `distill` then loads (frozen or tuned); OUT/best.pt
holds weights only (no optimiser state: IR-50's would triple its 175 MB), OUT/last.pt all
that a resume needs. `distill` finds the teacher again by `teacher_key`, which covers only
what changes the teacher's weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from cmkd_cli import console, units
from cmkd_cli.config import dump_recipe, load_recipe
from cmkd_cli.data.datasets import DataBundle, KeyedDataset, build_data
from cmkd_cli.engine import identity
from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.engine.distributed import DistInfo, barrier, init_distributed
from cmkd_cli.engine.lock import run_lock
from cmkd_cli.engine.loop import fit
from cmkd_cli.errors import UsageError
from cmkd_cli.interrupts import resumable_with
from cmkd_cli.io import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from cmkd_cli.options.common import RecipeOptions
from cmkd_cli.runs import run_root
from cmkd_cli.schema import DataConfig, Recipe, TeacherPretrain
from cmkd_cli.stages.experiment import build_experiment

TEACHER_FILE = "teacher.pt"
KEY_FILE = "teacher-key.txt"  # written when training starts: the folder's identity


class TeacherOptions(RecipeOptions):
    out: Path | None = Field(None, description="output directory (default runs/NAME/teacher-KEY)")
    overwrite: bool = Field(False, description="replace an OUT that holds another teacher")


class TeacherResult(BaseModel):
    out: str
    checkpoint: str
    model: str
    best_epoch: int | None  # 1-based
    val: dict[str, float]
    test: dict[str, float]
    trained: bool


def teacher_recipe(recipe: Recipe) -> Recipe:
    """The recipe that trains the teacher alone (baseline method on the teacher input)."""
    if recipe.teacher is None:
        raise UsageError("the recipe has no `teacher` section to train")
    pre = recipe.teacher.pretrain or TeacherPretrain()
    data = recipe.model_dump(mode="json")
    data.update(
        student=recipe.teacher.model.model_dump(mode="json"),
        teacher=None,
        method={"name": "baseline"},
        optim=pre.optim.model_dump(mode="json"),
        schedule=pre.schedule.model_dump(mode="json"),
        compare=[],
        seeds=None,
    )
    if pre.task_params is not None:
        data["task_params"] = pre.task_params
    data["data"] = teacher_data(recipe).model_dump(mode="json")
    if pre.batch_size is not None:
        data["data"] = {**data["data"], "batch_size": pre.batch_size}
    data["eval"] = {**data["eval"], "test": True}  # also when asked for by a grid run
    if pre.eval_every is not None:
        data["eval"]["every"] = pre.eval_every
    data["train"] = {
        **data["train"],
        "epochs": pre.epochs,
        "seed": pre.seed,
        "max_steps_per_epoch": None,
    }
    return type(recipe).model_validate(data)


def teacher_data(recipe: Recipe) -> DataConfig:
    """The data the teacher trains on: `data` with `teacher.pretrain.data_params` merged in."""
    pre = recipe.teacher.pretrain if recipe.teacher else None
    if pre is None or not pre.data_params:
        return recipe.data
    return recipe.data.model_copy(update={"params": {**recipe.data.params, **pre.data_params}})


def teacher_key(recipe: Recipe) -> str:
    """A fingerprint of what changes the trained teacher's weights, and only that: its model
    and initial weights, the samples (dataset and parameters), the training batch and
    `drop_last`, optimiser, schedule, epochs, seed, task loss, numerics (AMP, clipping,
    accumulation, determinism) and how the best epoch is chosen. Not how data are loaded
    (eval batch size, workers), nor threads, logging, output paths or `teacher.tune`, so a
    later run that only changes those reuses the trained teacher."""
    if recipe.teacher is None:
        raise UsageError("the recipe has no `teacher` section to train")
    t = teacher_recipe(recipe)
    blob = json.dumps(
        {
            "model": t.student.model_dump(mode="json"),
            "checkpoint": recipe.teacher.checkpoint,
            "data": {
                **t.data.identity(),  # with pretrain.data_params
                "batch_size": t.data.batch_size,
                "drop_last": t.data.drop_last,
            },
            "optim": t.optim.model_dump(mode="json"),
            "schedule": t.schedule.model_dump(mode="json"),
            "task": [t.task, t.task_params],
            "train": t.train.model_dump(
                mode="json",
                include={"epochs", "seed", "amp", "grad_clip", "grad_accum", "deterministic"},
            ),
            "eval": t.eval.model_dump(mode="json"),  # `every`: which epochs can be best
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _first_item(split: KeyedDataset) -> dict[str, Any]:
    """The split's first item with every input (a run before may have narrowed them)."""
    with split.carrying("x", "t"):
        return split[0]


def inspect_teacher(recipe: Recipe, out: Path) -> identity.Status:
    """A teacher folder's identity is `teacher_key` (what changes the weights; variants that
    share a teacher share its folder): `finished` when OUT/teacher.pt has this key,
    `unfinished` when OUT/teacher-key.txt has it, `new` when OUT holds no run; any other
    key is a `RunConflict` naming the differing fields of the teacher's recipe."""
    key = teacher_key(recipe)
    ckpt_path, key_path = out / TEACHER_FILE, out / KEY_FILE
    if ckpt_path.exists():
        found = load_checkpoint(ckpt_path).get("key")
    elif key_path.exists():
        found = key_path.read_text().strip()
    else:
        return identity.inspect_run(out, teacher_recipe(recipe))
    if found == key:
        return "finished" if ckpt_path.exists() else "unfinished"
    what = f"another teacher (key {found}, this recipe's is {key})"
    if (out / identity.CONFIG).exists():
        diffs = identity.differing_fields(
            identity.identity(identity.stored_recipe(out)),
            identity.identity(teacher_recipe(recipe)),
        )
        if diffs:
            what = f"another teacher ({identity.describe_differences(diffs)})"
    raise identity.conflict(out, what)


def train(
    recipe: Recipe,
    out: Path,
    dist: DistInfo,
    data: DataBundle | None = None,
    overwrite: bool = False,
) -> TeacherResult:
    """Train (or reuse) the teacher of `recipe` into `out`; idempotent and resumable; a
    folder holding another teacher is refused (or cleared with `overwrite`)."""
    with run_lock(out, enabled=dist.is_main):
        try:
            status = inspect_teacher(recipe, out)
        except identity.RunConflict:
            if not overwrite:
                raise
            if dist.is_main:
                identity.clear(out)
            status = "new"
        barrier()
        if status == "finished":
            return _reused(out)
        if dist.is_main:
            remove_stale_temporaries(out)
        return _train(recipe, out, dist, data, status)


def _reused(out: Path) -> TeacherResult:
    ckpt_path = out / TEACHER_FILE
    meta = load_checkpoint(ckpt_path)
    return TeacherResult(
        out=str(out),
        checkpoint=str(ckpt_path),
        model=meta["model_name"],
        best_epoch=meta["best_epoch"],
        val=meta["val"],
        test=meta["test"],
        trained=False,
    )


def _train(
    recipe: Recipe, out: Path, dist: DistInfo, data: DataBundle | None, status: str
) -> TeacherResult:
    ckpt_path = out / TEACHER_FILE
    t_recipe = teacher_recipe(recipe)
    verb = "resuming" if status == "unfinished" else "training"
    console.info(f"{verb} teacher `{t_recipe.student.name}` into {out}")
    if dist.is_main and status == "new":
        atomic_write_text(out / identity.CONFIG, dump_recipe(t_recipe))
        atomic_write_text(out / KEY_FILE, teacher_key(recipe) + "\n")
    data = data or build_data(t_recipe.data)
    if data.teacher_val is not None:  # evaluate the teacher on its own modality
        data = dataclasses.replace(data, val=data.teacher_val, test=data.teacher_val)
    elif len(data.val) and "t" not in _first_item(data.val):
        raise UsageError(
            f"data ({t_recipe.data.name}): no evaluation split on the teacher's modality; for "
            "speaker data, the manifest's `face_eval_split` needs faces of two or more speakers"
        )
    exp = build_experiment(t_recipe, data=data)
    exp.method.input_key = "t"
    result = fit(
        exp.method, exp.data, exp.task, t_recipe, out, dist, input_key="t", best_weights_only=True
    )
    if dist.is_main:
        atomic_torch_save(
            {
                "model": exp.method.student.state_dict(),
                "model_name": t_recipe.student.name,
                "best_epoch": result.best_epoch,
                "val": result.best_val,
                "test": result.test,
                "key": teacher_key(recipe),
            },
            ckpt_path,
        )
    barrier()
    return TeacherResult(
        out=str(out),
        checkpoint=str(ckpt_path),
        model=t_recipe.student.name,
        best_epoch=result.best_epoch,
        val=result.best_val,
        test=result.test,
        trained=True,
    )


def default_dir(recipe: Recipe, root: Path) -> Path:
    return root / f"teacher-{teacher_key(recipe)}"


def run(options: TeacherOptions) -> TeacherResult:
    if options.recipe is None:
        raise UsageError("--recipe is required")
    r = load_recipe(options.recipe, options.sets, options.variables)
    dist = init_distributed(r.train.device)
    folder = options.out or default_dir(r, run_root(r))
    with resumable_with("the same command", "interrupted before training started"):
        return train(r, folder, dist, overwrite=options.overwrite)


def render(result: TeacherResult) -> str:
    test = units.show_all(result.test)
    verb = "trained" if result.trained else "already trained"
    return f"teacher {result.model} {verb}: {result.checkpoint} (test: {test})"
