"""The one training loop for every method and task (after torchvision's references).

Device-agnostic; AMP (bf16/fp16) on CUDA only; gradient accumulation and clipping; DDP
under torchrun; `last.pt` every epoch (resumable to bit-identical weights on CPU), `best.pt`
and `student.pt` on the validation metric, `epochs/epoch-NNNN.pt` for the last
`train.keep_last` epochs; a NaN/Inf loss stops the run naming the step and the term.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from cmkd_cli import console, units
from cmkd_cli.config import dump_recipe
from cmkd_cli.engine.checkpoint import (
    capture_rng,
    evaluation_state,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_epoch_snapshot,
)
from cmkd_cli.engine.distributed import DistInfo, barrier, to_device
from cmkd_cli.engine.loaders import loader_options
from cmkd_cli.engine.logging import MetricsLogger
from cmkd_cli.engine.optim import build_optimizer, build_scheduler
from cmkd_cli.engine.speed import apply_speed_switches, channels_last_inputs
from cmkd_cli.engine.teacher_cache import build_cache, cache_key
from cmkd_cli.errors import RunError, UsageError
from cmkd_cli.io import atomic_write_json, atomic_write_text, default_cache_dir
from cmkd_cli.methods.base import Method
from cmkd_cli.progress import track
from cmkd_cli.schema import Recipe
from cmkd_cli.student.package import STUDENT_FILE, student_package, write_student
from cmkd_cli.tasks import check_metric

#: off a TTY, a long epoch prints a progress line at most this often (seconds)
PLAIN_PROGRESS_S = 60.0


class NonFiniteLoss(RunError):
    """A loss term became NaN or Inf."""


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_val: dict[str, float]
    test: dict[str, float]
    epochs: int
    wall_time_s: float
    resumed_from_epoch: int | None = None


class _EvalShard(torch.utils.data.Sampler[int]):
    """Every rank's share of an evaluation split, without DistributedSampler's padding."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loaders(data: Any, recipe: Recipe, dist: DistInfo) -> dict[str, Any]:
    cfg = recipe.data
    if cfg.batch_size % dist.world_size:
        raise UsageError(
            f"data.batch_size: {cfg.batch_size} is not divisible by the {dist.world_size} processes"
        )
    local_bs = cfg.batch_size // dist.world_size
    options = loader_options(cfg.num_workers, dist.device, dist.world_size)
    if hasattr(data.train, "batch_sampler"):  # the dataset builds its batches (e.g. P x M)
        train_sampler = data.train.batch_sampler(
            cfg.batch_size, recipe.train.seed, dist.rank, dist.world_size
        )
        train = DataLoader(data.train, batch_sampler=train_sampler, **options)
    else:
        train_sampler = DistributedSampler(
            data.train,
            num_replicas=dist.world_size,
            rank=dist.rank,
            shuffle=True,
            seed=recipe.train.seed,
            drop_last=cfg.drop_last,
        )
        train = DataLoader(
            data.train,
            batch_size=local_bs,
            sampler=train_sampler,
            drop_last=cfg.drop_last,
            **options,
        )
    if len(train) == 0:
        raise UsageError(
            f"data.batch_size: {cfg.batch_size} is larger than the {len(data.train)} training "
            "samples with drop_last"
        )

    def evaluation(ds: Any) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=max(1, cfg.eval_batch_size // dist.world_size),
            sampler=_EvalShard(len(ds), dist.rank, dist.world_size),
            **options,
        )

    return {
        "train": train,
        "sampler": train_sampler,
        "val": evaluation(data.val),
        "test": evaluation(data.test),
    }


def attach_input_cache(data: Any, recipe: Recipe, dist: DistInfo) -> None:
    """Decode the data's inputs once into memory-mapped caches (`data/input_cache.py`):
    the main process writes them (its loader workers decoding), the others then read them."""
    if not recipe.train.input_cache or getattr(data, "input_cache", None) is None:
        return
    root = Path(recipe.train.cache_dir) if recipe.train.cache_dir else default_cache_dir()
    root = root / "inputs"
    root.mkdir(parents=True, exist_ok=True)
    budget = min(recipe.train.input_cache_gb * 2**30, shutil.disk_usage(root).free / 2)
    workers = loader_options(recipe.data.num_workers, dist.device, dist.world_size)
    if dist.is_main:
        data.input_cache(root, workers["num_workers"], int(budget))
    barrier()
    if not dist.is_main:
        data.input_cache(root, 0, int(budget))


def teacher_cache_applies(method: Method, data: Any, recipe: Recipe) -> bool:
    """Whether a frozen teacher's outputs are served from disk (its input never changes)."""
    return bool(
        recipe.train.teacher_cache
        and method.teacher is not None
        and method.teacher_frozen
        and getattr(data, "teacher_static", False)
    )


def select_inputs(data: Any, method: Method, recipe: Recipe, input_key: str) -> None:
    """The inputs each split's items carry: the student's (`input_key`), and in training the
    teacher's unless its outputs are cached; no input nobody reads is decoded."""
    teacher = method.teacher is not None and not teacher_cache_applies(method, data, recipe)
    for split in (data.val, data.test):
        split.inputs = (input_key,)
    data.train.inputs = tuple(dict.fromkeys([input_key] + (["t"] if teacher else [])))


def attach_teacher_cache(method: Method, data: Any, recipe: Recipe, dist: DistInfo) -> None:
    """Serve a frozen teacher's outputs from disk when its inputs never change."""
    method.teacher_cache = None
    if not teacher_cache_applies(method, data, recipe):
        return
    taps = sorted(method.teacher_tap_outputs().keys() | set(method.teacher_tap_paths()))
    key = cache_key(
        method.teacher,
        recipe.teacher.model_dump(mode="json") if recipe.teacher else None,
        recipe.data.identity(),
        taps,
    )
    root = Path(recipe.train.cache_dir) if recipe.train.cache_dir else default_cache_dir()
    with data.train.carrying("t"):  # the teacher's input, once
        method.teacher_cache = build_cache(
            root / "teacher-outputs" / key,
            method.teacher,
            data.train,
            method.teacher_tap_outputs,
            dist,
            batch_size=recipe.data.eval_batch_size,
        )


def _autocast(recipe: Recipe, device: torch.device):
    if recipe.train.amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if recipe.train.amp == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


#: what a weights-only best.pt keeps of `checkpoint_state`
BEST_WEIGHTS_ONLY = (
    "student",
    "epoch",
    "step",
    "best",
    "best_epoch",
    "best_metrics",
    "recipe",
    "data_spec",
)


@dataclass
class FitState:
    """Where a run stands: what `last.pt` records and `resume` restores (0-based epochs)."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int = -1
    resumed_from: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)  # all of the best epoch's


@dataclass
class Trainer:
    """What `build` makes for one run: loaders, optimiser, schedule, scaler, logger."""

    method: Method
    model: torch.nn.Module  # `method`, wrapped in DDP under torchrun
    data: Any
    task: Any
    recipe: Recipe
    run_dir: Path
    dist: DistInfo
    input_key: str
    loaders: dict[str, Any]
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    logger: MetricsLogger
    extra_state: dict[str, Any]
    best_weights_only: bool = False  # best.pt without optimiser/schedule/RNG (teachers)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"


def fit(
    method: Method,
    data: Any,
    task: Any,
    recipe: Recipe,
    run_dir: Path,
    dist: DistInfo,
    input_key: str = "x",
    extra_state: dict[str, Any] | None = None,
    best_weights_only: bool = False,
) -> FitResult:
    """Train `method` on `data` and evaluate its student; resume from RUN/last.pt if present.

    The phases, each a function below: build, resume, then per epoch train, validate and
    save, then test the best student. `best_weights_only`: best.pt keeps the student's
    weights and the run's bookkeeping only (what a trained teacher needs; last.pt still
    holds everything for an exact resume).
    """
    t_start = time.perf_counter()
    trainer = build(method, data, task, recipe, run_dir, dist, input_key, extra_state)
    trainer.best_weights_only = best_weights_only
    state = resume(trainer)
    while state.epoch < recipe.train.epochs:
        train_avg, epoch_time = train_epoch(trainer, state)
        val = validate(trainer, state)
        is_best = _record_best(trainer, state, val)
        log_epoch(trainer, state, train_avg, val, epoch_time)
        save(trainer, state, is_best)
        state.epoch += 1
    return finish(trainer, state, time.perf_counter() - t_start)


def build(
    method: Method,
    data: Any,
    task: Any,
    recipe: Recipe,
    run_dir: Path,
    dist: DistInfo,
    input_key: str = "x",
    extra_state: dict[str, Any] | None = None,
) -> Trainer:
    """Loaders, teacher cache, optimiser, schedule, AMP scaler, DDP wrapper and logger."""
    check_metric(recipe.task, recipe.eval.metric)
    device = dist.device
    if dist.is_main:  # only rank 0 writes the run
        run_dir.mkdir(parents=True, exist_ok=True)
    method.to(device)
    select_inputs(data, method, recipe, input_key)
    attach_input_cache(data, recipe, dist)
    loaders = make_loaders(data, recipe, dist)
    attach_teacher_cache(method, data, recipe, dist)
    apply_speed_switches(method, recipe.train)
    steps_per_epoch = len(loaders["train"])
    if recipe.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, recipe.train.max_steps_per_epoch)
    opt_steps_per_epoch = math.ceil(steps_per_epoch / recipe.train.grad_accum)
    optimizer = build_optimizer(method.trainable_groups(), recipe.optim)
    scheduler = build_scheduler(
        optimizer, recipe.schedule, opt_steps_per_epoch, recipe.train.epochs
    )
    use_scaler = recipe.train.amp == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    model: torch.nn.Module = method
    if dist.enabled:
        model = DistributedDataParallel(
            method,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.find_unused_parameters,
        )
    logger = MetricsLogger(run_dir, recipe.output.tensorboard, enabled=dist.is_main)
    return Trainer(
        method=method,
        model=model,
        data=data,
        task=task,
        recipe=recipe,
        run_dir=run_dir,
        dist=dist,
        input_key=input_key,
        loaders=loaders,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        logger=logger,
        extra_state=extra_state or {},
    )


def resume(trainer: Trainer) -> FitState:
    """The state after RUN/last.pt (weights, optimiser, schedule, RNG restored), or a fresh
    state (and RUN/config.yaml written) when there is none."""
    state = FitState()
    if not trainer.last_path.exists():
        if trainer.dist.is_main:
            atomic_write_text(trainer.run_dir / "config.yaml", dump_recipe(trainer.recipe))
        return state
    ckpt = load_checkpoint(trainer.last_path, map_location=trainer.dist.device)
    trainer.method.student.load_state_dict(ckpt["student"])
    trainer.method.load_checkpoint_state(ckpt["method"], resume=True)
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"])
    state.epoch, state.step = ckpt["epoch"] + 1, ckpt["step"]
    state.best, state.best_epoch = ckpt["best"], ckpt["best_epoch"]
    state.best_metrics = ckpt.get("best_metrics") or {}
    state.resumed_from = ckpt["epoch"]
    trainer.logger.truncate_after(ckpt["epoch"])
    console.info(f"resuming {trainer.run_dir} after epoch {ckpt['epoch'] + 1}")
    return state


def train_epoch(trainer: Trainer, state: FitState) -> tuple[dict[str, float], float]:
    """One epoch of optimisation; the per-term training averages and the epoch's time."""
    recipe, dist, device = trainer.recipe, trainer.dist, trainer.dist.device
    epoch, accum, steps = state.epoch, recipe.train.grad_accum, trainer.steps_per_epoch
    trainer.loaders["sampler"].set_epoch(epoch)
    trainer.data.train.set_epoch(epoch, seed=recipe.train.seed)
    trainer.method.on_epoch_start(epoch)
    trainer.model.train()
    t_epoch = time.perf_counter()
    sums: dict[str, float] = {}
    n_seen = 0
    batches = iter(trainer.loaders["train"])
    loss = {"total": 0.0}
    for i in track(
        range(steps),
        total=steps,
        description=f"epoch {epoch + 1}/{recipe.train.epochs}",
        status=lambda: f"loss {loss['total']:.4f}",
        plain_every_s=PLAIN_PROGRESS_S,
        transient=True,
    ):
        batch = to_device(next(batches), device)
        if recipe.train.channels_last:
            batch = channels_last_inputs(batch)
        last_micro = (i + 1) % accum == 0 or i + 1 == steps
        out, total = _forward_backward(trainer, state, batch, i, sync=last_micro)
        if last_micro:
            _optimizer_step(trainer)
            state.step += 1
        bs = len(batch["y"]) if "y" in batch else 1
        n_seen += bs
        row = {f"loss/{k}": v.detach().float().item() for k, v in out.losses.items()}
        row["loss/total"] = float(total.detach())
        row.update({f"stats/{k}": float(v) for k, v in out.stats.items()})
        for k, v in row.items():
            sums[k] = sums.get(k, 0.0) + v * bs
        if dist.is_main and (i % recipe.train.log_every == 0 or i + 1 == steps):
            elapsed = time.perf_counter() - t_epoch
            row.update(
                {
                    "kind": "step",
                    "epoch": epoch,
                    "step": state.step,
                    "samples_per_s": n_seen * dist.world_size / max(elapsed, 1e-9),
                }
            )
            row.update(
                {
                    f"lr/{g.get('name', j)}": g["lr"]
                    for j, g in enumerate(trainer.optimizer.param_groups)
                }
            )
            trainer.logger.log(row)
        loss["total"] = row["loss/total"]
    epoch_time = time.perf_counter() - t_epoch
    return {k: v / max(n_seen, 1) for k, v in sums.items()}, epoch_time


def _forward_backward(
    trainer: Trainer, state: FitState, batch: dict[str, Any], i: int, sync: bool
) -> tuple[Any, torch.Tensor]:
    """The method's losses on one batch, checked finite, and their backward pass."""
    model, dist = trainer.model, trainer.dist
    no_sync = contextlib.nullcontext() if sync or not dist.enabled else model.no_sync()
    with no_sync:
        with _autocast(trainer.recipe, dist.device):
            out = model(batch)
        total = sum(out.losses.values())
        bad = [k for k, v in out.losses.items() if not torch.isfinite(v).all()]
        if bad:
            last = trainer.last_path
            raise NonFiniteLoss(
                f"step {state.step + 1} (epoch {state.epoch + 1}, batch {i + 1}): loss term "
                f"`{bad[0]}` is {out.losses[bad[0]].item()}; the last good state is "
                f"{last if last.exists() else 'not saved yet'}"
            )
        trainer.scaler.scale(total / trainer.recipe.train.grad_accum).backward()
    return out, total


def _optimizer_step(trainer: Trainer) -> None:
    """Unscale and clip (when asked), step, update the scaler, zero grads, step the lr."""
    optimizer, scaler = trainer.optimizer, trainer.scaler
    if trainer.recipe.train.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]],
            trainer.recipe.train.grad_clip,
        )
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()


def validate(trainer: Trainer, state: FitState) -> dict[str, float]:
    """Validation metrics of the student, on the epochs `eval.every` asks for (else {})."""
    recipe = trainer.recipe
    epoch = state.epoch
    if not ((epoch + 1) % recipe.eval.every == 0 or epoch + 1 == recipe.train.epochs):
        return {}
    val = trainer.task.evaluate(
        trainer.method.student_for_inference(),
        trainer.loaders["val"],
        trainer.dist.device,
        trainer.input_key,
    )
    if recipe.eval.metric not in val:
        raise UsageError(f"eval.metric: {recipe.eval.metric!r} is not one of {sorted(val)}")
    return val


def _record_best(trainer: Trainer, state: FitState, val: dict[str, float]) -> bool:
    """Whether this epoch's validation metric is the best so far (and record it)."""
    metric = trainer.recipe.eval.metric
    if not val or not _improved(val[metric], state.best, trainer.recipe.eval.mode):
        return False
    state.best, state.best_epoch, state.best_metrics = val[metric], state.epoch, dict(val)
    return True


def log_epoch(
    trainer: Trainer,
    state: FitState,
    train_avg: dict[str, float],
    val: dict[str, float],
    epoch_time: float,
) -> None:
    """The epoch row of metrics.jsonl / TensorBoard and one line for humans."""
    device = trainer.dist.device
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    trainer.logger.log(
        {
            "kind": "epoch",
            "epoch": state.epoch,
            "step": state.step,
            **{f"train/{k}": v for k, v in train_avg.items()},
            **{f"val/{k}": v for k, v in val.items()},
            "epoch_time_s": epoch_time,
            "peak_mem_bytes": peak,
        }
    )
    console.info(
        f"epoch {state.epoch + 1}/{trainer.recipe.train.epochs}  "
        f"loss {train_avg.get('loss/total', 0):.4f}  "
        + "  ".join(f"val {k} {units.show(k, v)}" for k, v in val.items())
        + f"  ({epoch_time:.1f}s)"
    )


def checkpoint_state(trainer: Trainer, state: FitState) -> dict[str, Any]:
    """Everything `resume` needs to continue exactly where the run stands."""
    return {
        "student": trainer.method.student.state_dict(),
        "method": trainer.method.checkpoint_state(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "best_metrics": state.best_metrics,
        "rng": capture_rng(),
        "recipe": trainer.recipe.model_dump(mode="json"),
        "data_spec": trainer.data.spec(),
        "teacher_ref": trainer.extra_state.get("teacher_ref"),
    }


def save(trainer: Trainer, state: FitState, is_best: bool) -> None:
    """`last.pt` (resumable) after every `train.save_every` epochs and the last; `best.pt`
    (what evaluation needs: no optimiser or RNG state, no training-only memories) and
    `student.pt` when the validation metric improved; the epoch snapshot each epoch when
    `train.keep_last` is set."""
    train = trainer.recipe.train
    due = (state.epoch + 1) % train.save_every == 0 or state.epoch + 1 == train.epochs
    if not trainer.dist.is_main or not (due or is_best or train.keep_last):
        return
    ckpt = checkpoint_state(trainer, state)
    if due:
        save_checkpoint(trainer.last_path, ckpt)
    if trainer.best_weights_only:  # a teacher: its weights and the run's bookkeeping
        lean = {k: ckpt[k] for k in BEST_WEIGHTS_ONLY}
    else:  # what evaluation needs (the method docstrings say what only training needs)
        lean = evaluation_state(ckpt, trainer.method.checkpoint_state(resumable=False))
    if is_best:
        save_checkpoint(trainer.best_path, lean)
        if trainer.input_key == "x" and trainer.data.student_input is not None:
            package = student_package(lean, str(trainer.best_path))
            write_student(trainer.run_dir / STUDENT_FILE, package)
    if train.keep_last:
        save_epoch_snapshot(trainer.run_dir, lean, train.keep_last)


def finish(trainer: Trainer, state: FitState, wall_so_far: float) -> FitResult:
    """Test the best student (best.pt) and write final.json.

    Data without a test split of its own (`data.test is data.val`, e.g. speaker recipes that
    validate on VoxCeleb1-O) are not embedded again: the test metrics are the best epoch's
    validation metrics, which the same weights on the same split give, and final.json says
    `test_is_val`."""
    t0 = time.perf_counter()
    recipe, metric = trainer.recipe, trainer.recipe.eval.metric
    best_epoch, best_metrics = state.best_epoch, state.best_metrics
    if trainer.best_path.exists():
        ckpt = load_checkpoint(trainer.best_path, map_location=trainer.dist.device)
        trainer.method.student.load_state_dict(ckpt["student"])
        best_epoch = ckpt["best_epoch"]
        best_val = {metric: ckpt["best"]}
        best_metrics = ckpt.get("best_metrics") or {}
    else:
        best_val = {}
    test_is_val = recipe.eval.test and trainer.data.test is trainer.data.val and bool(best_metrics)
    if not recipe.eval.test:  # a hyper-parameter search run: the test split stays unseen
        test = {}
    elif test_is_val:
        console.info("no test split: test metrics = the best epoch's validation (not re-run)")
        test = dict(best_metrics)
    else:
        test = trainer.task.evaluate(
            trainer.method.student_for_inference(),
            trainer.loaders["test"],
            trainer.dist.device,
            trainer.input_key,
        )
    wall = wall_so_far + time.perf_counter() - t0
    result = FitResult(
        trainer.run_dir, best_epoch, best_val, test, recipe.train.epochs, wall, state.resumed_from
    )
    if trainer.dist.is_main:
        atomic_write_json(
            trainer.run_dir / "final.json",
            {
                "best_epoch": best_epoch,
                "best_val": best_val,
                "test": test,
                "test_is_val": test_is_val,
                "epochs": recipe.train.epochs,
                "wall_time_s": wall,
                "resumed_from_epoch": state.resumed_from,
            },
        )
    trainer.logger.close()
    return result
