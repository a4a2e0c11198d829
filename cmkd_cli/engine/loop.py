"""The one training loop for every method and task (after torchvision's references).

Device-agnostic; AMP (bf16/fp16) on CUDA only; gradient accumulation and clipping; DDP
under torchrun; `last.pt` every epoch and `best.pt` on the validation metric; resumable to
bit-identical weights on CPU; a NaN/Inf loss stops the run naming the step and the term.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from cmkd_cli import console
from cmkd_cli.config import dump_recipe
from cmkd_cli.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from cmkd_cli.engine.distributed import DistInfo, to_device
from cmkd_cli.engine.logging import MetricsLogger
from cmkd_cli.engine.optim import build_optimizer, build_scheduler
from cmkd_cli.errors import RunError, UsageError
from cmkd_cli.io import atomic_write_json, atomic_write_text
from cmkd_cli.methods.base import Method
from cmkd_cli.schema import RecipeBase


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


def make_loaders(data: Any, recipe: RecipeBase, dist: DistInfo) -> dict[str, Any]:
    cfg = recipe.data
    if cfg.batch_size % dist.world_size:
        raise UsageError(
            f"data.batch_size: {cfg.batch_size} is not divisible by the {dist.world_size} processes"
        )
    local_bs = cfg.batch_size // dist.world_size
    pin = dist.device.type == "cuda"
    if hasattr(data.train, "batch_sampler"):  # the dataset builds its batches (e.g. P x M)
        train_sampler = data.train.batch_sampler(
            cfg.batch_size, recipe.train.seed, dist.rank, dist.world_size
        )
        train = DataLoader(
            data.train, batch_sampler=train_sampler, num_workers=cfg.num_workers, pin_memory=pin
        )
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
            num_workers=cfg.num_workers,
            drop_last=cfg.drop_last,
            pin_memory=pin,
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
            num_workers=cfg.num_workers,
            pin_memory=pin,
        )

    return {
        "train": train,
        "sampler": train_sampler,
        "val": evaluation(data.val),
        "test": evaluation(data.test),
    }


def attach_teacher_cache(method: Method, data: Any, recipe: RecipeBase, dist: DistInfo) -> None:
    """Serve a frozen teacher's outputs from disk when its inputs never change."""
    from cmkd_cli.engine.teacher_cache import build_cache, cache_key
    from cmkd_cli.io import default_cache_dir

    method.teacher_cache = None
    if not (
        recipe.train.teacher_cache
        and method.teacher is not None
        and method.teacher_frozen
        and getattr(data, "teacher_static", False)
    ):
        return
    taps = sorted(
        method.teacher_tap_outputs().keys() | {p for t in method._teacher_taps for p in t.paths}
    )
    key = cache_key(
        method.teacher,
        recipe.teacher.model_dump(mode="json") if recipe.teacher else None,
        recipe.data.model_dump(mode="json"),
        taps,
    )
    root = Path(recipe.train.cache_dir) if recipe.train.cache_dir else default_cache_dir()
    method.teacher_cache = build_cache(
        root / "teacher-outputs" / key,
        method.teacher,
        data.train,
        method.teacher_tap_outputs,
        dist,
        batch_size=recipe.data.eval_batch_size,
    )


def _autocast(recipe: RecipeBase, device: torch.device):
    if recipe.train.amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if recipe.train.amp == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit(
    method: Method,
    data: Any,
    task: Any,
    recipe: RecipeBase,
    run_dir: Path,
    dist: DistInfo,
    input_key: str = "x",
    extra_state: dict[str, Any] | None = None,
) -> FitResult:
    """Train `method` on `data` and evaluate its student; resume from RUN/last.pt if present."""
    t_start = time.perf_counter()
    device = dist.device
    run_dir.mkdir(parents=True, exist_ok=True)
    method.to(device)
    loaders = make_loaders(data, recipe, dist)
    attach_teacher_cache(method, data, recipe, dist)
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
    metric = recipe.eval.metric
    start_epoch, global_step, best, best_epoch, resumed = 0, 0, None, -1, None

    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if last_path.exists():
        ckpt = load_checkpoint(last_path, map_location=device)
        method.student.load_state_dict(ckpt["student"])
        method.load_checkpoint_state(ckpt["method"], resume=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, global_step = ckpt["epoch"] + 1, ckpt["step"]
        best, best_epoch = ckpt["best"], ckpt["best_epoch"]
        restore_rng(ckpt["rng"])
        resumed = ckpt["epoch"]
        logger.truncate_after(ckpt["epoch"])
        console.info(f"resuming {run_dir} after epoch {ckpt['epoch'] + 1}")
    elif dist.is_main:
        atomic_write_text(run_dir / "config.yaml", dump_recipe(recipe))

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {
            "student": method.student.state_dict(),
            "method": method.checkpoint_state(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": global_step,
            "best": best,
            "best_epoch": best_epoch,
            "rng": capture_rng(),
            "recipe": recipe.model_dump(mode="json"),
            "data_spec": data.spec(),
            "teacher_ref": (extra_state or {}).get("teacher_ref"),
        }

    accum = recipe.train.grad_accum
    for epoch in range(start_epoch, recipe.train.epochs):
        loaders["sampler"].set_epoch(epoch)
        data.train.set_epoch(epoch, seed=recipe.train.seed)
        method.on_epoch_start(epoch)
        model.train()
        t_epoch = time.perf_counter()
        sums: dict[str, float] = {}
        n_seen = 0
        batches = iter(loaders["train"])
        progress = console_progress(steps_per_epoch, f"epoch {epoch + 1}/{recipe.train.epochs}")
        for i in range(steps_per_epoch):
            batch = to_device(next(batches), device)
            last_micro = (i + 1) % accum == 0 or i + 1 == steps_per_epoch
            sync = contextlib.nullcontext() if last_micro or not dist.enabled else model.no_sync()
            with sync:
                with _autocast(recipe, device):
                    out = model(batch)
                total = sum(out.losses.values())
                bad = [k for k, v in out.losses.items() if not torch.isfinite(v).all()]
                if bad:
                    raise NonFiniteLoss(
                        f"step {global_step + 1} (epoch {epoch + 1}, batch {i + 1}): loss term "
                        f"`{bad[0]}` is {out.losses[bad[0]].item()}; the last good state is "
                        f"{last_path if last_path.exists() else 'not saved yet'}"
                    )
                scaler.scale(total / accum).backward()
            if last_micro:
                if recipe.train.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]],
                        recipe.train.grad_clip,
                    )
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                global_step += 1
            bs = len(batch["y"]) if "y" in batch else 1
            n_seen += bs
            row = {f"loss/{k}": v.detach().float().item() for k, v in out.losses.items()}
            row["loss/total"] = float(total.detach())
            row.update({f"stats/{k}": float(v) for k, v in out.stats.items()})
            for k, v in row.items():
                sums[k] = sums.get(k, 0.0) + v * bs
            if dist.is_main and (i % recipe.train.log_every == 0 or i + 1 == steps_per_epoch):
                elapsed = time.perf_counter() - t_epoch
                row.update(
                    {
                        "kind": "step",
                        "epoch": epoch,
                        "step": global_step,
                        "samples_per_s": n_seen * dist.world_size / max(elapsed, 1e-9),
                    }
                )
                row.update(
                    {
                        f"lr/{g.get('name', j)}": g["lr"]
                        for j, g in enumerate(optimizer.param_groups)
                    }
                )
                logger.log(row)
            progress.advance(row.get("loss/total", float(total.detach())))
        progress.close()
        epoch_time = time.perf_counter() - t_epoch
        train_avg = {k: v / max(n_seen, 1) for k, v in sums.items()}
        validate = (epoch + 1) % recipe.eval.every == 0 or epoch + 1 == recipe.train.epochs
        val = (
            task.evaluate(method.student_for_inference(), loaders["val"], device, input_key)
            if validate
            else {}
        )
        if validate and metric not in val:
            raise UsageError(f"eval.metric: {metric!r} is not one of {sorted(val)}")
        is_best = validate and _improved(val[metric], best, recipe.eval.mode)
        if is_best:
            best, best_epoch = val[metric], epoch
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        logger.log(
            {
                "kind": "epoch",
                "epoch": epoch,
                "step": global_step,
                **{f"train/{k}": v for k, v in train_avg.items()},
                **{f"val/{k}": v for k, v in val.items()},
                "epoch_time_s": epoch_time,
                "peak_mem_bytes": peak,
            }
        )
        console.info(
            f"epoch {epoch + 1}/{recipe.train.epochs}  loss {train_avg.get('loss/total', 0):.4f}  "
            + "  ".join(f"val {k} {v:.4f}" for k, v in val.items())
            + f"  ({epoch_time:.1f}s)"
        )
        if dist.is_main:
            state = checkpoint(epoch)
            save_checkpoint(last_path, state)
            if is_best:  # without the memories only training needs (method docstrings)
                state["method"] = method.checkpoint_state(resumable=False)
                save_checkpoint(best_path, state)

    # final evaluation of the best student on the test split
    if best_path.exists():
        ckpt = load_checkpoint(best_path, map_location=device)
        method.student.load_state_dict(ckpt["student"])
        best = ckpt["best"]
        best_epoch = ckpt["best_epoch"]
        best_val = {metric: best}
    else:
        best_val = {}
    test = task.evaluate(method.student_for_inference(), loaders["test"], device, input_key)
    wall = time.perf_counter() - t_start
    result = FitResult(run_dir, best_epoch, best_val, test, recipe.train.epochs, wall, resumed)
    if dist.is_main:
        atomic_write_json(
            run_dir / "final.json",
            {
                "best_epoch": best_epoch,
                "best_val": best_val,
                "test": test,
                "epochs": recipe.train.epochs,
                "wall_time_s": wall,
                "resumed_from_epoch": resumed,
            },
        )
    logger.close()
    return result


class console_progress:  # noqa: N801 - used like a function
    """A per-epoch progress bar (rich on a TTY, nothing otherwise: epochs print a line)."""

    def __init__(self, total: int, description: str) -> None:
        import sys

        self._bar = None
        if sys.stderr.isatty() and not (console.OPTIONS.quiet or console.OPTIONS.json):
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeRemainingColumn(),
                console=console.stderr,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, loss=0.0)

    def advance(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, loss=loss)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
