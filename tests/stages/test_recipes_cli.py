"""`cmkd recipes list`: grouped by task, one line per recipe, a filter word, bases on --all."""

from __future__ import annotations

from cmkd_cli.stages import recipes

GROUP_ORDER = ["speaker", "classification", "segmentation", "zoo"]


def test_list_is_grouped_by_task_one_line_per_recipe(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    listed = cli("--json", "recipes", "list").json()["recipes"]
    groups = list(dict.fromkeys(r["group"] for r in listed))
    assert groups == GROUP_ORDER
    by_name = {r["name"]: r for r in listed}
    assert by_name["vox2-kd"]["group"] == "speaker"  # its task comes from the recipe it extends
    assert by_name["c2kd-nyu-depth2rgb"]["group"] == "segmentation"
    assert by_name["zoo/kd"]["group"] == "zoo" and by_name["zoo/kd"]["task"] == "classification"
    assert not any(recipes.is_base(n) for n in by_name)  # `_vox2-face-teacher` is a base

    res = cli("recipes", "list")
    assert res.code == 0
    lines = res.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    headers = [line.split(" (")[0] for line in lines if line and not line.startswith(" ")]
    headers = [h for h in headers if h in GROUP_ORDER]
    assert headers == GROUP_ORDER
    # one line per recipe plus a header (and a blank line between groups) per group
    assert len(lines) == len(listed) + 2 * len(GROUP_ORDER) - 1
    quick = next(line for line in lines if line.startswith("quickstart "))
    assert "Text -> image" in quick and quick.endswith("…")


def test_a_filter_word_keeps_the_matching_recipes(cli) -> None:
    res = cli("--json", "recipes", "list", "c2kd")
    names = [r["name"] for r in res.json()["recipes"]]
    assert "c2kd-ave" in names and "zoo/c2kd" in names and "c2kd-nyu-rgb2depth" in names
    assert "quickstart" not in names and "vox2-kd" not in names
    assert all(
        "c2kd" in (r["name"] + r["group"] + r["description"]).lower() for r in res.json()["recipes"]
    )
    speaker = cli("--json", "recipes", "list", "SPEAKER").json()["recipes"]
    assert speaker and {r["group"] for r in speaker} == {"speaker"}
    none = cli("recipes", "list", "no-such-word")
    assert none.code == 0 and "no recipe matches 'no-such-word'" in none.stdout
    bases = cli("--json", "recipes", "list", "--all").json()["recipes"]
    assert "_vox2-face-teacher" in {r["name"] for r in bases}


def test_an_unknown_variant_lists_the_rows(cli) -> None:
    res = cli("distill", "--recipe", "quickstart", "--variant", "a2v")
    assert res.code == 2
    line = res.stderr.strip()
    assert "--variant 'a2v'" in line and "baseline, kd, soft-feature, soft-classifier" in line
