"""A frozen teacher with static inputs runs once; later epochs and runs read its outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmkd_cli.config import load_recipe
from cmkd_cli.engine.distributed import init_distributed
from cmkd_cli.engine.loop import attach_teacher_cache, fit, make_loaders
from cmkd_cli.stages.experiment import build_experiment

SETS = [
    "method.name=kd",
    "data.params.teacher_view=image",
    "teacher.model.name=digits_cnn",
    "teacher.model.params={width: 8}",
    "seeds=[1]",
    "compare=[]",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "output.tensorboard=false",
]


@pytest.fixture
def exp(tmp_path: Path):
    recipe = load_recipe("quickstart", [*SETS, f"train.cache_dir={tmp_path / 'cache'}"])
    return build_experiment(recipe)


def test_cached_outputs_equal_live_teacher_and_taps(exp, tmp_path: Path) -> None:
    dist = init_distributed("cpu")
    method = exp.method
    taps = method.tap(method.teacher, ["backbone.block1"])
    assert method.teacher_tap_paths() == ["backbone.block1"]
    attach_teacher_cache(method, exp.data, exp.recipe, dist)
    assert method.teacher_cache is not None
    folders = list((tmp_path / "cache" / "teacher-outputs").iterdir())
    assert len(folders) == 1 and (folders[0] / "complete.json").is_file()

    batch = next(iter(make_loaders(exp.data, exp.recipe, dist)["train"]))
    cached = method.run_teacher(batch)
    cached_tap = taps["backbone.block1"].clone()
    with torch.no_grad():
        live = method.teacher(batch["t"])
    torch.testing.assert_close(cached.logits, live.logits)
    torch.testing.assert_close(cached.embedding, live.embedding)
    torch.testing.assert_close(cached_tap, taps["backbone.block1"])
    assert not torch.equal(batch["index"], torch.arange(len(batch["index"])))  # shuffled rows


def test_second_run_never_calls_the_teacher_and_change_invalidates(exp, tmp_path: Path) -> None:
    dist = init_distributed("cpu")
    fit(exp.method, exp.data, exp.task, exp.recipe, tmp_path / "a", dist)

    def boom(*_a, **_k):
        raise AssertionError("the cached teacher ran again")

    again = build_experiment(exp.recipe, data=exp.data)
    again.method.teacher.forward = boom
    fit(again.method, again.data, again.task, again.recipe, tmp_path / "b", dist)
    assert len(list((tmp_path / "cache" / "teacher-outputs").iterdir())) == 1

    changed = build_experiment(exp.recipe, data=exp.data)
    with torch.no_grad():
        changed.method.teacher.head.bias += 1.0
    attach_teacher_cache(changed.method, changed.data, changed.recipe, dist)
    assert len(list((tmp_path / "cache" / "teacher-outputs").iterdir())) == 2


def test_no_cache_for_tuned_teacher_or_random_prompts(tmp_path: Path) -> None:
    dist = init_distributed("cpu")
    prompt = build_experiment(load_recipe("quickstart", ["method.name=kd"]))
    attach_teacher_cache(prompt.method, prompt.data, prompt.recipe, dist)
    assert prompt.method.teacher_cache is None  # a new template is drawn every epoch
    off = build_experiment(load_recipe("quickstart", [*SETS, "train.teacher_cache=false"]))
    attach_teacher_cache(off.method, off.data, off.recipe, dist)
    assert off.method.teacher_cache is None


def test_outputs_cache_does_not_depend_on_how_data_are_loaded(exp, tmp_path: Path) -> None:
    dist = init_distributed("cpu")
    attach_teacher_cache(exp.method, exp.data, exp.recipe, dist)
    for loader_only in ("data.eval_batch_size=7", "data.num_workers=1", "data.batch_size=8"):
        r = load_recipe("quickstart", [*SETS, f"train.cache_dir={tmp_path / 'cache'}", loader_only])
        other = build_experiment(r, data=exp.data)
        attach_teacher_cache(other.method, other.data, other.recipe, dist)
        assert other.method.teacher_cache.folder == exp.method.teacher_cache.folder, loader_only
