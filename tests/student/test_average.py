"""`cmkd average`: the mean of the last K epochs, BatchNorm statistics re-estimated."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.student.conftest import KEEP


def _snapshots(run: Path) -> list[dict]:
    paths = sorted((run / "epochs").glob("epoch-*.pt"))
    return [torch.load(p, weights_only=True) for p in paths]


def test_keep_last_keeps_lean_epoch_snapshots(digits_run: Path) -> None:
    names = sorted(p.name for p in (digits_run / "epochs").glob("*.pt"))
    assert names == ["epoch-0002.pt", "epoch-0003.pt"]  # 3 epochs, keep_last 2
    snap = _snapshots(digits_run)[-1]
    assert "optimizer" not in snap and "progress" not in snap and snap["epoch"] == 3  # from 1
    last = torch.load(digits_run / "last.pt", weights_only=True)
    for k, v in last["student"].items():
        assert torch.equal(snap["student"][k], v)


def test_average_recomputes_batchnorm_on_training_batches(speaker_run, cli, tmp_path) -> None:
    from cmkd_cli import load
    from cmkd_cli.stages.average import training_batches

    out = tmp_path / "avg.pt"
    res = cli(
        "--json", "average", "--run", speaker_run.run, "--last", KEEP, "-o", out, "--bn-batches", 3
    )
    assert res.code == 0, res.stderr
    assert res.json()["epochs"] == [1, 2] and res.json()["bn_batches"] == 3
    assert res.json()["batchnorm_layers"] > 30
    pkg = torch.load(out, weights_only=True)
    assert pkg["source"]["averaged_epochs"] == [1, 2] and pkg["source"]["bn_batches"] == 3
    snaps = _snapshots(speaker_run.run)
    w = "backbone.layer1.0.conv1.weight"
    mean = (snaps[0]["student"][w].double() + snaps[1]["student"][w].double()) / 2
    torch.testing.assert_close(pkg["weights"][w], mean.float())

    # bn1's statistics are the plain average over the batches of its inputs' statistics
    student = load(out, device="cpu")
    model = student.model
    seen = []
    hook = model.backbone.bn1.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        for batch in training_batches(pkg["recipe"], 3, "cpu"):
            model(batch["x"])
    hook.remove()
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
    torch.testing.assert_close(model.backbone.bn1.running_mean, means, atol=1e-5, rtol=1e-5)
    averaged = (
        snaps[0]["student"]["backbone.bn1.running_mean"]
        + snaps[1]["student"]["backbone.bn1.running_mean"]
    ) / 2
    assert not torch.allclose(model.backbone.bn1.running_mean, averaged, atol=1e-4)

    kept = tmp_path / "kept.pt"
    res = cli("average", "--run", speaker_run.run, "--last", KEEP, "-o", kept, "--bn-batches", 0)
    assert res.code == 0, res.stderr
    key = "backbone.bn1.running_mean"
    torch.testing.assert_close(torch.load(kept, weights_only=True)["weights"][key], averaged)

    # the averaged student is a student.pt like any other
    ev = cli(
        "--json",
        "eval",
        "-c",
        out,
        *speaker_run.data_args,
    )
    assert ev.code == 0, ev.stderr
    assert 0.0 <= ev.json()["results"][0]["eer"] <= 1.0


def test_average_without_batchnorm_or_enough_epochs(digits_run: Path, cli, tmp_path) -> None:
    res = cli("--json", "average", "--run", digits_run, "--last", 2, "-o", tmp_path / "a.pt")
    assert res.code == 0, res.stderr
    assert res.json()["batchnorm_layers"] == 0 and res.json()["bn_batches"] == 0  # GroupNorm
    res = cli("average", "--run", digits_run, "--last", 5)
    assert res.code == 2
    assert "holds 2 epoch checkpoint(s), fewer than --last 5" in res.stderr
    assert "train.keep_last: 5" in res.stderr
