"""A speaker checkpoint saved before the fidelity options (no stem bias, no recorded front-end,
no trial-score setting) evaluates as it did then: Kaldi features, mean cosine, P_target 0.01.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from cmkd_cli.data.fbank import FbankConfig
from cmkd_cli.models.speaker import resnet34_asp
from tests.fixtures_layouts import fbank_store, librispeech_files


def _old_checkpoint(path: Path, manifest: Path, store: Path) -> Path:
    """The fields a checkpoint of that time held for a speaker student (best.pt layout), its
    run's data where the recipe says (the preprocessing is read from its training store)."""
    torch.manual_seed(0)
    model = resnet34_asp(num_classes=3, width="quarter", embed_dim=32)
    recipe = {
        "name": "vox2-baseline",
        "task": "speaker",
        "task_params": {"utterances_per_speaker": 2},
        "student": {
            "name": "resnet34_asp",
            "params": {"width": "quarter", "n_mels": 40, "embed_dim": 32},
        },
        "data": {
            "name": "speaker",
            "params": {
                **{f"{split}_manifest": str(manifest) for split in ("train", "val")},
                **{f"{split}_fbank": str(store) for split in ("train", "val")},
                "faces": False,
                "train_split": None,
            },
        },
        "method": {"name": "baseline"},
    }
    spec = {"num_classes": 3, "class_names": ["a", "b", "c"], "n_train": 6}
    torch.save({"student": model.state_dict(), "recipe": recipe, "data_spec": spec}, path)
    return path


def test_an_old_speaker_checkpoint_evaluates_as_before(cli, tmp_path: Path) -> None:
    items, rows = [], []
    for spk, flacs in librispeech_files(3, 2).items():
        for f in flacs:
            items.append((f"{spk}/{f.stem}", str(f)))
            rows.append({"id": f"{spk}/{f.stem}", "speaker": spk, "audio": str(f)})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trials = tmp_path / "trials.txt"
    trials.write_text(
        "".join(
            f"{int(a.split('/')[0] == b.split('/')[0])} {a}.wav {b}.wav\n"
            for a, b in itertools.combinations([i for i, _ in items], 2)
        )
    )
    kaldi = fbank_store(tmp_path / "kaldi", items, FbankConfig())
    vt = fbank_store(tmp_path / "vt", items, FbankConfig(frontend="voxceleb_trainer"))
    ckpt = _old_checkpoint(tmp_path / "best.pt", manifest, kaldi)
    base = ["--json", "eval", "-c", ckpt, "--trials", trials, "--manifest", manifest]
    base += ["--crops", "2", "--crop-seconds", "1.0", "--device", "cpu"]

    stored = cli(*base, "--fbank", kaldi)
    assert stored.code == 0, stored.stderr
    r = stored.json()["results"][0]
    assert r["scoring"] == {"score": "cosine", "p_target": 0.01, "c_miss": 1.0, "c_fa": 1.0}
    audio = cli(*base).json()["results"][0]  # features from audio: Kaldi, as then
    assert abs(audio["eer"] - r["eer"]) <= 0.1
    wrong = cli(*base, "--fbank", vt)
    assert wrong.code == 1 and "holds voxceleb_trainer front-end" in wrong.stderr
    assert "needs kaldi front-end" in wrong.stderr
