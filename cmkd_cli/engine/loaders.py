"""DataLoader settings that keep a training step fed (issue 14's loader defaults).

`data.num_workers` left unset takes `default_workers()`: one worker per CPU core this process
may use, minus the core the training step itself runs on, at most 8, shared between the
processes of a `torchrun` launch. Workers persist across epochs (no re-fork per epoch; the
dataset's epoch travels through shared memory, `datasets.KeyedDataset`), and batches go to
pinned memory when the step runs on CUDA, so host-to-device copies overlap.
`benchmarks/loader.py` measures what one worker delivers per view at the papers' shapes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

MAX_WORKERS = 8


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(processes_per_node: int = 1) -> int:
    """Loader workers per training process: its share of the cores, less one for the step."""
    share = usable_cores() // max(1, processes_per_node)
    return max(0, min(MAX_WORKERS, share - 1))


def processes_per_node(world_size: int) -> int:
    """Training processes sharing this machine (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size))


def loader_options(workers: int | None, device: torch.device, world_size: int = 1):
    """`num_workers` (`workers`, or the default), `pin_memory` and `persistent_workers`."""
    n = default_workers(processes_per_node(world_size)) if workers is None else workers
    options: dict[str, Any] = {"num_workers": n, "pin_memory": device.type == "cuda"}
    if n > 0:
        options["persistent_workers"] = True
    return options
