"""Option groups several commands share, each one model: a recipe with its overrides, the
student checkpoint, the device, how a student embeds utterances, trial lists, scoring."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cmkd_cli.cligen import Cli
from cmkd_cli.errors import UsageError


class OptionsModel(BaseModel):
    """Base of the commands' options models: unknown fields refused, checked on assignment,
    and validators built on first use (a command builds only its own)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True)


def parse_vars(items: list[str] | None) -> dict[str, str]:
    """`--var NAME=VALUE` (repeated) -> {NAME: VALUE}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--var {item!r}: expected NAME=VALUE")
        k, _, v = item.partition("=")
        out[k.strip()] = v
    return out


class VariableOptions(OptionsModel):
    """Path variables: `${name}` in a recipe, given on the command line."""

    variables: Annotated[
        dict[str, str], Cli("--var", metavar="NAME=VALUE", parse=parse_vars, cli_type=list[str])
    ] = Field(
        default_factory=dict,
        description="path variable for ${NAME} in the recipe: --var data_root=/data "
        "(repeatable; for a trained run: where its data is now)",
    )


class RecipeChoice(OptionsModel):
    """A recipe by name or path, with `--set` overrides."""

    recipe: Annotated[str | None, Cli("--recipe", "-r", metavar="NAME")] = Field(
        None, description="recipe name (see `cmkd recipes list`) or path"
    )
    sets: Annotated[list[str], Cli("--set", "-s", metavar="KEY=VALUE")] = Field(
        default_factory=list, description="override a field: --set method.T=4 (repeatable)"
    )


class RecipeOptions(VariableOptions, RecipeChoice):
    """A recipe by name or path, with `--set` overrides and `--var` path variables (the
    bases in this order put --recipe, --set, --var in the help in that order)."""


class EmbedOptions(OptionsModel):
    """How a student embeds utterances: device, batch and the evenly spaced crops (None: the
    crop policy the student's checkpoint stores, paper A's 10 x 4 s in its recipes)."""

    device: str = Field("auto", description="auto|cpu|cuda")
    batch_size: int = Field(8, ge=1, description="utterances per forward pass")
    crops: int | None = Field(None, ge=1, description="evenly spaced crops per utterance")
    crop_seconds: float | None = Field(None, gt=0, description="length of each crop (s)")
