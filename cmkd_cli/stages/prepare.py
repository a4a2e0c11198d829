"""`cmkd prepare NAME`: run a registered dataset reader and report what it wrote.

Readers live in `data_prep/` and register themselves with `data_prep.common.register_reader`
(name, pydantic options model, help). `READER_MODULES` lists the modules to import; each
reader becomes a sub-command whose options are generated from its options model, so a new
reader is one new module plus one line here.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from pydantic import ValidationError
from rich.table import Table

from cmkd_cli import console
from cmkd_cli.errors import UsageError

READER_MODULES: tuple[str, ...] = (
    "data_prep.voxceleb",
    "data_prep.cnceleb",
    "data_prep.musan",
    "data_prep.ave",
    "data_prep.crema_d",
    "data_prep.vggsound",
    "data_prep.crisismmd",
    "data_prep.cifar",
    "data_prep.tiny_imagenet",
    "data_prep.av_digits",
    "data_prep.nyu_depth_v2",
)


def readers():
    """The reader registry with every module of READER_MODULES imported."""
    for module in READER_MODULES:
        importlib.import_module(module)
    from data_prep.common import READERS

    return READERS


def run(name: str, **options: Any):
    """Validate `options` against reader `name`'s model and run it -> PrepareResult."""
    reader = readers().get(name, "prepare")
    try:
        opts = reader.options(**options)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
        raise UsageError(f"prepare {name}: {flag}: {err['msg']}") from None
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


def _command(name: str, model: type) -> Any:
    """A Typer command for reader `name` whose options mirror the fields of `model`."""
    import typer

    params = []
    for field_name, field in model.model_fields.items():
        flag = "--" + field_name.replace("_", "-")
        default = ... if field.is_required() else field.get_default(call_default_factory=True)
        option = typer.Option(default, flag, help=field.description or "")
        params.append(
            inspect.Parameter(
                field_name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option,
                annotation=field.annotation,
            )
        )

    def command(**kwargs: Any) -> None:
        result = run(name, **kwargs)
        console.emit(result, render(result))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = name.replace("-", "_")
    return command


def build_app():
    """The `cmkd prepare` Typer sub-app: one sub-command per registered reader."""
    import typer

    app = typer.Typer(
        help="Read a public dataset in its own layout; write OUT/manifest.jsonl (+ skipped.jsonl).",
        no_args_is_help=True,
    )
    for name, reader in readers().items():
        app.command(name, help=reader.summary)(_command(name, reader.options))
    return app
