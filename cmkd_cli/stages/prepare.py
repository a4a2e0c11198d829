"""`cmkd prepare NAME`: run a registered dataset reader and report what it wrote.

Readers are the modules of `data_prep/`; each registers itself with
`data_prep.common.register_reader` (name, pydantic options model, help) and becomes a
sub-command whose options are generated from its options model, so a new reader is one new
module. The sub-commands are built the first time `cmkd prepare ...` is parsed: `cmkd --help`
imports no reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table

from cmkd_cli import cligen, console
from cmkd_cli.cligen import ReadableGroup
from cmkd_cli.engine.lock import run_lock
from cmkd_cli.errors import UsageError
from cmkd_cli.io import remove_stale_temporaries

HELP = "Read a public dataset in its own layout; write OUT/manifest.jsonl (+ skipped.jsonl)."


def readers():
    """The reader registry, every module of `data_prep/` imported."""
    from data_prep.common import READERS  # data_prep.common loads numpy: not at `cmkd --help`

    return READERS.discover()


def run(name: str, **options: Any):
    """Validate `options` against reader `name`'s model and run it -> PrepareResult."""
    reader = readers().get(name, "prepare")
    try:
        opts = reader.options(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
        raise UsageError(f"prepare {name}: {flag}: {err['msg']}") from None
    return run_reader(name, opts)


def run_reader(name: str, opts: Any):
    """Run reader `name` with its validated options `opts` -> PrepareResult."""
    reader = readers().get(name, "prepare")
    with run_lock(Path(opts.out)):  # one writer per output folder
        remove_stale_temporaries(opts.out)
        result = reader.prepare(opts)
    short = [c for c in result.completeness if c.found < c.expected]
    if short:
        console.warn(
            f"this copy of {name} is partial: "
            + "; ".join(f"{c.split} {c.what} {c.found:,} of {c.expected:,}" for c in short)
        )
    return result


def completeness_rows(result) -> list[list[Any]]:
    """`found / expected` per published size, with its share and source."""
    rows = []
    for c in result.completeness:
        share = f"{100 * c.found / c.expected:.1f}%" if c.expected else "-"
        rows.append([f"{c.split} {c.what}", f"{c.found:,} / {c.expected:,} ({share}; {c.source})"])
    return rows


def render(result) -> Table:
    rows: list[list[Any]] = [
        ["manifest", result.manifest],
        ["records", result.records],
        ["speakers", result.speakers],
        ["hours", f"{result.hours:.3f}"],
        ["splits", ", ".join(f"{k}={v}" for k, v in result.splits.items())],
        ["decoded / reused", f"{result.decoded} / {result.reused}"],
        ["skipped", f"{result.skipped} (see {result.skipped_file})"],
    ]
    rows += [[f"  {reason}", n] for reason, n in result.skip_reasons.items()]
    rows += [[f"note: {note}", n] for note, n in result.notes.items()]
    rows += [[key, value] for key, value in result.extra.items()]
    if result.completeness:
        rows.append(["found / expected", ""])
        rows += [[f"  {k}", v] for k, v in completeness_rows(result)]
    rows.append(["seconds", result.seconds])
    return console.table(f"prepare {result.dataset}", ["", "value"], rows)


def _action(name: str):
    def action(opts: Any) -> None:
        result = run_reader(name, opts)
        console.emit(result, render(result))

    return action


def build_app() -> typer.Typer:
    """A Typer app with one sub-command per registered reader, generated from its options
    model (`cmkd_cli.cligen`)."""
    app = typer.Typer(help=HELP, no_args_is_help=True, cls=ReadableGroup)
    for name, reader in readers().items():
        cligen.add(app, name, reader.options, _action(name), help=reader.summary)
    return app


class ReaderGroup(ReadableGroup):
    """The `prepare` command group: its reader sub-commands are made on first access."""

    @property
    def commands(self) -> dict[str, Any]:
        if self._readers is None:
            self._readers = dict(typer.main.get_group(build_app()).commands)
        return {**self._readers, **self._given}

    @commands.setter
    def commands(self, value: dict[str, Any]) -> None:
        self._readers: dict[str, Any] | None = None
        self._given = dict(value)


def lazy_app() -> typer.Typer:
    """The `cmkd prepare` sub-app; nothing of data_prep is imported until it is used."""
    return typer.Typer(help=HELP, no_args_is_help=True, cls=ReaderGroup)
