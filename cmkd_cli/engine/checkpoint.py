"""Checkpoints: written atomically, read with `torch.load(weights_only=True)`.

`last.pt`, the resumable one, holds the student, the method's own modules, optimiser,
scheduler, AMP scaler, epoch, step, RNG states (python, numpy, torch, cuda) and the recipe.
A frozen teacher is referenced by its source, not copied. `best.pt` and the epoch snapshots
(`train.keep_last`) hold what evaluation needs (`evaluation_state`): no optimiser,
scheduler, scaler or RNG state and no `training_only_state` of the method (memory banks).
The student alone, with its preprocessing, is `student.pt` (`cmkd_cli.student.package`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmkd_cli.errors import RunError
from cmkd_cli.io import atomic_torch_save


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def rng_isolated() -> Iterator[None]:
    """Run the block without moving any RNG stream (python, numpy, torch, cuda): what it
    draws (e.g. evaluation) leaves training's random numbers as they were."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise RunError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None


#: what only resuming needs; evaluation checkpoints leave it out
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng", "method_extras", "progress")
EPOCHS_DIR = "epochs"


def evaluation_state(state: dict[str, Any], method_state: dict[str, Any]) -> dict[str, Any]:
    """`state` (a `last.pt`) without `RESUME_ONLY`, with the method's evaluation state."""
    lean = {k: v for k, v in state.items() if k not in RESUME_ONLY}
    lean["method"] = method_state
    return lean


def epoch_snapshots(run_dir: str | Path) -> list[Path]:
    """RUN/epochs/epoch-NNNN.pt, oldest first."""
    return sorted((Path(run_dir) / EPOCHS_DIR).glob("epoch-[0-9][0-9][0-9][0-9].pt"))


def finished_epoch(state: dict[str, Any]) -> int:
    """The last finished epoch (1-based) of an epoch-end checkpoint; one written before
    epochs were counted from 1 (no `epochs_done`) stored it 0-based in `epoch`."""
    return state["epochs_done"] if "epochs_done" in state else state["epoch"] + 1


def save_epoch_snapshot(run_dir: str | Path, state: dict[str, Any], keep: int) -> Path:
    """Write RUN/epochs/epoch-NNNN.pt (1-based epoch) and delete all but the last `keep`
    (wespeaker's `avg_model` input: `cmkd average`)."""
    path = Path(run_dir) / EPOCHS_DIR / f"epoch-{finished_epoch(state):04d}.pt"
    save_checkpoint(path, state)
    for old in epoch_snapshots(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path
