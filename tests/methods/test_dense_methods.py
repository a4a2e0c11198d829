"""Pixel-level distillation (paper B Sec. 4.2): every method on DeepLabV3+ per-pixel logits —
one CPU training step each on tiny tensors, each term against its pure loss on the labelled
pixels, C2KD's per-image OFSD decision, CIRKD's memories — and one engine run of CIRKD on the
NYU-Depth V2 fixture through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmkd_cli.errors import UsageError
from cmkd_cli.losses.cirkd import class_means, memory_kd, pixel_pair_kd
from cmkd_cli.losses.kd import kd_loss
from cmkd_cli.losses.logit import dist_loss, nkd_loss, nontarget_kl, nontarget_view
from cmkd_cli.losses.rank import kendall_tau_b
from cmkd_cli.methods import METHODS
from cmkd_cli.methods._logit_common import dense_to_samples
from cmkd_cli.methods.shake import _normed
from cmkd_cli.models.deeplab import upsample
from cmkd_cli.models.registry import create_model
from cmkd_cli.tasks import build_task
from tests.fixtures_layouts import nyu_depth_v2_tree
from tests.methods._logit_helpers import capture

K, H, W, IGNORE = 5, 32, 48, 255


def dense_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two depth/RGB pairs with label maps: the top 4 rows and a block of image 1 ignored."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (2, H, W), generator=g)
    y[:, :4] = IGNORE
    y[1, 10:20, :12] = IGNORE
    return {
        "index": torch.arange(2),
        "x": torch.randn(2, 1, H, W, generator=g),
        "t": torch.randn(2, 3, H, W, generator=g),
        "y": y,
    }


def build(name: str, tune: str = "frozen", student: str = "deeplabv3plus_mobilenet_v2", **fields):
    torch.manual_seed(0)
    s = create_model(student, K, {"in_channels": 1})
    t = create_model("deeplabv3plus_resnet18", K, {})
    cls = METHODS.get(name)
    task = build_task("segmentation", K, {})
    return cls(cls.Config(name=name, **fields), s, t, task, K, tune).train()


def rows(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The labelled pixels' class vectors, computed directly."""
    return upsample(z, y.shape[-2:]).permute(0, 2, 3, 1)[y != IGNORE]


SMALL_CIRKD = {"pixel_memory_size": 40, "region_memory_size": 8, "pool": 2}
CASES = [
    ("kd", "frozen", {}),
    ("shake", "frozen", {}),
    ("dist", "frozen", {}),
    ("nkd", "frozen", {}),
    ("c2kd", "full", {}),
    ("c2kd", "partial", {"loss": "dist"}),
    ("cirkd", "frozen", SMALL_CIRKD),
]


@pytest.mark.parametrize(("name", "tune", "fields"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_one_training_step_on_dense_predictions(name: str, tune: str, fields: dict) -> None:
    m = build(name, tune, **fields)
    out = m(dense_batch())
    assert out.logits.shape == (2, K, H, W)
    for term, value in out.losses.items():
        assert value.dim() == 0 and torch.isfinite(value), term
    sum(out.losses.values()).backward()
    trained = {id(p) for g in m.trainable_groups() for p in g.params}
    for pname, p in m.named_parameters():
        if id(p) not in trained:
            assert p.grad is None, f"{pname} is not trained by {name} but got a gradient"
    for group in m.trainable_groups():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group.params), group.name


def test_dense_to_samples_takes_the_labelled_pixels_image_by_image() -> None:
    y = torch.tensor([[[0, 255], [2, 1]], [[255, 255], [3, 0]]])
    z = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).view(2, 4, 2, 2)
    (r,), labels, image = dense_to_samples([z], y, 255)
    assert labels.tolist() == [0, 2, 1, 3, 0] and image.tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(r[1], z[0, :, 1, 0])
    torch.testing.assert_close(r[3], z[1, :, 1, 0])
    (low,), _, _ = dense_to_samples([z[..., :1, :1]], y, 255)  # 1x1 logits: the same everywhere
    torch.testing.assert_close(low[4], z[1, :, 0, 0])
    logits, y1 = torch.randn(3, 4), torch.tensor([0, 1, 2])
    (same,), labels, image = dense_to_samples([logits], y1, 255)
    assert same is logits and labels is y1 and image.tolist() == [0, 1, 2]
    with pytest.raises(UsageError, match=r"logits \[B, C, H, W\] and label maps \[B, H, W\]"):
        dense_to_samples([logits], y, 255)


def test_kd_nkd_dist_are_their_losses_over_the_labelled_pixels() -> None:
    b = dense_batch(1)
    y = b["y"]
    labels = y[y != IGNORE]
    for name, term, expected in (
        ("kd", "kd", lambda s, t: kd_loss(s, t, 4.0)),
        ("nkd", "nkd", lambda s, t: nkd_loss(s, t, labels, 1.5, 1.0)),
        ("dist", "dist", lambda s, t: dist_loss(s, t, 1.0, 1.0, 1.0)),
    ):
        m = build(name)
        seen = capture(m.teacher)
        out = m(b)
        z_s, z_t = rows(out.logits, y), rows(seen[-1].logits, y)
        assert z_s.shape == (int((y != IGNORE).sum()), K)
        torch.testing.assert_close(out.losses[term], expected(z_s, z_t))


def test_shake_shadow_is_per_pixel_through_the_teachers_1x1_classifier() -> None:
    m = build("shake")
    assert m.shadow.dense
    seen_t, seen_sh = capture(m.teacher), capture(m.shadow)
    b = dense_batch(2)
    out = m(b)
    sh = seen_sh[-1].logits
    assert sh.shape == (2, K, H // 16, W // 16)  # fused at the teacher's stride 16
    z_sh = rows(_normed(upsample(sh, (H, W))), b["y"])
    z_t = rows(_normed(seen_t[-1].logits), b["y"])
    torch.testing.assert_close(out.losses["shadow_mse"], F.mse_loss(z_sh, z_t))


def per_image_krc(p_s: torch.Tensor, p_t: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Mean KRC over each image's labelled pixels, computed directly."""
    valid = y != IGNORE
    tau = kendall_tau_b(rows(p_t, y), rows(p_s, y))
    image = valid.nonzero()[:, 0]
    return [float(tau[image == i].nanmean()) for i in range(y.shape[0])]


def test_c2kd_krc_is_per_pixel_averaged_per_image_and_ofsd_keeps_whole_images() -> None:
    m = build("c2kd", "full")
    seen_s, seen_t = capture(m.proxy_s), capture(m.proxy_t)
    b = dense_batch(3)
    torch.manual_seed(5)  # same dropout draws in both forward passes
    out = m(b)
    assert seen_s[-1].shape == (2, K, H // 16, W // 16)  # per-pixel proxies on layer 3
    krc = per_image_krc(seen_s[-1], seen_t[-1], b["y"])
    assert float(out.stats["krc"]) == pytest.approx(np.mean(krc), abs=1e-6)
    assert krc[0] != pytest.approx(krc[1])
    m.select.omega = float(np.mean(krc))  # between the two images: exactly one is kept
    torch.manual_seed(5)
    out = m(b)
    assert float(out.stats["kept"]) == 0.5
    kept = int(np.argmax(krc))
    y = b["y"]
    p_s, p_t = rows(seen_s[-1], y), rows(seen_t[-1], y)
    image = (y != IGNORE).nonzero()[:, 0]
    per_pixel = nontarget_kl(p_s, p_t.detach(), y[y != IGNORE], 1.0, "zero")
    expected = per_pixel[image == kept].sum() / len(per_pixel)  # over all labelled pixels
    torch.testing.assert_close(out.losses["ofsd_t2s"], expected)
    m.select.omega = 1.0
    assert m(b).losses["ofsd_t2s"].item() == 0.0


def test_c2kd_dist_replaces_the_ofsd_kl_by_dist_on_non_target_logits() -> None:
    m = build("c2kd", "full", loss="dist", selector="none")
    seen_s, seen_t = capture(m.proxy_s), capture(m.proxy_t)
    b = dense_batch(4)
    out = m(b)
    y = b["y"]
    labels = y[y != IGNORE]
    z_s = nontarget_view(rows(seen_s[-1], y), labels, "zero")
    z_t = nontarget_view(rows(seen_t[-1], y), labels, "zero")
    torch.testing.assert_close(out.losses["ofsd_t2s"], dist_loss(z_s, z_t))
    torch.testing.assert_close(out.losses["ofsd_s2t"], dist_loss(z_t, z_s))


def test_dense_and_per_sample_models_do_not_mix() -> None:
    cls = METHODS.get("cirkd")
    digits = create_model("digits_cnn", K, {"width": 4})
    task = build_task("classification", K, {})
    with pytest.raises(UsageError, match="cirkd distils per-pixel predictions"):
        cls(cls.Config(name="cirkd"), digits, digits, task, K, "frozen")
    c2kd = METHODS.get("c2kd")
    dense = create_model("deeplabv3plus_mobilenet_v2", K, {})
    with pytest.raises(UsageError, match="both predict per pixel or both per sample"):
        c2kd(c2kd.Config(name="c2kd"), dense, digits, task, K, "full")


# ---------------------------------------------------------------------------------- CIRKD


def test_pixel_pair_kd_is_the_official_double_loop() -> None:
    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(3, 6, 4, 5, generator=g), torch.randn(3, 9, 4, 5, generator=g)
    s, t = F.normalize(f_s, dim=1), F.normalize(f_t, dim=1)
    total = 0.0
    for i in range(3):
        for j in range(3):
            sim_s = s[i].flatten(1).t() @ s[j].flatten(1)
            sim_t = t[i].flatten(1).t() @ t[j].flatten(1)
            total += F.kl_div(
                F.log_softmax(sim_s / 0.1, 1), F.softmax(sim_t / 0.1, 1), reduction="batchmean"
            )
    torch.testing.assert_close(pixel_pair_kd(f_s, f_t, 0.1), total / 9)
    assert pixel_pair_kd(f_t, f_t).item() == pytest.approx(0.0, abs=1e-6)


def test_memory_kd_and_class_means() -> None:
    g = torch.Generator().manual_seed(1)
    a_s, a_t, bank = (torch.randn(n, 4, generator=g) for n in (7, 7, 10))
    c = F.normalize(bank, dim=1)
    z_s = F.normalize(a_s, dim=1) @ c.t() / 0.1
    z_t = F.normalize(a_t, dim=1) @ c.t() / 0.1
    expected = F.kl_div(F.log_softmax(z_s, 1), F.softmax(z_t, 1), reduction="batchmean")
    torch.testing.assert_close(memory_kd(a_s, a_t, bank, 0.1, 1.0), expected)
    feats = torch.randn(2, 3, 2, 3, generator=g)
    labels = torch.tensor([[[0, 0, 2], [255, 2, 2]], [[1, 1, 1], [1, 255, 0]]])
    means, present = class_means(feats, labels, 4, 255)
    assert present.tolist() == [[True, False, True, False], [True, True, False, False]]
    f = feats.numpy()
    np.testing.assert_allclose(means[0, 2], f[0][:, [0, 1, 1], [2, 1, 2]].mean(1), rtol=1e-5)
    np.testing.assert_allclose(means[1, 1], f[1][:, [0, 0, 0, 1], [0, 1, 2, 0]].mean(1), rtol=1e-5)


def test_cirkd_memories_follow_the_official_update_rules() -> None:
    m = build("cirkd", pixel_memory_size=5, region_memory_size=3, pixel_update_freq=2, pool=1)
    g = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(2, 256, 2, 4, generator=g), dim=1)
    labels = torch.tensor([[[0, 0, 0, 1], [1, 255, 0, 0]], [[1, 1, 1, 1], [255, 255, 255, 255]]])
    m.pixel_ptr[1] = 4  # 4 + 2 >= 5: the official update writes the last 2 slots, restarts at 0
    m.enqueue(feats, labels)
    means, _ = class_means(feats, labels, K, IGNORE)
    torch.testing.assert_close(m.region_memory[0, 0], F.normalize(means[0, 0], dim=0))
    torch.testing.assert_close(m.region_memory[1, 0], F.normalize(means[0, 1], dim=0))
    torch.testing.assert_close(m.region_memory[1, 1], F.normalize(means[1, 1], dim=0))
    assert m.region_ptr.tolist() == [1, 2, 0, 0, 0]

    def holds(cls: int, slot: int, image: int) -> bool:
        """Memory slot is (the unit vector of) one of `image`'s pixels of class `cls`."""
        pixels = feats[image].flatten(1).t()[labels[image].flatten() == cls]
        return bool(torch.isclose(pixels @ m.pixel_memory[cls, slot], torch.tensor(1.0)).any())

    # class 0: two of image 0's five class-0 pixels at slots 0, 1; pointer 2
    assert holds(0, 0, 0) and holds(0, 1, 0) and not holds(0, 2, 0)
    # class 1: image 0 (ptr 4 + 2 >= 5: the last two slots, ptr 0), then image 1 (slots 0, 1)
    assert holds(1, 3, 0) and holds(1, 4, 0) and holds(1, 0, 1) and holds(1, 1, 1)
    assert m.pixel_ptr.tolist() == [2, 2, 0, 0, 0]


def test_cirkd_trains_through_the_engine_on_the_nyu_fixture(cli, tmp_path: Path) -> None:
    nyu_depth_v2_tree(tmp_path / "raw")
    prep = cli(
        "--json", "prepare", "nyu-depth-v2", "--root", tmp_path / "raw", "--out", tmp_path / "nyu"
    )
    assert prep.code == 0, prep.stderr
    sets = [
        "method.name=cirkd",
        "method.pixel_memory_size=64",
        "method.region_memory_size=16",
        "teacher.tune=frozen",
        *TINY_NYU,
    ]
    res = cli(
        "--json",
        "distill",
        "--recipe",
        "c2kd-nyu-rgb2depth",
        "--var",
        f"nyu={tmp_path / 'nyu'}",
        *[a for s in sets for a in ("--set", s)],
    )
    assert res.code == 0, res.stderr
    run = res.json()["runs"][0]
    assert run["method"] == "cirkd" and 0.0 <= run["test"]["miou"] <= 1.0
    rows = [
        json.loads(line)
        for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    terms = {k for r in rows if r["kind"] == "step" for k in r if k.startswith("loss/")}
    assert {"loss/kd", "loss/pair", "loss/memory_pixel", "loss/memory_region"} <= terms
    # the memories are training state: last.pt keeps them (resume), best.pt does not
    last = torch.load(Path(run["run_dir"]) / "last.pt", weights_only=True)["method"]
    best = torch.load(Path(run["run_dir"]) / "best.pt", weights_only=True)["method"]
    assert {"pixel_memory", "region_memory"} <= set(last)
    assert not {"pixel_memory", "pixel_ptr", "region_memory", "region_ptr"} & set(best)
    assert any(k.startswith("project.") for k in best)


#: overrides that shrink the NYU recipe to seconds on a CPU (tests/stages/test_nyu_e2e.py too)
TINY_NYU = [
    "compare=[]",
    "seeds=[1]",
    "student.params.pretrained=null",
    "teacher.model.params.pretrained=null",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "data.num_workers=0",
    "data.params.crop_size=[32,48]",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "train.threads=1",
    "teacher.pretrain.epochs=1",
    "eval.every=1",
    "output.tensorboard=false",
]
