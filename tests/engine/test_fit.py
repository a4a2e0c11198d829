"""The engine end to end on the quickstart data: resume equality, DDP equality, NaN guard."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmkd_cli.config import load_recipe
from cmkd_cli.engine.checkpoint import load_checkpoint
from cmkd_cli.engine.distributed import init_distributed
from cmkd_cli.engine.loop import NonFiniteLoss, fit
from cmkd_cli.stages.experiment import build_experiment

# a small, fast version of the quickstart: one seed, no comparison, few epochs
SMALL = [
    "seeds=[1]",
    "compare=[]",
    "train.log_every=1",
    "train.threads=1",
    "teacher.pretrain.epochs=2",
    "data.params.labelled_fraction=0.5",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cmkd_cli", "--quiet", *args]


def _states_equal(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)
        else:
            assert torch.equal(a[k], b[k]), k


def test_killed_run_resumes_to_bit_identical_weights(cli, tmp_path: Path) -> None:
    sets = [*SMALL, "method.name=kd", "train.epochs=6"]
    flags = [f for s in sets for f in ("--set", s)]
    ref = cli("distill", "--recipe", "quickstart", *flags, "--set", "output.root=full")
    assert ref.code == 0, ref.stderr

    run_dir = tmp_path / "killed" / "quickstart"
    proc = subprocess.Popen(
        _cmd("distill", "--recipe", "quickstart", *flags, "--set", "output.root=killed"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while not (run_dir / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(run_dir / "last.pt")["epochs_done"]
    assert killed_at < 6, "the run finished before it could be killed"
    assert not (run_dir / "final.json").exists()

    resumed = cli("--json", "distill", "--resume", run_dir)
    assert resumed.code == 0, resumed.stderr
    assert resumed.json()["runs"][0]["status"] == "resumed"
    full_dir = tmp_path / "full" / "quickstart"
    for name in ("last.pt", "best.pt"):
        _states_equal(
            load_checkpoint(full_dir / name)["student"], load_checkpoint(run_dir / name)["student"]
        )
    assert resumed.json()["runs"][0]["test"] == ref_test(full_dir)
    epochs = [r for r in _rows(run_dir) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6]  # no duplicated epochs


def ref_test(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "final.json").read_text())["test"]


def _rows(run_dir: Path) -> list[dict]:
    from cmkd_cli.io import read_jsonl

    return read_jsonl(run_dir / "metrics.jsonl")


@pytest.mark.skipif(
    not hasattr(torch.distributed, "is_gloo_available")
    or not torch.distributed.is_gloo_available(),
    reason="gloo is not built in",
)
def test_two_process_ddp_equals_one_process(cli, tmp_path: Path) -> None:
    """... and only rank 0 prints (one JSON document on stdout, each log line once) and
    writes (an audit hook on rank 1 records every file it opens for writing, renames or
    creates under the run root and the cache)."""
    sets = [
        *SMALL,
        "method.name=kd",
        "train.epochs=2",
        "train.max_steps_per_epoch=4",
        "data.batch_size=32",
    ]
    flags = [f for s in sets for f in ("--set", s)]
    one = cli("distill", "--recipe", "quickstart", *flags, "--set", "output.root=one")
    assert one.code == 0, one.stderr
    one_dir = tmp_path / "one" / "quickstart"
    teacher = next(one_dir.glob("teacher-*/teacher.pt"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cmkd_cli",
        "--json",
        "distill",
        "--recipe",
        "quickstart",
        *flags,
        "--set",
        "output.root=two",
        "--set",
        f"teacher.checkpoint={teacher}",
    ]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(WRITE_AUDIT)
    env = _env()
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
    env["CMKD_TEST_WRITE_LOG"] = str(tmp_path / "writes")
    env["CMKD_TEST_WRITE_ROOTS"] = os.pathsep.join(
        [str(tmp_path / "two"), os.environ["CMKD_CACHE_DIR"]]
    )
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two_dir = tmp_path / "two" / "quickstart"
    import json

    result = json.loads(done.stdout)  # one document: rank 1 printed nothing
    assert result["runs"][0]["test"] == ref_test(two_dir)
    assert done.stderr.count("epoch 2/2") == 1 and done.stderr.count("[kd seed 1]") == 1
    assert (tmp_path / "writes.1").is_file()  # the hook ran on rank 1 ...
    assert (tmp_path / "writes.1").read_text() == ""  # ... and saw no write
    a, b = load_checkpoint(one_dir / "last.pt"), load_checkpoint(two_dir / "last.pt")
    assert a["step"] == b["step"] == 8
    _states_equal(a["student"], b["student"], atol=1e-5)
    assert not torch.equal(a["student"]["head.weight"], _init_head())  # it did train


# sitecustomize for the processes of a torchrun launch: on a rank > 0, log every write under
# $CMKD_TEST_WRITE_ROOTS (opened for writing, renamed, created, removed) to
# $CMKD_TEST_WRITE_LOG.RANK
WRITE_AUDIT = """
import os
import sys

if os.environ.get("RANK", "0") not in ("", "0"):
    _log = os.open(
        os.environ["CMKD_TEST_WRITE_LOG"] + "." + os.environ["RANK"],
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    )
    _roots = tuple(p for p in os.environ["CMKD_TEST_WRITE_ROOTS"].split(os.pathsep) if p)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = isinstance(flags, int) and bool(flags & _WRITE)
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.symlink", "os.link"):
            path, writing = args[0], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_roots):
                os.write(_log, (event + " " + path + "\\n").encode())

    sys.addaudithook(_hook)
"""


def _init_head() -> torch.Tensor:
    recipe = load_recipe("quickstart", [*SMALL, "method.name=baseline"])
    return build_experiment(recipe).method.student.head.weight.detach()


def test_nan_loss_stops_with_step_and_term_and_keeps_last_good_state(tmp_path: Path) -> None:
    sets = ["method.name=baseline", "train.epochs=3", "output.tensorboard=false"]
    recipe = load_recipe("quickstart", [*SMALL, *sets, "data.num_workers=1"])
    exp = build_experiment(recipe)
    forward = exp.method.forward
    calls = {"n": 0}
    steps_per_epoch = None

    def poisoned(batch):
        calls["n"] += 1
        out = forward(batch)
        if calls["n"] == steps_per_epoch + 2:  # the 2nd step of epoch 2
            out.losses["task"] = out.losses["task"] * float("nan")
        return out

    from cmkd_cli.engine.loop import make_loaders

    dist = init_distributed("cpu")
    steps_per_epoch = len(make_loaders(exp.data, recipe, dist)["train"])
    exp.method.forward = poisoned
    with pytest.raises(NonFiniteLoss) as err:
        fit(exp.method, exp.data, exp.task, recipe, tmp_path, dist)
    msg = str(err.value)
    assert f"step {steps_per_epoch + 2} (epoch 2, batch 2): loss term `task` is nan" in msg
    assert "last.pt" in msg
    last = load_checkpoint(tmp_path / "last.pt")  # the last good state: after epoch 1
    assert (last["epoch"], last["epochs_done"], last["batch"]) == (1, 1, 0)
    # the loader's persistent worker, which ignores SIGTERM, is stopped with the run (left
    # to the interpreter's exit, it would keep the process waiting for ever)
    assert not [p for p in multiprocessing.active_children() if p.daemon]


# ---------------------------------------------------------------- signals, mid-epoch resume

MID = ["train.epochs=2", "train.max_steps_per_epoch=7", "output.tensorboard=false"]


def _experiment(recipe_name: str, sets: list[str]):
    recipe = load_recipe(recipe_name, [*SMALL, *MID, *sets])
    return build_experiment(recipe)


def _signal_at(exp, step: int, signum: int) -> None:
    """Make the method send `signum` to this process during its `step`-th forward pass."""
    forward = exp.method.forward
    calls = {"n": 0}

    def forward_then_signal(batch):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return forward(batch)

    exp.method.forward = forward_then_signal


@pytest.mark.parametrize(
    ("recipe_name", "sets"),
    [
        ("quickstart", ["method.name=kd"]),
        ("zoo/kd_filter", ["method.selector=random"]),  # a generator carried between steps
        ("zoo/dlb", []),  # the previous batch carried between steps
    ],
)
def test_sigterm_mid_epoch_then_resume_is_bit_identical(
    tmp_path: Path, recipe_name: str, sets: list[str]
) -> None:
    from cmkd_cli import interrupts

    dist = init_distributed("cpu")
    ref = _experiment(recipe_name, sets)
    fit(ref.method, ref.data, ref.task, ref.recipe, tmp_path / "ref", dist)

    run = tmp_path / "run"
    first = _experiment(recipe_name, sets)
    _signal_at(first, 10, signal.SIGTERM)  # the 3rd step of epoch 2
    with interrupts.handle_signals(), pytest.raises(interrupts.Interrupted) as stop:
        fit(first.method, first.data, first.task, first.recipe, run, dist)
    assert stop.value.exit_code == 143
    assert str(stop.value) == "interrupted at step 10 (epoch 2)"  # the step it came in ended
    last = load_checkpoint(run / "last.pt")
    assert (last["epoch"], last["epochs_done"], last["batch"], last["step"]) == (2, 1, 10 - 7, 10)
    assert not (run / "final.json").exists()

    again = _experiment(recipe_name, sets)
    result = fit(again.method, again.data, again.task, again.recipe, run, dist)
    assert result.resumed_from_epoch == 2
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(tmp_path / "ref" / name), load_checkpoint(run / name)
        _states_equal(a["student"], b["student"])
        _states_equal(a["method"], b["method"])
    ref_rows = [r for r in _rows(tmp_path / "ref")]
    rows = _rows(run)
    strip = ("samples_per_s", "epoch_time_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows] == [
        {k: v for k, v in r.items() if k not in strip} for r in ref_rows
    ]  # the same rows, none twice, the epoch averages over both processes' steps


def test_second_signal_stops_at_once_and_last_good_state_stays(tmp_path: Path) -> None:
    from cmkd_cli import interrupts

    dist = init_distributed("cpu")
    exp = _experiment("quickstart", ["method.name=kd", "train.checkpoint_every=2"])
    forward = exp.method.forward
    calls = {"n": 0}

    def twice(batch):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return forward(batch)

    exp.method.forward = twice
    with interrupts.handle_signals(), pytest.raises(interrupts.Interrupted) as stop:
        fit(exp.method, exp.data, exp.task, exp.recipe, tmp_path, dist)
    assert stop.value.exit_code == 130
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4  # checkpoint_every=2, not step 5


def test_checkpoint_every_writes_mid_epoch_states(tmp_path: Path, monkeypatch) -> None:
    import cmkd_cli.engine.loop as loop

    saved = []
    real = loop.save_checkpoint

    def record(path, state):
        if Path(path).name == "last.pt":
            saved.append((state["epochs_done"], state["batch"], state["step"]))
        real(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", record)
    exp = _experiment("quickstart", ["method.name=kd", "train.checkpoint_every=3"])
    fit(exp.method, exp.data, exp.task, exp.recipe, tmp_path, init_distributed("cpu"))
    # every 3rd step mid-epoch, and at each epoch's end (7 steps per epoch)
    assert saved == [(0, 3, 3), (0, 6, 6), (1, 0, 7), (1, 2, 9), (1, 5, 12), (2, 0, 14)]


def test_validation_draws_nothing_from_the_training_rng(tmp_path: Path) -> None:
    """What training draws must not depend on how often it validates (eval.every)."""
    draws = {}
    for every in (1, 2):
        exp = _experiment("quickstart", ["method.name=kd", f"eval.every={every}"])
        forward = exp.method.forward
        seen = []

        def drawing(batch, forward=forward, seen=seen):
            seen.append(torch.rand(()).item())  # e.g. dropout's masks
            return forward(batch)

        exp.method.forward = drawing
        fit(
            exp.method,
            exp.data,
            exp.task,
            exp.recipe,
            tmp_path / str(every),
            init_distributed("cpu"),
        )
        draws[every] = seen
    assert draws[1] == draws[2]


def test_nonfinite_loss_names_the_batch_samples(tmp_path: Path) -> None:
    exp = _experiment("quickstart", ["method.name=baseline"])
    forward = exp.method.forward

    def poisoned(batch):
        out = forward(batch)
        out.logits[1] = float("nan")  # the second sample of the batch gives a NaN output
        out.losses["task"] = out.losses["task"] * float("nan")
        return out

    exp.method.forward = poisoned
    with pytest.raises(NonFiniteLoss) as err:
        fit(exp.method, exp.data, exp.task, exp.recipe, tmp_path, init_distributed("cpu"))
    msg = str(err.value)
    assert "step 1 (epoch 1, batch 1): loss term `task` is nan; its samples: " in msg
    culprit = msg.split("(non-finite output for ")[1].split(")")[0]
    assert culprit.count(",") == 0 and culprit in msg.split("its samples: ")[1].split(" (")[0]
