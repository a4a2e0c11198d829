"""`cmkd_cli.cligen`: a command generated from an options model reads each field the way
its annotation, default, description and `Cli` metadata say, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
import typer
from pydantic import Field

from cmkd_cli import cligen
from cmkd_cli.cligen import Cli
from cmkd_cli.errors import UsageError
from cmkd_cli.options.common import OptionsModel


def _seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",")]


class Toy(OptionsModel):
    """Do a toy thing: one `a b [label]` line each.

    Second paragraph."""

    run_dir: Annotated[Path, Cli(positional=True)] = Field(description="a folder")
    checkpoint: Annotated[Path | None, Cli("--checkpoint", "-c")] = Field(
        None, description="a checkpoint"
    )
    trials: list[str] = Field(default_factory=list, description="trial lists")
    overwrite: bool = Field(False, description="replace what is there")
    plots: bool = Field(True, description="draw")
    cmn: bool | None = Field(None, description="normalise (default: the front-end's)")
    frontend: Literal["kaldi", "voxceleb_trainer"] = Field("kaldi", description="front-end")
    classes: Literal[40, 13] = Field(40, description="label set")
    seeds: Annotated[list[int] | None, Cli(metavar="1,2,3", parse=_seeds)] = Field(
        None, description="seeds"
    )
    snr: Annotated[list[float], Cli(rest=True)] = Field([15.0, 10.0], description="levels")
    workers: int = Field(4, ge=1, description="processes")
    crop: float | None = Field(None, gt=0, description="seconds")
    internal: Annotated[int, Cli(exclude=True)] = 7


def _app(seen: list) -> typer.Typer:
    app = typer.Typer(cls=cligen.ReadableGroup, rich_markup_mode="rich")
    cligen.add(app, "toy", Toy, seen.append)
    cligen.add(app, "other", Toy, seen.append)  # a group, so `toy` is a sub-command
    return app


def _run(*argv: str) -> Toy:
    seen: list = []
    _app(seen)(args=["toy", *argv], prog_name="cmkd", standalone_mode=False)
    assert len(seen) == 1
    return seen[0]


def test_each_kind_of_field_reads_its_flag() -> None:
    o = _run(
        "runs/x",
        "-c",
        "best.pt",
        "--trials",
        "a",
        "--trials",
        "b",
        "--overwrite",
        "--no-plots",
        "--no-cmn",
        "--frontend",
        "voxceleb_trainer",
        "--classes",
        "13",
        "--seeds",
        "1,2",
        "--snr",
        "5",
        "0",
        "--workers",
        "2",
        "--crop",
        "1.5",
    )
    assert o == Toy(
        run_dir=Path("runs/x"),
        checkpoint=Path("best.pt"),
        trials=["a", "b"],
        overwrite=True,
        plots=False,
        cmn=False,
        frontend="voxceleb_trainer",
        classes=13,
        seeds=[1, 2],
        snr=[5.0, 0.0],
        workers=2,
        crop=1.5,
    )


def test_what_is_not_typed_is_the_models_default() -> None:
    o = _run("runs/x")
    assert o == Toy(run_dir=Path("runs/x"))
    assert o.model_fields_set == {"run_dir"}  # nothing else was passed to the model
    assert o.snr == [15.0, 10.0] and o.plots is True and o.cmn is None and o.internal == 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--frontend", "htk"], "--frontend 'htk': choose kaldi or voxceleb_trainer"),
        (["--classes", "21"], "--classes '21': choose 40 or 13"),
        (["--crop", "0"], "--crop 0.0: Input should be greater than 0"),
    ],
)
def test_a_refused_value_is_a_usage_error_naming_the_flag(argv, message) -> None:
    with pytest.raises(UsageError) as caught:
        _run("runs/x", *argv)
    assert str(caught.value) == message and caught.value.exit_code == 2


def test_the_params_say_what_the_help_shows() -> None:
    by_name = {p.name: p for p in cligen.params(Toy)}
    assert "internal" not in by_name
    assert by_name["run_dir"].positional and by_name["run_dir"].required
    assert by_name["checkpoint"].flags == ("--checkpoint", "-c")
    assert by_name["overwrite"].negative is None and by_name["plots"].negative == "--no-plots"
    assert by_name["cmn"].negative == "--no-cmn"
    assert by_name["frontend"].metavar == "[kaldi|voxceleb_trainer]"
    assert by_name["trials"].repeatable and by_name["trials"].metavar == "TEXT"
    assert by_name["workers"].metavar == "N" and by_name["workers"].minimum == 1
    assert by_name["snr"].shown_default() == "15.0, 10.0"
    assert by_name["plots"].shown_default() == "plots"
    assert by_name["overwrite"].shown_default() is None
    assert by_name["cmn"].shown_default() is None


def test_help_shows_readable_metavars_and_brackets_as_written(monkeypatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.setenv("COLUMNS", "120")
    res = CliRunner().invoke(_app([]), ["toy", "--help"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "one `a b [label]` line each" in out  # not eaten as rich markup
    assert "<bool>" not in out and "<path>" not in out and "<str>" not in out
    row = next(line for line in out.splitlines() if "--overwrite" in line)
    assert row.split("--overwrite")[1].split()[0] == "replace"  # a switch shows no metavar
    assert any("--checkpoint" in line and "PATH" in line for line in out.splitlines())
    assert "1,2,3" in out and "[kaldi|voxceleb_trainer]" in out
    assert "trial lists (repeatable)" in out
    assert "[default: 4]" in out and "[default: kaldi]" in out


def test_choices_complete_in_the_shell(monkeypatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.setenv("_CMKD_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "cmkd toy x --frontend vox")
    monkeypatch.setenv("COMP_CWORD", "4")
    res = CliRunner().invoke(_app([]), [], prog_name="cmkd")
    assert "voxceleb_trainer" in res.output and "kaldi" not in res.output


def test_a_lazy_group_lists_its_commands_without_importing_their_models() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cmkd_cli.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('cmkd_cli.options.')))\n"
        "print('torch' in sys.modules, 'pydantic.fields' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "report " in "\n".join(out) and "Print a run's epoch table" in "\n".join(out)
    assert out[-2:] == ["[]", "False False"]


def test_a_lazy_command_is_built_from_its_model_when_used() -> None:
    seen: list = []
    commands = cligen.LazyCommands()
    commands.add("toy", "tests.test_cligen:Toy", seen.append)
    commands.add("other", "tests.test_cligen:Toy", seen.append, hidden=True)
    app = typer.Typer(cls=commands.group)
    app.callback()(lambda: None)  # a group (Typer makes one of an app with a callback)
    app(args=["toy", "runs/x", "--workers", "3"], prog_name="cmkd", standalone_mode=False)
    assert seen == [Toy(run_dir=Path("runs/x"), workers=3)]
    assert list(commands.built) == ["toy"]  # `other` was never built
    listing = commands.specs["toy"].listing()
    assert listing.help.startswith("Do a toy thing: one `a b \\[label]` line each.")
