"""A recipe records its ${name} variables as absolute paths and the fields that used them;
`rebind_variables` points those fields elsewhere (what `cmkd eval --var` does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmkd_cli.config import dump_recipe, load_recipe, rebind_variables
from cmkd_cli.errors import UsageError

RECIPE = """
student: {name: digits_cnn}
method: {name: baseline}
data: {name: manifest, params: {manifest: '${root}/set', image: {size: 28}}}
output: {root: runs}
compare:
  - {name: other, set: {data.params.manifest: '${other}/x'}}
"""


def test_variables_are_recorded_absolute_and_rebound(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "r.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMKD_OTHER", "elsewhere")  # from the environment, also absolute
    r = load_recipe("r.yaml", variables={"root": "data"})
    assert r.data.params["manifest"] == f"{tmp_path}/data/set"
    assert r.variables.values == {"other": f"{tmp_path}/elsewhere", "root": f"{tmp_path}/data"}
    assert r.variables.fields == {"data.params.manifest": "${root}/set"}  # not compare's
    assert r.compare.variants[0].set["data.params.manifest"] == f"{tmp_path}/elsewhere/x"

    stored = r.model_dump(mode="json")
    moved = rebind_variables(stored, {"root": "/new"}, "best.pt")
    assert moved["data"]["params"]["manifest"] == "/new/set"
    assert moved["variables"]["values"]["root"] == "/new"
    assert stored["data"]["params"]["manifest"] == f"{tmp_path}/data/set"  # not changed
    with pytest.raises(UsageError, match=r"--var nope: best.pt was not made with .*root="):
        rebind_variables(stored, {"nope": "/x"}, "best.pt")

    # a run's stored recipe, loaded again as a recipe, keeps its record
    (tmp_path / "config.yaml").write_text(dump_recipe(r))
    assert load_recipe("config.yaml").variables == r.variables


def test_a_field_inside_a_list_is_rebound(tmp_path: Path) -> None:
    (tmp_path / "l.yaml").write_text(
        "student: {name: digits_cnn}\nmethod: {name: baseline}\n"
        "data: {name: manifest, params: {manifest: '/m', roots: ['${a}/one', 'two']}}\n"
    )
    r = load_recipe(str(tmp_path / "l.yaml"), variables={"a": "/A"})
    assert r.variables.fields == {"data.params.roots[0]": "${a}/one"}
    moved = rebind_variables(r.model_dump(mode="json"), {"a": "/B"}, "x")
    assert moved["data"]["params"]["roots"] == ["/B/one", "two"]
