"""Dataset registry and the sample contract shared by every task.

A dataset item is a dict: `index` (int, position in the split: CRD-style memories use it),
`x` (student-modality input), `y` (label), `t` (teacher-modality input). Randomness
(augmentation, template choice) is keyed by (seed, epoch, index), so a sample is the same
whichever process, worker or resumed run draws it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cmkd_cli.registry import Registry, check_kwargs
from cmkd_cli.schema import DataConfig

if TYPE_CHECKING:
    from cmkd_cli.data.preprocess import Preprocessing

DATASETS: Registry = Registry("dataset", package="cmkd_cli.data")
register_dataset = DATASETS.register


def keyed_rng(*key: int | str) -> np.random.Generator:
    """A generator seeded by a stable hash of `key` (never Python's salted `hash`)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a stratified `fraction` of the samples (a low-label regime).

    Per class c with n_c samples: the first max(1, round(n_c * fraction)) positions of a
    permutation drawn by `keyed_rng(seed, c)`. The permutation depends on the seed and the
    class only, so a smaller fraction is a subset of a larger one (5% of 10% of 25%).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = max(1, round(len(members) * fraction))
        keep.append(keyed_rng(seed, int(c)).permutation(members)[:n])
    return np.sort(np.concatenate(keep))


class KeyedDataset(Dataset):
    """Base for datasets whose per-sample randomness depends only on (seed, epoch, index).

    Evaluation splits may also offer `raw_input(index)`: the sample's student input as a
    user would give it to `cmkd_cli.load` (a file path, a `(waveform, rate)` pair, an image
    array, a text), on which `cmkd export` checks its graph when no `--input` is given.

    `seed` and `epoch` live in a two-number tensor in shared memory, so DataLoader worker
    processes that outlive an epoch (`persistent_workers`) see the epoch `set_epoch` sets in
    the training process: every epoch draws its own augmentations in any worker.
    """

    def __init__(self) -> None:
        self._key = torch.zeros(2, dtype=torch.int64).share_memory_()
        #: the inputs items carry: the engine leaves out one nobody reads (the student's
        #: when a teacher trains alone, the teacher's when its outputs are cached)
        self.inputs: tuple[str, ...] = ("x", "t")

    @property
    def seed(self) -> int:
        return int(self._key[0])

    @seed.setter
    def seed(self, value: int) -> None:
        self._key[0] = value

    @property
    def epoch(self) -> int:
        return int(self._key[1])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._key[1] = value

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        self.epoch = epoch
        if seed is not None:
            self.seed = seed

    def rng(self, index: int) -> np.random.Generator:
        return keyed_rng(self.seed, self.epoch, index)

    @contextlib.contextmanager
    def carrying(self, *inputs: str) -> Iterator[KeyedDataset]:
        """The dataset with its items carrying `inputs` for the length of the block."""
        kept, self.inputs = self.inputs, inputs
        try:
            yield self
        finally:
            self.inputs = kept

    def sample_id(self, index: int) -> str:
        """What error messages call sample `index` (manifest datasets: the record's id)."""
        return f"#{index}"


@dataclass
class DataBundle:
    """The splits of one experiment and what the models need to know about them."""

    train: KeyedDataset
    val: KeyedDataset
    test: KeyedDataset
    num_classes: int
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    #: the teacher input of a sample never changes (no augmentation, no random prompt), so
    #: a frozen teacher's outputs can be cached on disk (engine/teacher_cache.py)
    teacher_static: bool = False
    #: evaluation split on the teacher's modality (its items carry `t`), for train-teacher
    teacher_val: KeyedDataset | None = None
    #: the evaluation preprocessing of the student's input `x` (`data.preprocess`), which
    #: checkpoints and `student.pt` carry so that a student is usable without its data
    student_input: Preprocessing | None = None
    #: `input_cache(root, workers, budget)` decodes the inputs once into memory-mapped caches
    #: under `root` (each at most `budget` bytes) and reads them from then on
    #: (`data/input_cache.py`); None: nothing to cache
    input_cache: Callable[[Path, int, int], None] | None = None

    def spec(self) -> dict[str, Any]:
        """What models and methods need to know of the data (also stored in checkpoints)."""
        return {
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "n_train": len(self.train),
            "student_input": (
                self.student_input.model_dump(mode="json") if self.student_input else None
            ),
        }


def build_data(cfg: DataConfig) -> DataBundle:
    builder = DATASETS.get(cfg.name, field="data.name")
    check_kwargs(builder, cfg.params, field="data.params")
    return builder(**cfg.params)
