"""The install itself: every native piece loads (first test of the suite), `cmkd doctor`,
the lock, the wheel, global flags and file modes."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import zipfile

import pytest

from cmkd_cli import native
from tests.conftest import REPO


def test_every_native_piece_loads(shared_data_or_none):
    wav = None
    if shared_data_or_none is not None:
        wav = shared_data_or_none / "fsdd" / "recordings" / "0_george_0.wav"
    checks = native.run_checks(wav)
    failed = {c.name: c.detail for c in checks if not c.ok}
    assert not failed, failed
    names = [c.name for c in checks]
    assert names == [
        "versions",
        "torch",
        "soundfile",
        "torchaudio",
        "torchvision",
        "pyav",
        "mtcnn",
        "minilm",
    ]
    if wav is not None:
        assert "0_george_0.wav" in next(c.detail for c in checks if c.name == "torchaudio")


def test_lock_pins_every_package_exactly_with_hashes():
    lock = (REPO / "requirements.lock").read_text()
    pins = native.locked_versions(REPO / "requirements.lock")
    assert pins["torch"] == "2.11.0"
    assert pins["torchaudio"] == "2.11.0"
    assert pins["torchvision"] == "0.26.0"
    for name in ("facenet-pytorch", "transformers", "av", "soundfile", "pytest", "onnxruntime"):
        assert name in pins, name
    # every requirement line is `name==version` followed by at least one sha256 hash
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 2)[2])
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9_.-]+==\S+", entry), entry[:80]
        assert "--hash=sha256:" in entry, entry[:80]


def test_installed_torch_family_matches_the_lock():
    pins = native.locked_versions(REPO / "requirements.lock")
    for dist in native.TORCH_FAMILY:
        assert native.version_of(dist) == pins[dist], dist


def test_explain_load_error_names_the_piece_and_the_fix():
    exc = OSError(
        "Could not load this library: /venv/lib/python3.11/site-packages/torchaudio/lib/"
        "libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace"
    )
    text = native.explain_load_error(exc)
    assert text.startswith(f"torchaudio {native.version_of('torchaudio')} was built for another")
    assert "requirements.lock" in text
    assert native.explain_load_error(ValueError("bad value")) is None
    assert native.explain_load_error(FileNotFoundError("no such file: x.wav")) is None


def test_doctor_passes_here(cli):
    res = cli("--json", "doctor")
    assert res.code == 0, res.stderr
    out = res.json()
    assert out["ok"] and {c["name"] for c in out["checks"]} >= {"torchaudio", "mtcnn", "minilm"}


def test_doctor_exits_1_naming_the_broken_piece(cli, monkeypatch):
    def broken() -> str:
        raise OSError(
            "Could not load this library: .../torchvision/_C.so: undefined symbol: _ZN3c10"
        )

    monkeypatch.setattr(native, "_torchvision", broken)
    res = cli("doctor")
    assert res.code == 1
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: torchvision: torchvision ") and "another torch" in line


def test_a_stage_hitting_a_load_error_says_why(cli, monkeypatch):
    from cmkd_cli.stages import recipes

    def boom(*_args, **_kwargs):
        raise OSError("Could not load this library: /x/torchaudio/lib/libtorchaudio.so")

    monkeypatch.setattr(recipes, "list_all", boom)
    res = cli("recipes", "list")
    assert res.code == 1
    assert "torchaudio" in res.stderr and "built for another torch" in res.stderr
    assert "Traceback" not in res.stderr


def test_version_help_and_global_flags_after_the_stage(cli):
    from cmkd_cli import __version__

    assert cli("--version").stdout.strip() == f"cmkd {__version__}"
    assert "Usage: cmkd" in cli("-h").stdout
    assert "--recipe" in cli("distill", "-h").stdout
    after = cli("recipes", "list", "--json")
    before = cli("--json", "recipes", "list")
    assert after.code == before.code == 0
    assert after.json() == before.json()


def test_outputs_respect_the_umask(tmp_path):
    import numpy as np
    import torch

    from cmkd_cli.io import atomic_path, atomic_torch_save, atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "b.pt")
        with atomic_path(tmp_path / "c.npy") as tmp:
            np.save(open(tmp, "wb"), np.zeros(3))
        os.umask(0o077)
        atomic_write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt", "c.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


@pytest.mark.slow
def test_wheel_ships_every_recipe_and_runs_outside_the_repo(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("cmkd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(
        p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*.yaml")
    )
    assert recipes and all(f"cmkd_cli/recipes/{r}" in names for r in recipes)
    assert "cmkd_cli/native.py" in names and "data_prep/ave.py" in names
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("CMKD_RECIPES", None)
    run = subprocess.run(
        [sys.executable, "-m", "cmkd_cli", "--json", "recipes", "show", "quickstart"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert '"name": "quickstart"' in run.stdout
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cmkd_cli.config as c; print(c.recipe_dirs()[-1]); print(len(c.list_recipes()))",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listed[0] == str(site / "cmkd_cli" / "recipes")
    assert int(listed[1]) == len(recipes)
