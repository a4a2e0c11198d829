"""NYU-Depth V2 end to end through the CLI: prepare the fixture .mat (real photos, made-up
depth and labels), distil C2KD for one short epoch with the paper's recipes (backbones from a
local torchvision state dict), then `cmkd --json eval` reports mIoU and the IoU of each of
the 40 classes, without needing that state dict any more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from data_prep.nyu_depth_v2 import NYU40
from tests.fixtures_layouts import nyu_depth_v2_tree
from tests.methods.test_dense_methods import TINY_NYU


@pytest.mark.parametrize("recipe", ["c2kd-nyu-rgb2depth", "c2kd-nyu-depth2rgb"])
def test_prepare_distill_eval(cli, tmp_path: Path, recipe: str) -> None:
    nyu_depth_v2_tree(tmp_path / "raw")
    prep = cli("prepare", "nyu-depth-v2", "--root", tmp_path / "raw", "--out", tmp_path / "nyu")
    assert prep.code == 0, prep.stderr
    weights = tmp_path / "resnet18.pth"  # random weights standing in for ImageNet's
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    sets = [a for s in TINY_NYU if "pretrained" not in s for a in ("--set", s)]
    nyu, r18 = f"nyu={tmp_path / 'nyu'}", f"resnet18_weights={weights}"
    res = cli("--json", "distill", "--recipe", recipe, "--var", nyu, "--var", r18, *sets)
    assert res.code == 0, res.stderr
    out = res.json()
    run = out["runs"][0]
    assert run["method"] == "c2kd" and out["metric"] == "miou"
    assert out["teacher"] is not None and "miou" in out["teacher"]["test"]
    best = Path(run["run_dir"]) / "best.pt"
    assert best.is_file()

    weights.unlink()  # the checkpoint holds the trained weights; eval does not read these
    ev = cli("--json", "eval", "--checkpoint", best)
    assert ev.code == 0, ev.stderr
    result = ev.json()
    assert result["task"] == "segmentation"
    assert set(result["metrics"]) == {"miou", "pixel_acc"}
    assert result["metrics"]["miou"] == pytest.approx(run["test"]["miou"])
    assert list(result["per_class"]) == list(NYU40)
    ious = [np.nan if v is None else v for v in result["per_class"].values()]
    assert all(np.isnan(v) or 0.0 <= v <= 1.0 for v in ious)
    assert np.nanmean(ious) == pytest.approx(result["metrics"]["miou"])

    table = cli("eval", "--checkpoint", best)
    assert table.code == 0 and "IoU wall" in table.stdout

    # the shipped student reads a scene's PNG as the test split does (full resolution)
    from cmkd_cli import load
    from tests.student.test_api import assert_api_is_the_dataset_view, eval_split_of

    student = load(best.parent / "student.pt")
    assert student.input.kind == "scene"
    test = eval_split_of(student)
    assert_api_is_the_dataset_view(student, test, 2)
    mask = student.predict(test.raw_input(0))
    assert mask.shape == tuple(test[0]["y"].shape) and mask.max() < len(NYU40)


def test_a_variant_with_another_teacher_backbone_gets_its_own_teacher(cli, tmp_path: Path) -> None:
    nyu_depth_v2_tree(tmp_path / "raw")
    prep = cli("prepare", "nyu-depth-v2", "--root", tmp_path / "raw", "--out", tmp_path / "nyu")
    assert prep.code == 0, prep.stderr
    files = {}
    for name, net in (
        ("resnet18", torchvision.models.resnet18()),
        ("mnv2", torchvision.models.mobilenet_v2()),
    ):
        files[name] = tmp_path / f"{name}.pth"
        torch.save(net.state_dict(), files[name])
    keep = [s for s in TINY_NYU if not s.startswith(("compare", "student.params", "teacher.model"))]
    res = cli(
        "--json",
        "distill",
        "--recipe",
        "c2kd-nyu-rgb2depth",
        "--var",
        f"nyu={tmp_path / 'nyu'}",
        "--var",
        f"resnet18_weights={files['resnet18']}",
        "--var",
        f"mobilenet_v2_weights={files['mnv2']}",
        "--variant",
        "c2kd",
        "--variant",
        "kd.mnv2-teacher",
        *[a for s in keep for a in ("--set", s)],
    )
    assert res.code == 0, res.stderr
    runs = {r["variant"]: r for r in res.json()["runs"]}
    assert set(runs) == {"c2kd", "kd.mnv2-teacher"}
    root = Path(res.json()["root"])
    teachers = sorted(root.glob("teacher-*/teacher.pt"))
    assert len(teachers) == 2  # ResNet-18 for c2kd, MobileNetV2 for the variant
    names = {torch.load(t, weights_only=True)["model_name"] for t in teachers}
    assert names == {"deeplabv3plus_resnet18", "deeplabv3plus_mobilenet_v2"}
