"""The `manifest` dataset: any prepared classification manifest as (student, teacher) pairs.

Paper B's audio-visual and image-text settings (C2KD Sec. 4, appendix C.1) and paper A's
text -> image setting (Sec. 4.2) from one reader. A recipe names the manifest folder written
by `cmkd prepare` and the modality of each side:

- `audio`: the record's `audio` (cut to its `start`/`end` seconds when given) as a
  log-magnitude spectrogram `[F, T]` (`audio:` fields, `cmkd_cli.data.spectrogram`);
  training crops a random window of a long clip, evaluation its centre.
- `frames`: `frames` of the record's video frames as `[frames, C, H, W]` (`image:` fields);
  training picks them at random (sorted), evaluation evenly spaced; one crop for all.
- `image`: the record's `image` as `[C, H, W]` (`image:` fields).
- `text`: the record's `text`, tokenised once by a local tokenizer (`text:` fields) into a
  LongTensor `[2, max_length]`: row 0 the token ids, row 1 the attention mask (the packing
  `text_transformer` reads; a batch stays a dict of tensors).
- `label_prompt`: `[label, draw]`, a random integer the prompt teacher turns into one of its
  templates (paper A: one of CLIP's 80 templates per step), as in `cmkd_cli.data.digits`.

So both directions (A->V and V->A, T->I and I->T) are one field apart: swap
`student_modality` and `teacher_modality` (and the models' input channels). A multimodal
teacher (paper B Table 7, `models.fusion`) joins modalities with `+`: `teacher_modality:
audio+image` gives `t = {"audio": tensor, "image": tensor}` (collated as a dict of batches).
Items follow the engine's contract `{index, x, y, t}`; every random choice (crops, flips,
frame picks, audio offsets, template draws) comes from `self.rng(index)`, split into one
generator per side (and per teacher modality). The teacher side is augmented only with
`augment_teacher`; without it (and for `text`) it never changes, `teacher_static` is true
and a frozen teacher's outputs are cached.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ValidationError

from cmkd_cli import console
from cmkd_cli.data.audio import load_audio
from cmkd_cli.data.datasets import DataBundle, KeyedDataset, register_dataset, stratified_subset
from cmkd_cli.data.image_transforms import ImageTransform, ImageTransformConfig, load_image
from cmkd_cli.data.input_cache import InputCache, Row, build_cache, cache_key, file_stamp
from cmkd_cli.data.manifest import CLASSES, MANIFEST, Record, read_classes, read_manifest, resolve
from cmkd_cli.data.preprocess import (
    ImageInput,
    SpectrogramInput,
    TextConfig,
    TextInput,
    load_tokens,
)
from cmkd_cli.data.spectrogram import SpectrogramConfig, spectrogram
from cmkd_cli.errors import DataError, UsageError

MODALITIES = ("audio", "frames", "image", "text", "label_prompt")
#: the record field each modality reads
SOURCE_FIELD = {"audio": "audio", "frames": "frames", "image": "image", "text": "text"}


@dataclass
class Sample:
    """One manifest record, resolved: absolute paths, label index, token row."""

    id: str
    label: int
    audio: Path | None = None
    start: float | None = None
    end: float | None = None
    frames: list[Path] = field(default_factory=list)
    image: Path | None = None
    text: int | None = None  # row of the split's token tensor
    words: str | None = None  # the text itself


def _settings(model: type[BaseModel], value: dict[str, Any] | None, name: str) -> Any:
    try:
        return model.model_validate(value or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        where = f"data.params.{name}" + (f".{loc}" if loc else "")
        raise UsageError(f"{where}: {err['msg']}") from None


class Views:
    """Turns a `Sample` into a modality's tensor; `rng` None means the evaluation view.

    With `cache`, decoded audio and images are kept in memory, and so are evaluation views
    (which never change): a small dataset is decoded once per process, whatever the number
    of epochs and runs; the random training transforms still run on every draw. `decoded`
    (audio: the waveform; frames / image: uint8 `[n, C, H, W]`) spares reading the files:
    what the on-disk input cache (`data/input_cache.py`) stores for augmented views.
    """

    def __init__(
        self,
        audio: SpectrogramConfig,
        image: ImageTransformConfig,
        frames: int,
        tokens: Any,
        cache: bool = False,
    ) -> None:
        self.audio_cfg, self.frames, self.tokens = audio, frames, tokens
        self.image = ImageTransform(image)
        self.channels = image.channels
        self._memo: dict[tuple, Any] | None = {} if cache else None

    def _cached(self, key: tuple, make: Any) -> Any:
        if self._memo is None:
            return make()
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def _samples(self, s: Sample) -> np.ndarray:
        samples, _ = load_audio(s.audio, self.audio_cfg.sample_rate)
        if s.start is not None or s.end is not None:
            rate = self.audio_cfg.sample_rate
            lo = int(round((s.start or 0.0) * rate))
            hi = len(samples) if s.end is None else int(round(s.end * rate))
            samples = samples[lo:hi]
        return samples

    def waveform(self, s: Sample) -> np.ndarray:
        """The record's audio at the dataset's rate, cut to its `start`/`end`."""
        return self._cached(("wave", s.audio, s.start, s.end), lambda: self._samples(s))

    def audio(
        self, s: Sample, rng: np.random.Generator | None, decoded: np.ndarray | None = None
    ) -> torch.Tensor:
        samples = self.waveform(s) if decoded is None else decoded
        if rng is not None and len(samples) > self.audio_cfg.n_samples:
            return spectrogram(samples, self.audio_cfg, rng)  # a random crop
        # no crop to draw (a clip no longer than the input is filled): the same every time
        key = ("spec", s.audio, s.start, s.end)
        return self._cached(key, lambda: spectrogram(samples, self.audio_cfg))

    def picks(self, s: Sample, rng: np.random.Generator | None) -> list[int]:
        """The frames a sample shows: evenly spaced for evaluation, else a sorted draw."""
        n, k = len(s.frames), self.frames
        if rng is None:
            return [math.floor((i + 0.5) * n / k) for i in range(k)]
        return sorted(rng.choice(n, size=k, replace=n < k).tolist())

    def frame_stack(
        self, s: Sample, rng: np.random.Generator | None, decoded: np.ndarray | None = None
    ) -> torch.Tensor:
        picks = self.picks(s, rng)
        train = rng is not None
        return self.image([self._decoded(s.frames[i], train, decoded, i) for i in picks], rng)

    def _decoded(
        self, path: Path, train: bool = False, decoded: np.ndarray | None = None, i: int = 0
    ) -> torch.Tensor:
        if decoded is not None:
            img = torch.from_numpy(decoded[i])
        else:
            img = self._cached(("image", path), lambda: load_image(path, self.channels))
        if not train:
            return img
        return self._cached(("train-source", path), lambda: self.image.train_source(img))

    def picture(
        self, s: Sample, rng: np.random.Generator | None, decoded: np.ndarray | None = None
    ) -> torch.Tensor:
        return self.image([self._decoded(s.image, rng is not None, decoded)], rng)[0]

    def text(self, s: Sample, rng: np.random.Generator | None) -> torch.Tensor:
        return self.tokens[s.text]

    def get(self, modality: str, s: Sample, rng: np.random.Generator, augment: bool):
        if modality == "label_prompt":  # the template draw is random in every split
            return torch.tensor([s.label, int(rng.integers(0, 2**31 - 1))])
        view = {
            "audio": self.audio,
            "frames": self.frame_stack,
            "image": self.picture,
            "text": self.text,
        }[modality]
        if augment:
            return view(s, rng)
        return self._cached(("view", modality, s.id), lambda: view(s, None))

    # ---- the on-disk input cache's rows (data/input_cache.py) ---------------------------
    def cache_row(self, modality: str, s: Sample, augment: bool) -> Row:
        """(static view, decode) of `s` as the input cache stores it; (None, None) when its
        files do not decode (it is then decoded when drawn, raising the same error)."""
        try:
            if modality == "audio":
                wave = self._samples(s)
                if augment and len(wave) > self.audio_cfg.n_samples:  # a crop is drawn
                    return None, wave
                return spectrogram(wave, self.audio_cfg).numpy(), None
            paths = s.frames if modality == "frames" else [s.image]
            if augment:
                images = [load_image(p, self.channels).numpy() for p in paths]
                if len({im.shape for im in images}) > 1:
                    return None, None  # frames of several sizes: decoded when drawn
                return None, np.stack(images)
            picks = self.picks(s, None) if modality == "frames" else [0]
            pixels = self.image.pixels([load_image(paths[i], self.channels) for i in picks])
            return (pixels if modality == "frames" else pixels[0]).numpy(), None
        except DataError:
            return None, None

    def from_cache(self, modality: str, s: Sample, row: Row, rng: np.random.Generator | None):
        """The view from a cache row: the static view as stored, or the view of the decode."""
        static, decoded = row
        if static is None:
            view = {"audio": self.audio, "frames": self.frame_stack, "image": self.picture}
            return view[modality](s, rng, decoded)
        tensor = torch.from_numpy(static)
        if modality == "audio":
            return tensor
        if modality == "frames":
            return self.image.from_pixels(tensor)
        return self.image.from_pixels(tensor[None])[0]

    def cache_bytes(self, modality: str, augment: bool, samples: list[Sample]) -> int:
        """About what a modality's cache of `samples` takes on disk (the decode of augmented
        frames from the image sizes of up to 32 samples' files, read from their headers)."""
        n = len(samples)
        if modality == "audio":
            return n * self.audio_cfg.n_freq * self.audio_cfg.length * 4
        if not augment:
            h, w = self.image.cfg.hw
            return n * self.channels * h * w * (self.frames if modality == "frames" else 1)
        probe = samples[:: max(1, n // 32)][:32]
        total = 0
        for s in probe:
            for path in s.frames if modality == "frames" else [s.image]:
                try:
                    with Image.open(path) as im:
                        total += im.size[0] * im.size[1] * self.channels
                except OSError:
                    pass
        return total * n // max(1, len(probe))

    def cache_description(self, modality: str, augment: bool) -> dict[str, Any]:
        """What a modality's cache rows depend on besides the records (its key)."""
        if modality == "audio":
            return {"modality": modality, "augment": augment, **self.audio_cfg.model_dump()}
        if augment:  # the decode alone
            return {"modality": modality, "augment": True, "channels": self.channels}
        image = self.image.cfg.model_dump(mode="json")
        return {"modality": modality, "augment": False, "frames": self.frames, **image}


#: the modalities the input cache holds (text is tokenised once already)
CACHED = ("audio", "frames", "image")


def cache_record(s: Sample, modality: str) -> list[Any]:
    """A sample's part of an input cache key: id, files, segment and the files' stamps."""
    if modality == "audio":
        return [s.id, str(s.audio), s.start, s.end, file_stamp(s.audio)]
    paths = s.frames if modality == "frames" else [s.image]
    return [s.id, [str(p) for p in paths], [file_stamp(p) for p in paths]]


class ManifestSplit(KeyedDataset):
    """One split of a manifest: items `{index, x, y, t}` (see the module docstring)."""

    def __init__(
        self,
        samples: list[Sample],
        views: Views,
        student: str,
        teacher: str,
        augment_student: bool,
        augment_teacher: bool,
    ) -> None:
        super().__init__()
        self.samples, self.views = samples, views
        self.student, self.teacher = student, teacher
        self.augment_student, self.augment_teacher = augment_student, augment_teacher
        #: (modality, augmented) -> its input cache, once `attach_input_cache` ran
        self.caches: dict[tuple[str, bool], InputCache] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def raw_input(self, index: int) -> Any:
        """The student side of sample `index` as `cmkd_cli.load` takes it: the clip with its
        rate, the image's path, the evaluation frames as a `[k, C, H, W]` stack, the text."""
        s, views = self.samples[index], self.views
        if self.student == "audio":
            return views._samples(s), views.audio_cfg.sample_rate
        if self.student == "image":
            return s.image
        if self.student == "frames":
            return torch.stack([views._decoded(s.frames[i]) for i in views.picks(s, None)])
        if self.student == "text":
            return s.words
        raise UsageError(f"a `{self.student}` student has no input of its own")

    def _view(self, modality: str, index: int, rng: np.random.Generator, augment: bool):
        s = self.samples[index]
        cache = self.caches.get((modality, augment))
        if cache is not None:
            row = (cache.static(index), cache.decoded(index))
            if row[0] is not None or row[1] is not None:
                return self.views.from_cache(modality, s, row, rng if augment else None)
        return self.views.get(modality, s, rng, augment)

    def sample_id(self, index: int) -> str:
        return self.samples[index].id

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        rx, rt = self.rng(index).spawn(2)
        item: dict[str, Any] = {"index": index, "y": s.label}
        if "x" in self.inputs:
            item["x"] = self._view(self.student, index, rx, self.augment_student)
        parts = self.teacher.split("+")
        if "t" in self.inputs and len(parts) == 1:
            item["t"] = self._view(self.teacher, index, rt, self.augment_teacher)
        elif "t" in self.inputs:  # a multimodal teacher: one generator per modality
            rngs = rt.spawn(len(parts))
            item["t"] = {
                m: self._view(m, index, r, self.augment_teacher)
                for m, r in zip(parts, rngs, strict=True)
            }
        return item

    def cache_row(self, modality: str, augment: bool, index: int) -> Row:
        return self.views.cache_row(modality, self.samples[index], augment)

    def attach_input_cache(self, root: Path, workers: int, name: str, budget: int) -> None:
        """Build (or find) and use the input caches of this split's audio and image sides;
        one that would take more than `budget` bytes is left out (decoded per draw)."""
        sides = [(self.student, self.augment_student)] if "x" in self.inputs else []
        if "t" in self.inputs:
            sides += [(m, self.augment_teacher) for m in self.teacher.split("+")]
        for modality, augment in dict.fromkeys(sides):
            if modality not in CACHED:
                continue
            key = cache_key(
                self.views.cache_description(modality, augment),
                [cache_record(s, modality) for s in self.samples],
            )
            size = self.views.cache_bytes(modality, augment, self.samples)
            if not (root / key).is_dir() and size > budget:
                console.warn(
                    f"input cache: the {name} {modality} inputs would take about "
                    f"{size / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB allowed "
                    "(train.input_cache_gb, half the free disk); decoding them per draw"
                )
                continue
            cache = build_cache(
                root / key,
                len(self.samples),
                functools.partial(self.cache_row, modality, augment),
                workers,
                f"decoding {name} {modality} once",
            )
            if cache is not None:
                self.caches[(modality, augment)] = cache


def class_list(records: list[Record], manifest: Path, classes: str | None) -> list[tuple[str, str]]:
    """(label, name) per class: `classes` or the manifest's classes.txt, else sorted labels."""
    path = Path(classes) if classes else manifest.parent / CLASSES
    if classes or path.is_file():
        return read_classes(path)
    labels = sorted({str(r.label) for r in records if r.label is not None})
    return [(label, label) for label in labels]


def _sample(r: Record, manifest: Path, label: int) -> Sample:
    extra = r.model_extra or {}
    return Sample(
        id=r.id,
        label=label,
        audio=resolve(manifest, r.audio) if r.audio else None,
        start=extra.get("start"),
        end=extra.get("end"),
        frames=[resolve(manifest, f) for f in r.frames],
        image=resolve(manifest, r.image) if r.image else None,
    )


def _has(r: Record, modality: str) -> bool:
    return modality == "label_prompt" or bool(getattr(r, SOURCE_FIELD[modality]))


@register_dataset("manifest")
def manifest_dataset(
    manifest: str,
    student_modality: str = "frames",
    teacher_modality: str = "audio",
    train_split: str | list[str] = "train",
    val_split: str = "val",
    test_split: str = "test",
    classes: str | None = None,
    frames: int = 1,
    augment: bool = True,
    augment_teacher: bool = False,
    audio: dict[str, Any] | None = None,
    image: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
    labelled_fraction: float = 1.0,
    subset_seed: int = 0,
    cache: bool = False,
) -> DataBundle:
    """A prepared manifest (folder or manifest.jsonl) as a `DataBundle`.

    `student_modality` / `teacher_modality`: audio|frames|image|text|label_prompt (the
    teacher's may join several with `+`, e.g. `audio+image`, for a fusion teacher); `frames`
    per sample (paper B: 1 for AVE/CREMA-D, 3 for VGGSound); `augment` the student's
    training view, `augment_teacher` the teacher's; `audio`, `image`, `text`: the fields of
    `SpectrogramConfig`, `ImageTransformConfig`, `TextConfig`. Records lacking a side's
    modality are left out (counted in `info["dropped"]`); `*_split` name the manifest splits
    (e.g. `val_split: test` for paper A's CIFAR protocol, which validates on the test set);
    `train_split` may list several (an image teacher on `[train, unpaired]` AV-digits).
    `labelled_fraction` keeps a stratified share of the training records
    (`datasets.stratified_subset` with `subset_seed`: nested, 5% within 10% within 25%).
    `cache` keeps decoded inputs and evaluation views in memory (`Views`): for small
    datasets trained many times in one process (a benchmark study).
    """
    teacher_parts = teacher_modality.split("+")
    for name, value in (
        ("student_modality", student_modality),
        *(("teacher_modality", part) for part in teacher_parts),
    ):
        if value not in MODALITIES:
            raise UsageError(
                f"data.params.{name}: unknown modality {value!r}; choose one of: "
                f"{', '.join(MODALITIES)}"
            )
    if len(set(teacher_parts)) < len(teacher_parts):
        raise UsageError(
            f"data.params.teacher_modality: {teacher_modality!r} names a modality twice"
        )
    if frames < 1:
        raise UsageError(f"data.params.frames: must be at least 1, got {frames}")
    path = Path(manifest).expanduser()
    path = path / MANIFEST if path.is_dir() else path
    records = read_manifest(path)
    entries = class_list(records, path, classes)
    index = {label: i for i, (label, _) in enumerate(entries)}
    used = (student_modality, *teacher_parts)
    if not 0 < labelled_fraction <= 1:
        raise UsageError(
            f"data.params.labelled_fraction: must be in (0, 1], got {labelled_fraction}"
        )
    trains = [train_split] if isinstance(train_split, str) else list(train_split)
    split_names = {"train": trains, "val": [val_split], "test": [test_split]}
    chosen: dict[str, list[Record]] = {k: [] for k in split_names}
    dropped: Counter[str] = Counter()
    for r in records:
        for key, names in split_names.items():
            if r.split not in names:
                continue
            if str(r.label) not in index:
                dropped["label not in the class list"] += 1
            elif not all(_has(r, m) for m in used):
                dropped["missing modality"] += 1
            else:
                chosen[key].append(r)
    for key, names in split_names.items():
        if not chosen[key]:
            raise UsageError(
                f"data.params.{key}_split: {path} has no usable `{'`/`'.join(names)}` records "
                f"with {' and '.join(dict.fromkeys(used))}"
            )
    if labelled_fraction < 1:
        labels = np.array([index[str(r.label)] for r in chosen["train"]])
        keep = stratified_subset(labels, labelled_fraction, subset_seed)
        chosen["train"] = [chosen["train"][i] for i in keep]
    if dropped:
        console.warn(f"{path}: left out {sum(dropped.values())} records ({dict(dropped)})")
    audio_cfg = _settings(SpectrogramConfig, audio, "audio")
    image_cfg = _settings(ImageTransformConfig, image, "image")
    text_cfg = _settings(TextConfig, text, "text")
    splits: dict[str, list[Sample]] = {}
    all_texts: list[str] = []
    for key, recs in chosen.items():
        splits[key] = []
        for r in recs:
            s = _sample(r, path, index[str(r.label)])
            if "text" in used:
                s.text, s.words = len(all_texts), r.text or ""
                all_texts.append(s.words)
            splits[key].append(s)
    tokens = load_tokens(all_texts, text_cfg) if "text" in used else None
    views = Views(audio_cfg, image_cfg, frames, tokens, cache)

    def split(key: str, train: bool) -> ManifestSplit:
        return ManifestSplit(
            splits[key],
            views,
            student_modality,
            teacher_modality,
            augment and train,
            augment_teacher and train,
        )

    static = all(
        m == "text" or (m != "label_prompt" and not augment_teacher) for m in teacher_parts
    )
    train, val, test = split("train", True), split("val", False), split("test", False)

    def input_cache(root: Path, workers: int, budget: int) -> None:
        for name, ds in (("train", train), ("val", val), ("test", test)):
            ds.attach_input_cache(root, workers, name, budget)

    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(entries),
        class_names=[name for _, name in entries],
        info={
            "manifest": str(path),
            **{key: len(v) for key, v in splits.items()},
            "student": student_modality,
            "teacher": teacher_modality,
            "dropped": dict(dropped),
        },
        teacher_static=static,
        student_input=_student_input(student_modality, audio_cfg, image_cfg, frames, text_cfg),
        input_cache=input_cache,
    )


def _student_input(
    modality: str,
    audio: SpectrogramConfig,
    image: ImageTransformConfig,
    frames: int,
    text: TextConfig,
) -> SpectrogramInput | ImageInput | TextInput | None:
    """The evaluation preprocessing of the student's modality (None: `label_prompt`)."""
    if modality == "audio":
        return SpectrogramInput(audio=audio)
    if modality in ("image", "frames"):
        return ImageInput(image=image, frames=frames if modality == "frames" else 0)
    return TextInput(text=text) if modality == "text" else None
