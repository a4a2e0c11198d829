"""Batch samplers for metric-learning tasks: P classes x M samples, no class twice a batch."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from cmkd_cli.data.datasets import keyed_rng
from cmkd_cli.errors import UsageError

#: what happens to a group whose class is already in the batch being filled
DUPLICATE_POLICIES = ("drop", "defer")
#: voxceleb_trainer's default `max_seg_per_spk`
MAX_PER_CLASS = 500


class ClassPairBatchSampler(Sampler[list[int]]):
    """Batches of `per_batch` classes x `m` samples each (voxceleb_trainer's
    `train_dataset_sampler`).

    Every epoch (seeded by `seed`, `epoch`) each class's samples are shuffled, the first
    `min(len, max_per_class)` rounded down to a multiple of `m` are kept (`max_seg_per_spk`,
    500 by default as the reference; None: no cap) and cut into groups of `m`; the groups of
    all classes are shuffled and filled into batches in that order, no class twice a batch.
    A group whose class is already in the batch being filled is

    * `drop` (default, the reference): left out of this epoch. Batches are filled one at a
      time, as the reference does; at VoxCeleb2 scale (5,994 speakers, 100 per batch) about
      1% of the groups are dropped, more for large speakers;
    * `defer`: put into the first open batch without its class, so only the groups of the
      batches still open at the end are lost (about 0.02% at VoxCeleb2 scale). Kept for data
      with few classes per batch slot (e.g. 6 speakers, 3 per batch), where dropping would
      discard a large share of every epoch.

    Batches that cannot be filled are left out. A batch is laid out class by class
    (`[c1 s1, c1 s2, c2 s1, ...]`) so the task can view embeddings as `[P, M, D]`. Under
    DDP each process takes a contiguous share of whole groups of every global batch (the
    reference gives each process whole batches of its own; here the global batch holds no
    class twice).
    """

    def __init__(
        self,
        labels: Sequence[int],
        per_batch: int,
        m: int = 2,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        max_per_class: int | None = MAX_PER_CLASS,
        duplicates: str = "drop",
    ) -> None:
        if per_batch % world:
            raise UsageError(
                f"data.batch_size: {per_batch} speakers per batch do not split over {world} "
                "processes"
            )
        if max_per_class is not None and max_per_class < m:
            raise UsageError(
                f"data.params.max_seg_per_spk: {max_per_class} is fewer than the {m} samples "
                "of a class in a batch"
            )
        if duplicates not in DUPLICATE_POLICIES:
            raise UsageError(
                f"data.params.duplicate_speaker: {duplicates!r} is not one of "
                f"{', '.join(DUPLICATE_POLICIES)}"
            )
        self.by_class: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(labels):
            self.by_class[int(c)].append(i)
        eligible = sum(1 for v in self.by_class.values() if len(v) >= m)
        if eligible < per_batch:
            raise UsageError(
                f"data.batch_size: {per_batch} classes per batch but only {eligible} classes have "
                f"at least {m} samples"
            )
        self.per_batch, self.m, self.seed = per_batch, m, seed
        self.rank, self.world = rank, world
        self.max_per_class, self.duplicates = max_per_class, duplicates
        self.epoch = 0
        self._cached: tuple[int, list[list[tuple[int, list[int]]]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self, rng: np.random.Generator) -> list[tuple[int, list[int]]]:
        """This epoch's groups of `m` samples of one class, in a random order."""
        groups: list[tuple[int, list[int]]] = []
        for c in sorted(self.by_class):
            idx = list(self.by_class[c])
            rng.shuffle(idx)
            keep = min(len(idx), self.max_per_class or len(idx))
            groups += [(c, idx[i : i + self.m]) for i in range(0, keep - self.m + 1, self.m)]
        return [groups[i] for i in rng.permutation(len(groups))]

    def _global_batches(self) -> list[list[tuple[int, list[int]]]]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        groups = self._groups(keyed_rng("class-pairs", self.seed, self.epoch))
        batches: list[list[tuple[int, list[int]]]] = []
        # batches being filled, each with the set of its classes
        filling: list[tuple[list[tuple[int, list[int]]], set[int]]] = []
        for g in groups:
            target = next((b for b in filling if g[0] not in b[1]), None)
            if target is None:
                if filling and self.duplicates == "drop":
                    continue  # its class is in the one batch being filled
                target = ([], set())
                filling.append(target)
            target[0].append(g)
            target[1].add(g[0])
            if len(target[0]) == self.per_batch:
                filling.remove(target)
                batches.append(target[0])
        self._cached = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        share = self.per_batch // self.world
        for batch in self._global_batches():
            mine = batch[self.rank * share : (self.rank + 1) * share]
            yield [i for _, idx in mine for i in idx]

    def __len__(self) -> int:
        return len(self._global_batches())


class ResumableSampler(Sampler):
    """An index or batch sampler whose next pass can start after its first batches.

    `skip_batches(n)` leaves out the first `n * items_per_batch` items of the next pass
    only (`items_per_batch`: the batch size for an index sampler, 1 for a batch sampler),
    without loading them: a run resumed mid-epoch sees exactly the batches the
    uninterrupted run would have seen next. Everything else is the wrapped sampler's.
    """

    def __init__(self, inner: Any, items_per_batch: int) -> None:
        self.inner = inner
        self.items_per_batch = items_per_batch
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def skip_batches(self, n: int) -> None:
        self._skip = n * self.items_per_batch

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)
