"""The training curves of one run, from its `metrics.jsonl` rows: what `cmkd report` draws.

The x axis is in epochs. An epoch row (`kind: epoch`) closes epoch e (counted from 1, as
the engine logs it) at global step s_e, so a step row at step s of epoch e sits at
x = e - 1 + (s - s_{e-1}) / (s_e - s_{e-1}) (s_0 = 0), and a validation value at x = e, the
end of its epoch. Steps of an epoch
not yet closed (a run still training) are placed with the last closed epoch's length.
Panels: each validation metric (rates in percent), each loss term, the learning rate (one
line per distinct schedule: groups whose lr equals another's at every logged step share
it) and each method statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmkd_cli import units
from cmkd_cli.metrics.training import finite_number

Row = Mapping[str, Any]


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray


@dataclass
class Panel:
    title: str
    series: list[Series]
    ylabel: str = ""  # `accuracy (%)` for a rate; other panels say what they hold in the title
    legend: bool = False


@dataclass
class RunCurves:
    panels: list[Panel]
    x_label: str  # "epoch", or "step" when no epoch has closed yet
    best_epoch: int | None = None  # 1-based, as printed; None: none yet
    epoch_to_step: Callable[[np.ndarray], np.ndarray] | None = None
    step_to_epoch: Callable[[np.ndarray], np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def epoch_axis(
    epoch_rows: Sequence[Row],
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]] | None:
    """(step -> epoch, epoch -> step), piecewise linear through the closed epochs' last
    steps and extended by one more epoch of the last one's length; None before any epoch."""
    ends = sorted({(int(r["epoch"]), int(r["step"])) for r in epoch_rows if "step" in r})
    if not ends:
        return None
    epochs = [0.0] + [float(e) for e, _ in ends]
    steps = [0.0] + [float(s) for _, s in ends]
    last = steps[-1] - steps[-2] if steps[-1] > steps[-2] else 1.0
    epochs.append(epochs[-1] + 1.0)
    steps.append(steps[-1] + last)
    ep, st = np.array(epochs), np.array(steps)

    def to_epoch(s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=float)
        return np.where(s <= st[-1], np.interp(s, st, ep), ep[-1] + (s - st[-1]) / last)

    def to_step(e: np.ndarray) -> np.ndarray:
        e = np.asarray(e, dtype=float)
        return np.where(e <= ep[-1], np.interp(e, ep, st), st[-1] + (e - ep[-1]) * last)

    return to_epoch, to_step


def best_epoch(epoch_rows: Sequence[Row], metric: str, mode: str = "max") -> int | None:
    """The epoch (from 1) whose `val/metric` is best (the first of equal ones), as the engine
    picks `best.pt`; None when no epoch has that metric."""
    values = [(int(r["epoch"]), finite_number(r.get(f"val/{metric}"))) for r in epoch_rows]
    values = [(e, v) for e, v in values if v is not None]
    if not values:
        return None
    pick = max if mode == "max" else min
    best = pick(v for _, v in values)
    return next(e for e, v in values if v == best)


def _points(rows: Sequence[Row], key: str, x_of: Callable[[Row], float | None]) -> Series:
    pts = [(x_of(r), finite_number(r.get(key))) for r in rows]
    pts = [(a, b) for a, b in pts if a is not None and b is not None]
    arr = np.array(pts, dtype=float).reshape(-1, 2)
    return Series(key, arr[:, 0], arr[:, 1] * units.scale(key))


def distinct_schedules(series: Sequence[Series]) -> list[Series]:
    """Series with the same points merged into one, labelled with every name that shares it
    (`lr/student = lr/teacher`), so one schedule is drawn once."""
    out: list[Series] = []
    for s in series:
        same = next((o for o in out if np.array_equal(o.x, s.x) and np.array_equal(o.y, s.y)), None)
        if same is None:
            out.append(Series(s.label, s.x, s.y))
        else:
            same.label = f"{same.label}, {s.label}"
    return out


def run_curves(rows: Sequence[Row], metric: str = "accuracy", mode: str = "max") -> RunCurves:
    """The panels of one run's figure (see the module docstring)."""
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    axis = epoch_axis(epochs)
    if axis is not None:
        to_epoch, to_step = axis

        def step_x(r: Row) -> float | None:
            s = finite_number(r.get("step"))
            return None if s is None else float(to_epoch(np.array(s)))

    else:
        to_epoch = to_step = None

        def step_x(r: Row) -> float | None:
            return finite_number(r.get("step"))

    def epoch_x(r: Row) -> float | None:
        e = finite_number(r.get("epoch"))
        return e

    def keys(source: Sequence[Row], prefix: str) -> list[str]:
        return sorted({k for r in source for k in r if k.startswith(prefix)})

    panels = []
    val_keys = keys(epochs, "val/")
    val_keys.sort(key=lambda k: k != f"val/{metric}")  # the selection metric first

    def ylabel(key: str) -> str:
        name = key.split("/", 1)[1]
        return units.label(name) if units.is_rate(name) else ""

    for k in val_keys:
        panels.append(Panel(k, [_points(epochs, k, epoch_x)], ylabel(k)))
    loss_keys = keys(steps, "loss/")
    loss_keys.sort(key=lambda k: k != "loss/total")
    for k in loss_keys:
        panels.append(Panel(k, [_points(steps, k, step_x)]))
    groups = [_points(steps, k, step_x) for k in keys(steps, "lr/")]
    for s in groups:
        s.label = s.label.split("/", 1)[1]  # the parameter group: student, teacher, ...
    lrs = distinct_schedules(groups)
    if lrs:
        panels.append(Panel("learning rate", lrs, legend=True))
    for k in keys(steps, "stats/"):
        panels.append(Panel(k, [_points(steps, k, step_x)], ylabel(k)))
    panels = [p for p in panels if any(len(s.x) for s in p.series)]
    return RunCurves(
        panels=panels,
        x_label="epoch" if axis is not None else "step",
        best_epoch=best_epoch(epochs, metric, mode) if axis is not None else None,
        epoch_to_step=to_step,
        step_to_epoch=to_epoch,
    )
