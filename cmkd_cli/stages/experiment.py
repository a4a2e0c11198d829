"""Build one experiment from a recipe: data, task, student, teacher and method.

Shared by `distill`, `train-teacher` and `eval`; holds no maths.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from cmkd_cli.config import validate_recipe
from cmkd_cli.data.datasets import DataBundle, build_data
from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.errors import UsageError
from cmkd_cli.methods import METHODS, Method
from cmkd_cli.models.registry import create_model, model_params
from cmkd_cli.schema import ModelConfig, Recipe
from cmkd_cli.student.package import build_student_model, student_package
from cmkd_cli.tasks import build_task, check_metric


@dataclass
class Experiment:
    recipe: Recipe
    data: DataBundle
    task: Any
    method: Method
    teacher_ref: dict[str, Any] | None


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _model_params(cfg: ModelConfig, data: DataBundle, field: str) -> dict[str, Any]:
    """The builder's parameters; `class_names` is filled from the data when it takes them."""
    return model_params(cfg.name, cfg.params, data.class_names, field)


def build_model(cfg: ModelConfig, data: DataBundle, field: str) -> nn.Module:
    return create_model(cfg.name, data.num_classes, _model_params(cfg, data, field), field=field)


def preflight(recipe: Recipe, data: DataBundle) -> None:
    """Fail on a bad method, model or parameter before any training starts."""
    method_cls = METHODS.get(recipe.method.name, field="method.name")
    check_metric(recipe.task, recipe.eval.metric)
    build_model(recipe.student, data, field="student")
    if method_cls.uses_teacher:
        if recipe.teacher is None:
            raise UsageError(
                f"method `{recipe.method.name}` needs a teacher but the recipe has no `teacher`"
            )
        _model_params(recipe.teacher.model, data, field="teacher.model")
        if recipe.teacher.checkpoint and not Path(recipe.teacher.checkpoint).is_file():
            raise UsageError(
                f"teacher.checkpoint: {recipe.teacher.checkpoint} does not exist (weights are "
                "only read from local paths; nothing is downloaded)"
            )
        if method_cls.needs_teacher_logits and not (
            recipe.teacher.checkpoint or recipe.teacher.needs_pretraining()
        ):
            raise UsageError(
                f"method `{recipe.method.name}` needs teacher logits: set teacher.checkpoint "
                "or teacher.pretrain (`when: always` to fit the head of a model checkpoint)"
            )


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_teacher_weights(teacher: nn.Module, path: Path) -> dict[str, Any]:
    """Load `teacher.pt` (from train-teacher) or a plain state dict from a local path."""
    if not path.is_file():
        raise UsageError(
            f"teacher.checkpoint: {path} does not exist (weights are only read from local "
            "paths; nothing is downloaded)"
        )
    state = load_checkpoint(path)
    state = state.get("model", state)
    missing, unexpected = teacher.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"teacher.checkpoint: {path} does not fit the teacher model (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]})"
        )
    return {"checkpoint": str(path), "sha256": file_fingerprint(path)}


def build_experiment(
    recipe: Recipe, teacher_checkpoint: Path | None = None, data: DataBundle | None = None
) -> Experiment:
    """Everything `fit` needs; the teacher is loaded from `teacher_checkpoint` or the recipe."""
    seed_everything(recipe.train.seed, recipe.train.deterministic)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    data = data or build_data(recipe.data)
    preflight(recipe, data)
    method, ref = build_method(recipe, data.spec(), teacher_checkpoint)
    return Experiment(recipe, data, method.task, method, ref)


def build_method(
    recipe: Recipe,
    spec: dict[str, Any],
    teacher_checkpoint: Path | None = None,
    student: nn.Module | None = None,
) -> tuple[Method, dict[str, Any] | None]:
    """The recipe's method (student, teacher, extra modules) for data described by `spec`;
    `student` replaces the freshly built one (a trained student)."""
    data = SimpleNamespace(num_classes=spec["num_classes"], class_names=spec["class_names"])
    task = build_task(recipe.task, data.num_classes, recipe.task_params)
    method_cls = METHODS.get(recipe.method.name, field="method.name")
    student = student or build_model(recipe.student, data, field="student")
    teacher, ref = None, None
    if method_cls.uses_teacher:
        teacher = build_model(recipe.teacher.model, data, field="teacher.model")
        path = teacher_checkpoint or (
            Path(recipe.teacher.checkpoint) if recipe.teacher.checkpoint else None
        )
        if path is not None:
            ref = load_teacher_weights(teacher, path)
    tune = recipe.teacher.tune if recipe.teacher else "frozen"
    cfg = recipe.method
    if "n_data" in type(cfg).model_fields and cfg.n_data is None:  # per-sample memories (CRD)
        cfg = cfg.model_copy(update={"n_data": spec["n_train"]})
    return method_cls(cfg, student, teacher, task, data.num_classes, tune), ref


def method_from_checkpoint(path: Path) -> tuple[Method, Recipe]:
    """A trained method (student, tuned or referenced teacher, heads) from a run checkpoint;
    the student comes through the one student loader (`cmkd_cli.student.package`)."""
    ckpt = load_checkpoint(path)
    if "recipe" not in ckpt or "method" not in ckpt:
        raise UsageError(
            f"{path} is not a cmkd run checkpoint (no recipe or method state; a student.pt "
            "holds the student alone: give the run's best.pt)"
        )
    recipe = validate_recipe(ckpt["recipe"], origin=f"{path} (stored recipe)")
    spec = ckpt.get("data_spec") or build_data(recipe.data).spec()
    ref = ckpt.get("teacher_ref") or {}
    teacher = Path(ref["checkpoint"]) if ref.get("checkpoint") else None
    student = build_student_model(student_package(ckpt, str(path)))
    method, _ = build_method(recipe, spec, teacher, student=student)
    method.load_checkpoint_state(ckpt["method"])
    return method.eval(), recipe
