"""PNG plots: DET curves and training curves. Headless (Agg canvas), written atomically."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmkd_cli.errors import UsageError
from cmkd_cli.io import atomic_path

# DET axis ticks, in percent: the NIST / Bosaris ticks up to 40%, then on towards 99.9% so
# that a weak system (EER near 50%) still has its curve and its EER point on the plot
_DET_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 98, 99, 99.5, 99.8, 99.9)
_DET_MIN_TOP = 40.0  # the usual upper limit (%), kept for good systems
_DET_CLIP = 5e-4  # probabilities are clipped to [0.05%, 99.95%] so 0 and 1 stay on the plot


def det_limits(far: Any, frr: Any) -> tuple[float, float]:
    """(lowest, highest) axis value in percent for a DET plot of (far, frr): from 0.1% up to
    the first tick at or above both 40% and 1.5 x the EER point (where FAR = FRR), so the
    EER point and the curve around it are always on the plot."""
    far, frr = np.asarray(far, dtype=np.float64), np.asarray(frr, dtype=np.float64)
    k = int(np.argmin(np.abs(far - frr)))
    eer = 100 * (far[k] + frr[k]) / 2
    need = max(_DET_MIN_TOP, 1.5 * eer)
    top = next((t for t in _DET_TICKS if t >= need), _DET_TICKS[-1])
    return _DET_TICKS[0], float(top)


def _figure(rows: int = 1, height: float = 4.5):
    # A bare Figure with an Agg canvas: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary name ends in .tmp: name the format
        fig.savefig(tmp, format="png", dpi=120)
    return path


def plot_det(
    far: Any,
    frr: Any,
    path: str | os.PathLike[str],
    label: str | None = None,
) -> Path:
    """Draw one DET curve (`verification.det_curve`) on probit axes and save it as PNG.

    Both axes are `norm.ppf(p)` (a normal deviate scale) with ticks in percent, from 0.1% to
    `det_limits`' top (40%, or more for a weak system); the dashed diagonal marks FAR = FRR,
    where the curve meets it is the EER. Returns `path`.
    """
    from scipy.stats import norm

    far = np.clip(np.asarray(far, dtype=np.float64), _DET_CLIP, 1 - _DET_CLIP)
    frr = np.clip(np.asarray(frr, dtype=np.float64), _DET_CLIP, 1 - _DET_CLIP)
    if far.shape != frr.shape or far.ndim != 1:
        raise ValueError(f"far and frr must be 1-D of one length, got {far.shape}, {frr.shape}")
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(norm.ppf(far), norm.ppf(frr), label=label)
    low, top = det_limits(far, frr)
    lim = norm.ppf([low / 100, top / 100])
    ax.plot(lim, lim, "k--", linewidth=0.8)
    shown = [t for t in _DET_TICKS if t <= top]
    ticks = norm.ppf(np.array(shown) / 100)
    names = [f"{t:g}" for t in shown]
    ax.set_xticks(ticks, names)
    ax.set_yticks(ticks, names)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("false acceptance rate (%)")
    ax.set_ylabel("false rejection rate (%)")
    ax.grid(True, alpha=0.4)
    if label:
        ax.legend(loc="upper right")
    return _save(fig, path)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def plot_curves(
    rows: Iterable[Mapping[str, Any]],
    keys: Sequence[str],
    path: str | os.PathLike[str],
    x: str = "step",
) -> Path:
    """Plot training curves from `metrics.jsonl` rows: one panel per key, against `x`.

    Only rows that hold a finite number for both `x` and the key are drawn, so rows of other
    kinds (e.g. per-epoch validation rows beside per-step training rows) mix freely. A key
    that no row holds is a `UsageError`. Returns `path`.
    """
    rows = list(rows)
    if not keys:
        raise UsageError("plot_curves needs at least one metric key to plot")
    series = {}
    for key in keys:
        pts = [(_number(r.get(x)), _number(r.get(key))) for r in rows]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        if not pts:
            seen = sorted({k for r in rows for k in r})
            raise UsageError(
                f"no row of the metrics has numbers for both {x!r} and {key!r} "
                f"(keys seen: {', '.join(seen) or 'none'})"
            )
        series[key] = np.array(pts)
    fig = _figure(rows=len(keys), height=2.6)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, pts) in zip(axes, series.items(), strict=True):
        ax.plot(pts[:, 0], pts[:, 1], marker="." if len(pts) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.4)
    axes[-1].set_xlabel(x)
    return _save(fig, path)


def plot_study(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    metric: str,
    ci_name: str,
    scale: float = 1.0,
    title: str = "",
) -> Path:
    """A study's forest plot: per row (a study's `results.json` table row) its mean over
    seeds with the 95% interval of the mean (left) and its delta against its baseline row,
    paired by seed, with that delta's 95% interval (right; a dashed line at 0, intervals
    that exclude 0 drawn in colour). Rows without an interval show the point alone."""
    rows = list(rows)
    if not rows:
        raise UsageError("plot_study needs at least one row")
    fig = _figure(height=max(2.2, 0.32 * len(rows) + 1.2))
    fig.set_size_inches(10, fig.get_size_inches()[1])
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))[::-1]
    bases = {r.get("baseline") for r in rows}
    for yi, r in zip(y, rows, strict=True):
        lo_hi = r.get("mean_ci")
        left.plot(scale * r["mean"], yi, "o", color="k", markersize=4)
        if lo_hi:
            left.plot([scale * lo_hi[0], scale * lo_hi[1]], [yi, yi], color="k", linewidth=1.5)
        if r.get("delta") is None:
            if r["variant"] in bases:
                right.text(0.0, yi, " baseline", va="center", fontsize=8, color="0.3")
            continue
        colour = "tab:blue" if r.get("excludes_zero") else "0.45"
        if r.get("excludes_zero") and r["delta"] < 0:
            colour = "tab:red"
        right.plot(scale * r["delta"], yi, "o", color=colour, markersize=4)
        if r.get("delta_ci"):
            lo, hi = (scale * v for v in r["delta_ci"])
            right.plot([lo, hi], [yi, yi], color=colour, linewidth=1.5)
    right.axvline(0.0, color="k", linestyle="--", linewidth=0.8)
    left.set_yticks(y, [r["variant"] for r in rows])
    unit = " (%)" if scale == 100 else ""
    left.set_xlabel(f"test {metric}{unit}: mean, 95% CI over seeds")
    right.set_xlabel(f"Δ vs baseline{unit}: paired by seed, 95% CI ({ci_name})")
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.4)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
