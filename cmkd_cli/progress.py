"""Progress for long work: a rich bar with ETA on a TTY, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cmkd_cli import console

T = TypeVar("T")


def track(
    items: Iterable[T],
    total: int | None = None,
    description: str = "working",
    every: int = 0,
    status: Callable[[], str] | None = None,
    plain_every_s: float | None = None,
    transient: bool = False,
    size: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """Iterate `items` while showing progress on stderr (silent with --quiet/--json and on
    ranks > 0).

    `status()` adds a short text to the bar and lines (e.g. the current loss). Off a TTY a
    line is printed every `every` items (default a tenth of `total`), or, with
    `plain_every_s`, at most once per that many seconds (short loops then print nothing);
    a `transient` bar is removed when done. `size(item)`: how many units an item counts for
    (e.g. the utterances of a batch; `total` is then in those units too).
    """
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not console.shows_progress():
        yield from items
        return
    if sys.stderr.isatty():
        yield from _rich_bar(items, total, description, status, transient, size)
        return
    every = every or max(1, (total or 100) // 10)
    start = last = time.perf_counter()
    n = mark = 0
    for item in items:
        yield item
        n += size(item) if size else 1
        now = time.perf_counter()
        due = now - last >= plain_every_s if plain_every_s else n - mark >= every or n == total
        if due:
            mark = n
            last = now
            rate = n / max(now - start, 1e-9)
            of = f"/{total}" if total else ""
            extra = f" {status()}" if status else ""
            console.stderr.print(f"{description}: {n}{of} ({rate:.1f}/s){extra}", markup=False)


def _rich_bar(
    items: Iterable[T],
    total: int | None,
    description: str,
    status: Callable[[], str] | None,
    transient: bool,
    size: Callable[[T], int] | None = None,
) -> Iterator[T]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console.stderr, transient=transient) as bar:
        task = bar.add_task(description, total=total, status="")
        for item in items:
            yield item
            advance = size(item) if size else 1
            bar.update(task, advance=advance, status=status() if status else "")
