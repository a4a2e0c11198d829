"""Options of the commands that read finished (or running) runs: `report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from cmkd_cli.cligen import Cli
from cmkd_cli.options.common import OptionsModel


class ReportOptions(OptionsModel):
    """Print a run's epoch table, or a study's comparison table (at any time: over the
    runs finished so far), and draw the training curves.

    Reads RUN_DIR/metrics.jsonl and final.json of each run (and study.yaml for a study).
    Writes RUN/plots/curves.png per run (titled with the run's name; x in epochs, the best
    epoch dashed) and, for a study, RUN_DIR/plots/study.png; prints every path written.
    """

    run_dir: Annotated[Path, Cli(positional=True)] = Field(description="a run or study directory")
    plots: bool = Field(True, description="write PNG curves")
