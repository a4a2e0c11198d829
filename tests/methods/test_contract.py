"""Every registered method: its zoo recipe, one step of gradients, one short engine run.

Adding a method means adding `recipes/zoo/NAME.yaml`; this test fails until it exists.
Methods that only distil per-pixel predictions (`dense_only`, e.g. CIRKD) have no digits
recipe; tests/methods/test_dense_methods.py runs them on the NYU-Depth V2 fixture.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmkd_cli.config import list_recipes, load_recipe
from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.engine.distributed import init_distributed
from cmkd_cli.engine.loop import fit, make_loaders
from cmkd_cli.methods import METHODS
from cmkd_cli.stages import train_teacher
from cmkd_cli.stages.experiment import build_experiment, method_from_checkpoint

FAST = [
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "teacher.pretrain.epochs=1",
    "train.threads=1",
    "output.tensorboard=false",
]
_TEACHERS: dict[str, Path] = {}


def _teacher_for(recipe, tmp_root: Path) -> Path | None:
    if not METHODS.get(recipe.method.name).uses_teacher:
        return None
    if recipe.teacher.checkpoint:
        return Path(recipe.teacher.checkpoint)
    key = train_teacher.teacher_key(recipe)
    if key not in _TEACHERS:
        out = train_teacher.default_dir(recipe, tmp_root)
        res = train_teacher.train(recipe, out, init_distributed("cpu"))
        _TEACHERS[key] = Path(res.checkpoint)
    return _TEACHERS[key]


@pytest.fixture(scope="module")
def teacher_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.parametrize(
    "name", [n for n, cls in METHODS.items() if not getattr(cls, "dense_only", False)]
)
def test_method_has_a_zoo_recipe_and_trains_through_the_engine(
    name: str, tmp_path: Path, teacher_root: Path
) -> None:
    assert f"zoo/{name}" in list_recipes() or name == "baseline", f"add recipes/zoo/{name}.yaml"
    recipe = load_recipe(
        "quickstart" if name == "baseline" else f"zoo/{name}", [*FAST, f"output.root={tmp_path}"]
    )
    assert recipe.method.name == name
    exp = build_experiment(recipe, teacher_checkpoint=_teacher_for(recipe, teacher_root))
    method = exp.method
    batch = next(iter(make_loaders(exp.data, recipe, init_distributed("cpu"))["train"]))

    method.train()
    out = method(batch)
    assert out.losses, "a method returns at least one loss term"
    for term, value in out.losses.items():
        assert value.dim() == 0 and torch.isfinite(value), term
    sum(out.losses.values()).backward()

    trained = {id(p) for g in method.trainable_groups() for p in g.params}
    for pname, p in method.named_parameters():
        if id(p) not in trained:
            assert p.grad is None, f"{pname} is not trained by {name} but got a gradient"
    for group in method.trainable_groups():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group.params), (
            f"no gradient reaches the `{group.name}` group of {name}"
        )
    if method.teacher is not None and method.teacher_frozen:
        assert all(p.grad is None for p in method.teacher.parameters())

    method.zero_grad(set_to_none=True)
    result = fit(
        method,
        exp.data,
        exp.task,
        recipe,
        tmp_path / "run",
        init_distributed("cpu"),
        extra_state={"teacher_ref": exp.teacher_ref},
    )
    assert (tmp_path / "run" / "final.json").is_file()
    assert 0.0 <= result.test["accuracy"] <= 1.0
    # best.pt (evaluation, shipping) leaves out training-only memories, last.pt keeps them
    last = load_checkpoint(tmp_path / "run" / "last.pt")["method"]
    best = load_checkpoint(tmp_path / "run" / "best.pt")["method"]
    assert set(best) == {k for k in last if not k.startswith(method.training_only_state)}
    for key in method.training_only_state:
        assert any(k.startswith(key) for k in last), key
    restored, _ = method_from_checkpoint(tmp_path / "run" / "best.pt")
    assert type(restored) is type(method)
