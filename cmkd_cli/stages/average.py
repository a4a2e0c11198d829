"""`cmkd average`: one student from the mean of a run's last K epochs (wespeaker avg_model).

Reads RUN/epochs/epoch-NNNN.pt (written when the recipe sets `train.keep_last: K`) and,
to recompute BatchNorm statistics, the run's training data through its stored recipe.
Writes a `student.pt` (default RUN/student-avg.pt) that `eval`, `embed`, `score`, `export`
and `cmkd_cli.load` take like any other; its `source` names the averaged epochs and the
number of batches the statistics were re-estimated on (`cmkd_cli.student.average`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from cmkd_cli.config import validate_recipe
from cmkd_cli.data.datasets import build_data
from cmkd_cli.engine.checkpoint import epoch_snapshots, finished_epoch, load_checkpoint
from cmkd_cli.engine.distributed import init_distributed, select_device
from cmkd_cli.engine.loop import make_loaders
from cmkd_cli.errors import CmkdError, UsageError
from cmkd_cli.schema import StrictModel
from cmkd_cli.student.average import average_weights, batchnorm_layers, recompute_batchnorm
from cmkd_cli.student.package import build_student_model, student_package, write_student


class AverageOptions(StrictModel):
    run: Path = Field(description="a run directory (trained with train.keep_last)")
    last: int = Field(ge=1, description="average the last K epochs")
    out: Path | None = Field(None, description="student.pt to write (default RUN/student-avg.pt)")
    bn_batches: int = Field(100, ge=0, description="training batches to recompute BatchNorm on")
    device: str = "auto"


class AverageResult(BaseModel):
    out: str
    epochs: list[int]
    batchnorm_layers: int
    bn_batches: int


def training_batches(recipe: dict[str, Any], n: int, device: str) -> Iterator[Any]:
    """The first `n` batches of the run's training loader (epoch 0, its own augmentation)."""
    r = validate_recipe(recipe, origin="the averaged run's recipe")
    data = build_data(r.data)
    loaders = make_loaders(data, r, init_distributed(device))
    loaders["sampler"].set_epoch(0)
    data.train.set_epoch(0, seed=r.train.seed)
    return itertools.islice(iter(loaders["train"]), n)


def run(options: AverageOptions) -> AverageResult:
    o = options
    snapshots = epoch_snapshots(o.run)
    if len(snapshots) < o.last:
        raise UsageError(
            f"{o.run}/epochs holds {len(snapshots)} epoch checkpoint(s), fewer than --last "
            f"{o.last}: train with `train.keep_last: {o.last}` (or more)"
        )
    states = [load_checkpoint(p) for p in snapshots[-o.last :]]
    epochs = [finished_epoch(s) for s in states]
    averaged = average_weights([s["student"] for s in states])
    origin = f"{o.run} (mean of epochs {', '.join(map(str, epochs))})"
    package = student_package({**states[-1], "student": averaged}, origin)
    dev = select_device(o.device)
    model = build_student_model(package, dev)
    layers = len(batchnorm_layers(model))
    used = 0
    if layers and o.bn_batches:
        try:
            batches = training_batches(package["recipe"], o.bn_batches, dev.type)
            used = recompute_batchnorm(model, batches, dev)
        except CmkdError as exc:
            raise UsageError(
                f"cannot recompute the BatchNorm statistics on the run's training data ({exc}); "
                "--bn-batches 0 keeps the averaged statistics"
            ) from None
        package["weights"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    package["source"].update(averaged_epochs=epochs, bn_batches=used)
    out = o.out or o.run / "student-avg.pt"
    write_student(out, package)
    return AverageResult(out=str(out), epochs=epochs, batchnorm_layers=layers, bn_batches=used)


def render(result: AverageResult) -> str:
    bn = (
        f"BatchNorm statistics of {result.batchnorm_layers} layers recomputed on "
        f"{result.bn_batches} training batches"
        if result.bn_batches
        else f"{result.batchnorm_layers} BatchNorm layers keep the averaged statistics"
    )
    return f"averaged epochs {result.epochs} into {result.out}; {bn}"
