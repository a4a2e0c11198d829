"""One unit for humans: rates are shown in percent, labelled; files and --json keep fractions.

A rate is a metric in [0, 1] such as accuracy, EER, mIoU, pixel accuracy, a per-class IoU
or the fraction of samples a filter keeps. Every table, log line and plot a person reads
shows it as `96.94%` (or an axis / column labelled `(%)`); `--json`, `results.json`,
`final.json` and `metrics.jsonl` keep the fraction (0.9694). Everything else (losses,
minDCF, KRC, CKA) is shown as the number it is.
"""

from __future__ import annotations

import math

#: metric names (the last `/` part of a logged key) that are fractions shown in percent
RATES = frozenset({"accuracy", "acc", "eer", "miou", "pixel_acc", "iou", "kept", "chance"})


def is_rate(key: str) -> bool:
    """`val/accuracy`, `eer`, `IoU wall`, `stats/kept` ... are rates."""
    last = key.rsplit("/", 1)[-1].lower()
    return last in RATES or last.split(" ", 1)[0] in RATES


def scale(key: str) -> float:
    """100 for a rate (its value times this is what a human reads), else 1."""
    return 100.0 if is_rate(key) else 1.0


def percent(value: float, digits: int = 2) -> str:
    """`0.9694` -> `96.94%`."""
    return f"{100 * value:.{digits}f}%"


def show(key: str, value: float | None, digits: int = 4) -> str:
    """A metric's value for humans: a rate in percent with two decimals, anything else with
    `digits` decimals; `-` for a missing or non-finite value."""
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return percent(value) if is_rate(key) else f"{value:.{digits}f}"


def label(key: str) -> str:
    """A column or axis name: `accuracy (%)` for a rate, the key itself otherwise."""
    return f"{key} (%)" if is_rate(key) else key


def show_all(values: dict[str, float]) -> str:
    """`accuracy 96.94%, loss 0.1234`: a metrics dict on one line."""
    return ", ".join(f"{k} {show(k, v)}" for k, v in values.items())
