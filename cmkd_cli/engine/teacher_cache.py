"""Frozen teachers cost nothing twice: their outputs on the training set, cached on disk.

When the teacher is frozen and its input is not augmented (`DataBundle.teacher_static`),
the engine runs the teacher once over the training split and stores its embedding, logits
and every hooked feature a method reads, as memory-mapped `.npy` files under
`CACHE/teacher-outputs/<fingerprint>/`. The fingerprint covers the teacher's weights, its
model config, the data config and the hooked paths, so a changed teacher or preprocessing
gets a new cache. Later epochs and later runs read rows by sample index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cmkd_cli.engine.distributed import DistInfo, barrier, to_device
from cmkd_cli.io import allocated_memmap, atomic_write_json
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.progress import track

DONE = "complete.json"


def state_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(teacher: nn.Module, teacher_cfg: Any, data_cfg: Any, taps: list[str]) -> str:
    blob = json.dumps(
        {
            "weights": state_fingerprint(teacher),
            "teacher": teacher_cfg,
            "data": data_cfg,
            "taps": sorted(taps),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class TeacherCache:
    """Row-indexed teacher outputs: `embedding`, `logits` and `tap:<path>` arrays."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        meta = json.loads((folder / DONE).read_text())
        self.names: list[str] = meta["names"]
        self.arrays = {n: np.load(folder / f"{_file(n)}.npy", mmap_mode="r") for n in self.names}

    @staticmethod
    def is_complete(folder: Path) -> bool:
        return (folder / DONE).is_file()

    def rows(self, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        idx = index.cpu().numpy()
        return {
            n: torch.from_numpy(np.ascontiguousarray(a[idx])).to(device)
            for n, a in self.arrays.items()
        }

    def output(self, index: torch.Tensor, device: torch.device) -> tuple[ModelOutput, dict]:
        rows = self.rows(index, device)
        taps = {n[4:]: v for n, v in rows.items() if n.startswith("tap:")}
        return ModelOutput(rows["embedding"], rows.get("logits")), taps


def _file(name: str) -> str:
    return name.replace(":", "__").replace("/", "_")


@torch.no_grad()
def build_cache(
    folder: Path,
    teacher: nn.Module,
    dataset: Any,
    tap_outputs: Callable[[], dict[str, torch.Tensor]],
    dist: DistInfo,
    batch_size: int = 256,
) -> TeacherCache:
    """Run the frozen teacher once over `dataset` (sharded over processes) into `folder`."""
    if TeacherCache.is_complete(folder):
        return TeacherCache(folder)
    n = len(dataset)
    shard = list(range(dist.rank, n, dist.world_size))
    loader = DataLoader(torch.utils.data.Subset(dataset, shard), batch_size=batch_size)
    teacher.eval()
    arrays: dict[str, np.ndarray] = {}
    names: list[str] = []
    folder.mkdir(parents=True, exist_ok=True)
    for batch in track(loader, description="caching teacher outputs"):
        out = teacher(to_device(batch["t"], dist.device))
        values = {"embedding": out.embedding}
        if out.logits is not None:
            values["logits"] = out.logits
        values.update({f"tap:{p}": v for p, v in tap_outputs().items()})
        if not arrays:
            names = list(values)
            for name, v in values.items():
                shape = (n, *v.shape[1:])
                path = folder / f"{_file(name)}.r{dist.rank}.npy"
                arrays[name] = allocated_memmap(path, np.float32, shape)
        rows = np.asarray(batch["index"])  # items carry their index in the full split
        for name, v in values.items():
            arrays[name][rows] = v.float().cpu().numpy()
    for a in arrays.values():
        a.flush()
    barrier()
    if dist.is_main:
        _merge(
            folder,
            names,
            dist.world_size,
            n,
            [list(range(r, n, dist.world_size)) for r in range(dist.world_size)],
        )
        atomic_write_json(folder / DONE, {"names": names, "rows": n})
    barrier()
    return TeacherCache(folder)


def _merge(folder: Path, names: list[str], world: int, n: int, shards: list[list[int]]) -> None:
    for name in names:
        parts = [np.load(folder / f"{_file(name)}.r{r}.npy", mmap_mode="r") for r in range(world)]
        if world == 1:
            (folder / f"{_file(name)}.r0.npy").replace(folder / f"{_file(name)}.npy")
            continue
        merged = allocated_memmap(folder / f"{_file(name)}.npy", np.float32, parts[0].shape)
        for r, rows in enumerate(shards):
            merged[rows] = parts[r][rows]
        merged.flush()
        for r in range(world):
            (folder / f"{_file(name)}.r{r}.npy").unlink()
