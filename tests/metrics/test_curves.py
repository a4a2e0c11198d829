"""A run's training curves: x in epochs, the best epoch, one line per distinct lr schedule,
rates in percent; the figure is written under one title."""

from __future__ import annotations

import numpy as np
import pytest

from cmkd_cli.metrics.curves import best_epoch, distinct_schedules, epoch_axis, run_curves
from cmkd_cli.metrics.plots import plot_run

PNG = b"\x89PNG\r\n\x1a\n"


def _rows(epochs: int = 3, steps: int = 10, lr_teacher_scale: float = 1.0) -> list[dict]:
    """A run of `epochs` closed epochs of `steps` steps, logged every 5 steps (epochs count
    from 1, as the engine logs them)."""
    rows = []
    for e in range(epochs):
        for s in range(e * steps + 5, (e + 1) * steps + 1, 5):
            lr = 0.1 * (1 - s / (epochs * steps))
            rows.append(
                {"kind": "step", "epoch": e + 1, "step": s, "loss/total": 1 / s, "loss/kd": 0.5 / s}
                | {"lr/student": lr, "lr/proxy": lr, "lr/teacher": lr * lr_teacher_scale}
                | {"stats/kept": 0.5 + 0.1 * e}
            )
        acc = [0.5, 0.9, 0.8][e % 3]
        rows.append(
            {"kind": "epoch", "epoch": e + 1, "step": (e + 1) * steps, "val/accuracy": acc}
            | {"val/loss": 1.0 - acc}
        )
    return rows


def test_steps_sit_at_their_epoch_fraction_and_validation_at_the_epoch_end() -> None:
    rows = _rows()
    to_epoch, to_step = epoch_axis([r for r in rows if r["kind"] == "epoch"])
    assert to_epoch(np.array([0, 5, 10, 25, 30])).tolist() == [0, 0.5, 1, 2.5, 3]
    assert to_epoch(np.array(35.0)) == pytest.approx(3.5)  # an epoch not closed yet
    assert to_step(np.array([1.5, 3.0])).tolist() == [15, 30]
    curves = run_curves(rows)
    assert curves.x_label == "epoch" and curves.best_epoch == 2
    val = curves.panels[0]
    assert val.title == "val/accuracy" and val.ylabel == "accuracy (%)"
    assert val.series[0].x.tolist() == [1, 2, 3]
    assert val.series[0].y.tolist() == pytest.approx([50, 90, 80])  # percent
    titles = [p.title for p in curves.panels]
    assert titles == [
        "val/accuracy",
        "val/loss",
        "loss/total",
        "loss/kd",
        "learning rate",
        "stats/kept",
    ]
    loss = curves.panels[2].series[0]
    assert loss.x.tolist() == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert curves.panels[-1].series[0].y.tolist() == pytest.approx([50, 50, 60, 60, 70, 70])


def test_groups_sharing_a_schedule_are_one_line() -> None:
    same = run_curves(_rows()).panels[4]
    assert [s.label for s in same.series] == ["proxy, student, teacher"]
    other = run_curves(_rows(lr_teacher_scale=0.1)).panels[4]
    assert [s.label for s in other.series] == ["proxy, student", "teacher"]
    assert distinct_schedules([]) == []


def test_best_epoch_follows_the_mode_and_keeps_the_first_of_equals() -> None:
    epochs = [{"epoch": e, "val/eer": v} for e, v in enumerate([0.3, 0.1, 0.1, 0.2], 1)]
    assert best_epoch(epochs, "eer", "min") == 2
    assert best_epoch(epochs, "eer", "max") == 1
    assert best_epoch(epochs, "accuracy") is None


def test_a_run_before_its_first_epoch_is_drawn_against_steps(tmp_path) -> None:
    rows = [r for r in _rows(1) if r["kind"] == "step"]
    curves = run_curves(rows)
    assert curves.x_label == "step" and curves.best_epoch is None
    assert curves.panels[0].title == "loss/total"
    path = plot_run(curves, tmp_path / "c.png", "run")
    assert path.read_bytes().startswith(PNG)


def test_plot_run_writes_one_titled_png(tmp_path) -> None:
    path = tmp_path / "plots" / "curves.png"
    assert plot_run(run_curves(_rows()), path, "study / kd / seed 1", "runs/x") == path
    assert path.read_bytes().startswith(PNG)
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary left
