"""`cmkd recipes list|show`: the bundled recipes, and one fully resolved."""

from __future__ import annotations

from pydantic import BaseModel
from rich.table import Table

from cmkd_cli.config import dump_recipe, list_recipes, load_recipe, read_recipe_yaml
from cmkd_cli.stages.options import RecipeOptions


class ShowOptions(RecipeOptions):
    recipe: str


class RecipeInfo(BaseModel):
    name: str
    path: str
    description: str


class RecipeList(BaseModel):
    recipes: list[RecipeInfo]


class RecipeShow(BaseModel):
    name: str
    yaml: str
    recipe: dict


def list_all() -> RecipeList:
    out = []
    for name, path in list_recipes().items():
        desc = str(read_recipe_yaml(path).get("description", "")).strip().splitlines()
        out.append(RecipeInfo(name=name, path=str(path), description=desc[0] if desc else ""))
    return RecipeList(recipes=out)


def render_list(result: RecipeList) -> Table:
    t = Table(title="recipes")
    t.add_column("name")
    t.add_column("description")
    for r in result.recipes:
        t.add_row(r.name, r.description)
    return t


def show(options: ShowOptions) -> RecipeShow:
    r = load_recipe(options.recipe, options.sets, options.variables)
    return RecipeShow(name=r.name, yaml=dump_recipe(r), recipe=r.model_dump(mode="json"))
