"""`cmkd distill`, `recipes`, `report` from the CLI: exit codes, --json, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmkd_cli.errors import UsageError
from cmkd_cli.stages import distill

FAST = ["--set", "train.epochs=2", "--set", "teacher.pretrain.epochs=2", "--set", "train.threads=1"]


def test_quickstart_reduced_writes_table_results_and_runs(cli, tmp_path: Path) -> None:
    res = cli("--json", "distill", "--recipe", "quickstart", "--seeds", "1,2", *FAST)
    assert res.code == 0, res.stderr
    out = res.json()
    root = tmp_path / "runs" / "quickstart"
    assert Path(out["root"]).resolve() == root.resolve()
    assert [row["variant"] for row in out["table"]] == [
        "baseline",
        "kd",
        "soft-feature",
        "soft-classifier",
        "soft-feature-quality",
    ]
    for row in out["table"]:
        assert row["n"] == 2 and len(row["values"]) == 2
        assert 0.3 < row["mean"] <= 1.0  # real learning in two epochs on real digits
        assert row["seeds"] == [1, 2] and len(row["mean_ci"]) == 2
    # every row is paired by seed with the no-distillation row (compare.baseline's default)
    base = out["table"][0]
    assert base["baseline"] is None and base["delta"] is None
    for row in out["table"][1:]:
        diffs = [v - b for v, b in zip(row["values"], base["values"], strict=True)]
        assert row["baseline"] == "baseline" and row["delta_seeds"] == [1, 2]
        assert row["delta"] == pytest.approx(sum(diffs) / 2)
        lo, hi = row["delta_ci"]
        assert lo <= row["delta"] <= hi
        assert row["excludes_zero"] == (lo > 0 or hi < 0)
    for variant in ("baseline", "kd"):
        for seed in (1, 2):
            run = root / variant / f"seed-{seed}"
            for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "final.json"):
                assert (run / name).is_file(), run / name
            assert list(run.glob("events.out.tfevents.*"))
    assert json.loads((root / "results.json").read_text())["table"] == out["table"]
    assert out["teacher"]["test"]["accuracy"] > 0.9  # the prompt teacher sees the label text
    # seeds differ, so the runs differ
    base = out["table"][0]["values"]
    assert base[0] != base[1] or out["table"][1]["values"][0] != out["table"][1]["values"][1]

    # a second call does no work: every run is already done
    again = cli("--json", "distill", "--recipe", "quickstart", "--seeds", "1,2", *FAST)
    assert again.code == 0 and {r["status"] for r in again.json()["runs"]} == {"skipped"}

    # the shared space of paper A's classifier-level method matches images to class prompts
    match = cli("--json", "cross-match", "-c", root / "soft-classifier" / "seed-1" / "best.pt")
    assert match.code == 0, match.stderr
    row = match.json()["rows"][0]
    assert row["chance"] == 0.1 and row["accuracy"] > 0.3
    no_space = cli("cross-match", "-c", root / "kd" / "seed-1" / "best.pt")
    assert no_space.code == 2 and "no shared student-teacher space" in no_space.stderr
    ev = cli("--json", "eval", "-c", root / "kd" / "seed-1" / "best.pt")
    assert ev.code == 0, ev.stderr
    kd_seed1 = next(r for r in out["runs"] if r["variant"] == "kd" and r["seed"] == 1)
    assert ev.json()["metrics"]["accuracy"] == pytest.approx(kd_seed1["test"]["accuracy"])

    rep = cli("report", root)
    assert rep.code == 0, rep.stderr
    assert "baseline" in rep.stdout and "kd" in rep.stdout
    assert "Δ [95% CI]" in rep.stdout and "paired t" in rep.stdout
    study_png = root / "plots" / "study.png"
    assert study_png.stat().st_size > 5000 and f"wrote {study_png}" in rep.stdout.replace("\n", "")
    # one titled figure of curves per run, each path printed
    for run in out["runs"]:
        png = root / run["variant"] / f"seed-{run['seed']}" / "plots" / "curves.png"
        assert png.stat().st_size > 5000 and f"wrote {png}" in rep.stdout.replace("\n", "")
    assert not list((root / "kd" / "seed-1" / "plots").glob("losses.png"))

    # the same table at any time: with results.json gone and one run not finished, report
    # tabulates the runs that are, from study.yaml and their final.json
    full = cli("--json", "report", root, "--no-plots").json()["study"]
    assert full["table"] == out["table"]
    (root / "results.json").unlink()
    (root / "kd" / "seed-2" / "final.json").unlink()
    part = cli("--json", "report", root, "--no-plots").json()
    kd = next(row for row in part["study"]["table"] if row["variant"] == "kd")
    assert kd["n"] == 1 and kd["values"] == [kd_seed1["test"]["accuracy"]]
    assert part["study"]["table"][0] == out["table"][0]  # the finished rows are unchanged
    assert [(p["variant"], p["seed"], p["epochs_done"]) for p in part["pending"]] == [("kd", 2, 2)]
    human = cli("report", root, "--no-plots")
    assert "9 of 10 runs finished; unfinished: kd seed 2 (2/2 epochs)" in human.stdout
    assert "Δ [95% CI]" in human.stdout


def test_json_output_is_only_json(cli) -> None:
    res = cli("--json", "recipes", "show", "quickstart", "--set", "method.name=kd")
    assert res.code == 0
    assert res.json()["recipe"]["method"] == {
        "name": "kd",
        "T": 4.0,
        "weight": 1.0,
        "task_weight": 1.0,
    }
    listed = cli("--json", "recipes", "list")
    assert "quickstart" in {r["name"] for r in listed.json()["recipes"]}


def test_usage_errors_exit_2_with_one_line(cli) -> None:
    cases = [
        (("distill",), "--recipe is required"),
        (("distill", "--recipe", "no-such-recipe"), "no-such-recipe"),
        (("distill", "--recipe", "quickstart", "--set", "optim.lrr=1"), "`optim.lrr`"),
        (
            ("distill", "--recipe", "quickstart", "--set", "data.params.labelled_fraction=2"),
            "data.params.labelled_fraction",
        ),
        (
            ("distill", "--recipe", "quickstart", "--set", "student.params.depth=3"),
            "student.params.depth: unknown parameter",
        ),
        (("distill", "--recipe", "quickstart", "--seeds", "1,x"), "--seeds"),
        (
            (
                "distill",
                "--recipe",
                "quickstart",
                "--set",
                "method.name=nkd",
                "--set",
                "teacher.checkpoint=/nowhere/t.pt",
            ),
            "nothing is downloaded",
        ),
        (("report", "/no/such/run"), "is not a directory"),
        (("distill", "--bogus-flag"), "No such option"),
    ]
    for args, expected in cases:
        res = cli(*args)
        assert res.code == 2, (args, res.stderr)
        assert expected in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
        if "--bogus-flag" not in args:
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_run_failure_exits_1(cli, tmp_path: Path) -> None:
    run = tmp_path / "broken"
    run.mkdir()
    (run / "config.yaml").write_text(
        (Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml")
        .read_text()
        .replace("method:\n  name: baseline", "method:\n  name: baseline\nname: broken")
    )
    (run / "last.pt").write_bytes(b"garbage")
    res = cli("distill", "--resume", run)
    assert res.code == 1, res.stderr
    assert "last.pt cannot be read" in res.stderr


def test_wrong_eval_metric_fails_before_any_work(cli, tmp_path: Path) -> None:
    res = cli("distill", "--recipe", "quickstart", "--set", "eval.metric=acc", *FAST)
    assert res.code == 2, res.stderr
    assert "eval.metric: 'acc' is not one of ['accuracy', 'loss']" in res.stderr
    assert not (tmp_path / "runs").exists()  # no teacher trained, no epoch run


def test_variant_patterns_select_rows_and_a_pattern_matching_none_is_an_error() -> None:
    rows = ["a2v-05-none", "a2v-05-kd", "v2a-05-none", "v2a-05-kd"]
    assert distill.selected_rows(["a2v-*"], rows, "r") == {"a2v-05-none", "a2v-05-kd"}
    assert distill.selected_rows(["*-kd", "v2a-05-none"], rows, "r") == {
        "a2v-05-kd",
        "v2a-05-kd",
        "v2a-05-none",
    }
    with pytest.raises(UsageError, match=r"--variant 'x2y-\*': not a row of r; its rows: a2v-05"):
        distill.selected_rows(["x2y-*"], rows, "r")
