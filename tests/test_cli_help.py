"""Every command's --help at 80 columns: paragraphs wrapped evenly, no option help cut."""

from __future__ import annotations

import typer

from cmkd_cli.cli import app
from cmkd_cli.cligen import reflow

WIDTH = 80


def _commands() -> list[list[str]]:
    """The argv of every command and sub-command, e.g. ["recipes", "list"]."""
    out = []

    def walk(cmd, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                if not getattr(sub, "hidden", False):
                    walk(sub, [*path, name])
        else:
            out.append(path)

    walk(typer.main.get_command(app), [])
    return out


def _description(text: str) -> list[list[str]]:
    """The paragraphs of the prose between the usage line and the first box."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Usage:" in line) + 1
    end = next(i for i, line in enumerate(lines) if line.lstrip().startswith("╭"))
    paragraphs, current = [], []
    for line in lines[start:end]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(current)
            current = []
    return [*paragraphs, *([current] if current else [])]


def test_help_paragraphs_wrap_evenly_and_nothing_is_cut(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    commands = _commands()
    assert ["eval"] in commands and ["recipes", "list"] in commands
    assert any(c[0] == "prepare" for c in commands)
    inner = WIDTH - 2  # rich pads the prose by one column on each side
    for argv in [[], *commands]:
        res = cli(*argv, "--help")
        assert res.code == 0, (argv, res.stderr)
        assert "…" not in res.stdout, f"cmkd {' '.join(argv)} --help cuts a word"
        for paragraph in _description(res.stdout):
            for line, nxt in zip(paragraph, paragraph[1:], strict=False):
                # greedy wrapping: the next line's first word did not fit on this one
                assert len(line) + 1 + len(nxt.split()[0]) > inner, (argv, line, nxt)


def test_reflow_joins_the_lines_of_each_paragraph() -> None:
    doc = """First line
        goes on.

        Second paragraph
        spans  two lines.
    """
    assert reflow(doc) == "First line goes on.\n\nSecond paragraph spans two lines."
