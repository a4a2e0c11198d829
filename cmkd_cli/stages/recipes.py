"""`cmkd recipes list|show`: the bundled recipes, grouped by task, and one fully resolved."""

from __future__ import annotations

from pydantic import BaseModel
from rich.console import Group
from rich.table import Table
from rich.text import Text

from cmkd_cli.config import dump_recipe, list_recipes, load_raw, load_recipe
from cmkd_cli.options.tools import ListOptions, ShowOptions

#: the order of the groups in `recipes list`; a task not named here comes after them
GROUPS = ("speaker", "classification", "segmentation", "zoo")


class RecipeInfo(BaseModel):
    name: str
    path: str
    group: str  # the recipe's task, or `zoo` for the per-method recipes of recipes/zoo/
    task: str
    description: str  # the first line of the recipe's (or the recipe it extends) description


class RecipeList(BaseModel):
    word: str | None = None
    recipes: list[RecipeInfo]


class RecipeShow(BaseModel):
    name: str
    yaml: str
    recipe: dict


def group_of(name: str, task: str) -> str:
    return "zoo" if name.startswith("zoo/") else task


def is_base(name: str) -> bool:
    """`_name`: a recipe that others extend (a teacher, a common setting), not run alone."""
    return name.rsplit("/", 1)[-1].startswith("_")


def matches(info: RecipeInfo, word: str) -> bool:
    """Case-insensitive: `word` in the recipe's name, group or description."""
    word = word.lower()
    return any(word in text.lower() for text in (info.name, info.group, info.description))


def list_all(options: ListOptions) -> RecipeList:
    """Every recipe (with its `extends:` resolved for task and description), in group order
    then by name; only those matching `options.word`; bases (`_name`) only with `bases`."""
    word, bases = options.word, options.bases
    out = []
    for name, path in list_recipes().items():
        if is_base(name) and not bases:
            continue
        raw = load_raw(path)
        task = str(raw.get("task", "classification"))
        desc = " ".join(str(raw.get("description", "")).split())
        info = RecipeInfo(
            name=name, path=str(path), group=group_of(name, task), task=task, description=desc
        )
        if word is None or matches(info, word):
            out.append(info)
    rank = {g: i for i, g in enumerate(GROUPS)}
    out.sort(key=lambda r: (rank.get(r.group, len(GROUPS)), r.group, r.name))
    return RecipeList(word=word, recipes=out)


def render_list(result: RecipeList) -> Group | Text:
    """One table per group, one line per recipe: the description cut to the terminal width
    (`cmkd recipes show NAME` prints it whole)."""
    if not result.recipes:
        return Text(f"no recipe matches {result.word!r} (in its name, task or description)")
    groups: dict[str, list[RecipeInfo]] = {}
    for r in result.recipes:
        groups.setdefault(r.group, []).append(r)
    width = max(len(r.name) for r in result.recipes)
    parts: list[Table | Text] = []
    for group, infos in groups.items():
        if parts:
            parts.append(Text(""))
        t = Table(
            title=f"{group} ({len(infos)})",
            title_justify="left",
            title_style="bold",
            box=None,
            show_header=False,
            pad_edge=False,
            expand=True,
        )
        t.add_column("name", no_wrap=True, min_width=width)
        t.add_column("description", no_wrap=True, overflow="ellipsis", ratio=1)
        for r in infos:
            t.add_row(r.name, r.description)
        parts.append(t)
    return Group(*parts)


def show(options: ShowOptions) -> RecipeShow:
    r = load_recipe(options.recipe, options.sets, options.variables)
    return RecipeShow(name=r.name, yaml=dump_recipe(r), recipe=r.model_dump(mode="json"))


def render_show(result: RecipeShow) -> str:
    return result.yaml
