"""The one training loop for every method and task (after torchvision's references).

Device-agnostic; AMP (bf16/fp16) on CUDA only; gradient accumulation and clipping; DDP
under torchrun; `last.pt` every epoch (and every `train.checkpoint_every` steps, and on
SIGINT/SIGTERM after the current step), `best.pt` and `student.pt` on the validation metric,
`epochs/epoch-NNNN.pt` for the last `train.keep_last` epochs; resumable mid-epoch to
bit-identical weights on CPU (the sampler position, every RNG and the epoch's running
averages are in `last.pt`); evaluation never draws from the training RNG streams; a NaN/Inf
loss stops the run naming the step, the term and the batch's samples.

Epochs are counted from 1 everywhere a person or a file sees them (logs, metrics.jsonl,
final.json, checkpoints, epoch snapshots); samplers, datasets and methods still receive the
0-based index their per-epoch randomness is keyed by.
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

from cmkd_cli import console, interrupts, units
from cmkd_cli.config import dump_recipe
from cmkd_cli.data.datasets import keyed_rng
from cmkd_cli.data.samplers import ResumableSampler
from cmkd_cli.engine.checkpoint import (
    capture_rng,
    evaluation_state,
    finished_epoch,
    load_checkpoint,
    restore_rng,
    rng_isolated,
    save_checkpoint,
    save_epoch_snapshot,
)
from cmkd_cli.engine.distributed import DistInfo, barrier, to_device
from cmkd_cli.engine.identity import recipe_hash
from cmkd_cli.engine.loaders import loader_options
from cmkd_cli.engine.logging import MetricsLogger
from cmkd_cli.engine.optim import build_optimizer, build_scheduler
from cmkd_cli.engine.precision import ReducedPrecision, cpu_support_warning
from cmkd_cli.engine.speed import apply_speed_switches, channels_last_inputs
from cmkd_cli.engine.teacher_cache import build_cache, cache_key
from cmkd_cli.errors import RunError, UsageError
from cmkd_cli.interrupts import ignore_in_worker
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
    best_epoch: int | None  # 1-based
    best_val: dict[str, float]
    test: dict[str, float]
    epochs: int
    wall_time_s: float
    resumed_from_epoch: int | None = None  # 1-based epoch the last resume started in


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
    # loaders draw their workers' base seed from their own generator, never the global one
    options = loader_options(cfg.num_workers, dist.device, dist.world_size)
    if options["num_workers"]:  # signals are the main process's to handle
        options["worker_init_fn"] = ignore_in_worker
    if hasattr(data.train, "batch_sampler"):  # the dataset builds its batches (e.g. P x M)
        train_sampler = ResumableSampler(
            data.train.batch_sampler(cfg.batch_size, recipe.train.seed, dist.rank, dist.world_size),
            items_per_batch=1,
        )
        train = DataLoader(
            data.train, batch_sampler=train_sampler, generator=torch.Generator(), **options
        )
    else:
        train_sampler = ResumableSampler(
            DistributedSampler(
                data.train,
                num_replicas=dist.world_size,
                rank=dist.rank,
                shuffle=True,
                seed=recipe.train.seed,
                drop_last=cfg.drop_last,
            ),
            items_per_batch=local_bs,
        )
        train = DataLoader(
            data.train,
            batch_size=local_bs,
            sampler=train_sampler,
            drop_last=cfg.drop_last,
            generator=torch.Generator(),
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
            generator=torch.Generator(),
            **options,
        )

    return {
        "train": train,
        "sampler": train_sampler,
        "val": evaluation(data.val),
        "test": evaluation(data.test),
    }


def release_workers(loaders: dict[str, Any]) -> None:
    """Stop the loaders' persistent workers now, however the run ends: they ignore SIGTERM
    (`make_loaders`), so left to the interpreter's exit, which terminates and joins them,
    they would keep it waiting (`interrupts.handle_signals` kills any that remain)."""
    for loader in loaders.values():
        # a DataLoader keeps its iterator (and its workers) only with persistent workers
        if isinstance(loader, DataLoader) and loader._iterator is not None:
            loader._iterator._shutdown_workers()
            loader._iterator = None


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
    with rng_isolated():  # a run draws the same numbers whether the cache exists or not
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
    # a run draws the same numbers whether the cache exists or not; the teacher's input, once
    with rng_isolated(), data.train.carrying("t"):
        method.teacher_cache = build_cache(
            root / "teacher-outputs" / key,
            method.teacher,
            data.train,
            method.teacher_tap_outputs,
            dist,
            batch_size=recipe.data.eval_batch_size,
        )


def reduced_precision(
    method: Method, amp: str, device: torch.device, warn: bool = True
) -> ReducedPrecision:
    """`train.amp`'s policy with the student's and the run teacher's bodies wrapped
    (cmkd_cli.engine.precision); warns once when this CPU would emulate the format."""
    policy = ReducedPrecision(amp, device)
    message = cpu_support_warning(amp, device)
    if message and warn:
        console.warn(message)
    for network in method.networks_run():
        policy.wrap(network)
    return policy


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


#: what a weights-only best.pt keeps of `checkpoint_state`
BEST_WEIGHTS_ONLY = (
    "student",
    "epoch",
    "epochs_done",
    "batch",
    "step",
    "best",
    "best_epoch",
    "best_metrics",
    "recipe",
    "recipe_hash",
    "data_spec",
)


@dataclass
class FitState:
    """Where a run stands: what `last.pt` records and `resume` restores (epochs from 1)."""

    epoch: int = 1  # the epoch being trained
    batch: int = 0  # batches of `epoch` trained so far
    step: int = 0  # optimiser steps so far
    best: float | None = None
    best_epoch: int | None = None
    sums: dict[str, float] = field(default_factory=dict)  # the epoch's batch-weighted sums
    n_seen: int = 0  # samples of the epoch seen so far
    epoch_time: float = 0.0  # seconds spent on the epoch so far (over resumes)
    resumed_from: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)  # all of the best epoch's
    saved: bool = True  # last.pt holds exactly this state

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch, self.sums, self.n_seen, self.epoch_time = 0, {}, 0, 0.0

    @property
    def shown_epoch(self) -> int:
        """The epoch a person is told about: the one in progress, or the last one finished."""
        return self.epoch if self.batch else max(1, self.epoch - 1)


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
    precision: ReducedPrecision
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
    end (log, save), then test the best student. On SIGINT/SIGTERM the current step ends,
    last.pt is written and `Interrupted` raised (cmkd_cli.interrupts). `best_weights_only`:
    best.pt keeps the student's weights and the run's bookkeeping only (what a trained
    teacher needs; last.pt still holds everything for an exact resume).
    """
    t_start = time.perf_counter()
    trainer = build(method, data, task, recipe, run_dir, dist, input_key, extra_state)
    trainer.best_weights_only = best_weights_only
    state = resume(trainer)
    try:
        while state.epoch <= recipe.train.epochs:
            if state.batch < trainer.steps_per_epoch:
                train_epoch(trainer, state)
            val = validate(trainer, state)
            with interrupts.deferred():
                end_epoch(trainer, state, val)
            stop_if_requested(trainer, state)
        return finish(trainer, state, time.perf_counter() - t_start)
    except interrupts.StopNow as stop:
        # stopped in validation (or the final test): an epoch trained but not yet saved is kept
        with interrupts.deferred():
            if not state.saved and state.batch == trainer.steps_per_epoch:
                save(trainer, state)
        raise _interrupted(state, stop.signum) from None
    finally:
        trainer.logger.close()  # TensorBoard's buffered events too, however the run ends
        release_workers(trainer.loaders)


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
    precision = reduced_precision(method, recipe.train.amp, device, dist.is_main)
    steps_per_epoch = len(loaders["train"])
    if recipe.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, recipe.train.max_steps_per_epoch)
    opt_steps_per_epoch = math.ceil(steps_per_epoch / recipe.train.grad_accum)
    optimizer = build_optimizer(method.trainable_groups(), recipe.optim)
    scheduler = build_scheduler(
        optimizer, recipe.schedule, opt_steps_per_epoch, recipe.train.epochs
    )
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.train.amp == "fp16")
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
        precision=precision,
        logger=logger,
        extra_state=extra_state or {},
    )


def _position(ckpt: dict[str, Any]) -> tuple[int, int, int | None]:
    """(epochs done, batches of the next epoch done, best epoch), all 1-based; a checkpoint
    written before mid-epoch resume counted its (finished) epochs from 0."""
    if "epochs_done" in ckpt:
        return ckpt["epochs_done"], ckpt["batch"], ckpt["best_epoch"]
    best = ckpt.get("best_epoch", -1)
    return finished_epoch(ckpt), 0, (best + 1 if best is not None and best >= 0 else None)


def resume(trainer: Trainer) -> FitState:
    """The state in RUN/last.pt (weights, optimiser, schedule, RNG, the epoch's progress), or
    a fresh state (and RUN/config.yaml written) when there is none; metrics.jsonl keeps only
    the rows logged up to that state (a killed process's later rows are redone)."""
    state = FitState()
    if not trainer.last_path.exists():
        config = trainer.run_dir / "config.yaml"
        if trainer.dist.is_main and not config.exists():
            atomic_write_text(config, dump_recipe(trainer.recipe))
        trainer.logger.truncate_after(state.epoch, 0)  # killed before its first last.pt
        return state
    ckpt = load_checkpoint(trainer.last_path, map_location=trainer.dist.device)
    trainer.method.student.load_state_dict(ckpt["student"])
    trainer.method.load_checkpoint_state(ckpt["method"], resume=True)
    trainer.method.load_resume_extras(ckpt.get("method_extras", {}))
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"])
    done, batch, state.best_epoch = _position(ckpt)
    state.epoch, state.batch, state.step, state.best = done + 1, batch, ckpt["step"], ckpt["best"]
    state.best_metrics = ckpt.get("best_metrics") or {}
    progress = ckpt.get("progress") or {}
    state.sums = dict(progress.get("sums", {}))
    state.n_seen = int(progress.get("n_seen", 0))
    state.epoch_time = float(progress.get("epoch_time", 0.0))
    state.resumed_from = state.epoch
    trainer.logger.truncate_after(state.epoch, state.batch)
    where = f"batch {batch} of epoch {state.epoch}" if batch else f"the end of epoch {done}"
    console.info(f"resuming {trainer.run_dir} at {where} (step {state.step})")
    return state


def train_epoch(trainer: Trainer, state: FitState) -> None:
    """Optimise over the rest of the current epoch (from `state.batch`). A signal is acted
    on after the optimiser step it arrives in: last.pt is written, `Interrupted` raised."""
    recipe, device = trainer.recipe, trainer.dist.device
    accum, steps, index = recipe.train.grad_accum, trainer.steps_per_epoch, state.epoch - 1
    with interrupts.deferred():
        trainer.loaders["sampler"].set_epoch(index)
        trainer.loaders["sampler"].skip_batches(state.batch)
        trainer.loaders["train"].generator.manual_seed(
            int(keyed_rng("loader", recipe.train.seed, index).integers(2**62))
        )
        trainer.data.train.set_epoch(index, seed=recipe.train.seed)
        trainer.method.on_epoch_start(index)
        trainer.model.train()
        batches = iter(trainer.loaders["train"])
        t0, spent = time.perf_counter(), state.epoch_time
        loss = {"total": 0.0}
        for i in track(
            range(state.batch, steps),
            total=steps - state.batch,
            description=f"epoch {state.epoch}/{recipe.train.epochs}",
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
            loss["total"] = _account(
                trainer, state, batch, out, total, i, spent + time.perf_counter() - t0
            )
            state.batch, state.saved = i + 1, False
            state.epoch_time = spent + time.perf_counter() - t0
            if last_micro:
                every = recipe.train.checkpoint_every
                if every and state.step % every == 0 and state.batch < steps:
                    save(trainer, state)
                stop_if_requested(trainer, state)


def _account(
    trainer: Trainer,
    state: FitState,
    batch: dict[str, Any],
    out: Any,
    total: torch.Tensor,
    i: int,
    elapsed: float,
) -> float:
    """Add the batch's losses and statistics to the epoch's sums; log a step row when due.
    Returns the batch's total loss."""
    recipe, dist = trainer.recipe, trainer.dist
    bs = len(batch["y"]) if "y" in batch else 1
    state.n_seen += bs
    row = {f"loss/{k}": v.detach().float().item() for k, v in out.losses.items()}
    row["loss/total"] = float(total.detach())
    row.update({f"stats/{k}": float(v) for k, v in out.stats.items()})
    for k, v in row.items():
        state.sums[k] = state.sums.get(k, 0.0) + v * bs
    if dist.is_main and (i % recipe.train.log_every == 0 or i + 1 == trainer.steps_per_epoch):
        row.update(
            {
                "kind": "step",
                "epoch": state.epoch,
                "batch": i + 1,
                "step": state.step,
                "samples_per_s": state.n_seen * dist.world_size / max(elapsed, 1e-9),
            }
        )
        row.update(
            {
                f"lr/{g.get('name', j)}": g["lr"]
                for j, g in enumerate(trainer.optimizer.param_groups)
            }
        )
        trainer.logger.log(row)
    return row["loss/total"]


def _forward_backward(
    trainer: Trainer, state: FitState, batch: dict[str, Any], i: int, sync: bool
) -> tuple[Any, torch.Tensor]:
    """The method's losses on one batch, checked finite, and their backward pass."""
    model, dist = trainer.model, trainer.dist
    no_sync = contextlib.nullcontext() if sync or not dist.enabled else model.no_sync()
    with no_sync:
        with trainer.precision.step():
            out = model(batch)
        total = sum(out.losses.values())
        bad = [k for k, v in out.losses.items() if not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteLoss(_nonfinite_message(trainer, state, batch, out, bad[0], i))
        trainer.scaler.scale(total / trainer.recipe.train.grad_accum).backward()
    return out, total


def _nonfinite_message(
    trainer: Trainer, state: FitState, batch: dict[str, Any], out: Any, term: str, i: int
) -> str:
    """Which step, term and samples gave a non-finite loss, and where the last good state is."""
    ids = sample_ids(trainer.data.train, batch)
    culprits = []
    if ids and out.logits is not None and out.logits.shape[0] == len(ids):
        rows = ~torch.isfinite(out.logits.detach().flatten(1)).all(dim=1)
        culprits = [ids[j] for j in rows.nonzero().flatten().tolist()]
    samples = f"; its samples: {_listed(ids)}" if ids else ""
    if culprits:
        samples += f" (non-finite output for {_listed(culprits)})"
    last = trainer.last_path
    return (
        f"step {state.step + 1} (epoch {state.epoch}, batch {i + 1}): loss term `{term}` is "
        f"{out.losses[term].item()}{samples}; the last good state is "
        f"{last if last.exists() else 'not saved yet'}"
    )


def _listed(items: list[str], limit: int = 8) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def sample_ids(dataset: Any, batch: dict[str, Any]) -> list[str]:
    """The ids of a batch's samples (`dataset.sample_id`); [] when it carries no indices."""
    if "index" not in batch or not hasattr(dataset, "sample_id"):
        return []
    return [dataset.sample_id(int(i)) for i in batch["index"].tolist()]


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


def stop_if_requested(trainer: Trainer, state: FitState) -> None:
    """After a step or an epoch: on a signal (agreed by every process) save and stop."""
    signum = interrupts.requested()
    if trainer.dist.enabled:
        flag = torch.tensor([signum or 0], device=trainer.dist.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        signum = int(flag.item()) or None
    if signum is None:
        return
    with interrupts.deferred():
        if not state.saved:
            save(trainer, state)
    raise _interrupted(state, signum)


def _interrupted(state: FitState, signum: int) -> interrupts.Interrupted:
    return interrupts.Interrupted(
        signum, f"interrupted at step {state.step} (epoch {state.shown_epoch})"
    )


def evaluate_split(trainer: Trainer, split: str) -> dict[str, float]:
    """The task's metrics of the student on `split` (val|test), drawing nothing from the
    training RNG streams."""
    with rng_isolated():
        return trainer.task.evaluate(
            trainer.method.student_for_inference(),
            trainer.loaders[split],
            trainer.dist.device,
            trainer.input_key,
        )


def validate(trainer: Trainer, state: FitState) -> dict[str, float]:
    """Validation metrics of the student, on the epochs `eval.every` asks for (else {});
    the training RNG streams are left as they were."""
    recipe = trainer.recipe
    if not (state.epoch % recipe.eval.every == 0 or state.epoch == recipe.train.epochs):
        return {}
    val = evaluate_split(trainer, "val")
    if recipe.eval.metric not in val:
        raise UsageError(f"eval.metric: {recipe.eval.metric!r} is not one of {sorted(val)}")
    return val


def end_epoch(trainer: Trainer, state: FitState, val: dict[str, float]) -> None:
    """Record the best, log the epoch, move to the next epoch and save last.pt (+ best.pt)."""
    metric = trainer.recipe.eval.metric
    is_best = bool(val) and _improved(val[metric], state.best, trainer.recipe.eval.mode)
    if is_best:
        state.best, state.best_epoch, state.best_metrics = val[metric], state.epoch, dict(val)
    log_epoch(trainer, state, val)
    state.next_epoch()
    state.saved = False
    save(trainer, state, is_best, epoch_end=True)


def log_epoch(trainer: Trainer, state: FitState, val: dict[str, float]) -> None:
    """The epoch row of metrics.jsonl / TensorBoard and one line for humans."""
    device = trainer.dist.device
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    train_avg = {k: v / max(state.n_seen, 1) for k, v in state.sums.items()}
    trainer.logger.log(
        {
            "kind": "epoch",
            "epoch": state.epoch,
            "step": state.step,
            **{f"train/{k}": v for k, v in train_avg.items()},
            **{f"val/{k}": v for k, v in val.items()},
            "epoch_time_s": state.epoch_time,
            "peak_mem_bytes": peak,
        }
    )
    console.info(
        f"epoch {state.epoch}/{trainer.recipe.train.epochs}  "
        f"loss {train_avg.get('loss/total', 0):.4f}  "
        + "  ".join(f"val {k} {units.show(k, v)}" for k, v in val.items())
        + f"  ({state.epoch_time:.1f}s)"
    )


def checkpoint_state(trainer: Trainer, state: FitState) -> dict[str, Any]:
    """Everything `resume` needs to continue exactly where the run stands."""
    return {
        "student": trainer.method.student.state_dict(),
        "method": trainer.method.checkpoint_state(),
        "method_extras": trainer.method.resume_extras(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "epoch": state.shown_epoch,
        "epochs_done": state.epoch - 1,
        "batch": state.batch,
        "step": state.step,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "best_metrics": state.best_metrics,
        "progress": {"sums": state.sums, "n_seen": state.n_seen, "epoch_time": state.epoch_time},
        "rng": capture_rng(),
        "recipe": trainer.recipe.model_dump(mode="json"),
        "recipe_hash": recipe_hash(trainer.recipe),
        "data_spec": trainer.data.spec(),
        "teacher_ref": trainer.extra_state.get("teacher_ref"),
    }


def save(trainer: Trainer, state: FitState, is_best: bool = False, epoch_end: bool = False) -> None:
    """From process 0: `last.pt` (resumable; mid-epoch and on a signal always, at an epoch's
    end only every `train.save_every` epochs and after the last); `best.pt` (what evaluation
    needs: no optimiser or RNG state, no training-only memories) and `student.pt` when the
    validation metric improved; at each epoch's end the epoch snapshot when
    `train.keep_last` is set."""
    train, done = trainer.recipe.train, state.epoch - 1  # `end_epoch` has moved to the next
    due = not epoch_end or done % train.save_every == 0 or done == train.epochs
    snapshot = epoch_end and bool(train.keep_last)
    if trainer.dist.is_main and (due or is_best or snapshot):
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
        if snapshot:
            save_epoch_snapshot(trainer.run_dir, lean, train.keep_last)
    if due:
        state.saved = True


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
        best_epoch = _position(ckpt)[2]
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
        test = evaluate_split(trainer, "test")
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
                "recipe_hash": recipe_hash(recipe),
            },
        )
    return result
