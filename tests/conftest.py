"""Shared fixtures: the real data folder, an in-process CLI runner, a run root."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A suite started as a shell background job (`make test &`) inherits an ignored SIGINT,
# which cmkd leaves ignored as Python does (cmkd_cli.interrupts); the Ctrl-C tests need it
# delivered, as in a terminal or CI, so the suite (and the CLIs it starts) get it back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _prompt_cache(tmp_path_factory):
    """One prompt-embedding cache per test session: MiniLM encodes the prompts once."""
    os.environ["CMKD_CACHE_DIR"] = str(tmp_path_factory.mktemp("cmkd-cache"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not present at {SHARED_DATA} (see the README's Tests section)")
    return SHARED_DATA


@pytest.fixture
def shared_data_or_none() -> Path | None:
    """The real data folder, or None in a fresh clone (for tests that run either way)."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run `cmkd ARGS...` in-process (cwd = a temp dir) and return its exit code and output.
    The global flags a run sets (--json, --quiet) stay with this test, not the next."""
    from cmkd_cli import console
    from cmkd_cli.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    yield run
    console.configure()  # the defaults again


@pytest.fixture
def spawn(tmp_path):
    """Start `cmkd ARGS...` as its own process (cwd = the test's temp dir), stderr piped."""
    import subprocess
    import sys

    procs = []
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def start(*args: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "cmkd_cli", *[str(a) for a in args]]
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # never leave a run behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(path_or_check, proc, timeout: float = 240.0) -> None:
    """Poll until `path` exists (or `check()` is true) while `proc` runs."""
    import time

    check = path_or_check if callable(path_or_check) else path_or_check.exists
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


FIRST = "test_native_stack.py"


def pytest_collection_modifyitems(items):
    """The native-stack checks run first: under `pytest -x` a broken install (e.g. a
    torchaudio built for another torch) stops the suite at once with the cause."""
    items.sort(key=lambda item: item.path.name != FIRST)
