"""Where runs live on disk, written once for every stage that makes or reads them.

One run: `OUTPUT_ROOT/NAME/` (`output.root`, `output.name` or the recipe's name). A study
(several seeds or `compare:` variants): `OUTPUT_ROOT/NAME/VARIANT/seed-S/` per run, with the
study's recipe in `OUTPUT_ROOT/NAME/study.yaml`; a `grid:` variant's tuning runs are
`OUTPUT_ROOT/NAME/VARIANT/grid-K/seed-S/`. Every run directory holds `metrics.jsonl`.
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
    """The run directories at `root`: itself when it is a run; the `seed-S` runs of one
    variant (`STUDY/VARIANT`) or of one grid point (`STUDY/VARIANT/grid-K`, the tuning runs
    of a `grid:` variant); else a study's `VARIANT/seed-S` runs, its table's rows (the
    tuning runs are in `results.json`'s `selection`, and at their own folders)."""
    if (root / METRICS_FILE).exists():
        return [root]
    own = sorted(p.parent for p in root.glob(f"seed-*/{METRICS_FILE}"))
    return own or sorted(p.parent for p in root.glob(f"*/seed-*/{METRICS_FILE}"))
