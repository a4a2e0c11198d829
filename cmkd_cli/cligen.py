"""Typer commands generated from pydantic options models, so each option is declared once.

A command's options model is its interface: the model's docstring is the command's help, and
each field becomes one flag (or positional argument) whose type, default and help are the
field's annotation, default and `description`. What a type cannot say is declared as `Cli`
metadata in the field's annotation, never as hand code in `cli.py`:

    class ReportOptions(OptionsModel):   # cmkd_cli.options.common
        '''Print a run's table ...'''

        run_dir: Annotated[Path, Cli(positional=True, metavar="RUN_DIR")] = Field(
            description="a run or study directory"
        )
        plots: bool = Field(True, description="write PNG curves")   # --plots/--no-plots

The rules, from the field:

- flag `--field-name` (`Cli("--flag", "-f")` names it and adds short aliases);
- `bool`: a switch, `--x` when the default is False, `--x/--no-x` when it is True or None
  (`Cli(negatable=...)` decides otherwise);
- `list[...]`: repeatable (`--trials a --trials b`); `Cli(rest=True)` also takes the values
  that follow the flag (`--snr 15 10 5`);
- `Literal[...]`: the choices, shown in the help and completed by the shell;
- `Cli(parse=f)`: the CLI value (`str`; `Cli(cli_type=list[str])` for a repeatable option)
  goes through `f` first (`--seeds 1,2,3`, `--var NAME=VALUE`);
- `ge`/`le` constraints: the range shown in the help;
- `Cli(exclude=True)`: a field of the Python API only.

An option not given on the command line is not passed to the model, so the model's default
is the only default (the help shows it). A value the model refuses is a `UsageError` naming
the flag (exit 2). Help texts are shown as written: square brackets are not rich markup.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from cmkd_cli.errors import UsageError

try:  # typer >= 0.20 vendors click
    from typer._click.core import ParameterSource
except ImportError:  # pragma: no cover - older typer
    from click.core import ParameterSource

#: the parameter that hands the click context to a generated command (never a field name)
CONTEXT = "cli_context_"
#: suffix of the hidden argument that collects a `Cli(rest=True)` option's further values
REST = "__rest"


class Cli:
    """How a field appears on the command line (metadata in the field's `Annotated[...]`).

    `flags`: the option's names (default `--field-name`); `positional`: an argument instead;
    `metavar`: the value's name in the help (default from the type: PATH, N, NUMBER, TEXT);
    `parse`: turns the CLI value, of type `cli_type` (`list[str]` for a repeatable option),
    into the field's value; `negatable`: a `--no-x` twin for a
    switch; `rest`: also take the values after the flag; `hidden`: not in the help;
    `exclude`: not on the command line at all.
    """

    def __init__(
        self,
        *flags: str,
        positional: bool = False,
        metavar: str | None = None,
        parse: Callable[[Any], Any] | None = None,
        cli_type: Any = str,
        negatable: bool | None = None,
        rest: bool = False,
        hidden: bool = False,
        exclude: bool = False,
    ) -> None:
        self.flags = flags
        self.positional = positional
        self.metavar = metavar
        self.parse = parse
        self.cli_type = cli_type
        self.negatable = negatable
        self.rest = rest
        self.hidden = hidden
        self.exclude = exclude


REQUIRED = ...


@dataclass(frozen=True)
class Param:
    """One field as the command line shows it (what the generator and the docs read)."""

    name: str  # the field
    flags: tuple[str, ...]  # ("RUN_DIR",) for a positional argument
    negative: str | None  # the --no-x twin of a switch
    metavar: str | None  # None for a switch
    help: str  # the field's description
    default: Any  # the model's default, REQUIRED when the field has none
    cli_type: Any  # the type the command line reads (before `parse`)
    choices: tuple[str, ...] | None
    positional: bool
    repeatable: bool
    switch: bool
    rest: bool
    hidden: bool
    parse: Callable[[Any], Any] | None
    minimum: float | None
    maximum: float | None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def flag(self) -> str:
        return self.flags[0]

    def shown_default(self) -> str | None:
        """The default as the help and the docs print it (None: nothing worth printing)."""
        value = self.default
        if value is REQUIRED or value is None or value in ((), [], {}) or self.parse:
            return None
        if self.switch:
            return None if value is False or not self.negative else self.flag.removeprefix("--")
        if isinstance(value, list | tuple):
            return ", ".join(str(v) for v in value)
        return str(value)


def _without_none(annotation: Any) -> Any:
    """`X | None` -> X (other annotations as they are)."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _metadata(field) -> Cli:
    return next((m for m in field.metadata if isinstance(m, Cli)), Cli())


def _bound(field, *names: str) -> float | None:
    for item in field.metadata:
        for name in names:
            value = getattr(item, name, None)
            if value is not None:
                return value
    return None


def _default_metavar(annotation: Any) -> str:
    if annotation is Path:
        return "PATH"
    if annotation is int:
        return "N"
    if annotation is float:
        return "NUMBER"
    return "TEXT"


def params(model: type[BaseModel]) -> list[Param]:
    """The command-line view of every field of `model` that is on the command line."""
    out = []
    for name, field in model.model_fields.items():
        meta = _metadata(field)
        if meta.exclude:
            continue
        inner = _without_none(field.annotation)
        container = get_origin(inner) in (list, dict)
        item = _without_none(get_args(inner)[0]) if get_origin(inner) is list else inner
        choices = tuple(get_args(item)) if get_origin(item) is Literal else None
        switch = inner is bool and not meta.parse
        if meta.parse:
            cli_type: Any = meta.cli_type
        elif choices:
            cli_type = list[str] if container else str
        else:
            cli_type = inner
        default = REQUIRED if field.is_required() else field.get_default(call_default_factory=True)
        flags = meta.flags or (name.upper() if meta.positional else "--" + name.replace("_", "-"),)
        negatable = meta.negatable if meta.negatable is not None else default is not False
        if choices:
            metavar = meta.metavar or "[" + "|".join(str(c) for c in choices) + "]"
        elif switch:
            metavar = None
        else:
            metavar = meta.metavar or (flags[0] if meta.positional else _default_metavar(item))
        out.append(
            Param(
                name=name,
                flags=flags,
                negative=("--no-" + flags[0].removeprefix("--")) if switch and negatable else None,
                metavar=metavar,
                help=field.description or "",
                default=default,
                cli_type=cli_type,
                choices=choices,
                positional=meta.positional,
                repeatable=get_origin(cli_type) is list and not meta.positional,
                switch=switch,
                rest=meta.rest,
                hidden=meta.hidden,
                parse=meta.parse,
                minimum=_bound(field, "ge"),
                maximum=_bound(field, "le"),
            )
        )
    return out


def reflow(text: str) -> str:
    """A docstring as help text: each paragraph (blank-line separated) on one line, so the
    terminal wraps it evenly instead of at the docstring's own line ends."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _help(param: Param) -> str:
    text = param.help
    if param.repeatable and "repeatable" not in text:
        text = f"{text} (repeatable)" if text else "repeatable"
    return escape(text)


def _complete(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    return complete


def _typer_default(param: Param) -> Any:
    """What Typer is told the default is: shown in the help, never passed to the model."""
    if param.required:
        return ...
    value = param.default
    if param.parse or value in ((), [], {}) or param.choices and param.repeatable:
        return None
    return value


def _signature_parameter(param: Param) -> inspect.Parameter:
    common: dict[str, Any] = {
        "help": _help(param),
        "hidden": param.hidden,
        "metavar": param.metavar,
        "show_default": param.shown_default() is not None,
    }
    if param.choices:
        common["autocompletion"] = _complete(tuple(str(c) for c in param.choices))
    if param.minimum is not None:
        common["min"] = param.minimum
    if param.maximum is not None:
        common["max"] = param.maximum
    default = _typer_default(param)
    if param.positional:
        info = typer.Argument(default, **common)
    else:
        decls = list(param.flags)
        if param.negative:
            decls[0] = f"{decls[0]}/{param.negative}"
        info = typer.Option(default, *decls, **common)
    annotation = param.cli_type if param.required else param.cli_type | None
    return inspect.Parameter(
        param.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation
    )


def _rest_parameter(param: Param) -> inspect.Parameter:
    info = typer.Argument(None, hidden=True)
    return inspect.Parameter(
        param.name + REST,
        inspect.Parameter.KEYWORD_ONLY,
        default=info,
        annotation=param.cli_type | None,
    )


def _refusal(model: type[BaseModel], exc: ValidationError, given: dict[str, Any]) -> str:
    """One line naming the flag (and the value) the model refused."""
    err = exc.errors()[0]
    by_name = {p.name: p for p in params(model)}
    message = str(err["msg"]).removeprefix("Value error, ")
    field = str(err["loc"][0]) if err["loc"] else None
    if field not in by_name:
        return message
    param = by_name[field]
    value = given.get(field)
    shown = "" if value is None or param.switch else f" {value!r}"
    return f"{param.flag}{shown}: {message}"


def _choose(param: Param, value: Any) -> Any:
    """The choice typed (a Literal's own value: `--classes 13` is the int 13); one that is
    not among the choices is `--flag 'x': choose a, b or c`."""
    assert param.choices is not None
    by_text = {str(c): c for c in param.choices}
    chosen = []
    for each in value if isinstance(value, list) else [value]:
        if str(each) not in by_text:
            names = list(by_text)
            listed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
            raise UsageError(f"{param.flag} {each!r}: choose {listed}")
        chosen.append(by_text[str(each)])
    return chosen if isinstance(value, list) else chosen[0]


def options_from_cli(model: type[BaseModel], given: dict[str, Any]) -> Any:
    """The options model from the values typed on the command line (`given`: field -> CLI
    value, only those typed): each parsed and checked, then the model validated."""
    values = {}
    for param in params(model):
        if param.name not in given and param.name + REST not in given:
            continue
        value = given.get(param.name)
        if param.rest:
            value = [*(value or []), *(given.get(param.name + REST) or [])]
        if param.parse:
            value = param.parse(value)
        elif param.choices and value is not None:
            value = _choose(param, value)
        values[param.name] = value
    try:
        return model(**values)
    except ValidationError as exc:
        raise UsageError(_refusal(model, exc, values)) from None


def command(model: type[BaseModel], action: Callable[[Any], None]) -> Callable[..., None]:
    """A function Typer turns into a command with one parameter per field of `model`; when
    run it builds the options model from what was typed and calls `action(options)`."""
    fields = params(model)
    signature = [
        inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    ]
    for param in fields:
        signature.append(_signature_parameter(param))
        if param.rest:
            signature.append(_rest_parameter(param))

    def run(**cli_values: Any) -> None:
        ctx = cli_values.pop(CONTEXT)
        given = {
            name: value
            for name, value in cli_values.items()
            if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
        }
        action(options_from_cli(model, given))

    run.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    run.__name__ = model.__name__
    run.options_model = model  # type: ignore[attr-defined] - read by the docs' reference
    return run


def help_of(model: type[BaseModel]) -> str:
    """A command's help: its options model's docstring, reflowed, shown as written."""
    return escape(reflow(model.__doc__ or ""))


def add(
    app: typer.Typer,
    name: str,
    model: type[BaseModel],
    action: Callable[[Any], None],
    *,
    help: str | None = None,
    hidden: bool = False,
) -> None:
    """Register `cmkd ... NAME`, generated from `model`, on `app`; its help is `help` (or
    the model's docstring), shown as written."""
    text = escape(reflow(help)) if help else help_of(model)
    app.command(name, help=text, hidden=hidden, cls=ReadableCommand)(command(model, action))


# ---------------------------------------------------------------- help a person reads


class ReadableOption(TyperOption):
    """An option whose help shows its metavar (`--out PATH`), and nothing for a switch."""

    def display_type(self, ctx: typer.Context) -> str | None:  # noqa: ARG002 - Typer's API
        return None if self.is_flag else self.metavar

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return self.display_type(ctx)


class ReadableArgument(TyperArgument):
    """A positional argument shown by its name alone (`RUN_DIR`)."""

    def display_type(self, ctx: typer.Context) -> str | None:  # noqa: ARG002 - Typer's API
        return None

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return self.display_type(ctx)


def readable(parameters: Sequence[Any]) -> None:
    """Show each Typer parameter (its help option included) the readable way."""
    for param in parameters:
        if type(param) is TyperOption:
            param.__class__ = ReadableOption
        elif type(param) is TyperArgument:
            param.__class__ = ReadableArgument


class ReadableCommand(TyperCommand):
    """A Typer command whose help shows readable metavars (see `ReadableOption`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        readable(self.params)

    def get_help_option(self, ctx: typer.Context) -> Any:
        option = super().get_help_option(ctx)
        readable([option] if option is not None else [])
        return option


class ReadableGroup(TyperGroup):
    """A Typer group whose own options read as `ReadableCommand`'s do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        readable(self.params)

    def get_help_option(self, ctx: typer.Context) -> Any:
        option = super().get_help_option(ctx)
        readable([option] if option is not None else [])
        return option


# ---------------------------------------------------------------- commands made on first use


def _docstring(module: str, name: str) -> str:
    """The docstring of class `name` in `module`, read from its source without importing
    it (the listing of `cmkd --help` imports no options module)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {module}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return ast.get_docstring(node) or ""
    raise ImportError(f"no class {name} in {module}")


@dataclass(frozen=True)
class LazySpec:
    """A command to generate when first used: `model` is `"package.module:ClassName"`."""

    name: str
    model: str
    action: Callable[[Any], None]
    hidden: bool = False

    def load_model(self) -> type[BaseModel]:
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)

    def build(self) -> Any:
        """The real command (its options model imported)."""
        app = typer.Typer(rich_markup_mode="rich")
        add(app, self.name, self.load_model(), self.action, hidden=self.hidden)
        return typer.main.get_command(app)

    def listing(self) -> Any:
        """A stand-in with the command's name and help only, for the listing of its group."""
        module, _, name = self.model.partition(":")
        text = escape(reflow(_docstring(module, name)))
        return TyperCommand(self.name, help=text, hidden=self.hidden)


class LazyCommands:
    """The commands of one group, each generated from its options model when first used:
    `cmkd --help` lists them without importing any options module, `cmkd NAME ...`
    imports only NAME's. Use `typer.Typer(cls=commands.group)`."""

    def __init__(self) -> None:
        self.specs: dict[str, LazySpec] = {}
        self.built: dict[str, Any] = {}
        self.group = type("LazyGroup", (LazyGroup,), {"lazy": self})

    def add(
        self, name: str, model: str, action: Callable[[Any], None], *, hidden: bool = False
    ) -> None:
        self.specs[name] = LazySpec(name, model, action, hidden)

    def get(self, name: str) -> Any:
        if name not in self.built:
            self.built[name] = self.specs[name].build()
        return self.built[name]


class _Merged(dict):
    """A group's commands: those given (sub-groups) after the lazy ones, built on lookup."""

    def __init__(self, lazy: LazyCommands, given: dict[str, Any]) -> None:
        super().__init__({**dict.fromkeys(lazy.specs), **given})
        self.lazy = lazy

    def __getitem__(self, name: str) -> Any:
        value = super().__getitem__(name)
        return self.lazy.get(name) if value is None and name in self.lazy.specs else value

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def items(self) -> Any:
        return [(name, self[name]) for name in self]

    def values(self) -> Any:
        return [self[name] for name in self]


class LazyGroup(ReadableGroup):
    """A group whose `LazyCommands` are built on first use; its help lists them from their
    options models' docstrings, read without importing the models."""

    lazy: LazyCommands
    _listing = False

    @property
    def commands(self) -> dict[str, Any]:
        return _Merged(self.lazy, self._given)

    @commands.setter
    def commands(self, value: Any) -> None:
        self._given = dict(value)

    def list_commands(self, ctx: typer.Context) -> list[str]:  # noqa: ARG002 - click's API
        return list(self.commands)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        if self._listing and cmd_name in self.lazy.specs:
            return self.lazy.specs[cmd_name].listing()
        return self.commands.get(cmd_name)

    def _listing_only(self, method: Callable[..., Any], *args: Any) -> Any:
        self._listing = True
        try:
            return method(*args)
        finally:
            self._listing = False

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        return self._listing_only(super().format_help, ctx, formatter)

    def shell_complete(self, ctx: typer.Context, incomplete: str) -> Any:
        return self._listing_only(super().shell_complete, ctx, incomplete)


__all__ = [
    "Cli",
    "LazyCommands",
    "LazyGroup",
    "Param",
    "ReadableCommand",
    "ReadableGroup",
    "add",
    "command",
    "help_of",
    "options_from_cli",
    "params",
    "reflow",
]
