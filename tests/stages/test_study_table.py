"""A study's table: rows paired with their own baseline row, intervals, marks, the figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmkd_cli.metrics.plots import plot_study
from cmkd_cli.stages.distill import DistillResult, RunSummary, render, tabulate


def _runs(values: dict[str, list[float]]) -> list[RunSummary]:
    return [
        RunSummary(
            variant=variant,
            method="baseline" if variant.endswith("none") else "kd",
            seed=seed,
            run_dir=f"/r/{variant}/seed-{seed}",
            best_epoch=0,
            best_val={},
            test={"accuracy": v},
            wall_time_s=1.0,
            status="done",
        )
        for variant, vs in values.items()
        for seed, v in enumerate(vs, start=1)
    ]


def test_rows_pair_with_their_own_baseline_and_marks_follow_the_interval(tmp_path: Path) -> None:
    runs = _runs(
        {
            "a-none": [0.80, 0.85, 0.90],
            "a-kd": [0.82, 0.87, 0.92],  # +2 points on every seed: excludes 0
            "b-none": [0.50, 0.60, 0.70],
            "b-kd": [0.70, 0.50, 0.72],  # +4 on average, but noisy: includes 0
        }
    )
    base = {"a-none": None, "a-kd": "a-none", "b-none": None, "b-kd": "b-none"}
    table = tabulate(runs, "accuracy", base, "t")
    rows = {r.variant: r for r in table}
    assert rows["a-kd"].delta == pytest.approx(0.02) and rows["a-kd"].delta_std == pytest.approx(
        0, abs=1e-12
    )
    assert rows["a-kd"].excludes_zero and rows["a-kd"].delta_ci == pytest.approx([0.02, 0.02])
    assert rows["b-kd"].delta == pytest.approx(0.04) and not rows["b-kd"].excludes_zero
    assert rows["b-kd"].std == pytest.approx(0.1217, abs=1e-4)  # sample std (n - 1)
    assert (
        rows["a-none"].delta is None
        and rows["a-none"].mean_ci[0] < 0.85 < rows["a-none"].mean_ci[1]
    )

    result = DistillResult(
        name="s", root="/r", metric="accuracy", teacher=None, runs=runs, table=table
    )
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(result))
    text = console.export_text()
    assert "+2.00 [+2.00, +2.00] *" in text and "(baseline)" in text
    assert "vs" in text and "b-none" in text  # two baselines: a column names each row's
    b_line = next(line for line in text.splitlines() if line.startswith("│ b-kd"))
    assert "*" not in b_line and "+4.00 [-" in b_line

    png = plot_study([r.model_dump() for r in table], tmp_path / "study.png", "accuracy", "t", 100)
    assert png.stat().st_size > 5000
