"""Statistics over seeds: mean ± std of a row, and a row's delta against its baseline row,
paired by seed, with a 95% confidence interval.

A study runs every row with the same seeds; seed s of two rows shares the data order, the
initialisation of the shared parts and the augmentation draws, so the difference
d_s = x_s − b_s removes the seed's own luck and the interval is that of mean(d).

- `t`: mean(d) ± t_{0.975, n−1} · sd(d) / √n (Student's t; exact when d is normal).
- `bootstrap`: the 2.5 and 97.5 percentiles of the means of 10,000 resamples of d with
  replacement (seeded, so the same numbers give the same interval). With n = 3-5 seeds it
  is narrower than the t interval (it can never leave the range of the observed deltas),
  which is why `t` is the default.

n = 1 has no interval. std is the sample standard deviation (n − 1).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

CiMethod = Literal["t", "bootstrap"]
LEVEL = 0.95
RESAMPLES = 10_000


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (n − 1); 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Student-t interval of the mean of `values`; None for fewer than two values."""
    from scipy.stats import t  # lazy: scipy.stats takes seconds; only studies' tables use it

    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sample_std(values) / math.sqrt(n)
    return mean - half, mean + half


def bootstrap_interval(
    values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values`; None for fewer than two."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def interval(
    values: Sequence[float], method: CiMethod = "t", level: float = LEVEL
) -> tuple[float, float] | None:
    if method == "t":
        return t_interval(values, level)
    return bootstrap_interval(values, level)


@dataclass(frozen=True)
class PairedDelta:
    """mean(x_s − b_s) over the seeds both rows ran, its sd and 95% interval."""

    seeds: list[int]
    mean: float
    std: float
    ci: tuple[float, float] | None
    method: CiMethod

    @property
    def excludes_zero(self) -> bool:
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)

    def as_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def paired_delta(
    values: Mapping[int, float], baseline: Mapping[int, float], method: CiMethod = "t"
) -> PairedDelta | None:
    """The delta of `values` against `baseline` (both seed -> metric), paired by seed; None
    when they share no seed. Non-finite values (a failed run) are left out of the pairs."""
    seeds = sorted(
        s
        for s in values.keys() & baseline.keys()
        if math.isfinite(values[s]) and math.isfinite(baseline[s])
    )
    if not seeds:
        return None
    d = [values[s] - baseline[s] for s in seeds]
    return PairedDelta(seeds, statistics.fmean(d), sample_std(d), interval(d, method), method)
