"""`student.pt`: a trained student that stands alone, and the one way to load a student.

Every run writes `RUN/student.pt` beside `best.pt` (`engine.loop`), a dict that
`torch.load(weights_only=True)` reads (tensors, strings, numbers, lists, dicts only):

    format "cmkd-student", version 1
    task              "classification" | "speaker" | "segmentation"
    model             {"name", "params"}: the registered builder and its parameters (no
                      `pretrained` initial weights; a text student keeps the reference to its
                      local encoder folder, whose architecture and tokenizer it needs)
    weights           the student's state dict (float tensors, BatchNorm statistics included)
    num_classes, class_names
    scoring           speaker students: how trials are scored (`metrics.trials.Scoring`: cosine
                      or distance over the crop pairs, minDCF P_target and costs), from the
                      recipe's `task_params`; None for other tasks
    input             the evaluation preprocessing (`data.preprocess`): fbank settings and
                      crop policy, spectrogram settings, image size and normalisation, NYU
                      view encoding, or tokenizer reference and length; sample rates inside
    source            where it came from: recipe name, method, epoch, validation metric and
                      value, the checkpoint it was taken from
    recipe            the resolved recipe (provenance; nothing here needs it)

`read_student` takes a `student.pt` or a run checkpoint (`best.pt`, `last.pt`, whose state
it packages the same way) and `build_student_model` rebuilds the network: `cmkd_cli.load`,
`eval`, `embed`, `score`, `export`, `average`, `cross-match` and `analyze` all load a
student through these two functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmkd_cli.config import validate_recipe
from cmkd_cli.data.datasets import build_data
from cmkd_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from cmkd_cli.errors import CmkdError, RunError, UsageError
from cmkd_cli.models.registry import create_model, model_params
from cmkd_cli.tasks import build_task

FORMAT = "cmkd-student"
VERSION = 1
STUDENT_FILE = "student.pt"


def student_package(state: dict[str, Any], origin: str) -> dict[str, Any]:
    """The `student.pt` dict of a run checkpoint's state (`student`, `recipe`, `data_spec`)."""
    recipe, spec = state["recipe"], dict(state.get("data_spec") or {})
    if not spec.get("student_input"):
        spec = _spec_from_data(recipe, origin)
    params = {k: v for k, v in recipe["student"]["params"].items() if k != "pretrained"}
    name = recipe["student"]["name"]
    evaluation = recipe.get("eval") or {}
    return {
        "format": FORMAT,
        "version": VERSION,
        "task": recipe.get("task", "classification"),
        "model": {"name": name, "params": model_params(name, params, spec["class_names"])},
        "weights": {k: v.detach().cpu() for k, v in state["student"].items()},
        "num_classes": spec["num_classes"],
        "class_names": list(spec["class_names"]),
        "scoring": _scoring(recipe),
        "input": spec["student_input"],
        "source": {
            "recipe": recipe.get("name"),
            "method": (recipe.get("method") or {}).get("name"),
            "epoch": state.get("epoch"),
            "metric": evaluation.get("metric"),
            "value": state.get("best"),
            "checkpoint": origin,
        },
        "recipe": recipe,
    }


def _spec_from_data(recipe: dict[str, Any], origin: str) -> dict[str, Any]:
    """A checkpoint written before `student.pt` existed: its data (from the stored recipe)
    says how the student's inputs are preprocessed; no guessed defaults."""
    try:
        data = build_data(validate_recipe(recipe, origin=f"{origin} (stored recipe)").data)
    except CmkdError as exc:
        raise RunError(
            f"{origin} predates student.pt and records no input preprocessing; reading it from "
            f"the run's data failed: {exc}"
        ) from None
    spec = data.spec()
    if not spec["student_input"]:
        raise RunError(f"{origin}: the data `{recipe['data']['name']}` has no student input")
    return spec


def _scoring(recipe: dict[str, Any]) -> dict[str, Any] | None:
    """A speaker recipe's trial scoring (`SpeakerTask.scoring`, from its `task_params`)."""
    if recipe.get("task") != "speaker":
        return None
    return build_task("speaker", 0, recipe.get("task_params") or {}).scoring.model_dump()


def read_student(path: str | Path) -> dict[str, Any]:
    """The `student.pt` dict of `path`: a student.pt, or a run checkpoint packaged on the fly."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") == FORMAT:
        if ckpt.get("version") != VERSION:
            raise RunError(
                f"{path}: student.pt version {ckpt.get('version')} is not {VERSION} (written by "
                "another cmkd release)"
            )
        return ckpt
    if "student" in ckpt and "recipe" in ckpt:
        return student_package(ckpt, origin=str(path))
    raise UsageError(f"{path} is neither a student.pt nor a cmkd run checkpoint")


def build_student_model(package: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The student network of a `student.pt` dict, weights loaded, in eval mode."""
    spec = package["model"]
    model = create_model(spec["name"], package["num_classes"], spec["params"], field="student")
    missing, unexpected = model.load_state_dict(package["weights"], strict=False)
    if missing or unexpected:
        where = package["source"].get("checkpoint")
        raise RunError(
            f"{where}: the weights do not fit model `{spec['name']}` (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.to(device).eval()


def write_student(path: str | Path, package: dict[str, Any]) -> None:
    """Write a `student.pt` atomically."""
    save_checkpoint(path, package)
