"""The engine end to end on the quickstart data: resume equality, DDP equality, NaN guard."""

from __future__ import annotations

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
    killed_at = load_checkpoint(run_dir / "last.pt")["epoch"]
    assert killed_at < 5, "the run finished before it could be killed"
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
    assert [r["epoch"] for r in epochs] == list(range(6))  # no duplicated epochs


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
    recipe = load_recipe(
        "quickstart", [*SMALL, "method.name=baseline", "train.epochs=3", "output.tensorboard=false"]
    )
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
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0  # the last good state
