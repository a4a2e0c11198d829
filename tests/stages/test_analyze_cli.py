"""`cmkd analyze`: kept fraction, KRC, CKA, embeddings and cost of a study and a c2kd run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

FAST = ["--set", "train.epochs=2", "--set", "teacher.pretrain.epochs=2", "--set", "train.threads=1"]


def _png_ok(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 5000, path
    assert imread(path)[..., :3].std() > 0.05, f"{path} is blank"


@torch.no_grad()
def _logits_and_embeddings(checkpoint: Path):
    """Teacher and student outputs on the test split, computed here, not by the stage."""
    from torch.utils.data import DataLoader

    from cmkd_cli.data.datasets import build_data
    from cmkd_cli.stages.experiment import method_from_checkpoint

    method, recipe = method_from_checkpoint(checkpoint)
    out = {"t_logits": [], "s_logits": [], "t_emb": [], "s_emb": []}
    for batch in DataLoader(build_data(recipe.data).test, batch_size=64):
        t, s = method.teacher(batch["t"]), method.student(batch["x"])
        out["t_logits"].append(t.logits)
        out["s_logits"].append(s.logits)
        out["t_emb"].append(t.embedding)
        out["s_emb"].append(s.embedding)
    return {k: torch.cat(v).double().numpy() for k, v in out.items()}


def _numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_analyze_study_and_c2kd_run(cli, tmp_path: Path) -> None:
    from scipy.stats import kendalltau

    from cmkd_cli.io import read_jsonl
    from cmkd_cli.metrics.similarity import cka_matrix, depth_pairs
    from cmkd_cli.metrics.training import kept_per_epoch

    study = cli(
        "--json", "distill", "--recipe", "quickstart", "--seeds", "1", *FAST,
        "--variant", "baseline", "--variant", "soft-classifier",
    )  # fmt: skip
    assert study.code == 0, study.stderr
    c2kd = cli("--json", "distill", "--recipe", "zoo/c2kd", *FAST, "--set", "train.log_every=1")
    assert c2kd.code == 0, c2kd.stderr
    root, run = tmp_path / "runs" / "quickstart", tmp_path / "runs" / "c2kd"

    res = cli("--json", "analyze", root, run)
    assert res.code == 0, res.stderr
    out = res.json()
    assert out["analyses"] == ["kept", "krc", "cka", "embeddings", "cost"]
    assert json.loads((root / "analysis" / "analysis.json").read_text()) == out

    # kept (Fig. 3): only c2kd logs it; per epoch, the mean of its logged per-step values
    rows = read_jsonl(run / "metrics.jsonl")
    [kept] = out["kept"]
    assert kept["variant"] == "c2kd" and kept["epochs"] == [1, 2]  # epochs count from 1
    expected = [
        statistics.fmean(r["stats/kept"] for r in rows if r["kind"] == "step" and r["epoch"] == e)
        for e in (1, 2)
    ]
    assert kept["kept"] == pytest.approx(expected, abs=1e-6)
    assert all(0 < v < 1 for v in kept["kept"])  # KRC <= 0 drops some samples, not all
    # without the epoch rows' exact means, the logged steps give the same numbers
    no_epoch_means = [{k: v for k, v in r.items() if k != "train/stats/kept"} for r in rows]
    per_epoch, source = kept_per_epoch(no_epoch_means)
    assert source == "step rows" and list(per_epoch.values()) == pytest.approx(expected)

    # KRC (Fig. 1b): per-sample tau-b of teacher vs student logits, checked with scipy
    krc = {r["run"]: r for r in out["krc"]}
    assert set(krc) == {"quickstart/soft-classifier seed 1", "c2kd"}
    assert any("baseline" in n and "has no teacher" in n for n in out["notes"])
    ref = _logits_and_embeddings(run / "best.pt")
    taus = np.array(
        [kendalltau(t, s).statistic for t, s in zip(ref["t_logits"], ref["s_logits"], strict=True)]
    )
    assert krc["c2kd"]["n"] == len(taus) == 360
    assert krc["c2kd"]["mean"] == pytest.approx(taus.mean(), abs=1e-6)
    assert krc["c2kd"]["frac_nonpositive"] == pytest.approx((taus <= 0).mean())

    # CKA (Fig. 6): stages paired by depth, embedding with embedding, checked with numpy
    cka = {r["run"]: r for r in out["cka"]}["c2kd"]
    stages = ["backbone.block1", "backbone.block2", "embedding"]
    assert cka["student_features"] == cka["teacher_features"] == stages
    assert [(p["student"], p["teacher"]) for p in cka["matched"]] == [(s, s) for s in stages]
    assert cka["matched"][-1]["cka"] == pytest.approx(
        _numpy_cka(ref["s_emb"], ref["t_emb"]), abs=1e-6
    )
    assert all(0 <= v <= 1 + 1e-9 for row in cka["matrix"] for v in row)
    teacher = {
        "embedding": torch.from_numpy(ref["t_emb"]),
        "logits": torch.from_numpy(ref["t_logits"]),
    }
    self_cka = cka_matrix(teacher, teacher)
    assert np.diag(self_cka) == pytest.approx([1.0, 1.0])
    assert self_cka[0][1] < 0.999  # different features are not all identical
    assert depth_pairs(4, 2) == [(1, 0), (3, 1)] and depth_pairs(2, 2) == [(0, 0), (1, 1)]

    # embeddings (paper A Fig. 8): shared space for soft-classifier, separate panels for c2kd
    emb = {r["run"]: r for r in out["embeddings"]}
    assert emb["quickstart/soft-classifier seed 1"]["panels"] == [
        ["projected teacher", "student"],
        ["teacher"],  # the 384-d prompt embedding is not in the 128-d shared space
    ]
    assert emb["c2kd"]["panels"] == [["student"], ["teacher"]]
    assert any("`c2kd` has no shared space" in n for n in out["notes"])

    # cost (appendix E): mean epoch time of each variant's epoch rows; no memory on CPU
    cost = {r["variant"]: r for r in out["cost"]}
    assert set(cost) == {"quickstart/baseline", "quickstart/soft-classifier", "c2kd"}
    times = [r["epoch_time_s"] for r in rows if r["kind"] == "epoch"]
    assert cost["c2kd"]["epochs"] == 2
    assert cost["c2kd"]["epoch_time_s"] == pytest.approx(statistics.fmean(times))
    if not torch.cuda.is_available():
        assert cost["c2kd"]["peak_mem_mb"] is None
        assert any("n/a on CPU" in n for n in out["notes"])

    names = {Path(p).name for p in out["plots"]}
    assert {"kept.png", "krc.png", "cost.png", "cka-c2kd.png", "embeddings-c2kd.png"} <= names
    for p in out["plots"]:
        _png_ok(tmp_path / p)

    # t-SNE on a seeded draw of the split, written under --out; human tables on stdout
    tsne = cli(
        "--json", "analyze", run, "--embeddings", "--tsne", "--max-samples", "40",
        "--out", tmp_path / "tsne",
    )  # fmt: skip
    assert tsne.code == 0, tsne.stderr
    [e] = tsne.json()["embeddings"]
    assert e["n"] == 40 and e["reducer"] == "t-SNE"
    _png_ok(tmp_path / "tsne" / "embeddings-c2kd.png")
    human = cli("analyze", run, "--kept", "--cost")
    assert human.code == 0, human.stderr
    assert "OFSD keeps" in human.stdout and "n/a on CPU" in human.stdout
    assert "kept per epoch (%)" in human.stdout  # rates in percent for people, JSON fractions
    assert " ".join(f"{100 * v:.1f}" for v in kept["kept"]) in human.stdout

    # a run without a teacher: one clear line and exit 2 for the checkpoint analyses
    baseline = root / "baseline" / "seed-1"
    for flag in ("--krc", "--cka", "--embeddings"):
        bad = cli("analyze", baseline, flag)
        assert bad.code == 2, (flag, bad.stderr)
        assert f"{flag}:" in bad.stderr and "`baseline` has no teacher" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    for args, expected in [
        ((baseline, "--kept"), "stats/kept"),
        ((run, "--split", "dev"), "--split 'dev'"),
        ((tmp_path / "nowhere",), "is not a directory"),
    ]:
        bad = cli("analyze", *args)
        assert bad.code == 2 and expected in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1
