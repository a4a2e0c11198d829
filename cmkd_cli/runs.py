"""Where runs live on disk, written once for every stage that makes or reads them.

One run: `OUTPUT_ROOT/NAME/` (`output.root`, `output.name` or the recipe's name). A study
(several seeds or `compare:` variants): `OUTPUT_ROOT/NAME/VARIANT/seed-S/` per run, with the
study's recipe in `OUTPUT_ROOT/NAME/study.yaml`. Every run directory holds `metrics.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from cmkd_cli.schema import Recipe

STUDY_FILE = "study.yaml"
METRICS_FILE = "metrics.jsonl"


def run_root(recipe: Recipe) -> Path:
    """The directory of the recipe's run, or of its study."""
    return Path(recipe.output.root) / (recipe.output.name or recipe.name)


def study_run_dir(root: Path, variant: str, seed: int) -> Path:
    """One run of a study."""
    return root / variant / f"seed-{seed}"


def run_dirs(root: Path) -> list[Path]:
    """The run directories at `root`: itself when it is a run, else its studies' runs."""
    if (root / METRICS_FILE).exists():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/seed-*/{METRICS_FILE}"))
