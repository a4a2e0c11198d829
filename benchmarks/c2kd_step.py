"""C2KD's training step: the released code's loop against cmkd's engine, interleaved.

Not a test. One process times, round after round in alternating order (so a busy machine
slows every arm alike), on the recipe `c2kd-av-digits-v2a` (paper B's AVE visual -> audio
setup at AV-digits scale: audio ResNet-18 student on 257 x 101 spectrograms, image
ResNet-18 teacher on 3 x 64 x 64, batch 64, SGD 1e-2 momentum 0.9, teacher fully tuned):

- `released`: the released training loop (`benchmarks/released_c2kd.py`: two torchvision
  ResNet-18s, the proxies, Eq. 6 with the per-sample scipy Kendall loop, no engine), with its
  DataLoader (pickled spectrograms + PIL images) and with the same batches preloaded;
- `cmkd`: `engine.loop.train_epoch` on the recipe as a user runs it (decoded-input cache
  on), with its DataLoader and with preloaded batches; `cmkd (no input cache)` decodes
  every item as before the cache;
- `cmkd bf16`: the recipe with `train.amp: bf16` alone (the networks' bodies in bfloat16 on
  a CPU with AVX512-BF16/AMX, heads and losses in fp32: cmkd_cli/engine/precision.py);
- `cmkd fast`: the recipe's `fast` variant (`teacher.tune: partial`, `train.channels_last`,
  `train.amp: bf16`), and with `--compile` also `train.compile`;
- teacher pretraining: `pre_train_models`' step (both networks forward, the teacher's CE
  backward) against `cmkd train-teacher`'s (the teacher alone, its own view only).

Then one instrumented run of `cmkd` says where its step goes: data (waiting for the
loader), student / teacher forward (module hooks) and backward (first to last gradient
reaching each network's layers), proxies, KRC, the rest of the losses, optimiser, and
logging with the other bookkeeping (the remainder of the step).

Run: `python benchmarks/c2kd_step.py --data DATA_ROOT [--steps 10] [--rounds 2]
[--threads 2] [--workers N] [--compile] [--only PATTERN...] [--no-breakdown]
[--json out.json]` where DATA_ROOT holds
`av-digits/` (`cmkd prepare av-digits --root ../shared/data --out DATA_ROOT/av-digits`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import torch
from released_c2kd import ReleasedDataset, ReleasedDistill, ReleasedPretrain, prepare_pickles
from torch.utils.data import DataLoader

from cmkd_cli.config import load_recipe
from cmkd_cli.engine import loop
from cmkd_cli.engine.distributed import init_distributed
from cmkd_cli.engine.loaders import default_workers
from cmkd_cli.stages.experiment import build_experiment
from cmkd_cli.stages.train_teacher import teacher_recipe

RECIPE = "c2kd-av-digits-v2a"


def fast_sets() -> list[str]:
    """The recipe's `fast` comparison variant as `--set` overrides (one source of truth)."""
    recipe = load_recipe(RECIPE, [], {"data_root": "."})
    (fast,) = [v for v in recipe.compare.variants if v.name == "fast"]
    return [f"{k}={json.dumps(v)}" for k, v in fast.set.items()]


FAST = fast_sets()


class EngineArm:
    """cmkd's engine on the recipe: `run(n)` trains n steps (one short epoch) and returns
    seconds per step; `preload()` swaps the loader for the same batches held in memory."""

    def __init__(self, sets: list[str], args: argparse.Namespace, tmp: Path, teacher=False):
        base = [
            "seeds=[1]",
            "compare=[]",
            f"train.max_steps_per_epoch={args.steps}",
            "train.epochs=100",
            f"train.threads={args.threads}",
            f"train.cache_dir={tmp / 'cache'}",
            "output.tensorboard=false",
        ]
        if args.workers is not None:
            base.append(f"data.num_workers={args.workers}")
        recipe = load_recipe(RECIPE, base + sets, {"data_root": str(args.data)})
        if teacher:  # what `cmkd train-teacher` trains: the teacher alone on its input `t`
            recipe = teacher_recipe(recipe)  # whole epochs: cut to the timed steps again
            recipe.train.max_steps_per_epoch = args.steps
        self.exp = build_experiment(recipe)
        if teacher:
            self.exp.method.input_key = "t"
        dist = init_distributed("cpu")
        run_dir = tmp / f"run-{len(list(tmp.glob('run-*')))}"
        self.trainer = loop.build(
            self.exp.method,
            self.exp.data,
            self.exp.task,
            recipe,
            run_dir,
            dist,
            input_key="t" if teacher else "x",
        )
        self.state = loop.FitState()

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        loop.train_epoch(self.trainer, self.state)
        self.state.epoch, self.state.batch, self.state.epoch_time = self.state.epoch + 1, 0, 0.0
        return (time.perf_counter() - t0) / n

    def preload(self) -> None:
        loader = self.trainer.loaders["train"]
        batches = iter(loader)
        held = Preloaded(next(batches) for _ in range(self.trainer.steps_per_epoch))
        held.generator = loader.generator
        loop.release_workers(self.trainer.loaders)
        self.trainer.loaders["train"] = held

    def close(self) -> None:
        """Stop the loader's persistent workers (they would keep the exit waiting)."""
        loop.release_workers(self.trainer.loaders)


class Preloaded(list):
    """Batches held in memory, with the `generator` the engine seeds every epoch."""

    generator: torch.Generator


class ReleasedArm:
    """The released loop (`released_c2kd`) over its own DataLoader or preloaded batches.

    Its loader is the released one (a worker forked per epoch, not persistent), iterated
    across timed blocks as the released loop iterates an epoch: a new epoch (fork, first
    batches) starts when the last one ends, so its per-epoch start is paid once per 37 steps
    (2,400 AV-digits training items, batch 64, last partial batch dropped as cmkd's), as in
    real training, not once per timed block.
    """

    def __init__(self, step: Any, data: Any, args: argparse.Namespace, tmp: Path) -> None:
        train = data.train
        specs = [train.views.audio(s, None).numpy() for s in train.samples]
        pickles = prepare_pickles(specs, tmp / "released-pickles")
        size = train.views.image.cfg.hw[0]
        dataset = ReleasedDataset(
            pickles, [s.image for s in train.samples], [s.label for s in train.samples], size, True
        )
        workers = default_workers() if args.workers is None else args.workers
        self.loader = DataLoader(
            dataset, batch_size=64, shuffle=True, num_workers=workers, drop_last=True
        )
        self.step, self.epoch, self.batches = step, 0, None
        self.batch_iter: Any = None

    def next_batch(self) -> Any:
        batch = next(self.batch_iter, None) if self.batch_iter is not None else None
        if batch is None:  # the epoch ended: the released loop starts the next one
            if self.batch_iter is not None:
                self.epoch += 1
            self.batch_iter = iter(self.loader)
            batch = next(self.batch_iter)
        return batch

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            data = self.batches[i] if self.batches is not None else self.next_batch()
            self.step.step(data, self.epoch)
        return (time.perf_counter() - t0) / n

    def preload(self, n: int) -> None:
        self.batches = [self.next_batch() for _ in range(n)]


def interleave(arms: dict[str, Callable[[int], float]], n: int, rounds: int) -> dict[str, list]:
    """Seconds per step of every arm, `rounds` times, in alternating order after a warm-up."""
    for run in arms.values():
        run(n)
    times: dict[str, list[float]] = defaultdict(list)
    for r in range(rounds):
        names = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in names:
            times[name].append(arms[name](n))
            print(f"  round {r + 1} {name}: {times[name][-1]:.3f} s/step", flush=True)
    return times


def ratio_rows(times: dict[str, list[float]], pairs: list[tuple[str, str]]) -> list[dict]:
    """Per-round ratios a / b (paired by round) of each (a, b) pair."""
    rows = []
    for a, b in pairs:
        if a in times and b in times:
            r = [x / y for x, y in zip(times[a], times[b], strict=True)]
            rows.append({"arm": a, "against": b, "ratios": r, "median": statistics.median(r)})
    return rows


# ---------------------------------------------------------------- where cmkd's step goes


class Stopwatch:
    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[name] += time.perf_counter() - t0

        return timed

    def around(self, module: torch.nn.Module, name: str) -> None:
        """Forward time of `module` by pre/post hooks."""
        start: list[float] = []
        module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))

        def post(*_):
            self.total[name] += time.perf_counter() - start.pop()

        module.register_forward_hook(post)

    def backward_span(self, module: torch.nn.Module, name: str) -> Callable[[], None]:
        """First to last gradient reaching `module`'s layers in a backward pass."""
        stamps: list[float] = []

        def on_grad(_g):
            stamps.append(time.perf_counter())

        def hook(_m, _i, out):
            if torch.is_tensor(out) and out.requires_grad:
                out.register_hook(on_grad)

        for m in module.modules():
            if not list(m.children()):
                m.register_forward_hook(hook)

        def close() -> None:
            if stamps:
                self.total[name] += max(stamps) - min(stamps)
            stamps.clear()

        return close


def breakdown(arm: EngineArm, n: int) -> dict[str, float]:
    """Seconds per step of each part of cmkd's step, from one instrumented short epoch
    (after one plain one: first steps pay for kernel set-up and the loader's start)."""
    arm.run(n)
    sw = Stopwatch()
    trainer, method = arm.trainer, arm.exp.method
    sw.around(method.student, "student forward")
    sw.around(method.teacher, "teacher forward")
    for name in ("proxy_s", "proxy_t"):
        sw.around(getattr(method, name), "proxies forward")
    method.select = sw.wrap("KRC selection", method.select)
    closers = [
        sw.backward_span(method.student, "student backward"),
        sw.backward_span(method.teacher, "teacher backward"),
    ]
    method.forward = sw.wrap("method forward", method.forward)
    fwd_bwd, opt_step = loop._forward_backward, loop._optimizer_step

    def forward_backward(*a, **k):
        out = sw.wrap("forward + backward", fwd_bwd)(*a, **k)
        for close in closers:
            close()
        return out

    loader = trainer.loaders["train"]

    class TimedLoader:
        generator = loader.generator

        def __iter__(self):
            it = iter(loader)
            return iter(lambda: sw.wrap("data", next)(it), None)

    trainer.loaders["train"] = TimedLoader()
    loop._forward_backward, loop._optimizer_step = forward_backward, sw.wrap("optimizer", opt_step)
    try:
        total = arm.run(n) * n
    finally:
        loop._forward_backward, loop._optimizer_step = fwd_bwd, opt_step
        trainer.loaders["train"] = loader
    t = sw.total
    backward = t["forward + backward"] - t["method forward"]
    parts = {
        "data (waiting for the loader)": t["data"],
        "student forward": t["student forward"],
        "student backward": t["student backward"],
        "teacher forward": t["teacher forward"],
        "teacher backward": t["teacher backward"],
        "proxies forward": t["proxies forward"],
        "KRC selection": t["KRC selection"],
        "other losses forward": t["method forward"]
        - t["student forward"]
        - t["teacher forward"]
        - t["proxies forward"]
        - t["KRC selection"],
        "other backward (proxies, losses)": backward
        - t["student backward"]
        - t["teacher backward"],
        "optimizer": t["optimizer"],
    }
    parts["logging and bookkeeping"] = total - sum(parts.values())
    return {k: v / n for k, v in parts.items()} | {"step": total / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding av-digits/")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, default=None, help="default: cmkd's default")
    parser.add_argument("--compile", action="store_true", help="add a train.compile arm")
    parser.add_argument("--skip-pretrain", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--only", nargs="+", default=None, help="time only the arms matching these patterns"
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the instrumented run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = torch.device("cpu")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        engines: list[EngineArm] = []

        def engine(sets: list[str], teacher: bool = False) -> EngineArm:
            engines.append(EngineArm(sets, args, tmp, teacher))
            return engines[-1]

        try:
            cmkd = engine([])
            classes = cmkd.exp.data.num_classes

            def released(preloaded: bool = False, pretrain: bool = False) -> Callable:
                net = ReleasedPretrain if pretrain else ReleasedDistill
                arm = ReleasedArm(net(classes, device), cmkd.exp.data, args, tmp)
                if preloaded:
                    arm.preload(args.steps)
                return arm.run

            def preloaded_cmkd() -> Callable:
                arm = engine([])
                arm.preload()
                return arm.run

            factories: dict[str, Callable[[], Callable[[int], float]]] = {
                "released (data)": released,
                "cmkd (data)": lambda: cmkd.run,
                "cmkd (no input cache, data)": lambda: engine(["train.input_cache=false"]).run,
                "cmkd bf16 (data)": lambda: engine(["train.amp=bf16"]).run,
                "cmkd fast (data)": lambda: engine(FAST).run,
                "released (preloaded)": lambda: released(preloaded=True),
                "cmkd (preloaded)": preloaded_cmkd,
            }
            if args.compile:
                compiled = FAST + ["train.compile=true"]
                factories["cmkd fast + compile (data)"] = lambda: engine(compiled).run
            if not args.skip_pretrain:
                factories["released teacher pretraining (data)"] = lambda: released(pretrain=True)
                factories["cmkd teacher pretraining (data)"] = lambda: engine([], True).run
            chosen = [
                n for n in factories if not args.only or any(fnmatch(n, p) for p in args.only)
            ]
            if not chosen:
                raise SystemExit(f"--only matches no arm of: {', '.join(factories)}")
            arms = {name: factories[name]() for name in chosen}
            times = interleave(arms, args.steps, args.rounds)
            parts = None if args.no_breakdown else breakdown(engine([]), args.steps)
        finally:
            for arm in engines:
                arm.close()
    pairs = [
        ("cmkd (data)", "released (data)"),
        ("cmkd (no input cache, data)", "released (data)"),
        ("cmkd (preloaded)", "released (preloaded)"),
        ("cmkd bf16 (data)", "released (data)"),
        ("cmkd fast (data)", "released (data)"),
        ("cmkd fast + compile (data)", "released (data)"),
        ("cmkd teacher pretraining (data)", "released teacher pretraining (data)"),
    ]
    ratios = ratio_rows(times, pairs)
    end = os.getloadavg()
    print(f"\n{'arm':40s} {'s/step (median)':>16s}  per round")
    for name, ts in times.items():
        rounds = " ".join(f"{t:.3f}" for t in ts)
        print(f"{name:40s} {statistics.median(ts):16.3f}  {rounds}")
    print(f"\n{'ratio':72s} {'median':>7s}  per round")
    for r in ratios:
        label = f"{r['arm']} / {r['against']}"
        print(f"{label:72s} {r['median']:7.2f}  " + " ".join(f"{x:.2f}" for x in r["ratios"]))
    if parts:
        print(f"\nwhere cmkd's step goes ({parts['step']:.3f} s/step, one instrumented run):")
        for k, v in parts.items():
            if k != "step":
                print(f"  {k:36s} {v:7.3f} s  {100 * v / parts['step']:5.1f}%")
    print(
        f"\n(threads {args.threads}, workers "
        f"{default_workers() if args.workers is None else args.workers}, {args.steps} steps x "
        f"{args.rounds} rounds; load average {load[0]:.2f} at start, {end[0]:.2f} at end)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"times": times, "ratios": ratios, "breakdown": parts, "load": [load, end]},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
