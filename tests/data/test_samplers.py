"""P classes x M samples batches as voxceleb_trainer's train_dataset_sampler builds them."""

from __future__ import annotations

from collections import Counter

import pytest

from cmkd_cli.data.datasets import keyed_rng
from cmkd_cli.data.samplers import ClassPairBatchSampler
from cmkd_cli.errors import UsageError

# one large speaker (1,200 utterances), 400 speakers of 10
LABELS = [0] * 1200 + [c for c in range(1, 401) for _ in range(10)]


def _check_batches(batches: list[list[int]], labels: list[int], per_batch: int, m: int) -> None:
    seen: list[int] = []
    for b in batches:
        classes = [labels[i] for i in b]
        assert len(b) == per_batch * m
        assert all(len(set(classes[j : j + m])) == 1 for j in range(0, len(b), m))  # by class
        assert len(set(classes)) == per_batch  # no class twice
        seen += b
    assert len(seen) == len(set(seen))  # no sample twice an epoch


def test_max_seg_per_spk_caps_each_speaker_per_epoch() -> None:
    for cap, most in ((500, 500), (None, 1200), (41, 40)):
        sampler = ClassPairBatchSampler(LABELS, 10, 2, seed=3, max_per_class=cap)
        batches = list(sampler)
        _check_batches(batches, LABELS, 10, 2)
        per_class = Counter(LABELS[i] for b in batches for i in b)
        assert per_class[0] <= most and all(n <= 10 for c, n in per_class.items() if c)
    default = ClassPairBatchSampler(LABELS, 4, 2, seed=3)
    assert default.max_per_class == 500  # voxceleb_trainer's max_seg_per_spk
    uncapped = ClassPairBatchSampler(LABELS, 4, 2, seed=3, max_per_class=None)
    big = [sum(0 in {LABELS[i] for i in b} for b in s) for s in (default, uncapped)]
    assert 200 < big[0] <= 250 < 350 < big[1]  # pairs of the large speaker in one epoch


def _fill_dropping(groups: list[tuple[int, list[int]]], per_batch: int) -> list[list[int]]:
    """The reference's rule, restated: walk the shuffled groups, leave out a group whose class
    is in the batch being filled, close a batch when full, leave out the last partial one."""
    batches, batch, classes = [], [], set()
    for c, idx in groups:
        if c in classes:
            continue
        batch += idx
        classes.add(c)
        if len(classes) == per_batch:
            batches.append(batch)
            batch, classes = [], set()
    return batches


def test_a_pair_whose_speaker_is_in_the_batch_is_dropped_as_the_reference() -> None:
    sampler = ClassPairBatchSampler(LABELS, 10, 2, seed=5, max_per_class=None)
    sampler.set_epoch(2)
    groups = sampler._groups(keyed_rng("class-pairs", 5, 2))
    assert list(sampler) == _fill_dropping(groups, 10)
    assert len(sampler) == len(_fill_dropping(groups, 10))


def test_defer_keeps_the_groups_the_reference_drops() -> None:
    few = [c for c in range(6) for _ in range(40)]  # 6 speakers, 3 per batch
    drop = list(ClassPairBatchSampler(few, 3, 2, seed=1))
    defer = list(ClassPairBatchSampler(few, 3, 2, seed=1, duplicates="defer"))
    _check_batches(drop, few, 3, 2)
    _check_batches(defer, few, 3, 2)
    assert len(defer) >= 38 > len(drop)  # 120 groups: 40 batches at most


def test_epochs_are_seeded_and_processes_share_each_global_batch() -> None:
    a = ClassPairBatchSampler(LABELS, 10, 2, seed=7)
    first = list(a)
    assert first == list(ClassPairBatchSampler(LABELS, 10, 2, seed=7))
    a.set_epoch(1)
    assert list(a) != first
    ranks = [list(ClassPairBatchSampler(LABELS, 10, 2, seed=7, rank=r, world=2)) for r in (0, 1)]
    assert [x + y for x, y in zip(*ranks, strict=True)] == first


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_per_class": 1}, "max_seg_per_spk: 1 is fewer than the 2"),
        ({"duplicates": "keep"}, "duplicate_speaker: 'keep' is not one of drop, defer"),
        ({"world": 3}, "do not split over 3"),
    ],
)
def test_bad_settings_name_the_field(kwargs, match) -> None:
    with pytest.raises(UsageError, match=match):
        ClassPairBatchSampler(LABELS, 10, 2, **kwargs)
