"""A run directory's identity is the recipe it runs (DESIGN.md: "a run is its recipe").

`identity(recipe)` is the resolved recipe without the fields that only say where output
goes or how it is labelled (`COSMETIC`); `recipe_hash` is the sha256 of its canonical
JSON, recorded in `final.json` and `last.pt`. Before a stage writes into a directory,
`inspect_run` compares the recipe with the one stored there (`config.yaml`, re-validated
so that defaults added later compare equal):

- nothing there: `new`;
- the same identity: `finished` (final.json present: skip it) or `unfinished` (resume);
- another identity: `RunConflict` (exit 2) naming the fields that differ and the ways out
  (`--set output.name=NEW`, or `--overwrite`, which clears the directory first).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import yaml

from cmkd_cli.config import validate_recipe
from cmkd_cli.engine.lock import LOCK_FILE
from cmkd_cli.errors import UsageError
from cmkd_cli.runs import METRICS_FILE, STUDY_FILE
from cmkd_cli.schema import Recipe

#: top-level fields and dotted fields that change neither the training nor its result
COSMETIC = ("name", "description", "output", "seeds", "compare", "train.log_every")
CONFIG = "config.yaml"
FINAL = "final.json"
#: files whose presence makes a directory a (started) run
RUN_FILES = (CONFIG, "last.pt", "best.pt", FINAL, METRICS_FILE)

Status = Literal["new", "finished", "unfinished"]


class RunConflict(UsageError):
    """The directory holds a run of another recipe (exit 2)."""


def identity(recipe: Recipe | dict[str, Any]) -> dict[str, Any]:
    """The recipe as JSON without its `COSMETIC` fields."""
    data = recipe if isinstance(recipe, dict) else recipe.model_dump(mode="json")
    data = json.loads(json.dumps(data))
    for field in COSMETIC:
        *parents, last = field.split(".")
        node = data
        for p in parents:
            node = node.get(p) or {}
        node.pop(last, None)
    return data


def recipe_hash(recipe: Recipe | dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `identity(recipe)`."""
    blob = json.dumps(identity(recipe), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted field, old value, new value) for every leaf that differs (`<unset>` when a
    side lacks it), in the order of the new recipe."""
    a, b = _flatten(old), _flatten(new)
    keys = list(b) + [k for k in a if k not in b]
    unset = "<unset>"
    return [
        (k, a.get(k, unset), b.get(k, unset)) for k in keys if a.get(k, unset) != b.get(k, unset)
    ]


def describe_differences(diffs: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    parts = [f"{k}: {json.dumps(o)} -> {json.dumps(n)}" for k, o, n in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"and {len(diffs) - limit} more")
    return ", ".join(parts)


def stored_recipe(run_dir: Path) -> dict[str, Any]:
    """The recipe in RUN/config.yaml, validated (defaults filled) and dumped to JSON."""
    path = run_dir / CONFIG
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot be read ({exc})") from None
    return validate_recipe(data, origin=str(path)).model_dump(mode="json")


def conflict(run_dir: Path, what: str) -> RunConflict:
    """The refusal for `run_dir`, which holds `what`, with the ways out."""
    return RunConflict(
        f"{run_dir} holds {what}; to keep it, name the new run (--set output.name=NEW), or "
        "replace it (--overwrite)"
    )


def inspect_run(run_dir: Path, recipe: Recipe) -> Status:
    """Whether `run_dir` is new, a finished or an unfinished run of `recipe`; a directory
    holding anything else raises `RunConflict`."""
    if (run_dir / STUDY_FILE).exists():
        raise conflict(run_dir, "a study (study.yaml), not a single run")
    if not (run_dir / CONFIG).exists():
        if any((run_dir / f).exists() for f in RUN_FILES):
            raise conflict(run_dir, "run files without a config.yaml (the recipe is unknown)")
        return "new"
    diffs = differing_fields(identity(stored_recipe(run_dir)), identity(recipe))
    if diffs:
        raise conflict(run_dir, f"a run of another recipe ({describe_differences(diffs)})")
    return "finished" if (run_dir / FINAL).exists() else "unfinished"


def inspect_study(root: Path) -> None:
    """A study's root must not be a single run's directory."""
    if (root / CONFIG).exists() and not (root / STUDY_FILE).exists():
        raise conflict(root, "a single run (config.yaml), not a study")


def clear(run_dir: Path) -> None:
    """`--overwrite`: empty a conflicting run directory (one that holds run files), keeping
    only its lock file (held by this process)."""
    if not run_dir.is_dir():
        return
    if not any((run_dir / f).exists() for f in (*RUN_FILES, STUDY_FILE)):
        raise UsageError(f"--overwrite: {run_dir} does not look like a run directory; not removed")
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
