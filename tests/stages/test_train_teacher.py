"""Which teacher `distill` trains, and the fingerprint that finds a trained one again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmkd_cli.config import load_recipe
from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.engine.distributed import init_distributed
from cmkd_cli.engine.loop import BEST_WEIGHTS_ONLY
from cmkd_cli.errors import UsageError
from cmkd_cli.stages.train_teacher import default_dir, teacher_key, train

VOX = {"work": "/data/work"}


def _key(*sets: str, recipe: str = "zoo/kd") -> str:
    return teacher_key(load_recipe(recipe, list(sets)))


def test_teacher_key_covers_what_changes_the_weights_only() -> None:
    base = _key()
    for loader_only in (
        "data.eval_batch_size=7",
        "data.num_workers=3",
        "train.threads=1",
        "train.log_every=1",
        "output.root=/elsewhere",
        "teacher.tune=full",
        "method.T=2.0",
        "seeds=[4]",
    ):
        assert _key(loader_only) == base, loader_only
    for weights in (
        "data.batch_size=16",  # the teacher trains with the recipe's batch
        "teacher.pretrain.epochs=2",
        "teacher.pretrain.optim.lr=0.2",
        "teacher.pretrain.seed=5",
        "data.params.split_seed=1",
        "train.grad_clip=1.0",
        "eval.every=2",
    ):
        assert _key(weights) != base, weights
    # with its own batch size the teacher no longer depends on the student's
    own = _key("teacher.pretrain.batch_size=16")
    assert _key("teacher.pretrain.batch_size=16", "data.batch_size=8") == own
    # with its own validation rate, neither does it on the student's
    own = _key("teacher.pretrain.eval_every=3")
    assert _key("teacher.pretrain.eval_every=3", "eval.every=2") == own != base


def test_face_teacher_none_is_trained_and_a_checkpoint_is_used_as_it_is() -> None:
    none = load_recipe("soft-vox2-feature", [], {**VOX, "face_teacher": "none"})
    assert none.teacher.model.params["checkpoint"] is None
    assert none.teacher.needs_pretraining() and none.teacher.pretrain.when == "untrained"
    given = load_recipe("soft-vox2-feature", [], {**VOX, "face_teacher": "/m/ir50.pth"})
    assert given.teacher.model.params["checkpoint"] == "/m/ir50.pth"
    assert not given.teacher.needs_pretraining()  # used as loaded, as before
    kd = load_recipe("vox2-kd", [], {**VOX, "face_teacher": "/m/ir50.pth"})
    assert kd.teacher.needs_pretraining()  # `when: always`: its head is fitted first
    with pytest.raises(UsageError, match=r"\$\{face_teacher\} is not set.*face_teacher=none"):
        load_recipe("soft-vox2-feature", [], VOX)


def test_a_trained_teachers_best_pt_holds_weights_only(tmp_path: Path) -> None:
    recipe = load_recipe(
        "zoo/kd",
        ["teacher.pretrain.epochs=1", "train.threads=1", "output.tensorboard=false"],
    )
    out = default_dir(recipe, tmp_path)
    res = train(recipe, out, init_distributed("cpu"))
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert set(best) == set(BEST_WEIGHTS_ONLY) and "optimizer" in last
    teacher = load_checkpoint(Path(res.checkpoint))
    for name, tensor in teacher["model"].items():
        torch.testing.assert_close(best["student"][name], tensor)
