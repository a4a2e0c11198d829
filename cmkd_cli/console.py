"""Where output goes: results on stdout (JSON with --json), humans' tables and logs on stderr.

The output settings (`--json`, `--quiet`, `--debug`) belong to the process that prints, not
to the work: the CLI sets them once with `configure()`, and only this module and
`progress.py` read them (`settings()`, `shows_progress()`); a Python caller gets the
defaults (tables and progress on stderr).

`--quiet` drops progress and log lines, never the result. Under `torchrun` only rank 0
prints (results, logs, warnings and progress), so stdout holds one result; an error is
printed by every process that meets it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class OutputSettings:
    json: bool = False  # the result as JSON on stdout, nothing else printed
    debug: bool = False  # tracebacks on errors
    quiet: bool = False  # no progress or log lines


_settings = OutputSettings()


def configure(json: bool = False, debug: bool = False, quiet: bool = False) -> None:
    """Set this process's output settings (the CLI's global flags)."""
    global _settings
    _settings = OutputSettings(json=json, debug=debug, quiet=quiet)


def settings() -> OutputSettings:
    return _settings


def shows_progress() -> bool:
    """Whether progress bars and log lines go to stderr (not with --quiet or --json, nor on
    ranks > 0)."""
    return not (_settings.quiet or _settings.json) and is_rank_zero()


stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


def is_rank_zero() -> bool:
    """Whether this process prints: rank 0 of a `torchrun` launch (its RANK variable, set
    before any process group exists), or a process started alone."""
    return os.environ.get("RANK", "0") in ("", "0")


def info(message: str) -> None:
    """A progress/log line for humans (stderr; silenced by --quiet and on ranks > 0)."""
    if not _settings.quiet and is_rank_zero():
        stderr.print(message, markup=False)


def warn(message: str) -> None:
    if is_rank_zero():
        stderr.print(f"warning: {message}", markup=False)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


def emit(result: BaseModel | dict[str, Any], human: Table | str | None = None) -> None:
    """Print a stage's result: its JSON alone on stdout with --json, else the human view
    (also with --quiet); nothing on ranks > 0."""
    if not is_rank_zero():
        return
    if _settings.json:
        if isinstance(result, BaseModel):
            sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        else:
            sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        sys.stdout.flush()
        return
    if human is not None:
        stdout.print(human)
    elif isinstance(result, BaseModel):
        stdout.print_json(result.model_dump_json())
    else:
        stdout.print_json(json.dumps(result, default=str))
