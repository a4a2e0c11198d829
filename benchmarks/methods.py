"""Per-step time and peak memory of every method relative to `baseline`, in one run.

Not a test. Each method is built from its zoo recipe (`recipes/zoo/NAME.yaml`; `baseline`
from the quickstart) on the same student and a batch of 64 digits, and timed over training
steps (forward, backward, optimiser step) after a warm-up, best of several repeats. Peak
memory is the process's resident high-water mark growth during the steps on CPU (VmHWM,
reset before each method) or `torch.cuda.max_memory_allocated` on CUDA. Two extra rows
put `soft_feature` on a CNN teacher over a static image view, with the teacher run live
and served from the frozen-teacher cache: the cache's target is within 1.05x of baseline.
On the tiny digits CNN (4 ms/step) the projection head of paper A alone costs more than
that; `--resnet` adds the same pair on a ResNet-18 student (8x8 digits, 3x3 stem), each
against a ResNet-18 baseline, where the teacher's cost is what the cache removes.

The last line times the batched Kendall tau-b of C2KD's sample filter against the
released code's per-sample scipy loop at B=64, C=309 (`benchmarks/krc.py`).

Run: `python benchmarks/methods.py [--device cuda] [--steps 20] [--only kd,c2kd] [--resnet]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import krc  # benchmarks/krc.py, beside this script
import torch

from cmkd_cli.config import load_recipe
from cmkd_cli.engine.distributed import init_distributed
from cmkd_cli.engine.loop import attach_teacher_cache, make_loaders
from cmkd_cli.engine.optim import build_optimizer
from cmkd_cli.methods import METHODS
from cmkd_cli.stages import train_teacher
from cmkd_cli.stages.experiment import build_experiment

RESNET_STUDENT = ["student.name=resnet18", "student.params={in_channels: 1, small_input: true}"]
IMAGE_TEACHER = [
    "data.params.teacher_view=image",
    "teacher.model.name=digits_cnn",
    "teacher.model.params={width: 24}",
    "teacher.tune=frozen",
]


def _rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def measure(
    name: str,
    sets: list[str],
    steps: int,
    repeats: int,
    device: str,
    cache: bool,
    tmp: Path,
    threads: int = 1,
) -> tuple[float, float]:
    recipe_name = "quickstart" if name == "baseline" else f"zoo/{name}"
    base = [
        "seeds=[1]",
        "compare=[]",
        "data.batch_size=64",
        "teacher.pretrain.epochs=1",
        f"train.device={device}",
        f"train.cache_dir={tmp / 'cache'}",
        f"train.teacher_cache={str(cache).lower()}",
        "output.tensorboard=false",
        f"train.threads={threads}",
    ]
    recipe = load_recipe(recipe_name, base + sets)
    dist = init_distributed(device)
    teacher = None
    if METHODS.get(recipe.method.name).uses_teacher and not recipe.teacher.checkpoint:
        key = train_teacher.teacher_key(recipe)
        teacher = Path(train_teacher.train(recipe, tmp / key, dist).checkpoint)
    exp = build_experiment(recipe, teacher_checkpoint=teacher)
    method = exp.method.to(dist.device)
    attach_teacher_cache(method, exp.data, recipe, dist)
    opt = build_optimizer(method.trainable_groups(), recipe.optim)
    batch = next(iter(make_loaders(exp.data, recipe, dist)["train"]))
    batch = {k: v.to(dist.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    sync = torch.cuda.synchronize if dist.device.type == "cuda" else (lambda: None)

    def step() -> None:
        out = method(batch)
        opt.zero_grad(set_to_none=True)
        sum(out.losses.values()).backward()
        opt.step()

    method.train()
    for _ in range(3):
        step()
    sync()
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    else:
        _rss_reset()
        start_mem = _status_kb("VmRSS:") * 1024
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = min(best, (time.perf_counter() - t0) / steps)
    if dist.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - start_mem
    else:
        peak = _status_kb("VmHWM:") * 1024 - start_mem
    return best, max(peak, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated method names")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--resnet",
        action="store_true",
        help="also a ResNet-18 student: the cached teacher's cost next to a real-size student",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in METHODS.names() if not args.only or n in args.only.split(",")]
    zoo = Path(__file__).resolve().parent.parent / "recipes" / "zoo"
    dense_only = [n for n in names if n != "baseline" and not (zoo / f"{n}.yaml").exists()]
    if dense_only:  # e.g. cirkd: per-pixel only, trained by tests/methods/test_dense_methods.py
        print(f"not timed here (no digits recipe, dense prediction only): {', '.join(dense_only)}")
    names = [n for n in names if n not in dense_only]
    # (label, method, --set overrides, teacher cache, the row it is compared with)
    rows = [("baseline", "baseline", [], False, "baseline")]
    rows += [(n, n, [], False, "baseline") for n in names if n != "baseline"]
    rows += [
        ("soft_feature (live CNN teacher)", "soft_feature", IMAGE_TEACHER, False, "baseline"),
        ("soft_feature (cached CNN teacher)", "soft_feature", IMAGE_TEACHER, True, "baseline"),
    ]
    if args.resnet:
        rows += [
            ("baseline (ResNet-18 student)", "baseline", RESNET_STUDENT, False, ""),
            (
                "soft_feature (cached, ResNet-18)",
                "soft_feature",
                IMAGE_TEACHER + RESNET_STUDENT,
                True,
                "baseline (ResNet-18 student)",
            ),
        ]
    with tempfile.TemporaryDirectory() as tmp:
        measure("baseline", [], args.steps, 1, args.device, False, Path(tmp), args.threads)
        results = {}
        for label, name, sets, cache, _ in rows:
            try:
                results[label] = measure(
                    name,
                    sets,
                    args.steps,
                    args.repeats,
                    args.device,
                    cache,
                    Path(tmp),
                    args.threads,
                )
            except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"{label}: skipped ({type(exc).__name__}: {exc})")
    base_m = results["baseline"][1]
    refs = {label: ref or label for label, *_, ref in rows}
    print(f"{'method':36s} {'ms/step':>9s} {'x baseline':>10s} {'peak MiB':>9s}")
    for label, (t, m) in results.items():
        ratio = t / results[refs[label]][0] if refs[label] in results else float("nan")
        print(f"{label:36s} {1000 * t:9.2f} {ratio:10.2f} {m / 2**20:9.1f}")
    print(
        f"(device {args.device}, batch 64, best of {args.repeats} x {args.steps} steps; "
        f"baseline peak growth {base_m / 2**20:.1f} MiB; ResNet-18 rows against the "
        "ResNet-18 baseline)"
    )
    t_scipy, ours, _ = krc.compare(*krc.logits(64, 309, False), args.device, 7, [args.threads])
    t_ours = ours[args.threads]
    print(
        f"KRC (Kendall tau-b, B=64, C=309, {args.threads} thread(s)): {1000 * t_ours:.2f} ms "
        f"per call vs {1000 * t_scipy:.2f} ms for the per-sample scipy loop: "
        f"{t_scipy / t_ours:.1f}x (`benchmarks/krc.py` for more)"
    )


if __name__ == "__main__":
    main()
