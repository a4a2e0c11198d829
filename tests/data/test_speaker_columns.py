"""The speaker training split from a synthetic manifest and store: its items, sample ids,
labels, faces and sampler batches, pinned to the values the record-based version gave."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmkd_cli.data.fbank import CONFIG, FbankConfig, shard_name, write_index
from cmkd_cli.data.speaker import speaker
from cmkd_cli.io import atomic_write_json, atomic_write_jsonl

#: (id, split, speaker, faces?, in the store?): speakers interleaved, one non-ASCII name
ROWS = [
    ("b/v1/00001", "dev", "bob", True, True),
    ("a/v1/00001", "dev", "alice", True, True),
    ("z/v1/00001", "dev", "zoë", True, True),
    ("b/v1/00002", "dev", "bob", True, True),
    ("c/v1/00001", "dev", "carl", True, True),
    ("a/v1/00002", "dev", "alice", True, True),
    ("z/v1/00002", "dev", "zoë", True, True),
    ("b/v2/00001", "dev", "bob", True, True),
    ("c/v1/00002", "dev", "carl", True, True),
    ("a/v2/00001", "dev", "alice", False, True),  # no faces
    ("b/v2/00002", "dev", "bob", True, False),  # no features
    ("x/v1/00001", "dev", "", True, True),  # no speaker
    ("z/v2/00001", "dev", "zoë", True, True),
    ("b/v3/00001", "dev", "bob", True, True),
    ("a/v3/00001", "dev", "alice", True, True),
    ("t/v1/00001", "test", "tina", True, True),  # held out
    ("u/v1/00001", "test", "uwe", True, True),
    ("t/v1/00002", "test", "tina", True, True),
    ("u/v1/00002", "test", "uwe", True, True),
    ("c/v2/00001", "dev", "carl", True, True),
    ("b/v3/00002", "dev", "bob", True, True),
]
FRAMES = 30


def _tree(root: Path) -> tuple[str, str]:
    """manifest.jsonl (faces: one PNG each, grey level = row number) and a store whose
    utterance of row k holds the value k in every frame (the last one 10 frames only)."""
    rows, ids = [], []
    for k, (uid, split, spk, faces, _) in enumerate(ROWS):
        row = {"id": uid, "split": split, "speaker": spk or None, "audio": f"wav/{uid}.wav"}
        if faces:
            face = f"faces/{uid}.png"
            (root / face).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (112, 112), (k, k, k)).save(root / face)
            row["faces"] = [face, f"faces/{uid}-second.png"]
        rows.append(row)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = root / "fbank"
    store.mkdir()
    atomic_write_json(store / CONFIG, FbankConfig(frontend="voxceleb_trainer").model_dump())
    feats, entries, offset = [], {}, 0
    for k, (uid, *_, stored) in enumerate(ROWS):
        if stored:
            n = 10 if k == len(ROWS) - 1 else FRAMES
            feats.append(np.full((n, 40), k, dtype=np.float16))
            entries[uid] = {"id": uid, "shard": shard_name(0), "offset": offset, "n_frames": n}
            offset += n
            ids.append(uid)
    np.save(store / shard_name(0), np.concatenate(feats))
    atomic_write_jsonl(store / shard_name(0, "jsonl"), list(entries.values()))
    write_index(store, ids, entries)
    return str(root / "manifest.jsonl"), str(store)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[str, str]:
    return _tree(tmp_path_factory.mktemp("speaker-columns"))


def _data(tree: tuple[str, str], **kw):
    m, store = tree
    return speaker(m, store, m, store, crop_seconds=0.1, eval_crops=2, seed=3, **kw)


def _row(uid: str) -> int:
    return next(k for k, r in enumerate(ROWS) if r[0] == uid)


TRAIN = [  # manifest order, filtered: dev split, faces, features, speaker
    "b/v1/00001", "a/v1/00001", "z/v1/00001", "b/v1/00002", "c/v1/00001", "a/v1/00002",
    "z/v1/00002", "b/v2/00001", "c/v1/00002", "z/v2/00001", "b/v3/00001", "a/v3/00001",
    "c/v2/00001", "b/v3/00002",
]  # fmt: skip
SPEAKERS = ["alice", "bob", "carl", "zoë"]


def test_items_ids_labels_and_faces_are_the_records_of_the_split(tree) -> None:
    data = _data(tree)
    train = data.train
    assert [train.sample_id(i) for i in range(len(train))] == TRAIN
    assert data.class_names == SPEAKERS and data.num_classes == 4
    assert [int(train[i]["y"]) for i in range(len(train))] == [
        1, 0, 3, 1, 2, 0, 3, 1, 2, 3, 1, 0, 2, 1,
    ]  # fmt: skip
    for i, uid in enumerate(TRAIN):
        item = train[i]
        assert item["index"] == i and item["x"].shape == (train.crop_frames, 40)
        assert float(item["x"].min()) == float(item["x"].max()) == _row(uid)  # its features
        grey = round(float(item["t"][0, 0, 0]) * 127.5 + 127.5)
        assert item["t"].shape == (3, 112, 112) and grey == _row(uid)  # its first face
    assert train.crop_frames > 10  # the last utterance (10 frames) is wrap-padded
    assert float(train[len(train) - 1]["x"].mean()) == _row(TRAIN[-1])


def test_sampler_batches_for_a_seed(tree) -> None:
    sampler = _data(tree).train.batch_sampler(4, seed=5, rank=0, world=1)
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert epochs == [
        [[12, 8, 5, 1], [7, 13, 9, 6]],
        [[4, 12, 7, 0], [3, 10, 2, 9]],
    ]


def test_fraction_keeps_the_same_utterances_in_speaker_order(tree) -> None:
    train = _data(tree, fraction=0.5).train
    assert [train.sample_id(i) for i in range(len(train))] == [
        "a/v1/00001", "a/v1/00002", "b/v1/00002", "b/v3/00002",
        "c/v1/00002", "c/v2/00001", "z/v1/00001", "z/v2/00001",
    ]  # fmt: skip
    assert [int(train[i]["y"]) for i in range(len(train))] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_without_faces_and_all_splits(tree) -> None:
    data = _data(tree, faces=False, train_split=None)
    ids = [data.train.sample_id(i) for i in range(len(data.train))]
    assert ids == [u for u, _, spk, _, stored in ROWS if spk and stored]
    assert data.class_names == [*SPEAKERS[:3], "tina", "uwe", "zoë"]
    assert "t" not in data.train[0] and data.teacher_val is None


def test_held_out_faces_give_the_teacher_trials(tree) -> None:
    teacher_val = _data(tree).teacher_val
    assert teacher_val.trials.utterances == ["t/v1/00001", "t/v1/00002", "u/v1/00001", "u/v1/00002"]
    assert teacher_val.trials.pairs.tolist() == [[2, 3], [0, 1], [0, 3], [1, 2]]
    assert teacher_val.trials.labels.tolist() == [1, 1, 0, 0]
    for i, uid in enumerate(teacher_val.trials.utterances):
        assert round(float(teacher_val[i]["t"][0, 0, 0, 0]) * 127.5 + 127.5) == _row(uid)
