"""Runs you can trust (issue 11): run identity, one writer per run, signals, names, files.

Each test drives the CLI as a user on a shared cluster would: reruns with changed `--set`,
two processes at once, kill -9 / SIGINT / SIGTERM of a running `cmkd distill`.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import yaml

from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.io import read_jsonl
from tests.conftest import wait_for

FAST = [
    "--set",
    "train.epochs=1",
    "--set",
    "teacher.pretrain.epochs=1",
    "--set",
    "train.threads=1",
    "--set",
    "train.max_steps_per_epoch=3",
]


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def _epochs(run: Path) -> list[int]:
    return [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]


def test_a_run_directory_is_its_recipe(cli, tmp_path: Path) -> None:
    base = ["distill", "--recipe", "zoo/kd", *FAST]
    run = tmp_path / "runs" / "kd"
    first = cli("--json", *base, "--set", "method.T=1")
    assert first.code == 0, first.stderr
    assert first.json()["runs"][0]["status"] == "trained"

    again = cli("--json", *base, "--set", "method.T=1", "--set", "train.log_every=5")
    assert again.code == 0, again.stderr
    assert again.json()["runs"][0]["status"] == "skipped"  # log_every changes nothing
    assert again.json()["runs"][0]["test"] == first.json()["runs"][0]["test"]
    assert "skipped: finished with the same recipe" in again.stderr

    changed = cli("--json", *base, "--set", "method.T=8")
    assert changed.code == 2, changed.stderr
    assert changed.stdout == ""
    (line,) = changed.stderr.strip().splitlines()
    assert "runs/kd holds a run of another recipe (method.T: 1.0 -> 8.0)" in line
    assert "--set output.name=" in line and "--overwrite" in line
    assert _config(run)["method"]["T"] == 1.0

    renamed = cli("--json", *base, "--set", "method.T=8", "--set", "output.name=kd-T8")
    assert renamed.code == 0 and renamed.json()["runs"][0]["status"] == "trained"
    assert _config(tmp_path / "runs" / "kd-T8")["method"]["T"] == 8.0

    # --resume applies the same rule
    resumed = cli("--json", "distill", "--resume", run)
    assert resumed.code == 0 and resumed.json()["runs"][0]["status"] == "skipped"
    refused = cli("distill", "--resume", run, "--set", "method.T=8")
    assert refused.code == 2 and "(method.T: 1.0 -> 8.0)" in refused.stderr

    replaced = cli("--json", *base, "--set", "method.T=8", "--overwrite")
    assert replaced.code == 0, replaced.stderr
    assert replaced.json()["runs"][0]["status"] == "trained"
    assert _config(run)["method"]["T"] == 8.0
    assert list(run.glob("teacher-*/teacher.pt"))  # rebuilt inside the replaced directory

    # epochs count from 1 in final.json, metrics.jsonl, checkpoints and the log alike
    final = json.loads((run / "final.json").read_text())
    assert final["best_epoch"] == 1 and _epochs(run) == [1]
    assert load_checkpoint(run / "best.pt")["best_epoch"] == 1
    assert "epoch 1/1" in replaced.stderr
    assert final["recipe_hash"] == load_checkpoint(run / "last.pt")["recipe_hash"]


def test_study_runs_and_names_follow_the_same_rule(cli, tmp_path: Path) -> None:
    study = ["distill", "--recipe", "quickstart", "--variant", "kd", "--seeds", "1,2", *FAST]
    before = {p for p in tmp_path.rglob("*")}
    first = cli("--json", *study)
    assert first.code == 0, first.stderr
    root = (tmp_path / "runs" / "quickstart").resolve()
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert written and all(p.resolve().is_relative_to(root) for p in written), sorted(written)

    changed = cli(*study, "--set", "data.batch_size=16")
    assert changed.code == 2
    assert "runs/quickstart/kd/seed-1 holds a run of another recipe" in changed.stderr
    assert "data.batch_size: 32 -> 16" in changed.stderr
    more = cli(
        "--json", "distill", "--recipe", "quickstart", "--variant", "kd", "--seeds", "1,2,3", *FAST
    )
    assert [r["status"] for r in more.json()["runs"]] == ["skipped", "skipped", "trained"]

    for bad in (
        ["--set", "output.name=../../escaped"],
        ["--set", "output.name=a/b"],
        ["--set", "output.name=.."],
        ["--set", "compare=[{name: '..', set: {method.T: 2}}]"],
        ["--set", "compare=[{name: 'a/b', set: {method.T: 2}}]"],
    ):
        res = cli("distill", "--recipe", "zoo/kd", *FAST, *bad)
        assert res.code == 2, (bad, res.stderr)
        assert "single path component" in res.stderr or "pattern" in res.stderr, res.stderr
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "runs" / "a").exists()


def test_one_writer_per_run_and_a_dead_holder_never_blocks(cli, spawn, tmp_path: Path) -> None:
    args = [
        "distill",
        "--recipe",
        "zoo/kd",
        *FAST,
        "--set",
        "train.epochs=12",
        "--set",
        "eval.every=12",
    ]
    run = tmp_path / "runs" / "kd"
    proc = spawn("--quiet", *args)
    wait_for(run / "last.pt", proc)
    proc.send_signal(signal.SIGSTOP)  # frozen mid-run, still holding its lock
    second = cli(*args)
    assert second.code == 1, second.stderr
    assert f"runs/kd is in use by another cmkd process (pid {proc.pid} on " in second.stderr

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = run / ".last.pt.killed.tmp"  # what a kill -9 during a write leaves
    stale.write_bytes(b"")
    third = cli("--json", *args)
    assert third.code == 0, third.stderr
    assert third.json()["runs"][0]["status"] == "resumed"
    assert not stale.exists()
    assert _epochs(run) == list(range(1, 13))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_and_says_how_to_resume(
    spawn, tmp_path: Path, signum: int, code: int
) -> None:
    run = tmp_path / "runs" / "kd"
    sets = ["train.epochs=500", "eval.every=500", "train.max_steps_per_epoch=2"]
    proc = spawn("distill", "--recipe", "zoo/kd", *FAST, *[a for s in sets for a in ("--set", s)])
    wait_for(run / "last.pt", proc)
    proc.send_signal(signum)
    assert proc.wait(120) == code
    err = proc.stderr.read()
    found = re.search(
        r"interrupted at step (\d+) \(epoch (\d+)\); resume with: cmkd distill --resume (\S+)", err
    )
    assert found, err
    last = load_checkpoint(run / "last.pt")
    assert (last["step"], last["epoch"]) == (int(found[1]), int(found[2]))
    assert Path(found[3]) == Path("runs/kd")
    assert not (run / "final.json").exists() and not list(run.glob(".*.tmp"))


def test_kill_during_teacher_pretraining_resumes(cli, spawn, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "kd"
    proc = spawn(
        "--quiet", "distill", "--recipe", "zoo/kd", *FAST, "--set", "teacher.pretrain.epochs=12"
    )
    wait_for(lambda: any(run.glob("teacher-*/last.pt")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (teacher,) = run.glob("teacher-*")
    assert not (teacher / "teacher.pt").exists(), "the teacher finished before it was killed"

    resumed = cli("--json", "distill", "--resume", run)
    assert resumed.code == 0, resumed.stderr
    assert "resuming teacher" in resumed.stderr
    assert _epochs(teacher) == list(range(1, 13))  # no epoch twice
    assert resumed.json()["runs"][0]["status"] == "resumed"


def test_sigint_during_prepare_exits_130_and_keeps_finished_work(
    cli, spawn, tmp_path: Path, shared_data: Path
) -> None:
    out = tmp_path / "av"
    proc = spawn("prepare", "av-digits", "--root", shared_data, "--out", out, "--workers", "2")
    journal = out / ".prepare-state.jsonl"
    wait_for(lambda: journal.exists() and journal.stat().st_size > 0, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130
    assert "interrupted (SIGINT)" in proc.stderr.read()
    kept = len(journal.read_text().splitlines())
    assert kept > 0 and not (out / "manifest.jsonl").exists()
    again = cli("--json", "prepare", "av-digits", "--root", shared_data, "--out", out)
    assert again.code == 0, again.stderr
    assert again.json()["reused"] >= kept - 1  # the last line may have been cut short


def test_a_teacher_folder_is_its_teacher(cli, tmp_path: Path) -> None:
    args = ["train-teacher", "--recipe", "zoo/kd", "--out", tmp_path / "t", *FAST]
    first = cli("--json", *args)
    assert first.code == 0 and first.json()["trained"] is True, first.stderr
    again = cli("--json", *args, "--set", "train.log_every=3", "--set", "data.num_workers=0")
    assert again.code == 0 and again.json()["trained"] is False
    other = cli(*args, "--set", "teacher.pretrain.epochs=2")
    assert other.code == 2, other.stderr
    assert "holds another teacher (train.epochs: 1 -> 2)" in other.stderr
    replaced = cli("--json", *args, "--set", "teacher.pretrain.epochs=2", "--overwrite")
    assert replaced.code == 0 and replaced.json()["trained"] is True
    assert _epochs(tmp_path / "t") == [1, 2]


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_afresh(
    cli, tmp_path: Path
) -> None:
    args = ["--json", "distill", "--recipe", "zoo/kd", *FAST]
    assert cli(*args).code == 0
    run = tmp_path / "runs" / "kd"
    for name in ("last.pt", "best.pt", "student.pt", "final.json"):  # killed in epoch 1
        (run / name).unlink()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"loss/task": 2.3, "kind": "st')  # a line the kill cut short
    again = cli(*args)
    assert again.code == 0, again.stderr
    assert again.json()["runs"][0]["status"] == "resumed"
    assert _epochs(run) == [1]  # the stopped process's rows are gone, the file parses
