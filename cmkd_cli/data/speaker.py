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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cmkd_cli.data.datasets import DataBundle, KeyedDataset, keyed_rng, register_dataset
from cmkd_cli.data.fbank import FRONTENDS, FbankConfig, FbankStore
from cmkd_cli.data.fbank import crop_frames as frames_of_crop
from cmkd_cli.data.manifest import read_manifest, read_manifest_columns, resolve
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


@dataclass(frozen=True)
class Utterances:
    """Training utterances as numpy columns: utf-8 ids, int32 speaker labels (positions in
    the sorted `speakers`), the first aligned face of each (empty without faces). No Python
    object per utterance: VoxCeleb2 dev (1.09 M) takes tens of MB, and forked DataLoader
    workers share the pages instead of copying them as they touch per-record objects."""

    ids: np.ndarray
    labels: np.ndarray
    speakers: list[str]
    faces: np.ndarray


class SpeakerTrain(KeyedDataset):
    """Random fixed-length fbank crops, the speaker index, and the utterance's face."""

    def __init__(
        self,
        utterances: Utterances,
        manifest: Path,
        store: FbankStore,
        crop_frames: int,
        with_faces: bool,
        max_seg_per_spk: int | None = MAX_PER_CLASS,
        duplicate_speaker: str = "drop",
    ) -> None:
        super().__init__()
        self.utterances, self.manifest, self.store = utterances, manifest, store
        self.labels = utterances.labels
        self.crop_frames, self.with_faces = crop_frames, with_faces
        self.max_seg_per_spk, self.duplicate_speaker = max_seg_per_spk, duplicate_speaker

    def __len__(self) -> int:
        return len(self.labels)

    def sample_id(self, index: int) -> str:
        return self.utterances.ids[index].decode()

    def face(self, index: int) -> Path:
        """The utterance's first aligned face."""
        return resolve(self.manifest, self.utterances.faces[index].decode())

    def __getitem__(self, index: int) -> dict[str, Any]:
        uid = self.sample_id(index)
        x = torch.from_numpy(self.store.crop(uid, self.crop_frames, self.rng(index)))
        item = {"index": index, "x": x, "y": int(self.labels[index])}
        if self.with_faces and "t" in self.inputs:
            item["t"] = load_face(self.face(index))
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

    def __init__(self, faces: dict[str, str], manifest: Path, trials: Trials) -> None:
        super().__init__()
        self.faces = [faces[u] for u in trials.utterances]
        self.manifest, self.trials = manifest, trials

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> dict[str, Any]:
        face = load_face(resolve(self.manifest, self.faces[index]))
        return {"index": index, "t": face[None], "y": -1}


def generated_trials(speaker_of: dict[str, str | None], seed: int, max_trials: int) -> Trials:
    """Every same-speaker pair as a target trial and as many seeded different-speaker pairs
    (capped at `max_trials` in all) of the utterances of `speaker_of` (id -> speaker): for
    held-out data that ships no trial list."""
    names = sorted(speaker_of)
    row = {n: i for i, n in enumerate(names)}
    spk = speaker_of  # id -> speaker
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
        cols = read_manifest_columns(
            manifest,
            ("id", "split", "speaker"),
            where=lambda r: split in (None, r.split) and r.id in store,
        )
        t = generated_trials(dict(zip(cols["id"], cols["speaker"], strict=True)), seed, max_trials)
        ids = t.utterances
    return SpeakerEval(t, ids, store, frames_of_crop(seconds, store.config), crops, manifest)


def _keep_fraction(speakers: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions of a seeded `fraction` of each speaker's utterances (at least two per
    speaker), speaker by speaker in sorted order, each speaker's in their order."""
    rng = keyed_rng("fraction", seed)
    _, codes, counts = np.unique(speakers, return_inverse=True, return_counts=True)
    groups = np.split(np.argsort(codes, kind="stable"), np.cumsum(counts)[:-1])
    kept = []
    for group in groups:
        n = max(2, round(len(group) * fraction))
        kept.append(group[np.sort(rng.permutation(len(group))[:n])])
    return np.concatenate(kept)


def _encoded(strings: list[str]) -> np.ndarray:
    """Strings as one fixed-width numpy array of their utf-8 bytes."""
    return np.array([s.encode() for s in strings], dtype=np.bytes_)


def _utterances(
    ids: np.ndarray, speakers: np.ndarray, faces: np.ndarray, rows: np.ndarray
) -> Utterances:
    """The utterances at `rows`, labelled by the sorted speakers among them."""
    names, labels = np.unique(speakers[rows], return_inverse=True)
    spk = [n.decode() for n in names]
    return Utterances(ids[rows], labels.astype(np.int32), spk, faces[rows])


def training_utterances(
    manifest: str,
    store: FbankStore,
    split: str | None,
    faces: bool,
    fraction: float = 1.0,
    seed: int = 0,
    face_eval_split: str = "test",
) -> tuple[Utterances, dict[str, tuple[str, str]]]:
    """The manifest's utterances of `split` (None: all) with a speaker, features in `store`
    and (when `faces`) aligned faces, in manifest order or, when `fraction` < 1, that share
    per speaker (`_keep_fraction`); and with `faces`, the held-out records of
    `face_eval_split` (id -> (speaker, first face)). One read of the manifest's few fields
    (`read_manifest_columns`), no per-record object kept."""

    def wanted(r: Any) -> bool:  # a training or (with faces) a held-out face record
        held_out = faces and r.split == face_eval_split
        return bool(r.speaker and (not faces or r.faces) and (split in (None, r.split) or held_out))

    fields = ("id", "split", "speaker", "faces") if faces else ("id", "split", "speaker")
    cols = read_manifest_columns(manifest, fields, where=wanted)
    ids, speakers = _encoded(cols["id"]), _encoded(cols["speaker"])
    firsts = [str(f[0]) for f in cols["faces"]] if faces else [""] * len(ids)
    in_split = np.array([split in (None, x) for x in cols["split"]], dtype=bool)
    rows = np.flatnonzero(store.isin(ids) & in_split)
    if not len(rows):
        need = " with `faces` (the manifest `cmkd align-faces` writes)" if faces else ""
        raise UsageError(
            f"data.params.train_manifest: no record of split {split!r}{need} with "
            f"features in {store.root}"
        )
    if fraction < 1:
        rows = rows[_keep_fraction(speakers[rows], fraction, seed)]
    held_out = {
        cols["id"][i]: (cols["speaker"][i], firsts[i])
        for i, x in enumerate(cols["split"])
        if faces and x == face_eval_split
    }
    return _utterances(ids, speakers, _encoded(firsts), rows), held_out


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

    utterances, held_out = training_utterances(
        train_manifest, store, train_split, faces, fraction, seed, face_eval_split
    )
    evaluation = FbankInput(fbank=features, crops=eval_crops, crop_seconds=eval_seconds)
    train = SpeakerTrain(
        utterances,
        Path(train_manifest),
        store,
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
    if len({spk for spk, _ in held_out.values()}) >= 2:
        trials = generated_trials(
            {u: spk for u, (spk, _) in held_out.items()}, seed, max_generated_trials
        )
        faces_of = {u: face for u, (_, face) in held_out.items()}
        teacher_val = FaceEval(faces_of, Path(train_manifest), trials)
    return DataBundle(
        teacher_val=teacher_val,
        train=train,
        val=val,
        test=test,
        num_classes=len(utterances.speakers),
        class_names=list(utterances.speakers),
        teacher_static=True,
        student_input=evaluation,
        info={
            "train": len(train),
            "speakers": len(utterances.speakers),
            "val_trials": len(val.trials),
            "test_trials": len(test.trials),
        },
    )
