"""Loader throughput per core at the papers' shapes, against what the training step consumes.

Not a test. For paper B's three audio-visual recipes (`c2kd-ave`, `c2kd-vggsound`,
`c2kd-crema-d`: frames student, augmented, RandomResizedCrop 224 + flip; audio teacher, a
static 257 x T log spectrogram), builds in a temporary folder a manifest in the layout
`cmkd prepare` writes, from real recordings and real video frames of `../shared/data`:

- frames: JPEGs of `faces/video.mp4` (1080p H.264) scaled to 640 x 360 (YouTube's 360p),
  as many per clip as `prepare` extracts (AVE: 1 per second of a 10 s event; VGGSound and
  CREMA-D: 3 per clip);
- audio: 16 kHz wav of LibriSpeech test-other speech, 10 s (AVE, VGGSound) or 3 s (CREMA-D).

Then, in one process (one core, one torch thread, no workers), items per second of the
student's view (frames), of the teacher's (spectrogram) and of a whole item, decoded from the
files and read from the input cache (`data/input_cache.py`); and the items per second the
recipe's C2KD step consumes on this machine (both ResNet-18s, forward + backward + SGD, at
`--batch`, all cores). A loader keeps the step fed when one core delivers more than the step
consumes; the last column says by how much. Disk the caches take is printed too.

Run: `python benchmarks/loader.py [--records 32] [--batch 4] [--only ave]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from cmkd_cli.config import load_recipe
from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.datasets import build_data
from cmkd_cli.data.video import read_frames
from cmkd_cli.engine.optim import build_optimizer
from cmkd_cli.stages.experiment import build_experiment

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: recipe, manifest folder, frames per clip on disk, seconds of audio
DATASETS = {
    "ave": ("c2kd-ave", "ave", 10, 10.0),
    "vggsound": ("c2kd-vggsound", "vggsound", 3, 10.0),
    "crema-d": ("c2kd-crema-d", "crema-d", 3, 3.0),
}
CLASSES = 4


def real_frames(out: Path, n: int) -> list[Path]:
    """`n` JPEG frames of the shared 1080p video, scaled to 640 x 360."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(read_frames(SHARED / "faces" / "video.mp4", n)):
        path = out / f"frame-{i:03d}.jpg"
        img.resize((640, 360)).save(path, quality=90)
        paths.append(path)
    return paths


def real_speech(out: Path, seconds: float, n: int) -> list[Path]:
    """`n` wavs of `seconds` of 16 kHz LibriSpeech speech each (utterances joined)."""
    flacs = sorted((SHARED / "librispeech-test-other").rglob("*.flac"))
    wave = np.concatenate([load_audio(f, 16000)[0] for f in flacs[:40]])
    size = int(seconds * 16000)
    paths = []
    for i in range(n):
        path = out / f"speech-{seconds:g}s-{i}.wav"
        start = (i * size) % (len(wave) - size)
        sf.write(path, wave[start : start + size], 16000)
        paths.append(path)
    return paths


def write_manifest(folder: Path, records: int, frames: list[Path], wavs: list[Path], k: int):
    folder.mkdir(parents=True)
    rows = []
    for i in range(records):
        rows.append(
            {
                "id": f"clip{i:04d}",
                "split": ("train", "val", "test")[i % 3],
                "label": str(i % CLASSES),
                "audio": str(wavs[i % len(wavs)]),
                "frames": [str(frames[(i + j) % len(frames)]) for j in range(k)],
            }
        )
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "classes.txt").write_text("".join(f"{c}\tclass {c}\n" for c in range(CLASSES)))


def rate(fn, n: int) -> float:
    fn(0)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def view_rates(data, n: int) -> dict[str, float]:
    train = data.train
    train.set_epoch(1, seed=1)
    views, m = train.views, len(train)

    def view(modality: str, augment: bool):
        return lambda i: train._view(modality, i % m, train.rng(i % m), augment)

    return {
        "frames": rate(view(train.student, train.augment_student), n),
        "audio": rate(view(train.teacher, train.augment_teacher), n),
        "item": rate(lambda i: train[i % m], n),
        "_views": views,
    }


def step_rate(recipe, batch: int, threads: int) -> float:
    """Items per second one C2KD training step consumes (two ResNet-18s at these shapes)."""
    torch.set_num_threads(threads)
    exp = build_experiment(recipe)
    method = exp.method.train()
    opt = build_optimizer(method.trainable_groups(), recipe.optim)
    data = exp.data.train
    items = [data[i % len(data)] for i in range(batch)]
    b = torch.utils.data.default_collate(items)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = method(b)
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(1)
    return batch / float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--reads", type=int, default=60, help="items timed per view")
    parser.add_argument("--batch", type=int, default=4, help="batch of the step timed")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default="", help="comma-separated: ave,vggsound,crema-d")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    rows = []
    try:
        frames = real_frames(tmp / "media", 12)
        for name, (recipe_name, folder, k, seconds) in DATASETS.items():
            if args.only and name not in args.only.split(","):
                continue
            wavs = real_speech(tmp / "media", seconds, 4)
            write_manifest(tmp / folder, args.records, frames, wavs, k)
            # the teacher untrained (its pretraining is not run here): the step's cost only
            sets = ["teacher.tune=full", f"train.cache_dir={tmp}", "teacher.checkpoint=null"]
            recipe = load_recipe(recipe_name, sets, {"data_root": str(tmp)})
            plain = view_rates(build_data(recipe.data), args.reads)
            cached_data = build_data(recipe.data)
            cached_data.input_cache(tmp / "inputs", 0, 2**40)
            cached = view_rates(cached_data, args.reads)
            step = step_rate(recipe, args.batch, args.threads)
            shape = recipe.data.params
            rows.append((name, shape, plain, cached, step))
        disk = sum(f.stat().st_size for f in (tmp / "inputs").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    end = os.getloadavg()
    print(
        f"\n{'dataset':9s} {'view':7s} {'decoded items/s':>16s} {'cached items/s':>15s}  "
        f"{'step items/s':>12s} {'cached/step':>11s}"
    )
    for name, _shape, plain, cached, step in rows:
        for view in ("frames", "audio", "item"):
            ratio = cached[view] / step if view == "item" else float("nan")
            print(
                f"{name:9s} {view:7s} {plain[view]:16.1f} {cached[view]:15.1f}  "
                + (f"{step:12.2f} {ratio:11.1f}" if view == "item" else "")
            )
    print(
        f"(one core, one torch thread for the loader; the step on {args.threads} threads at "
        f"batch {args.batch}; caches {disk / 2**20:.0f} MiB for {args.records} records per "
        f"dataset; load average {load[0]:.2f} at start, {end[0]:.2f} at end)"
    )


if __name__ == "__main__":
    main()
