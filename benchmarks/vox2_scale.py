"""Where the speaker pipeline's time and memory go at VoxCeleb2 scale, by simulation.

Not a test. Builds in `--out` (default: a temporary folder, removed at the end):

- a manifest of `--records` (1,092,009: VoxCeleb2 dev) records of `--speakers` (5,994)
  speakers in the layout `cmkd prepare voxceleb2` + `align-faces` write (id
  `idNNNNN/<video>/NNNNN`, split, speaker, video, audio, frames, faces, duration, gender);
  utterances per speaker from a seeded log-normal scaled to the corpus's total;
- an fbank store in `cmkd extract-fbank`'s layout (shards, their sidecars, `index.jsonl`) of
  short utterances (`--frames` 210 frames x 40 float16 mels: 2.1 s, random values, since reads
  do not depend on them). Disk permitting: `--store-fraction` of the records get their own
  features, every other record's index entry points at one of them, so the index is full
  size while the shards take that fraction of the full store's disk.

Then it measures, in this process: manifest load time and memory (`read_manifest`), the
store index load (`FbankStore`), the speaker dataset's training split as `data.speaker`
builds it from the manifest (`training_utterances`: reading, filtering by split, faces and
store, labels; time, resident size after and peak), what a forked DataLoader worker copies
of it after touching every sample id and label and collecting garbage, the sampler's epoch build
(`ClassPairBatchSampler`, 100 speakers x 2, cap 500), the random 2 s crop throughput of one
core through `SpeakerTrain.__getitem__` (warm: the shards in the page cache; cold: their pages
dropped with posix_fadvise first), the evaluation embedding cache (`SpeakerTask.embed`'s
`[N, 10, 512]` float32) for VoxCeleb1's trial lists, and the student's training step
(ResNet34-half ASP on 202 x 40 crops, forward + backward + Adam) at `--model-batch`. It
prints the hours per epoch that follow, on this CPU and on N GPUs for a GPU step you give
(`--gpu-step`, seconds per batch of 200; no GPU is measured here), and how many loader cores
each GPU then needs.

Run: `python benchmarks/vox2_scale.py [--records 1092009] [--store-fraction 0.25]
[--out DIR --keep] [--gpu-step 0.3]` (about 5 GB of disk at the default fraction).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cmkd_cli.data.fbank import CONFIG, FbankConfig, FbankStore, shard_name, write_index
from cmkd_cli.data.manifest import MANIFEST, read_manifest
from cmkd_cli.data.samplers import ClassPairBatchSampler
from cmkd_cli.data.speaker import SpeakerTrain, training_utterances
from cmkd_cli.io import atomic_write_json, atomic_write_jsonl
from cmkd_cli.models.registry import create_model
from cmkd_cli.progress import track
from cmkd_cli.tasks import build_task

VOX2_DEV = (1_092_009, 5_994)  # utterances, speakers (VoxCeleb2 paper, Table 1)
VOX1_UTTERANCES = {"voxceleb1-o": 4_874, "voxceleb1-e / -h": 153_516}  # test set / all of Vox1
BATCH, CROP, EVAL_CROPS, EMBED = 200, 202, 10, 512


def rss() -> int:
    """Resident memory of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def utterance_counts(records: int, speakers: int, seed: int) -> np.ndarray:
    """Utterances per speaker: log-normal (sigma 0.6), at least 10, summing to `records`."""
    raw = np.random.default_rng(seed).lognormal(0.0, 0.6, speakers)
    counts = np.maximum(10, np.floor(raw / raw.sum() * records)).astype(np.int64)
    counts[np.argmax(counts)] += records - counts.sum()
    return counts


def write_manifest(out: Path, counts: np.ndarray) -> list[str]:
    """`manifest.jsonl` (written line by line: 1 M pydantic records are what we measure)."""
    ids = []
    with open(out / MANIFEST, "w") as fh:
        for s, n in enumerate(track(counts, description="writing the manifest")):
            spk = f"id{s:05d}"
            for u in range(int(n)):
                uid = f"{spk}/v{u // 8:04d}/{u % 8 + 1:05d}"
                row = {
                    "id": uid,
                    "split": "dev",
                    "speaker": spk,
                    "video": f"{spk}/v{u // 8:04d}",
                    "audio": f"wav/{uid}.wav",
                    "frames": [f"frames/{uid}_00.jpg"],
                    "faces": [f"faces/{uid}.png"],
                    "duration": 2.1,
                    "gender": "m" if s % 2 else "f",
                }
                fh.write(json.dumps(row) + "\n")
                ids.append(uid)
    return ids


def write_store(out: Path, ids: list[str], frames: int, fraction: float, shard: int) -> int:
    """Shards of random float16 fbanks for `fraction` of `ids`; every id indexed. Bytes."""
    cfg = FbankConfig(frontend="voxceleb_trainer")
    atomic_write_json(out / CONFIG, cfg.model_dump())
    stored = max(1, int(len(ids) * fraction))
    rng = np.random.default_rng(0)
    entries, total = {}, 0
    for number, start in enumerate(
        track(range(0, stored, shard), description="writing the fbank store")
    ):
        n = min(shard, stored - start)
        data = rng.standard_normal((n * frames, cfg.n_mels), dtype=np.float32).astype(np.float16)
        np.save(out / shard_name(number), data)
        rows = []
        for j in range(n):
            uid = ids[start + j]
            rows.append({"id": uid, "audio": "", "stamp": None, "offset": j * frames})
            rows[-1]["n_frames"] = frames
            entries[uid] = {**rows[-1], "shard": shard_name(number)}
        atomic_write_jsonl(out / shard_name(number, "jsonl"), rows)
        total += data.nbytes
    stored_ids = ids[:stored]
    for i, uid in enumerate(ids[stored:]):  # the rest read a stored utterance's frames
        entries[uid] = {**entries[stored_ids[i % stored]], "id": uid}
    write_index(out, ids, entries)
    return total


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM) in bytes since `reset_peak`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Reset VmHWM to the current resident size (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def timed(fn, *args):
    """(value, seconds, resident growth, peak growth over the start) of `fn(*args)`."""
    gc.collect()
    reset_peak()
    m0, t0 = rss(), time.perf_counter()
    value = fn(*args)
    seconds = time.perf_counter() - t0
    gc.collect()
    return value, seconds, rss() - m0, peak_rss() - m0


def private_dirty() -> int:
    """Bytes of this process's pages that are its own and written (copied after a fork)."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) * 1024
    return 0


def worker_copy(train: SpeakerTrain | None) -> int:
    """Bytes a forked DataLoader worker ends up owning after it touches every sample's id
    and label and runs a garbage collection (copy-on-write of the pages it writes); with no
    `train`, the garbage collection alone (the floor every worker pays)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read)
        base = private_dirty()
        for i in range(len(train) if train else 0):
            train.sample_id(i)
            train.labels[i]
        gc.collect()
        os.write(write, str(private_dirty() - base).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        copied = int(fh.read())
    os.waitpid(pid, 0)
    return copied


def drop_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of the store's shards (cold reads)."""
    for p in folder.glob("shard-*.npy"):
        with open(p, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def crop_rate(train: SpeakerTrain, n: int, seed: int) -> float:
    """Items per second of `SpeakerTrain.__getitem__` (a random 2 s crop) on one core."""
    idx = np.random.default_rng(seed).integers(0, len(train), n)
    t0 = time.perf_counter()
    for i in idx:
        train[int(i)]
    return n / (time.perf_counter() - t0)


def model_step(batch: int, steps: int) -> float:
    """Seconds per training step of the paper's student at `batch` crops (CPU)."""
    params = {"width": "half", "n_mels": 40, "embed_dim": EMBED, "stem_bias": True}
    model = create_model("resnet34_asp", VOX2_DEV[1], params)
    task = build_task("speaker", VOX2_DEV[1], {})
    opt = torch.optim.Adam(list(model.parameters()) + list(task.parameters()), lr=1e-3)
    x = torch.randn(batch, CROP, 40)
    y = torch.arange(batch) // 2
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = task.loss(model(x), {"y": y})
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=VOX2_DEV[0])
    parser.add_argument("--speakers", type=int, default=VOX2_DEV[1])
    parser.add_argument("--store-fraction", type=float, default=0.25)
    parser.add_argument("--frames", type=int, default=210, help="frames per stored utterance")
    parser.add_argument("--shard-size", type=int, default=5000)
    parser.add_argument("--reads", type=int, default=20000, help="random crops timed")
    parser.add_argument("--model-batch", type=int, default=20)
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--gpu-step", type=float, action="append", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep --out")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    out = args.out or Path(tempfile.mkdtemp(prefix="vox2-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    need = int(args.records * args.store_fraction * args.frames * 40 * 2)
    if need > free * 0.5:
        raise SystemExit(
            f"{out}: the store needs {need / 2**30:.1f} GiB, more than half of the "
            f"{free / 2**30:.1f} GiB free; lower --store-fraction"
        )
    fig: dict[str, float] = {}
    try:
        fig["worker_floor_mb"] = worker_copy(None) / 2**20
        counts = utterance_counts(args.records, args.speakers, 0)
        ids = write_manifest(out, counts)
        fig["manifest_mb"] = (out / MANIFEST).stat().st_size / 2**20
        fig["store_gb"] = write_store(out, ids, args.frames, args.store_fraction, args.shard_size)
        fig["store_gb"] /= 2**30
        fig["full_store_gb"] = fig["store_gb"] / args.store_fraction
        del ids
        records, fig["manifest_load_s"], mem, _ = timed(read_manifest, out / MANIFEST)
        fig["manifest_load_mb"] = mem / 2**20
        del records
        store, fig["index_load_s"], mem, _ = timed(FbankStore, out)
        fig["index_load_mb"] = mem / 2**20

        def train_split() -> SpeakerTrain:  # as data.speaker builds it (faces held, not read)
            utterances, _ = training_utterances(str(out / MANIFEST), store, "dev", faces=True)
            return SpeakerTrain(utterances, out / MANIFEST, store, CROP, with_faces=False)

        train, fig["dataset_build_s"], mem, peak = timed(train_split)
        fig["dataset_build_mb"], fig["dataset_peak_mb"] = mem / 2**20, peak / 2**20
        fig["worker_copy_mb"] = worker_copy(train) / 2**20
        sampler = ClassPairBatchSampler(train.labels, BATCH // 2, 2, seed=1)
        t0 = time.perf_counter()
        fig["steps_per_epoch"] = len(sampler)
        fig["sampler_epoch_s"] = time.perf_counter() - t0
        fig["utterances_per_epoch"] = fig["steps_per_epoch"] * BATCH
        crop_rate(train, 500, 1)  # open the maps
        fig["crops_per_s_warm"] = crop_rate(train, args.reads, 2)
        drop_page_cache(out)
        fig["crops_per_s_cold"] = crop_rate(train, args.reads, 3)
        for name, n in VOX1_UTTERANCES.items():
            fig[f"eval_cache_mb {name}"] = n * EVAL_CROPS * EMBED * 4 / 2**20
        fig["model_step_s"] = model_step(args.model_batch, args.model_steps)
        fig["model_batch"] = args.model_batch
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    end = os.getloadavg()
    report(fig, args, load, end)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))


def report(fig: dict[str, float], args: argparse.Namespace, load, end) -> None:
    print(f"\nVoxCeleb2-scale simulation: {args.records:,} records, {args.speakers:,} speakers")
    print(f"  manifest: {fig['manifest_mb']:.0f} MB on disk")
    print(
        f"  read_manifest: {fig['manifest_load_s']:.1f} s, "
        f"{fig['manifest_load_mb']:.0f} MB resident"
    )
    print(f"  fbank index (FbankStore): {fig['index_load_s']:.1f} s, {fig['index_load_mb']:.0f} MB")
    print(
        f"  training split from the manifest (read, filter by store, labels): "
        f"{fig['dataset_build_s']:.1f} s, {fig['dataset_build_mb']:.0f} MB resident after, "
        f"{fig['dataset_peak_mb']:.0f} MB at the peak"
    )
    print(
        f"  forked worker touching every sample id and label, then gc: "
        f"{fig['worker_copy_mb']:.0f} MB copied ({fig['worker_floor_mb']:.0f} MB before "
        "anything was loaded)"
    )
    print(
        f"  sampler epoch (100 speakers x 2, cap 500): {fig['sampler_epoch_s']:.1f} s for "
        f"{fig['steps_per_epoch']:,.0f} batches ({fig['utterances_per_epoch']:,.0f} utterances)"
    )
    print(
        f"  store written: {fig['store_gb']:.2f} GB ({args.store_fraction:.0%} of the records' "
        f"{args.frames}-frame fbanks; all of them: {fig['full_store_gb']:.1f} GB)"
    )
    print(
        f"  random 2 s crops per second on one core: {fig['crops_per_s_warm']:,.0f} warm "
        f"(page cache), {fig['crops_per_s_cold']:,.0f} cold (pages dropped)"
    )
    for k, v in fig.items():
        if k.startswith("eval_cache_mb"):
            print(
                f"  eval embedding cache, {k.split(' ', 1)[1]}: {v:,.0f} MB (float32 [N, 10, 512])"
            )
    per_sample = fig["model_step_s"] / fig["model_batch"]
    cpu_step = per_sample * BATCH
    print(
        f"  student step on this CPU (1 thread): {fig['model_step_s']:.2f} s at batch "
        f"{fig['model_batch']} -> {cpu_step:.1f} s per batch of {BATCH}"
    )
    steps = fig["steps_per_epoch"]
    print("\nExtrapolation: hours per epoch = batches x max(model step, loader time) / N")
    data_step = BATCH / fig["crops_per_s_cold"]
    print(
        f"  this CPU: {steps * max(cpu_step, data_step) / 3600:,.1f} h "
        f"(model {cpu_step:.1f} s/batch, one loader core {data_step:.2f} s/batch cold)"
    )
    for gpu in args.gpu_step or [0.25, 0.5]:
        cores = BATCH / gpu / fig["crops_per_s_cold"]
        hours = ", ".join(f"{n} GPU {steps * gpu / n / 3600:.2f} h" for n in (1, 4, 8))
        print(
            f"  GPU step {gpu:.2f} s/batch (given, not measured): {hours}; "
            f"{cores:.1f} loader cores per GPU (cold reads)"
        )
    print(f"(load average {load[0]:.2f} at start, {end[0]:.2f} at end)")


if __name__ == "__main__":
    main()
