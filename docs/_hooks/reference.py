"""MkDocs hook: pages that carry `<!-- cmkd:cli-reference -->` get the command-line
reference rendered from the installed Typer app, so the manual cannot drift from the code."""

from __future__ import annotations

import typer

MARKER = "<!-- cmkd:cli-reference -->"


def _is_group(command) -> bool:
    return hasattr(command, "list_commands")


def _walk(command, path: list[str]):
    """(path, command) of `command` and of every visible sub-command, depth first."""
    yield path, command
    if _is_group(command):
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name])


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _option_rows(command) -> list[str]:
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            flags = f"`{param.name.upper()}`"
        else:
            flags = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        default = param.default
        shown = "" if default in (None, (), []) or callable(default) else f"`{default}`"
        if getattr(param, "required", False):
            shown = "required"
        rows.append(f"| {flags} | {_cell(getattr(param, 'help', '') or '')} | {shown} |")
    return rows


def cli_reference() -> str:
    """Markdown for every visible command of `cmkd`: its help and its options."""
    from cmkd_cli.cli import app

    root = typer.main.get_command(app)
    out = []
    for path, command in _walk(root, ["cmkd"]):
        if _is_group(command) and len(path) > 1 and not command.params:
            out.append(f"## {' '.join(path)}\n\n{command.help or ''}\n")
            continue
        level = "##" if len(path) <= 2 else "###"
        out.append(f"{level} {' '.join(path)}\n")
        out.append((command.help or "").strip() + "\n")
        rows = _option_rows(command)
        if rows:
            out.append("| option | meaning | default |\n| --- | --- | --- |")
            out.extend(rows)
            out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs API
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
