"""Output settings: set once by the CLI's global flags, read only by console and progress."""

from __future__ import annotations

import pytest

from cmkd_cli import console
from cmkd_cli.progress import track


@pytest.fixture(autouse=True)
def _default_settings():
    yield
    console.configure()


def test_progress_and_info_follow_the_configured_settings(capsys):
    console.configure(quiet=True)
    assert list(track(range(4), description="counting")) == [0, 1, 2, 3]
    console.info("a log line")
    assert capsys.readouterr().err == ""
    console.configure()
    assert console.shows_progress()
    assert list(track(range(4), description="counting")) == [0, 1, 2, 3]
    console.info("a log line")
    err = capsys.readouterr().err
    assert "counting: 4/4" in err and "a log line" in err
    console.configure(json=True)
    assert not console.shows_progress() and not console.settings().quiet


def test_the_global_flags_configure_the_process(cli):
    assert cli("--quiet", "recipes", "list").code == 0
    assert console.settings() == console.OutputSettings(quiet=True)
    assert cli("recipes", "list", "--json").code == 0
    assert console.settings() == console.OutputSettings(json=True)
