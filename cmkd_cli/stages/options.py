"""Options shared by several stages; each stage's own options model extends one of these.

`cli.py` builds one options model per command and passes it to `stage.run(options)`, so a
new CLI option is one field here (or in the stage's model) plus one parameter in `cli.py`.
"""

from __future__ import annotations

from pydantic import Field

from cmkd_cli.schema import StrictModel


class RecipeOptions(StrictModel):
    """A recipe by name or path, with `--set` overrides and `--var` path variables."""

    recipe: str | None = Field(None, description="recipe name or path")
    sets: list[str] = Field(default_factory=list, description="--set a.b=c overrides")
    variables: dict[str, str] = Field(default_factory=dict, description="${name} variables")


class EmbedOptions(StrictModel):
    """How a student embeds utterances: device, batch and the evenly spaced crops (None: the
    crop policy the student's checkpoint stores, paper A's 10 x 4 s in its recipes)."""

    device: str = Field("auto", description="auto|cpu|cuda")
    batch_size: int = Field(8, ge=1, description="utterances per forward pass")
    crops: int | None = Field(None, ge=1, description="evenly spaced crops per utterance")
    crop_seconds: float | None = Field(None, gt=0, description="length of each crop (s)")
