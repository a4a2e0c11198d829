"""PNG plots: DET curves, a run's training curves, a study's figure and the figures of
`cmkd analyze` (kept fraction, KRC histogram, CKA heat-map, 2-D embeddings, training cost).
Headless (a bare Agg figure, no pyplot state), written atomically. matplotlib is imported
inside the functions: it costs about half a second, which `cmkd eval` without `--det` and
every other stage never pay.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmkd_cli.errors import UsageError
from cmkd_cli.io import atomic_path
from cmkd_cli.metrics.curves import RunCurves
from cmkd_cli.metrics.training import CostRow, KeptSeries

if TYPE_CHECKING:  # the plots take tensors but need no torch (`cmkd report` never loads it)
    import torch

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
    """A bare Figure with an Agg canvas: no pyplot state, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: module docstring
    from matplotlib.figure import Figure  # lazy: module docstring

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
    from scipy.stats import norm  # lazy: scipy.stats takes seconds, only the DET plot needs it

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


def plot_kept(series: list[KeptSeries], path: Path) -> Path:
    """OFSD's kept share per epoch in percent, one line per variant (C2KD Fig. 3)."""
    from matplotlib.ticker import MaxNLocator  # lazy: module docstring

    fig = _figure()
    ax = fig.add_subplot()
    for s in series:
        ax.plot(s.epochs, [100 * k for k in s.kept], marker=".", label=s.variant)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("samples kept: score > omega (%)")
    ax.set_ylim(0, 102)
    ax.set_title("OFSD sample selection over training (C2KD Fig. 3)")
    ax.grid(True, alpha=0.4)
    ax.legend()
    return _save(fig, path)


def plot_cost(rows: list[CostRow], path: Path) -> Path:
    """Bars of time per epoch and, when measured (CUDA), of peak memory per variant."""
    memory = any(r.peak_mem_mb is not None for r in rows)
    fig = _figure(rows=2 if memory else 1, height=3.2)
    axes = fig.subplots(2 if memory else 1, 1, squeeze=False)[:, 0]
    names = [r.variant for r in rows]
    axes[0].bar(names, [r.epoch_time_s for r in rows], yerr=[r.epoch_time_std for r in rows])
    axes[0].set_ylabel("time per epoch (s)")
    axes[0].set_title(
        "training cost per method (C2KD appendix E)"
        + ("" if memory else "\npeak memory: n/a on CPU")
    )
    if memory:
        axes[1].bar(names, [r.peak_mem_mb or 0.0 for r in rows], color="tab:orange")
        axes[1].set_ylabel("peak CUDA memory (MB)")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)


def plot_krc(values: dict[str, torch.Tensor], path: Path) -> Path:
    """Histograms of the per-sample KRC of teacher and student logits (C2KD Fig. 1b)."""
    fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(-1, 1, 41)
    for name, v in values.items():
        v = v.numpy()
        ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=f"{name} (mean {v.mean():.3f})")
    ax.axvline(0.0, color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("KRC of teacher and student logits (Kendall tau-b)")
    ax.set_ylabel("samples")
    ax.set_title("soft-label rank agreement per sample (C2KD Fig. 1b)")
    ax.grid(True, alpha=0.4)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_cka(
    matrix: list[list[float]],
    student_features: list[str],
    teacher_features: list[str],
    matched: list[tuple[str, str]],
    run: str,
    path: Path,
) -> Path:
    """Heat-map of linear CKA, student features (rows) by teacher features (columns), the
    `matched` (student, teacher) pairs in bold (C2KD Fig. 6)."""
    m = np.array(matrix, dtype=np.float64)
    fig = _figure(height=1.2 + 0.6 * len(student_features))
    ax = fig.add_subplot()
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    bold_pairs = set(matched)
    for i, s in enumerate(student_features):
        for j, t in enumerate(teacher_features):
            bold = "bold" if (s, t) in bold_pairs else "normal"
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w", weight=bold)
    ax.set_xticks(range(len(teacher_features)), teacher_features, rotation=20)
    ax.set_yticks(range(len(student_features)), student_features)
    ax.set_xlabel("teacher feature")
    ax.set_ylabel("student feature")
    ax.set_title(
        f"linear CKA (C2KD Fig. 6): {run}\nbold: features at matching depth", fontsize="medium"
    )
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


_MARKERS = {"teacher": "o", "projected teacher": "^", "student": "s"}


def plot_embeddings(
    panels: list[dict[str, np.ndarray]], y: torch.Tensor, title: str, path: Path
) -> Path:
    """One scatter per panel of 2-D points (`metrics.features.reduce_panel`), coloured by
    class, one marker per source (soft CMKD Fig. 8)."""
    from matplotlib.lines import Line2D  # lazy: module docstring

    fig = _figure(rows=len(panels), height=4.2)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    labels = y.numpy()
    n_classes = int(labels.max()) + 1
    cmap = "tab10" if n_classes <= 10 else "tab20" if n_classes <= 20 else "viridis"
    for ax, sources in zip(axes, panels, strict=True):
        for src, pts in sources.items():
            sc = ax.scatter(
                pts[:, 0],
                pts[:, 1],
                c=labels,
                cmap=cmap,
                vmin=0,
                vmax=max(n_classes - 1, 1),
                marker=_MARKERS[src],
                s=14,
                alpha=0.7,
                linewidths=0,
            )
        handles = [
            Line2D([], [], marker=_MARKERS[s], color="grey", linestyle="", label=s) for s in sources
        ]
        ax.legend(handles=handles, loc="best", fontsize="small")
        ax.set_title(" + ".join(sources), fontsize="medium")
        ax.grid(True, alpha=0.3)
        fig.colorbar(sc, ax=ax, label="class")
    axes[0].set_title(f"{title}\n{axes[0].get_title()}", fontsize="medium")
    return _save(fig, path)


def plot_run(
    curves: RunCurves, path: str | os.PathLike[str], title: str, subtitle: str = ""
) -> Path:
    """One run's training curves (`metrics.curves.run_curves`) as a grid of panels under one
    title: x in epochs (steps on the top axis of the first row), a dashed line at the best
    epoch in every panel, rates in percent, one line per distinct learning-rate schedule."""
    from matplotlib.ticker import MaxNLocator  # lazy: module docstring

    if not curves.panels:
        raise UsageError("plot_run: the run has logged no step or epoch rows yet")
    n = len(curves.panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure()
    fig.set_size_inches(3.6 * cols, 2.5 * rows + 0.7)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        panel = curves.panels[i]
        for s in panel.series:
            ax.plot(s.x, s.y, marker="." if len(s.x) < 40 else None, label=s.label, linewidth=1.2)
        if curves.best_epoch is not None and curves.x_label == "epoch":
            ax.axvline(curves.best_epoch, color="tab:red", linestyle="--", linewidth=0.9)
        ax.set_title(panel.title, fontsize=9)
        if panel.ylabel:
            ax.set_ylabel(panel.ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.4)
        if panel.legend or len(panel.series) > 1:
            ax.legend(fontsize=6, loc="best")
        if curves.x_label == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if i // cols == rows - 1 or i + cols >= n:  # the lowest panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(curves.x_label, fontsize=8)
        if i < cols and curves.epoch_to_step is not None:
            top = ax.secondary_xaxis("top", functions=(curves.epoch_to_step, curves.step_to_epoch))
            top.set_xlabel("step", fontsize=7)
            top.tick_params(labelsize=6)
    if curves.best_epoch is not None and curves.x_label == "epoch":
        subtitle = f"{subtitle}  (dashed: best epoch {curves.best_epoch})".strip()
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    return _save(fig, path)
