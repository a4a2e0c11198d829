"""`cmkd doctor`: load every native piece the project uses and say which one is broken."""

from __future__ import annotations

import platform
import sys

from pydantic import BaseModel
from rich.table import Table

from cmkd_cli import __version__
from cmkd_cli.errors import RunError
from cmkd_cli.native import run_checks
from cmkd_cli.options.tools import DoctorOptions


class CheckResult(BaseModel):
    name: str
    ok: bool
    detail: str
    seconds: float


class DoctorResult(BaseModel):
    ok: bool
    cmkd: str
    python: str
    platform: str
    checks: list[CheckResult]


def run(options: DoctorOptions) -> DoctorResult:
    """Every check runs (one failure does not hide the next); the result lists them all."""
    wav = options.wav
    if wav is not None and not wav.is_file():
        raise RunError(f"--wav {wav}: no such file")
    checks = [
        CheckResult(name=c.name, ok=c.ok, detail=c.detail, seconds=round(c.seconds, 3))
        for c in run_checks(wav)
    ]
    return DoctorResult(
        ok=all(c.ok for c in checks),
        cmkd=__version__,
        python=sys.version.split()[0],
        platform=f"{platform.system()} {platform.machine()}",
        checks=checks,
    )


def failure(result: DoctorResult) -> str | None:
    """The one-line error for a failed doctor run (None when every check passed)."""
    bad = [c for c in result.checks if not c.ok]
    if not bad:
        return None
    first = next((c for c in bad if c.name != "versions"), bad[0])
    others = [c.name for c in bad if c is not first]
    also = f" (also failed: {', '.join(others)})" if others else ""
    return f"{first.name}: {first.detail}{also}"


def render(result: DoctorResult) -> Table:
    t = Table(title=f"cmkd {result.cmkd} on Python {result.python}, {result.platform}")
    for col in ("check", "", "detail", "s"):
        t.add_column(col)
    for c in result.checks:
        t.add_row(c.name, "ok" if c.ok else "FAIL", c.detail, f"{c.seconds:.2f}")
    return t
