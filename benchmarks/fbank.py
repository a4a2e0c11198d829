"""Fbank extraction speed: the sharded store extractor vs a plain per-file loop, one run.

All compute the same Kaldi fbank (paper A: 40 mels, 25 ms / 10 ms) of the same real
LibriSpeech test-other recordings (../shared/data), each listed `--repeat` times under new
ids. Reported: hours of audio per CPU-second (user + system time of this process and of its
worker processes, their start-up included) and per wall-clock second, for
  loop         load_audio + compute_fbank + np.save per file with torch's default threads
               (the plain loop; the ratios are against it);
  loop-1thr    the same loop with torch.set_num_threads(1), to show how much of the gain is
               only the thread setting;
  extractor    `cmkd extract-fbank`'s run(): shards of `--shard-size` utterances in
               `--workers` spawned processes with one compute thread each, one .npy per shard.
Usage: .venv/bin/python benchmarks/fbank.py [--repeat 10] [--workers N] [--shard-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.fbank import FbankConfig, compute_fbank
from cmkd_cli.stages import extract_fbank
from data_prep.common import default_workers

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "librispeech-test-other"


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _measure(fn: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def plain_loop(items: list[tuple[str, str]], out: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    cfg = FbankConfig()
    out.mkdir(parents=True, exist_ok=True)
    for n, (_, audio) in enumerate(items):
        feats = compute_fbank(load_audio(audio)[0], cfg, "")
        np.save(out / f"{n}.npy", feats.astype(np.float16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="list each recording this often")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--shard-size", type=int, default=100)
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"../shared/data not present: {DATA} is missing")
    flacs = sorted(DATA.glob("*/*.flac"))
    items = [(f"r{r}/{f.stem}", str(f)) for r in range(args.repeat) for f in flacs]
    hours = sum(len(load_audio(f)[0]) for f in flacs) * args.repeat / 16000 / 3600
    default_threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.jsonl"
        manifest.write_text("".join(json.dumps({"id": i, "audio": a}) + "\n" for i, a in items))
        for name, threads in (("loop", default_threads), ("loop-1thr", 1)):
            loop = partial(plain_loop, items, Path(tmp) / name, threads)
            rows.append((name, *_measure(loop)))
        torch.set_num_threads(default_threads)
        store = Path(tmp) / "store"
        opts = extract_fbank.ExtractOptions(
            manifest=manifest, out=store, workers=args.workers, shard_size=args.shard_size
        )
        run = partial(extract_fbank.run, opts)
        rows.append(("extractor", *_measure(run)))
        # the pool's fixed cost: the same workers on one shortest utterance each
        shortest = sorted(flacs, key=lambda f: f.stat().st_size)[: args.workers]
        tiny = Path(tmp) / "tiny.jsonl"
        tiny.write_text(
            "".join(json.dumps({"id": f.stem, "audio": str(f)}) + "\n" for f in shortest)
        )
        opts = extract_fbank.ExtractOptions(
            manifest=tiny, out=Path(tmp) / "tiny", workers=args.workers, shard_size=1
        )
        start = partial(extract_fbank.run, opts)
        startup_wall, startup_cpu = _measure(start)
    print(
        f"{len(items)} utterances, {hours:.3f} h of audio, {os.cpu_count()} CPUs visible, "
        f"torch default threads {default_threads}, {args.workers} extractor workers"
    )
    print(f"{'':10} {'wall s':>8} {'CPU s':>8} {'h/CPU-s':>9} {'h/wall-s':>9}")
    for name, wall, cpu in rows:
        print(f"{name:10} {wall:8.2f} {cpu:8.2f} {hours / cpu:9.4f} {hours / wall:9.4f}")
    (_, loop_wall, loop_cpu), (_, one_wall, one_cpu), (_, ext_wall, ext_cpu) = rows
    steady = ext_cpu - startup_cpu
    print(
        f"extractor start-up (spawning {args.workers} workers, imports): {startup_cpu:.2f} CPU s, "
        f"{startup_wall:.2f} wall s; without it {hours / steady:.4f} h/CPU-s "
        f"({one_cpu / steady:.2f}x loop-1thr): the fixed cost that a large corpus amortises"
    )
    print(
        f"extractor / loop, hours per CPU-second:  {loop_cpu / ext_cpu:.2f}x "
        f"(vs loop-1thr {one_cpu / ext_cpu:.2f}x)"
    )
    print(
        f"extractor / loop, hours per wall-second: {loop_wall / ext_wall:.2f}x "
        f"(vs loop-1thr {one_wall / ext_wall:.2f}x)"
    )


if __name__ == "__main__":
    main()
