"""The manual builds strictly (no broken link or anchor), and the README stays a landing
page whose links and figures are the manual's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def test_the_manual_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed in this environment (the lock's docs extra)")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "cmkd distill" in reference and "cmkd prepare voxceleb2" in reference


def test_the_readme_is_a_landing_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    targets = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links into the manual"
    assert [t for t in targets if not (REPO / t).is_file()] == []


def test_the_readme_shows_the_quickstart_table_the_manual_includes():
    table = (DOCS / "figures" / "quickstart-table.md").read_text()
    assert table in (REPO / "README.md").read_text()
    assert '--8<-- "quickstart-table.md"' in (DOCS / "quickstart.md").read_text()


def test_no_user_facing_text_speaks_of_issues_or_items():
    pages = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
    rx = re.compile(r"\b(issue|item) \d+", re.IGNORECASE)
    assert [
        f"{p.relative_to(REPO)}: {m.group(0)}" for p in pages for m in rx.finditer(p.read_text())
    ] == []
