"""Plug-ins are found one way: `Registry.discover` imports a package's modules on first lookup."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmkd_cli.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A package `fakeplug` with two public plug-ins, a private module and a broken one."""
    pkg = tmp_path / "fakeplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "reg.py").write_text(
        "from cmkd_cli.registry import Registry\nTHINGS = Registry('thing', package='fakeplug')\n"
    )
    for name in ("alpha", "beta"):
        (pkg / f"{name}.py").write_text(
            f"from fakeplug.reg import THINGS\nTHINGS.register({name!r})({name!r}.upper())\n"
        )
    (pkg / "_private.py").write_text(
        "from fakeplug.reg import THINGS\nTHINGS.register('hidden')(0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for mod in [m for m in sys.modules if m == "fakeplug" or m.startswith("fakeplug.")]:
        del sys.modules[mod]


def test_discovery_waits_for_the_first_lookup_and_skips_private_modules(plugins):
    from fakeplug.reg import THINGS

    assert "fakeplug.alpha" not in sys.modules
    assert THINGS.get("beta") == "BETA"
    assert THINGS.names() == ["alpha", "beta"]
    assert "fakeplug.alpha" in sys.modules and "fakeplug._private" not in sys.modules
    with pytest.raises(UsageError, match="unknown thing 'gamma'; choose one of: alpha, beta"):
        THINGS.get("gamma", field="x.name")


def test_a_plugin_that_fails_to_import_fails_every_lookup(plugins):
    (plugins / "broken.py").write_text("raise ImportError('needs a missing package')\n")
    from fakeplug.reg import THINGS

    for _ in range(2):  # not a half-filled registry the second time
        with pytest.raises(ImportError, match="missing package"):
            THINGS.names()


def test_help_imports_no_reader_model_method_or_torch():
    code = textwrap.dedent(
        """
        import json, sys
        from cmkd_cli.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print(json.dumps(sorted(sys.modules)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    plugins = [
        m
        for m in loaded
        if m.startswith(("data_prep", "cmkd_cli.models", "cmkd_cli.methods", "cmkd_cli.data"))
        or m.split(".")[0] in ("torch", "numpy")
    ]
    assert plugins == []


def test_every_kind_of_plugin_is_found(cli):
    from cmkd_cli.data.datasets import DATASETS
    from cmkd_cli.methods import METHODS
    from cmkd_cli.models.registry import MODELS
    from cmkd_cli.stages.prepare import readers
    from cmkd_cli.tasks import TASKS

    assert {"c2kd", "kd", "baseline"} <= set(METHODS.names())
    assert {"resnet18", "deeplabv3plus_resnet18"} <= set(MODELS.names())
    assert set(TASKS.names()) == {"classification", "segmentation", "speaker"}
    assert {"digits", "speaker"} <= set(DATASETS.names())
    assert {"voxceleb1", "musan", "nyu-depth-v2"} <= set(readers().names())
    res = cli("prepare", "voxcelb1")
    assert res.code == 2 and "Did you mean 'voxceleb1'" in res.stderr
