"""Speaker-verification data: fbank crops of utterances, aligned faces for the teacher.

Paper A Sec. 4.1.1: random 2 s crops of 40-dim fbanks for training (no other
augmentation); the face teacher sees one aligned 112x112 face frame of the same video;
batches hold P speakers x 2 utterances with no speaker twice (at most `max_seg_per_spk`
utterances of a speaker per epoch, as voxceleb_trainer); evaluation embeds ten 4 s crops
per utterance (wrap-padded when shorter) and scores trials over the 10x10 crop pairs. A
crop of `s` seconds has `fbank.crop_frames(s, store config)` frames: 200 / 400 with the
Kaldi front-end, 202 / 402 with voxceleb_trainer's (its `max_frames * 160 + 240` samples).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cmkd_cli.data.datasets import DataBundle, KeyedDataset, keyed_rng, register_dataset
from cmkd_cli.data.fbank import FRONTENDS, FbankConfig, FbankStore
from cmkd_cli.data.fbank import crop_frames as frames_of_crop
from cmkd_cli.data.manifest import Record, read_manifest, resolve
from cmkd_cli.data.preprocess import FbankInput, evenly_spaced_crops
from cmkd_cli.data.samplers import MAX_PER_CLASS, ClassPairBatchSampler
from cmkd_cli.errors import DataError, UsageError
from cmkd_cli.metrics.trials import Trials, read_trials


def utterance_key(name: str) -> str:
    """A trial-list utterance (`id10270/x6u/00001.wav`) as a manifest id (no extension)."""
    return name.rsplit(".", 1)[0] if name.endswith((".wav", ".flac", ".m4a")) else name


def load_face(path: Path) -> torch.Tensor:
    """An aligned face as `[3, 112, 112]` in [-1, 1] ((x - 127.5) / 127.5, ArcFace's input)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read the aligned face ({exc})") from None
    return torch.from_numpy((arr - 127.5) / 127.5).permute(2, 0, 1).contiguous()


class SpeakerTrain(KeyedDataset):
    """Random fixed-length fbank crops, the speaker index, and the utterance's face."""

    def __init__(
        self,
        records: list[Record],
        manifest: Path,
        store: FbankStore,
        speakers: dict[str, int],
        crop_frames: int,
        with_faces: bool,
        max_seg_per_spk: int | None = MAX_PER_CLASS,
        duplicate_speaker: str = "drop",
    ) -> None:
        super().__init__()
        self.records, self.manifest, self.store = records, manifest, store
        self.labels = [speakers[r.speaker] for r in records]
        self.crop_frames, self.with_faces = crop_frames, with_faces
        self.max_seg_per_spk, self.duplicate_speaker = max_seg_per_spk, duplicate_speaker

    def __len__(self) -> int:
        return len(self.records)

    def sample_id(self, index: int) -> str:
        return self.records[index].id

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        x = torch.from_numpy(self.store.crop(rec.id, self.crop_frames, self.rng(index)))
        item = {"index": index, "x": x, "y": self.labels[index]}
        if self.with_faces and "t" in self.inputs:
            item["t"] = load_face(resolve(self.manifest, rec.faces[0]))  # type: ignore[attr-defined]
        return item

    def batch_sampler(
        self, batch_size: int, seed: int, rank: int, world: int
    ) -> ClassPairBatchSampler:
        """P = batch_size / 2 speakers x 2 utterances per (global) batch."""
        if batch_size % 2:
            raise UsageError(f"data.batch_size: {batch_size} is not 2 utterances x P speakers")
        return ClassPairBatchSampler(
            self.labels,
            batch_size // 2,
            2,
            seed,
            rank,
            world,
            max_per_class=self.max_seg_per_spk,
            duplicates=self.duplicate_speaker,
        )


class SpeakerEval(KeyedDataset):
    """The utterances of a trial list, in its order, as `[K, T, F]` evenly spaced crops."""

    def __init__(
        self,
        trials: Trials,
        ids: list[str],
        store: FbankStore,
        crop_frames: int,
        crops: int,
        manifest: str | None = None,
    ) -> None:
        super().__init__()
        self.trials, self.ids, self.store = trials, ids, store
        self.crop_frames, self.crops, self.manifest = crop_frames, crops, manifest

    def __len__(self) -> int:
        return len(self.ids)

    def raw_input(self, index: int) -> Path:
        """The utterance's audio file, from the manifest."""
        uid = self.ids[index]
        record = next((r for r in read_manifest(self.manifest) if r.id == uid and r.audio), None)
        if record is None:
            raise DataError(f"utterance {uid} has no audio in the manifest {self.manifest}")
        return resolve(self.manifest, record.audio)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x = evenly_spaced_crops(
            np.asarray(self.store[self.ids[index]]), self.crop_frames, self.crops
        )
        return {"index": index, "x": torch.from_numpy(x), "y": -1}


class FaceEval(KeyedDataset):
    """Aligned faces of held-out speakers with generated trials: the teacher's own
    verification EER (`train-teacher`); items carry `t` as `[1, 3, 112, 112]` (one crop)."""

    def __init__(self, records: list[Record], manifest: Path, trials: Trials) -> None:
        super().__init__()
        by_id = {r.id: r for r in records}
        self.records = [by_id[u] for u in trials.utterances]
        self.manifest, self.trials = manifest, trials

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        face = load_face(resolve(self.manifest, self.records[index].faces[0]))  # type: ignore[attr-defined]
        return {"index": index, "t": face[None], "y": -1}


def generated_trials(records: list[Record], seed: int, max_trials: int) -> Trials:
    """Every same-speaker pair as a target trial and as many seeded different-speaker pairs
    (capped at `max_trials` in all): for held-out data that ships no trial list."""
    names = sorted(r.id for r in records)
    row = {n: i for i, n in enumerate(names)}
    spk = {r.id: r.speaker for r in records}
    target = [(a, b) for a, b in itertools.combinations(names, 2) if spk[a] == spk[b]]
    rng = keyed_rng("trials", seed)
    rng.shuffle(target)
    target = target[: max_trials // 2]
    nontarget: set[tuple[str, str]] = set()
    tries = 0
    while len(nontarget) < len(target) and tries < 50 * max(len(target), 1):
        a, b = (names[i] for i in rng.integers(0, len(names), size=2))
        if spk[a] != spk[b]:
            nontarget.add((min(a, b), max(a, b)))
        tries += 1
    pairs = target + sorted(nontarget)
    if not target or not nontarget:
        raise UsageError("the evaluation manifest needs at least two speakers with two utterances")
    return Trials(
        names,
        np.array([[row[a], row[b]] for a, b in pairs], dtype=np.int64),
        np.array([1] * len(target) + [0] * len(nontarget), dtype=np.int8),
    )


def open_store(path: str, features: FbankConfig | None, field: str) -> FbankStore:
    """The fbank store at `path`; a `DataError` naming `field` when its features are not
    `features` (those of the training store, or the front-end the recipe asks for)."""
    store = FbankStore(path)
    if features is not None and not store.config.same_features(features):
        raise DataError(
            f"{field}: {path} holds {store.config.describe()} features but the student needs "
            f"{features.describe()} (run `cmkd extract-fbank --frontend {features.frontend} "
            f"--n-mels {features.n_mels}` into another folder)"
        )
    return store


def _eval_split(
    manifest: str,
    fbank: str,
    trials: str | None,
    split: str | None,
    seed: int,
    crops: int,
    seconds: float,
    max_trials: int,
    features: FbankConfig,
    field: str,
) -> SpeakerEval:
    store = open_store(fbank, features, field.rsplit("_", 1)[0] + "_fbank")
    if trials:
        t = read_trials(trials, known_utterances=None)
        ids = [utterance_key(u) for u in t.utterances]
        missing = [u for u, i in zip(t.utterances, ids, strict=True) if i not in store]
        if missing:
            raise DataError(
                f"{field}: utterance {missing[0]} of {trials} has no features in {fbank} "
                f"({len(missing)} missing)"
            )
    else:
        records = [r for r in read_manifest(manifest) if r.id in store and split in (None, r.split)]
        t = generated_trials(records, seed, max_trials)
        ids = t.utterances
    return SpeakerEval(t, ids, store, frames_of_crop(seconds, store.config), crops, manifest)


def _keep_fraction(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """A seeded `fraction` of each speaker's utterances (at least two per speaker)."""
    rng = keyed_rng("fraction", seed)
    by_spk: dict[str, list[Record]] = {}
    for r in records:
        by_spk.setdefault(r.speaker, []).append(r)
    kept: list[Record] = []
    for spk in sorted(by_spk):
        group = by_spk[spk]
        n = max(2, round(len(group) * fraction))
        kept += [group[i] for i in sorted(rng.permutation(len(group))[:n])]
    return kept


@register_dataset("speaker")
def speaker(
    train_manifest: str,
    train_fbank: str,
    val_manifest: str,
    val_fbank: str,
    val_trials: str | None = None,
    test_manifest: str | None = None,
    test_fbank: str | None = None,
    test_trials: str | None = None,
    train_split: str | None = "dev",
    eval_split: str | None = None,
    crop_seconds: float = 2.0,
    eval_seconds: float = 4.0,
    eval_crops: int = 10,
    fraction: float = 1.0,
    faces: bool = True,
    seed: int = 0,
    max_generated_trials: int = 20000,
    face_eval_split: str = "test",
    frontend: str | None = None,
    max_seg_per_spk: int | None = MAX_PER_CLASS,
    duplicate_speaker: str = "drop",
) -> DataBundle:
    """Train on `train_manifest` (from `align-faces` when `faces`, which carries each
    utterance's aligned face) with fbanks from `extract-fbank`; validate/test on trial lists
    (generated from the manifest's `eval_split` records when none is given). `train_split`
    keeps only records of that manifest split (`dev`, as `prepare` writes; null: all).
    `fraction` keeps that share of each speaker's utterances (paper A Table 2's 25% variant).
    With `faces`, the aligned faces of the manifest's `face_eval_split` speakers (VoxCeleb2
    test) give the face teacher's own verification trials (`train-teacher`).

    `frontend` (kaldi | voxceleb_trainer) is the front-end every store must have been made
    with (null: the training store's; the validation and test stores must match it). The
    crop lengths follow it (`fbank.crop_frames`), and checkpoints and student.pt record it
    with the evaluation crops (`student_input`, a `preprocess.FbankInput`), so `eval` and
    the Python API compute the same features from audio. `max_seg_per_spk` and
    `duplicate_speaker` are the batch sampler's cap and policy (`ClassPairBatchSampler`;
    defaults as voxceleb_trainer: 500, drop).
    """
    if not 0 < fraction <= 1:
        raise UsageError(f"data.params.fraction: must be in (0, 1], got {fraction}")
    if frontend is not None and frontend not in FRONTENDS:
        raise UsageError(f"data.params.frontend: {frontend!r} is not one of {', '.join(FRONTENDS)}")
    store = FbankStore(train_fbank)
    if frontend is not None:
        asked = store.config.model_copy(update={"frontend": frontend})
        store = open_store(train_fbank, asked, "data.params.train_fbank")
    features = store.config
    records = [r for r in read_manifest(train_manifest) if train_split in (None, r.split)]
    if faces:
        records = [r for r in records if getattr(r, "faces", None)]
    records = [r for r in records if r.id in store and r.speaker]
    if not records:
        need = " with `faces` (the manifest `cmkd align-faces` writes)" if faces else ""
        raise UsageError(
            f"data.params.train_manifest: no record of split {train_split!r}{need} with "
            f"features in {train_fbank}"
        )
    if fraction < 1:
        records = _keep_fraction(records, fraction, seed)
    speakers = {s: i for i, s in enumerate(sorted({r.speaker for r in records}))}
    evaluation = FbankInput(fbank=features, crops=eval_crops, crop_seconds=eval_seconds)
    train = SpeakerTrain(
        records,
        Path(train_manifest),
        store,
        speakers,
        frames_of_crop(crop_seconds, features),
        faces,
        max_seg_per_spk,
        duplicate_speaker,
    )
    eval_args = (eval_crops, eval_seconds, max_generated_trials, features)
    val = _eval_split(
        val_manifest, val_fbank, val_trials, eval_split, seed, *eval_args, "data.params.val_trials"
    )
    test = val
    if test_manifest:
        test = _eval_split(
            test_manifest,
            test_fbank or val_fbank,
            test_trials,
            eval_split,
            seed + 1,
            *eval_args,
            "data.params.test_trials",
        )
    teacher_val = None
    if faces:
        held_out = [
            r
            for r in read_manifest(train_manifest)
            if r.split == face_eval_split and getattr(r, "faces", None) and r.speaker
        ]
        if len({r.speaker for r in held_out}) >= 2:
            trials = generated_trials(held_out, seed, max_generated_trials)
            teacher_val = FaceEval(held_out, Path(train_manifest), trials)
    return DataBundle(
        teacher_val=teacher_val,
        train=train,
        val=val,
        test=test,
        num_classes=len(speakers),
        class_names=sorted(speakers),
        teacher_static=True,
        student_input=evaluation,
        info={
            "train": len(train),
            "speakers": len(speakers),
            "val_trials": len(val.trials),
            "test_trials": len(test.trials),
        },
    )
