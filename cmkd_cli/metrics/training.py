"""Analyses of the rows a run logs in metrics.jsonl (`cmkd analyze --kept / --cost`).

- kept (paper B Fig. 3): per epoch, the fraction of training samples OFSD keeps
  (`stats/kept`, i.e. 1 - the share with KRC <= omega), one series per variant.
- cost (paper B appendix E, Table 3): mean training time per epoch and peak CUDA memory
  per variant.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


@dataclass
class RunLog:
    """One run's logged rows; `label` groups the seeds of one variant."""

    label: str
    method: str
    rows: list[dict[str, Any]] = field(repr=False)


class KeptSeries(BaseModel):
    variant: str
    seeds: int
    source: str  # "epoch rows" (train/stats/kept) or "step rows" (mean of logged steps)
    epochs: list[int]
    kept: list[float]


class CostRow(BaseModel):
    variant: str
    method: str
    runs: int
    epochs: int
    epoch_time_s: float
    epoch_time_std: float
    peak_mem_mb: float | None  # None: not measured (CPU runs)


def finite_number(v: Any) -> float | None:
    """`v` as a float when it is a finite int or float (not a bool), else None."""
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def by_label(runs: Sequence[RunLog]) -> dict[str, list[RunLog]]:
    """The runs grouped by label, in order of first appearance."""
    groups: dict[str, list[RunLog]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    return groups


def kept_per_epoch(rows: list[dict[str, Any]]) -> tuple[dict[int, float], str] | None:
    """Per epoch, the fraction of samples the selector kept: the epoch row's
    `train/stats/kept` (the mean over every step), else the mean of the logged step rows'
    `stats/kept`; None when the run logged neither."""
    exact = {
        int(r["epoch"]): v
        for r in rows
        if r.get("kind") == "epoch" and (v := finite_number(r.get("train/stats/kept"))) is not None
    }
    if exact:
        return exact, "epoch rows"
    steps: dict[int, list[float]] = {}
    for r in rows:
        if r.get("kind") == "step" and (v := finite_number(r.get("stats/kept"))) is not None:
            steps.setdefault(int(r["epoch"]), []).append(v)
    if steps:
        return {e: statistics.fmean(v) for e, v in steps.items()}, "step rows"
    return None


def kept_series(runs: Sequence[RunLog]) -> list[KeptSeries]:
    """One series per variant: the per-epoch kept fraction averaged over its seeds."""
    out = []
    for label, group in by_label(runs).items():
        found = [k for r in group if (k := kept_per_epoch(r.rows)) is not None]
        if not found:
            continue
        epochs = sorted({e for per, _ in found for e in per})
        out.append(
            KeptSeries(
                variant=label,
                seeds=len(found),
                source=", ".join(sorted({src for _, src in found})),
                epochs=epochs,
                kept=[statistics.fmean(per[e] for per, _ in found if e in per) for e in epochs],
            )
        )
    return out


def cost_rows(runs: Sequence[RunLog]) -> list[CostRow]:
    """Per variant: mean (and std) of `epoch_time_s` over its epoch rows, and the largest
    `peak_mem_bytes` of its runs (None when no run measured it: CPU runs)."""
    out = []
    for label, group in by_label(runs).items():
        epochs = [r for run in group for r in run.rows if r.get("kind") == "epoch"]
        times = [t for r in epochs if (t := finite_number(r.get("epoch_time_s"))) is not None]
        if not times:
            continue
        mem = [m for r in epochs if (m := finite_number(r.get("peak_mem_bytes"))) is not None]
        out.append(
            CostRow(
                variant=label,
                method=group[0].method,
                runs=len(group),
                epochs=len(times),
                epoch_time_s=statistics.fmean(times),
                epoch_time_std=statistics.pstdev(times),
                peak_mem_mb=max(mem) / 2**20 if mem else None,
            )
        )
    return out
