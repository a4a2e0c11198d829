"""Recipe loading: extends, --set typing, and errors naming the file and dotted field."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmkd_cli.config import load_recipe, parse_set, variant_recipe
from cmkd_cli.errors import UsageError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(
        tmp_path / "base.yaml",
        "name: base\nstudent: {name: digits_cnn}\nmethod: {name: kd, T: 2.0}\n"
        "teacher: {model: {name: prompt_teacher}}\noptim: {lr: 0.01}\n",
    )


def test_extends_merges_and_overrides(tmp_path: Path, base: Path) -> None:
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\noptim: {name: sgd}\n")
    r = load_recipe(str(child))
    assert r.name == "child"
    assert r.optim.name == "sgd" and r.optim.lr == 0.01  # merged, not replaced
    assert r.method.name == "kd" and r.method.T == 2.0


def test_changing_method_name_replaces_the_method_block(tmp_path: Path, base: Path) -> None:
    child = write(tmp_path / "c.yaml", "extends: base.yaml\nmethod: {name: baseline}\n")
    assert load_recipe(str(child)).method.name == "baseline"  # T of kd does not leak


def test_set_is_parsed_to_the_field_type(base: Path) -> None:
    r = load_recipe(str(base), ["method.T=8", "train.epochs=3", "train.amp=bf16", "seeds=[1,2]"])
    assert r.method.T == 8.0 and isinstance(r.method.T, float)
    assert r.train.epochs == 3 and r.train.amp == "bf16" and r.seeds == [1, 2]


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["optim.lrr=1"], "--set optim.lrr=1: field `optim.lrr`: unknown field"),
        (["optim.lr=abc"], "field `optim.lr`: Input should be a valid number"),
        (["method.name=fitnett"], "unknown method 'fitnett'; choose one of:"),
        (["method.T=-1"], "field `method.T`: Input should be greater than 0"),
        (["train.amp=fp8"], "field `train.amp`"),
    ],
)
def test_bad_set_names_the_field(base: Path, sets: list[str], expected: str) -> None:
    with pytest.raises(UsageError) as err:
        load_recipe(str(base), sets)
    assert expected in str(err.value)


def test_unknown_key_in_yaml_names_file_and_field(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "student: {name: x}\nmethod: {name: baseline}\ntrian: {}\n")
    with pytest.raises(UsageError, match=r"bad\.yaml: field `trian`: unknown field"):
        load_recipe(str(bad))


def test_broken_extends(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(UsageError, match="nowhere.yaml.*neither a file nor a known recipe"):
        load_recipe(str(a))
    write(tmp_path / "x.yaml", "extends: y.yaml\n")
    write(tmp_path / "y.yaml", "extends: x.yaml\n")
    with pytest.raises(UsageError, match="cycle"):
        load_recipe(str(tmp_path / "x.yaml"))


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "b.yaml", "name: a\nstudent: [unclosed\n")
    with pytest.raises(UsageError, match=r"b\.yaml: line \d+ is not valid YAML"):
        load_recipe(str(bad))


def test_a_key_given_twice_names_key_and_lines(tmp_path: Path) -> None:
    dup = write(
        tmp_path / "d.yaml",
        "extends: quickstart\nx-a: &a {lr: 0.1}\noptim:\n  <<: *a\n  lr: 0.2\n"
        "train:\n  epochs: 3\n  epochs: 4\n",
    )
    with pytest.raises(
        UsageError,
        match=r"d\.yaml: line 8: key `epochs` appears twice in one mapping \(first on line 7\)",
    ):
        load_recipe(str(dup))
    write(
        tmp_path / "d.yaml", "extends: quickstart\nx-a: &a {lr: 0.1}\noptim:\n  <<: *a\n  lr: 0.2\n"
    )
    assert load_recipe(str(tmp_path / "d.yaml")).optim.lr == 0.2  # a merge key then an override


def test_set_syntax_errors() -> None:
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_set("method.T")
    with pytest.raises(UsageError, match="empty segment"):
        parse_set("method..T=1")
    assert parse_set("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_set("a=null") == (["a"], None)


def test_variables_resolve_or_fail(tmp_path: Path, monkeypatch) -> None:
    r = write(
        tmp_path / "v.yaml",
        "student: {name: digits_cnn}\nmethod: {name: baseline}\noutput: {root: '${out}/runs'}\n",
    )
    with pytest.raises(UsageError, match=r"field `output.root`: variable \$\{out\} is not set"):
        load_recipe(str(r))
    assert load_recipe(str(r), variables={"out": "/x"}).output.root == "/x/runs"
    monkeypatch.setenv("CMKD_OUT", "/env")
    assert load_recipe(str(r)).output.root == "/env/runs"


def test_compare_variants_are_validated_up_front(tmp_path: Path, base: Path) -> None:
    ok = write(
        tmp_path / "ok.yaml", "extends: base.yaml\ncompare:\n  - {name: hot, set: {method.T: 9}}\n"
    )
    r = load_recipe(str(ok))
    assert variant_recipe(r, "hot").method.T == 9.0
    bad = write(
        tmp_path / "bad.yaml",
        "extends: base.yaml\ncompare:\n  - {name: hot, set: {method.TT: 9}}\n",
    )
    with pytest.raises(UsageError, match=r"compare\[hot\]: field `method.TT`: unknown field"):
        load_recipe(str(bad))


def test_compare_baselines_list_and_mapping_forms(tmp_path: Path, base: Path) -> None:
    from cmkd_cli.stages.distill import baselines

    listed = write(
        tmp_path / "listed.yaml",
        "extends: base.yaml\ncompare:\n  - {name: none, set: {method: {name: baseline}}}\n"
        "  - {name: hot, set: {method.T: 9}}\n  - {name: none2, set: {method: {name: baseline}}}\n"
        "  - {name: cold, baseline: none2, set: {method.T: 1}}\n",
    )
    r = load_recipe(str(listed))
    assert r.row_names() == ["kd", "none", "hot", "none2", "cold"]
    # default: the first row without distillation; a row's own `baseline` wins
    assert baselines(r) == {
        "kd": "none",
        "none": None,
        "hot": "none",
        "none2": "none",
        "cold": "none2",
    }
    # a mapping extends the list of the parent: `compare.baseline` and the row name merge in
    child = write(
        tmp_path / "child.yaml",
        "extends: listed.yaml\ncompare: {baseline: hot, base_name: main, ci: bootstrap}\n",
    )
    r = load_recipe(str(child))
    assert r.row_names() == ["main", "none", "hot", "none2", "cold"] and r.compare.ci == "bootstrap"
    assert baselines(r)["main"] == "hot" and baselines(r)["hot"] is None
    assert baselines(load_recipe(str(listed), ["compare.baseline=null"]))["hot"] == "none"
    with pytest.raises(UsageError, match=r"compare.baseline: no row 'nope'; rows: kd, none"):
        load_recipe(str(listed), ["compare.baseline=nope"])
    with pytest.raises(UsageError, match=r"field `compare.ci`"):
        load_recipe(str(listed), ["compare.ci=z"])


def test_bundled_recipes_all_validate() -> None:
    import re

    from cmkd_cli.config import list_recipes

    recipes = list_recipes()
    assert "quickstart" in recipes
    names = {m for p in recipes.values() for m in re.findall(r"\$\{(\w+)\}", p.read_text())}
    for name in recipes:  # every path variable given a placeholder value
        load_recipe(name, variables={v: f"/{v}" for v in names})


def test_set_of_a_new_name_drops_the_old_blocks_fields(base: Path) -> None:
    r = load_recipe(str(base), ["method.name=baseline"])
    assert r.method.name == "baseline"  # kd's T is gone instead of failing as unknown
    r = load_recipe(str(base), ["name=renamed"])
    assert r.name == "renamed" and r.method.name == "kd"  # the root is never cleared


def test_grid_points_are_validated_up_front(tmp_path: Path, base: Path) -> None:
    from cmkd_cli.config import grid_points

    ok = write(
        tmp_path / "g.yaml",
        "extends: base.yaml\ncompare:\n"
        "  - {name: hot, set: {method.T: 9}, grid: {method.T: [1, 2], optim.lr: [0.1, 0.2]}}\n",
    )
    r = load_recipe(str(ok))
    points = grid_points(r.compare.variants[0])
    assert points[1] == {"method.T": 1, "optim.lr": 0.2} and len(points) == 4
    assert variant_recipe(r, "hot", point=points[3]).method.T == 2.0  # the grid wins over set
    bad = write(
        tmp_path / "bad.yaml",
        "extends: base.yaml\ncompare:\n  - {name: hot, grid: {method.TT: [1, 2]}}\n",
    )
    with pytest.raises(UsageError, match=r"compare\[hot\].grid \{'method.TT': 1\}: field"):
        load_recipe(str(bad))
    empty = write(
        tmp_path / "e.yaml", "extends: base.yaml\ncompare:\n  - {name: hot, grid: {method.T: []}}\n"
    )
    with pytest.raises(UsageError, match=r"compare\[hot\].grid.method.T: give at least one value"):
        load_recipe(str(empty))
