"""Learning-rate schedules, checked at hand-computed points."""

from __future__ import annotations

import math

import pytest
import torch

from cmkd_cli.engine.optim import build_optimizer, build_scheduler, lr_factor
from cmkd_cli.errors import UsageError
from cmkd_cli.methods.base import ParamGroup
from cmkd_cli.schema import OptimConfig, ScheduleConfig


def test_step_schedule_decays_by_quarter_every_three_epochs() -> None:
    # paper A speaker recipe: Adam 1e-3 decayed 25% every 3 epochs
    cfg = ScheduleConfig(name="step", step_epochs=3, gamma=0.75)
    spe = 10
    assert lr_factor(0, 1000, spe, cfg) == 1.0
    assert lr_factor(29, 1000, spe, cfg) == 1.0
    assert lr_factor(30, 1000, spe, cfg) == pytest.approx(0.75)
    assert lr_factor(65, 1000, spe, cfg) == pytest.approx(0.75**2)


def test_poly_cosine_multistep_and_warmup() -> None:
    poly = ScheduleConfig(name="poly", power=0.9)
    assert lr_factor(50, 100, 10, poly) == pytest.approx(0.5**0.9)
    cos = ScheduleConfig(name="cosine", min_lr_factor=0.1)
    assert lr_factor(50, 100, 10, cos) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))
    )
    ms = ScheduleConfig(name="multistep", milestones=[1, 3], gamma=0.1)
    assert lr_factor(15, 100, 10, ms) == pytest.approx(0.1)
    assert lr_factor(30, 100, 10, ms) == pytest.approx(0.01)
    warm = ScheduleConfig(name="constant", warmup_epochs=2, warmup_start_factor=0.1)
    assert lr_factor(0, 100, 10, warm) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, warm) == pytest.approx(0.55)
    assert lr_factor(20, 100, 10, warm) == 1.0


def test_per_group_learning_rates_and_unknown_group() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups = [ParamGroup("student", [a]), ParamGroup("teacher", [b], lr_scale=0.5)]
    opt = build_optimizer(groups, OptimConfig(name="sgd", lr=0.1, group_lr_scale={"teacher": 0.2}))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])
    assert opt.defaults["momentum"] == 0.9
    with pytest.raises(UsageError, match="no parameter group 'proxy'"):
        build_optimizer(groups, OptimConfig(group_lr_scale={"proxy": 2.0}))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_kernels_on_cpu_take_the_same_step(name: str) -> None:
    torch.manual_seed(0)
    w0, g = torch.randn(5, 3), torch.randn(5, 3)
    cfg = OptimConfig(name=name, lr=0.1, weight_decay=0.01)
    steps = {}
    for fused in (True, False):
        w = torch.nn.Parameter(w0.clone())
        opt = build_optimizer([ParamGroup("student", [w])], cfg)
        if not fused:  # the reference: torch's per-tensor loop, same hyper-parameters
            keep = ("lr", "betas", "momentum", "nesterov", "weight_decay")
            kwargs = {k: v for k, v in opt.defaults.items() if k in keep}
            opt = type(opt)(opt.param_groups, **kwargs, foreach=False)
        assert bool(opt.defaults["fused"]) is fused
        for _ in range(3):
            w.grad = g.clone()
            opt.step()
        steps[fused] = w.detach()
    torch.testing.assert_close(steps[True], steps[False])
    assert not torch.equal(steps[True], w0)


def _released_adjust_lr(epoch: int, lr: float = 1e-2, max_iter: int = 100) -> float:
    """The released C2KD code's schedule (helper.adjust_lr), written out independently."""
    return 1e-4 + (lr - 1e-4) * (1 - epoch / max_iter) ** 0.9


def test_poly_per_epoch_with_floor_is_the_released_c2kd_schedule() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups = [ParamGroup("student", [a]), ParamGroup("teacher", [b], lr_scale=0.5)]
    opt = build_optimizer(groups, OptimConfig(name="sgd", lr=1e-2))
    cfg = ScheduleConfig(name="poly", power=0.9, per="epoch", min_lr=1e-4)
    spe, epochs = 7, 100
    sched = build_scheduler(opt, cfg, spe, epochs)
    for step in range(spe * epochs):
        want = _released_adjust_lr(step // spe)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12), step
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * want, rel=1e-12), step
        opt.step()
        sched.step()


def test_poly_per_step_decays_within_an_epoch_and_to_zero() -> None:
    cfg = ScheduleConfig(name="poly", power=0.9)
    assert lr_factor(3, 100, 10, cfg) < lr_factor(0, 100, 10, cfg) == 1.0
    assert lr_factor(100, 100, 10, cfg) == 0.0
    per_epoch = ScheduleConfig(name="poly", power=0.9, per="epoch")
    assert lr_factor(3, 100, 10, per_epoch) == lr_factor(9, 100, 10, per_epoch) == 1.0
    assert lr_factor(10, 100, 10, per_epoch) == pytest.approx(0.9**0.9)
    floored = ScheduleConfig(name="poly", power=1.0, min_lr=0.1)
    assert lr_factor(100, 100, 10, floored, base_lr=1.0) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, floored, base_lr=0.5) == pytest.approx(0.2 + 0.8 * 0.5)


def test_min_lr_errors() -> None:
    with pytest.raises(ValueError, match="min_lr applies to `poly` only"):
        ScheduleConfig(name="cosine", min_lr=1e-4)
    opt = build_optimizer(
        [ParamGroup("student", [torch.nn.Parameter(torch.zeros(1))])], OptimConfig(lr=1e-3)
    )
    with pytest.raises(UsageError, match="schedule.min_lr: 0.01 is not below"):
        build_scheduler(opt, ScheduleConfig(name="poly", min_lr=1e-2), 10, 10)


def test_c2kd_recipes_use_the_released_schedule() -> None:
    from cmkd_cli.config import load_recipe

    for name in ("c2kd-ave", "c2kd-crema-d-v2a", "c2kd-vggsound"):
        r = load_recipe(name, [], {"data_root": "/nonexistent"})
        for sched in (r.schedule, r.teacher.pretrain.schedule):
            assert (sched.name, sched.per, sched.min_lr) == ("poly", "epoch", 1e-4), name
