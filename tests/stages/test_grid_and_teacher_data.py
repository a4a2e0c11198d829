"""`compare` grids chosen on validation only, and a teacher trained on more data than the
student sees (`teacher.pretrain.data_params`)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cmkd_cli.config import load_recipe
from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.stages import train_teacher

FAST = [
    "--set", "train.epochs=2", "--set", "teacher.pretrain.epochs=2", "--set",
    "train.threads=1", "--seeds", "1",
]  # fmt: skip


def test_grid_is_chosen_on_validation_and_only_the_choice_is_tested(cli, tmp_path: Path) -> None:
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        "extends: quickstart\nname: grid\n"
        "data: {params: {labelled_fraction: 0.1}}\n"
        "teacher: {pretrain: {data_params: {labelled_fraction: 1.0}}}\n"
        "train: {save_every: 2}\n"
        "compare:\n  tune_seeds: [7]\n  variants:\n"
        "    - {name: kd, set: {method: {name: kd}}, grid: {method.T: [1.0, 8.0]}}\n"
    )
    res = cli("--json", "distill", "--recipe", recipe, *FAST)
    assert res.code == 0, res.stderr
    out = res.json()
    root = tmp_path / "runs" / "grid"
    sel = out["selection"]["kd"]
    assert sel["tune_seeds"] == [7] and [p["set"] for p in sel["points"]] == [
        {"method.T": 1.0},
        {"method.T": 8.0},
    ]
    for k, point in enumerate(sel["points"]):
        final = json.loads((root / "kd" / f"grid-{k}" / "seed-7" / "final.json").read_text())
        assert final["test"] == {} and point["val"] == [final["best_val"]["accuracy"]]
    vals = [p["mean"] for p in sel["points"]]
    assert sel["chosen"] == vals.index(max(vals))
    config = yaml.safe_load((root / "kd" / "seed-1" / "config.yaml").read_text())
    assert config["method"]["T"] == sel["points"][sel["chosen"]]["set"]["method.T"]
    assert config["eval"]["test"] is True and "accuracy" in out["runs"][1]["test"]
    assert json.loads((root / "results.json").read_text())["selection"] == out["selection"]
    # save_every 2 over 2 epochs: last.pt once, after the last epoch
    last = load_checkpoint(root / "kd" / "seed-1" / "last.pt")
    assert (last["epoch"], last["epochs_done"]) == (2, 2)  # epochs count from 1

    # the run rule holds for the tuning runs too: a rerun skips them, a changed grid point
    # is refused before any work, naming its folder
    again = cli("--json", "distill", "--recipe", recipe, *FAST)
    assert again.code == 0, again.stderr
    assert {r["status"] for r in again.json()["runs"]} == {"skipped"}
    assert again.json()["selection"] == out["selection"]
    assert "kd/grid-1/seed-7: skipped: finished with the same recipe" in again.stderr
    recipe.write_text(recipe.read_text().replace("[1.0, 8.0]", "[1.0, 4.0]"))
    changed = cli("distill", "--recipe", recipe, *FAST)
    assert changed.code == 2, changed.stderr
    assert "kd/grid-1/seed-7 holds a run of another recipe (method.T: 8.0 -> 4.0)" in changed.stderr
    # report and analyze find a grid point's runs at its folder; a variant's are its seeds
    for folder, run in ((root / "kd" / "grid-1", "seed-7"), (root / "kd", "seed-1")):
        rep = cli("--json", "report", folder, "--no-plots")
        assert rep.code == 0, rep.stderr
        assert [Path(r["run_dir"]).resolve() for r in rep.json()["runs"]] == [
            (folder / run).resolve()
        ]
    cost = cli("--json", "analyze", root / "kd" / "grid-1", "--cost", "--out", tmp_path / "a")
    assert cost.code == 0, cost.stderr
    assert [r["variant"] for r in cost.json()["cost"]] == ["kd/grid-1"]

    # the teacher trained on every training image, the student on 10% of them
    teacher = Path(out["teacher"]["checkpoint"])
    resolved = load_recipe(str(recipe), [s for s in FAST[1:6:2]])
    assert teacher.parent.name == f"teacher-{train_teacher.teacher_key(resolved)}"
    spec = json.loads((teacher.parent / "final.json").read_text())
    assert spec["test"]  # the teacher's own evaluation
    t_ckpt = load_checkpoint(teacher.parent / "best.pt")
    s_ckpt = load_checkpoint(root / "baseline" / "seed-1" / "best.pt")
    assert t_ckpt["data_spec"]["n_train"] > 9 * s_ckpt["data_spec"]["n_train"]


def test_teacher_key_follows_the_teacher_data_not_the_students_fraction() -> None:
    sets = ["teacher.pretrain.data_params={labelled_fraction: 1.0}"]
    keys = {
        train_teacher.teacher_key(
            load_recipe("quickstart", [*sets, f"data.params.labelled_fraction={f}"])
        )
        for f in (0.05, 0.25, 1.0)
    }
    assert len(keys) == 1
    plain = {
        train_teacher.teacher_key(load_recipe("quickstart", [f"data.params.labelled_fraction={f}"]))
        for f in (0.05, 0.25)
    }
    assert len(plain) == 2  # without data_params the teacher learns from the student's data
    r = load_recipe("quickstart", [*sets, "data.params.labelled_fraction=0.05"])
    assert train_teacher.teacher_recipe(r).data.params["labelled_fraction"] == 1.0
