"""`cmkd cross-match`: do student and (projected) teacher embeddings share a space?

Paper A Table 4 (speaker): triplets of one audio and two faces (A-F), or one face and two
audios (F-A); the model picks the option whose embedding has the higher cosine with the
anchor; chance is 50%. `--hard` draws both options from speakers of the same gender.
Triplets are drawn (with replacement) from the records of one manifest split, by default
the held-out speakers the recipe keeps for the face teacher's own evaluation
(`data.params.face_eval_split`, `test`), never from the training speakers unless asked
(`--split dev` or `all`); each row says how many distinct records its triplets used.
Paper A Table 8 (classification): each sample of the split (`test` by default) against
every class's teacher embedding (the mean teacher embedding of the class's samples; for the
prompt teacher, its class prompts); chance is 1/C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from rich.table import Table
from torch.utils.data import DataLoader

from cmkd_cli import units
from cmkd_cli.data.datasets import build_data, keyed_rng
from cmkd_cli.data.manifest import read_manifest, resolve
from cmkd_cli.data.speaker import load_face
from cmkd_cli.engine.distributed import select_device
from cmkd_cli.errors import UsageError
from cmkd_cli.metrics.trials import utterance_vectors
from cmkd_cli.options.common import EmbedOptions
from cmkd_cli.progress import track
from cmkd_cli.stages.evaluate import embed_utterances, utterance_fbanks
from cmkd_cli.stages.experiment import method_from_checkpoint
from cmkd_cli.student.api import Student
from cmkd_cli.student.package import read_student


class CrossMatchOptions(EmbedOptions):
    checkpoint: Path = Field(description="a run's best.pt (the method's heads too)")
    manifest: Path | None = Field(None, description="manifest with audio and aligned faces")
    fbank: Path | None = Field(None, description="fbank store of the utterances")
    triplets: int = Field(10000, description="triplets per protocol")
    hard: bool = Field(False, description="both options of the same gender")
    seed: int = Field(0, description="seed of the triplet draw")
    split: str | None = Field(None, description="manifest split (default: the held-out one)")


class MatchRow(BaseModel):
    protocol: str
    trials: int
    accuracy: float
    chance: float
    records_used: int = Field(description="distinct records the trials drew on")


class CrossMatchResult(BaseModel):
    checkpoint: str
    method: str
    hard: bool
    split: str
    records: int = Field(description="records of the split available to draw from")
    rows: list[MatchRow]


def triplet_accuracy(anchor: torch.Tensor, option: torch.Tensor, trip: np.ndarray) -> float:
    """Share of triplets (a, positive, negative) whose positive is closer to the anchor."""
    a = F.normalize(anchor[trip[:, 0]], dim=-1)
    pos = (a * F.normalize(option[trip[:, 1]], dim=-1)).sum(-1)
    neg = (a * F.normalize(option[trip[:, 2]], dim=-1)).sum(-1)
    return float((pos > neg).float().mean())


def draw_triplets(
    speakers: list[str], genders: list[str | None], n: int, hard: bool, seed: int
) -> np.ndarray:
    """n seeded (anchor, same-speaker option, other-speaker option) index triplets."""
    rng = keyed_rng("cross-match", seed, hard)
    by_spk: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        by_spk.setdefault(s, []).append(i)
    out = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        a = int(rng.integers(len(speakers)))
        same = [i for i in by_spk[speakers[a]] if i != a] or [a]
        others = [
            i
            for i, s in enumerate(speakers)
            if s != speakers[a]
            and (not hard or (genders[i] is not None and genders[i] == genders[a]))
        ]
        if not others:
            continue
        out.append((a, same[int(rng.integers(len(same)))], others[int(rng.integers(len(others)))]))
    if not out:
        need = "two speakers of one gender" if hard else "two speakers"
        raise UsageError(f"--manifest: cross-matching needs at least {need} with faces")
    return np.array(out, dtype=np.int64)


@torch.no_grad()
def speaker_embeddings(
    method: Any,
    student: Student,
    manifest: Path,
    fbank: Path | None,
    batch_size: int,
    split: str = "all",
) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
    """Per record of `split` (`all`: every record): the student's audio embedding
    (`Student.embed`'s: the mean of the normalised crop embeddings, with the student's own
    features and crops) and the teacher's face embedding, both in the method's shared space."""
    records = [r for r in read_manifest(manifest) if r.audio and getattr(r, "faces", None)]
    if not records:
        raise UsageError(
            f"--manifest {manifest}: no record has both audio and `faces` "
            "(use the manifest written by `cmkd align-faces`)"
        )
    splits = sorted({r.split for r in records})
    records = [r for r in records if split in ("all", r.split)]
    if not records:
        raise UsageError(
            f"--split {split}: no record of {manifest} with faces is in that split "
            f"(its splits: {', '.join(splits)}; `all` for every record)"
        )
    feats = utterance_fbanks(student, manifest, fbank, None, None)
    ids = [r.id for r in records]
    audio = utterance_vectors(embed_utterances(student, ids, feats, batch_size))
    faces, device = [], student.device
    for i in track(range(0, len(records), 32), description="embedding faces"):
        x = torch.stack([load_face(resolve(manifest, r.faces[0])) for r in records[i : i + 32]])
        faces.append(method.teacher(x.to(device)).embedding.float())
    s, t = method.shared_space(audio.to(device), torch.cat(faces))
    return s, t, records


@torch.no_grad()
def class_matching(method: Any, recipe: Any, device: torch.device, split: str) -> MatchRow:
    """Each sample of `split` against each class's mean teacher embedding (Table 8)."""
    if split not in ("train", "val", "test"):
        raise UsageError(f"--split {split}: choose train, val or test for this checkpoint")
    data = build_data(recipe.data)
    loader = DataLoader(getattr(data, split), batch_size=recipe.data.eval_batch_size)
    s_emb, t_emb, ys = [], [], []
    for batch in loader:
        s_emb.append(method.student(batch[method.input_key].to(device)).embedding.float())
        t_emb.append(method.teacher(batch["t"].to(device)).embedding.float())
        ys.append(batch["y"])
    y = torch.cat(ys).to(device)
    s, t = method.shared_space(torch.cat(s_emb), torch.cat(t_emb))
    classes = torch.zeros(data.num_classes, t.shape[-1], device=device).index_add_(0, y, t)
    sims = F.normalize(s, dim=-1) @ F.normalize(classes, dim=-1).T
    acc = float((sims.argmax(-1) == y).float().mean())
    return MatchRow(
        protocol=f"sample -> class ({split})",
        trials=len(y),
        accuracy=acc,
        chance=1.0 / data.num_classes,
        records_used=len(y),
    )


def held_out_split(recipe: Any) -> str:
    """The split cross-matching uses by default: the recipe's held-out speakers
    (`data.params.face_eval_split`, `test` by default) or the test split."""
    return str(recipe.data.params.get("face_eval_split", "test"))


def run(options: CrossMatchOptions) -> CrossMatchResult:
    o = options
    checkpoint, manifest, hard = o.checkpoint, o.manifest, o.hard
    dev = select_device(o.device)
    method, recipe = method_from_checkpoint(checkpoint)
    method.to(dev)
    if method.teacher is None:
        raise UsageError(f"{checkpoint}: method `{recipe.method.name}` has no teacher to match")
    split = o.split or held_out_split(recipe)
    if recipe.task != "speaker":
        rows = [class_matching(method, recipe, dev, split)]
        available = rows[0].trials
    else:
        if manifest is None:
            raise UsageError("--manifest is required for speaker checkpoints (audio + faces)")
        student = Student(read_student(checkpoint), dev, model=method.student)
        student.with_crops(o.crops, o.crop_seconds)
        s, t, records = speaker_embeddings(method, student, manifest, o.fbank, o.batch_size, split)
        available = len(records)
        trip = draw_triplets(
            [r.speaker or "" for r in records],
            [getattr(r, "gender", None) for r in records],
            o.triplets,
            hard,
            o.seed,
        )
        used = len(np.unique(trip))
        rows = [
            MatchRow(
                protocol="A-F (audio -> 2 faces)",
                trials=len(trip),
                accuracy=triplet_accuracy(s, t, trip),
                chance=0.5,
                records_used=used,
            ),
            MatchRow(
                protocol="F-A (face -> 2 audios)",
                trials=len(trip),
                accuracy=triplet_accuracy(t, s, trip),
                chance=0.5,
                records_used=used,
            ),
        ]
    return CrossMatchResult(
        checkpoint=str(checkpoint),
        method=recipe.method.name,
        hard=hard,
        split=split,
        records=available,
        rows=rows,
    )


def render(result: CrossMatchResult) -> Table:
    hard = ", hard" if result.hard else ""
    t = Table(
        title=f"cross-modal matching ({result.method}{hard}; split {result.split}: "
        f"{result.records} records)"
    )
    for c in ("protocol", "trials", "distinct records", "accuracy", "chance"):
        t.add_column(c)
    for r in result.rows:
        t.add_row(
            r.protocol,
            str(r.trials),
            str(r.records_used),
            units.percent(r.accuracy),
            units.percent(r.chance),
        )
    return t
