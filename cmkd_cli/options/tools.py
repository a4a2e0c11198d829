"""Options of the commands around the work: `doctor`, `recipes list`, `recipes show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from cmkd_cli.cligen import Cli
from cmkd_cli.options.common import OptionsModel, RecipeOptions


class DoctorOptions(OptionsModel):
    """Load every native piece the project uses and print versions, device, CUDA/cuDNN.

    Runs torch, soundfile, torchaudio's Kaldi fbank, a torchvision op, PyAV encode + decode,
    MTCNN's weights and the bundled MiniLM; names the reduced formats (train.amp) this CPU
    computes natively. Reads nothing else, writes nothing. Exits 1 naming each broken piece
    and its likely cause (e.g. a torchaudio built for another torch).
    """

    wav: Annotated[Path | None, Cli(metavar="FILE")] = Field(
        None, description="a real recording for the fbank check"
    )


class ListOptions(OptionsModel):
    """List the recipes of recipes/ (and $CMKD_RECIPES) by task: speaker, classification,
    segmentation, then zoo (one small recipe per method), one line each.

    `cmkd recipes list c2kd` lists those that mention c2kd; `cmkd recipes show NAME` prints
    one whole.
    """

    word: Annotated[str | None, Cli(positional=True, metavar="WORD")] = Field(
        None, description="only recipes with this word in their name, task or description"
    )
    bases: Annotated[bool, Cli("--all")] = Field(
        False, description="also the bases other recipes extend (_name)"
    )


class ShowOptions(RecipeOptions):
    """Print a recipe fully resolved (extends, --set and defaults applied) as YAML."""

    recipe: Annotated[str, Cli(positional=True, metavar="NAME")] = Field(
        description="recipe name or path"
    )
