"""A speaker student shipped: the API, `embed`, `score` and `eval --scores-out` agree.

One student trained on real LibriSpeech speech (`speaker_run`); the trial list pairs the
utterances of four held-out speakers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch


def _scores(path: Path) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
    rows = [line.split() for line in path.read_text().splitlines()]
    pairs = [(r[0], r[1]) for r in rows]
    return pairs, np.array([float(r[2]) for r in rows]), np.array([int(r[3]) for r in rows])


def _eer_min_dcf_with_sklearn(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """EER (FAR and FRR interpolated where they cross) and minDCF (P_target 0.01) from
    scikit-learn's ROC points, independently of cmkd's metrics code."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    far, frr = fpr[::-1], (1 - tpr)[::-1]  # thresholds ascending: FRR rises, FAR falls
    i = int(np.argmax(frr >= far))
    d0, d1 = far[i - 1] - frr[i - 1], far[i] - frr[i]
    a = d0 / (d0 - d1)
    eer = (1 - a) * frr[i - 1] + a * frr[i]
    min_dcf = np.min(0.01 * frr + 0.99 * far) / 0.01
    return float(eer), float(min_dcf)


def test_student_pt_carries_the_fbank_and_crop_policy(speaker_run) -> None:
    pkg = torch.load(speaker_run.run / "student.pt", weights_only=True)
    stored = json.loads((speaker_run.fbank / "config.json").read_text())
    assert pkg["task"] == "speaker" and pkg["input"]["kind"] == "fbank"
    assert pkg["input"]["fbank"] == stored  # the training store's own settings
    assert pkg["input"]["fbank"]["frontend"] == "voxceleb_trainer"
    assert pkg["input"]["crops"] == 2 and pkg["input"]["crop_seconds"] == 2.0
    assert pkg["model"]["params"] == {
        "width": "quarter",
        "n_mels": 40,
        "embed_dim": 64,
        "stem_bias": True,
    }
    # the recipe's trial scoring (paper A: minus the mean crop distance, P_target 0.01)
    assert pkg["scoring"] == {"score": "distance", "p_target": 0.01, "c_miss": 1.0, "c_fa": 1.0}


def test_three_lines_embed_a_wav_as_eval_does(speaker_run) -> None:
    from cmkd_cli import load

    student = load(speaker_run.run / "student.pt")
    emb = student.embed(speaker_run.test_wavs["id3080/00000.wav"])
    assert emb.shape == (64,) and np.isfinite(emb).all()

    # the API's fbank of a wav is the feature store's (float16-rounded) features
    from cmkd_cli.data.fbank import FbankStore

    store = FbankStore(speaker_run.fbank)
    wav = speaker_run.test_wavs["id3080/00000.wav"]
    feats = student.features(wav).numpy()
    np.testing.assert_array_equal(feats, np.asarray(store["id3080/00000"], dtype=np.float32))
    # a (waveform, rate) pair, at the file's rate or another one, is the same input
    samples, rate = sf.read(str(wav), dtype="float32")
    np.testing.assert_array_equal(student.embed((samples, rate)), emb)
    crops = student.embed(wav, crops=True)
    assert crops.shape == (2, 64)
    stored_crops = student.crop_embeddings([store["id3080/00000"]])[0].numpy()
    np.testing.assert_allclose(crops, stored_crops, rtol=0, atol=1e-5)
    # score() is eval's (stored) trial score; embed()'s dot products are the cosine one
    from cmkd_cli.metrics.trials import score_pairs

    other = speaker_run.test_wavs["id3331/00001.wav"]
    both = np.stack([crops, student.embed(other, crops=True)])
    pair = np.array([[0, 1]])
    assert student.scoring.score == "distance"
    assert abs(student.score(wav, other) - score_pairs(both, pair, score="distance")[0]) < 1e-6
    cosine = score_pairs(both, pair, score="cosine")[0]
    assert abs(float(emb @ student.embed(other)) - cosine) < 1e-6


def test_eval_scores_out_gives_eval_numbers_back_through_sklearn(speaker_run, cli, tmp_path):
    out = tmp_path / "scores.txt"
    ev = cli(
        "--json",
        "eval",
        "--checkpoint",
        speaker_run.run / "student.pt",
        *speaker_run.data_args,
        "--scores-out",
        out,
    )
    assert ev.code == 0, ev.stderr
    result = ev.json()["results"][0]
    assert result["scores"] == str(out) and result["n_trials"] == 66
    assert result["scoring"]["score"] == "distance"
    pairs, scores, labels = _scores(out)
    listed = [line.split() for line in speaker_run.trials.read_text().splitlines()]
    assert pairs == [(b, c) for _, b, c in listed]  # the list's order and names
    assert labels.tolist() == [int(a) for a, _, _ in listed]
    eer, min_dcf = _eer_min_dcf_with_sklearn(scores, labels)
    assert abs(eer - result["eer"]) < 1e-6 and abs(min_dcf - result["min_dcf"]) < 1e-6
    # best.pt evaluates to the same numbers as the student.pt written beside it
    best = cli(
        "--json",
        "eval",
        "-c",
        speaker_run.run / "best.pt",
        *speaker_run.data_args,
    )
    assert best.json()["results"][0]["eer"] == result["eer"]
    # the API scores a trial as eval does
    from cmkd_cli import load

    student = load(speaker_run.run / "student.pt")
    a, b = pairs[0]
    api = student.score(speaker_run.test_wavs[a], speaker_run.test_wavs[b])
    assert abs(api - scores[0]) < 1e-5


def test_score_and_embed_write_eval_scores(speaker_run, cli, tmp_path) -> None:
    ckpt = speaker_run.run / "student.pt"
    ev_out = tmp_path / "eval.txt"
    cli(
        "eval",
        "-c",
        ckpt,
        *speaker_run.data_args,
        "--scores-out",
        ev_out,
    )
    _, ev_scores, _ = _scores(ev_out)
    from_store = tmp_path / "store.txt"
    res = cli(
        "--json",
        "score",
        "-c",
        ckpt,
        *speaker_run.data_args,
        "--out",
        from_store,
    )
    assert res.code == 0, res.stderr
    assert from_store.read_text() == ev_out.read_text()
    assert res.json()["n_target"] == 12 and res.json()["eer"] is not None
    root = speaker_run.test_wavs["id3080/00000.wav"].parents[1]
    from_wavs = tmp_path / "wavs.txt"
    assert 0 <= res.json()["eer"] <= 1  # a fraction in JSON ...
    res = cli(
        "--quiet", "score", "-c", ckpt, "--trials", speaker_run.trials, "--root", root,
        "-o", from_wavs,
    )  # fmt: skip
    assert res.code == 0, res.stderr
    assert re.search(r"EER \d+\.\d\d%", res.stdout)  # ... percent for people, also with --quiet
    np.testing.assert_allclose(_scores(from_wavs)[1], ev_scores, rtol=0, atol=1e-5)

    # cmkd embed, then cmkd score from its crops
    emb_dir = tmp_path / "emb"
    wavs = [speaker_run.test_wavs[k] for k in sorted(speaker_run.test_wavs)]
    res = cli("--json", "embed", "-c", ckpt, "--out", emb_dir, *wavs)
    assert res.code == 0, res.stderr
    assert res.json()["embedded"] == 12 and res.json()["crops"] == 2
    ids = (emb_dir / "ids.txt").read_text().splitlines()
    assert ids == [str(w) for w in wavs]
    assert np.load(emb_dir / "embeddings.npy").shape == (12, 64)
    assert np.load(emb_dir / "crops.npy").shape == (12, 2, 64)
    # ids are paths here: a trial list naming them scores from the stored crops
    names = {k: str(v) for k, v in speaker_run.test_wavs.items()}
    listed = [line.split() for line in speaker_run.trials.read_text().splitlines()]
    by_path = tmp_path / "by-path.txt"
    by_path.write_text("".join(f"{a} {names[b]} {names[c]}\n" for a, b, c in listed))
    from_emb = tmp_path / "emb.txt"
    res = cli("score", "--embeddings", emb_dir, "--trials", by_path, "-o", from_emb)
    assert res.code == 0, res.stderr
    np.testing.assert_allclose(_scores(from_emb)[1], ev_scores, rtol=0, atol=1e-5)
    # a list without labels gives lines without labels and no EER
    unlabelled = tmp_path / "pairs.txt"
    unlabelled.write_text("".join(f"{names[b]} {names[c]}\n" for _, b, c in listed[:5]))
    res = cli("--json", "score", "--embeddings", emb_dir, "--trials", unlabelled, "-o", from_emb)
    assert res.code == 0 and res.json()["eer"] is None and res.json()["n_target"] is None
    assert all(len(line.split()) == 3 for line in from_emb.read_text().splitlines())


def test_embed_skips_unreadable_files_and_resumes_after_a_kill(
    speaker_run, cli, tmp_path, monkeypatch
) -> None:
    from cmkd_cli.student.api import Student

    ckpt = speaker_run.run / "student.pt"
    wavs = [speaker_run.test_wavs[k] for k in sorted(speaker_run.test_wavs)][:6]
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    inputs = [*wavs[:3], bad, *wavs[3:]]
    whole = tmp_path / "whole"
    res = cli("--json", "embed", "-c", ckpt, "-o", whole, "--batch-size", "2", *inputs)
    assert res.code == 0, res.stderr
    assert res.json()["embedded"] == 6 and res.json()["skipped"] == 1
    skipped = [json.loads(x) for x in (whole / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["id"] == str(bad) and "broken.wav" in skipped[0]["reason"]
    assert str(bad) not in (whole / "ids.txt").read_text()
    again = cli("--json", "embed", "-c", ckpt, "-o", whole, "--batch-size", "2", *inputs)
    assert again.json()["reused"] is True

    # killed during the third chunk: the first two chunks' rows are kept and not redone
    real = Student.embed_decoded
    calls = {"n": 0}

    def dies_on_third(self, decoded, batch_size=16):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, decoded, batch_size)

    monkeypatch.setattr(Student, "embed_decoded", dies_on_third)
    killed = tmp_path / "killed"
    res = cli("embed", "-c", ckpt, "-o", killed, "--batch-size", "2", *inputs)
    assert res.code == 130 and not (killed / "embeddings.npy").exists()
    monkeypatch.setattr(Student, "embed_decoded", real)
    calls["n"] = 0
    res = cli("embed", "-c", ckpt, "-o", killed, "--batch-size", "2", *inputs)
    assert res.code == 0, res.stderr
    assert "resuming after 4 of 7 inputs" in res.stderr
    np.testing.assert_allclose(
        np.load(killed / "crops.npy"), np.load(whole / "crops.npy"), rtol=0, atol=1e-6
    )
    assert (killed / "ids.txt").read_text() == (whole / "ids.txt").read_text()


@pytest.mark.parametrize("bad", ["--root", "--embeddings"])
def test_score_needs_one_source(speaker_run, cli, tmp_path, bad) -> None:
    res = cli(
        "score",
        "-c",
        speaker_run.run / "student.pt",
        "--trials",
        speaker_run.trials,
        "-o",
        tmp_path / "s.txt",
    )
    assert res.code == 2 and "give --manifest, --root or --embeddings" in res.stderr
    res = cli("score", "--trials", speaker_run.trials, "-o", tmp_path / "s.txt", bad, tmp_path)
    assert res.code != 0 and ("ids.txt" in res.stderr or "--checkpoint is required" in res.stderr)
