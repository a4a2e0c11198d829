"""The CLI as a daily tool: --quiet keeps the answer, rates are percent for humans and
fractions in JSON, in every stage that prints one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ONE = ["--seeds", "1", "--variant", "baseline", "--set", "train.epochs=2"]
FAST = ["--set", "train.threads=1", "--set", "teacher.pretrain.epochs=1"]
FAST += ["--set", "train.max_steps_per_epoch=5"]


def test_quiet_prints_the_answer_and_units_are_percent_for_humans(cli, tmp_path: Path) -> None:
    res = cli("--quiet", "distill", "--recipe", "quickstart", *ONE, *FAST)
    assert res.code == 0, res.stderr
    assert "accuracy (%)" in res.stdout and "baseline" in res.stdout  # the table
    assert "epoch 1/2" not in res.stderr and "[baseline seed 1]" not in res.stderr  # no logs
    run = tmp_path / "runs" / "quickstart" / "baseline" / "seed-1"
    test = json.loads((run / "final.json").read_text())["test"]["accuracy"]
    assert 0 < test < 1  # files keep fractions
    cell = re.search(r"(\d+\.\d\d) ± 0\.00", res.stdout)
    assert cell and float(cell.group(1)) == pytest.approx(100 * test, abs=0.006)

    loud = cli("distill", "--recipe", "quickstart", *ONE, *FAST, "--set", "output.root=loud")
    epoch_line = next(line for line in loud.stderr.splitlines() if line.startswith("epoch 2/2"))
    assert re.search(r"val accuracy \d+\.\d\d%", epoch_line), epoch_line

    ev = cli("eval", "-c", run / "best.pt")
    assert ev.code == 0, ev.stderr
    assert f"{100 * test:.2f}%" in ev.stdout
    assert cli("--json", "eval", "-c", run / "best.pt").json()["metrics"]["accuracy"] == test

    rep = cli("report", run, "--no-plots")
    assert "val/accuracy (%)" in rep.stdout and f"test: accuracy {100 * test:.2f}%" in rep.stdout
    row = cli("--json", "report", run, "--no-plots").json()["runs"][0]["epochs"][-1]
    assert 0 < row["val/accuracy"] < 1
    with open(run / "metrics.jsonl", "a") as fh:  # a row being written while report reads
        fh.write('{"kind": "step", "lo')
    assert cli("report", run, "--no-plots").code == 0

    teacher = cli("--quiet", "train-teacher", "--recipe", "quickstart", *FAST)
    assert teacher.code == 0, teacher.stderr
    assert re.search(r"test: accuracy \d+\.\d\d%, loss \d+\.\d{4}", teacher.stdout)
