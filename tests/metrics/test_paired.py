"""Statistics over seeds: paired deltas and their 95% intervals against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cmkd_cli.metrics.paired import bootstrap_interval, paired_delta, sample_std, t_interval


def test_t_interval_of_a_paired_delta_equals_scipys_paired_t() -> None:
    x = {1: 0.91, 2: 0.93, 3: 0.90, 4: 0.95, 5: 0.92}
    b = {5: 0.90, 4: 0.91, 3: 0.88, 2: 0.90, 1: 0.89}  # pairing is by seed, not by order
    d = paired_delta(x, b, "t")
    seeds = [1, 2, 3, 4, 5]
    ref = stats.ttest_rel([x[s] for s in seeds], [b[s] for s in seeds]).confidence_interval(0.95)
    assert d.seeds == seeds and d.method == "t"
    assert d.ci == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert d.mean == pytest.approx(np.mean([x[s] - b[s] for s in seeds]))
    assert d.std == pytest.approx(np.std([x[s] - b[s] for s in seeds], ddof=1))
    assert d.excludes_zero  # 0.01-0.04 better on every seed
    assert d.as_dict()["excludes_zero"] is True


def test_unpaired_seeds_are_left_out_and_one_pair_has_no_interval() -> None:
    d = paired_delta({1: 0.5, 2: 0.6, 3: float("nan")}, {2: 0.55, 3: 0.5, 4: 0.9})
    assert d.seeds == [2] and d.mean == pytest.approx(0.05) and d.ci is None
    assert not d.excludes_zero
    assert paired_delta({1: 0.5}, {2: 0.5}) is None
    assert t_interval([0.3]) is None and sample_std([0.3]) == 0.0


def test_noise_sized_delta_does_not_exclude_zero() -> None:
    d = paired_delta({1: 0.90, 2: 0.94, 3: 0.91}, {1: 0.92, 2: 0.91, 3: 0.92})
    assert d.ci[0] < 0 < d.ci[1] and not d.excludes_zero


def test_bootstrap_is_seeded_and_stays_within_the_observed_deltas() -> None:
    d = [0.01, -0.02, 0.03, 0.02]
    lo, hi = bootstrap_interval(d)
    assert (lo, hi) == bootstrap_interval(d)
    assert min(d) <= lo < np.mean(d) < hi <= max(d)
    t_lo, t_hi = t_interval(d)
    assert t_lo < lo and hi < t_hi  # why `t` is the default at n = 3-5 (module docstring)
    x = {s: 0.9 + v for s, v in enumerate(d)}
    assert paired_delta(x, dict.fromkeys(x, 0.9), "bootstrap").ci == pytest.approx((lo, hi))
