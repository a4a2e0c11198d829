"""The speaker dataset: the stores' front-end, crop lengths and sampler settings."""

from __future__ import annotations

import json

import pytest

from cmkd_cli.data.fbank import FbankConfig
from cmkd_cli.data.speaker import speaker
from cmkd_cli.errors import DataError, UsageError
from tests.fixtures_layouts import fbank_store, librispeech_files


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, str]:
    """4 LibriSpeech speakers x 3 utterances: a manifest, a voxceleb_trainer and a kaldi store."""
    root = tmp_path_factory.mktemp("speaker-data")
    items, rows = [], []
    for spk, flacs in librispeech_files(4, 3).items():
        for f in flacs:
            items.append((f"{spk}/{f.stem}", str(f)))
            rows.append({"id": f"{spk}/{f.stem}", "speaker": spk, "audio": str(f), "split": "dev"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vt = FbankConfig(frontend="voxceleb_trainer")
    return {
        "manifest": str(manifest),
        "vt": fbank_store(root / "vt", items, vt),
        "kaldi": fbank_store(root / "kaldi", items, FbankConfig()),
    }


def _build(tree: dict[str, str], train: str, val: str, **kw):
    m = tree["manifest"]
    return speaker(m, tree[train], m, tree[val], faces=False, eval_crops=2, **kw)


def test_crops_follow_the_store_frontend_and_checkpoints_record_it(tree) -> None:
    vt = _build(tree, "vt", "vt")
    assert vt.train[0]["x"].shape == (202, 40)  # 2 s as voxceleb_trainer cuts it
    assert vt.val[0]["x"].shape == (2, 402, 40)  # two 4 s crops
    assert (
        vt.spec()["student_input"]["fbank"] == FbankConfig(frontend="voxceleb_trainer").model_dump()
    )
    kaldi = _build(tree, "kaldi", "kaldi")
    assert kaldi.train[0]["x"].shape == (200, 40) and kaldi.val[0]["x"].shape == (2, 400, 40)
    assert kaldi.spec()["student_input"]["fbank"]["frontend"] == "kaldi"


def test_stores_of_another_frontend_are_refused(tree) -> None:
    with pytest.raises(DataError, match="val_fbank: .*kaldi front-end, 40 mels.*voxceleb_trainer"):
        _build(tree, "vt", "kaldi")
    with pytest.raises(DataError, match="train_fbank: .*holds kaldi.*--frontend voxceleb_trainer"):
        _build(tree, "kaldi", "kaldi", frontend="voxceleb_trainer")
    with pytest.raises(UsageError, match="data.params.frontend: 'htk' is not one of"):
        _build(tree, "vt", "vt", frontend="htk")
    assert _build(tree, "vt", "vt", frontend="voxceleb_trainer").train.crop_frames == 202


def test_sampler_settings_reach_the_sampler(tree) -> None:
    default = _build(tree, "vt", "vt").train.batch_sampler(4, seed=0, rank=0, world=1)
    assert (default.max_per_class, default.duplicates) == (500, "drop")
    data = _build(tree, "vt", "vt", max_seg_per_spk=2, duplicate_speaker="defer")
    sampler = data.train.batch_sampler(4, seed=0, rank=0, world=1)
    assert (sampler.max_per_class, sampler.duplicates) == (2, "defer")
    assert len(list(sampler)) == 2  # 4 speakers x 1 pair each (2 of their 3 utterances)
