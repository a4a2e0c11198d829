"""Paper A's soft constraints (Eq. 5-11) against hand computations."""

import math

import numpy as np
import pytest
import torch

from cmkd_cli.losses.soft import (
    feature_distance,
    logit_distance,
    margin_from_spec,
    quality_weights,
    soft_classifier_loss,
    soft_feature_loss,
    update_moving_stats,
)
from tests.numpy_ref import log_softmax

FS = np.array([[3.0, 4.0, 0.0], [1.0, -1.0, 2.0], [0.5, 0.5, 0.5]])
FT = np.array([[4.0, 3.0, 0.0], [1.0, -1.0, 2.0], [-1.0, 2.0, 0.0]])


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pair_at_angle(deg: float, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two vectors of different norms at exactly ``deg`` degrees."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(dim, generator=gen, dtype=torch.float64)
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    u = u / u.norm()
    v = v - (v @ u) * u
    v = v / v.norm()
    t = math.radians(deg)
    return (2.0 * u).unsqueeze(0), (0.7 * (math.cos(t) * u + math.sin(t) * v)).unsqueeze(0)


def test_feature_distance_by_hand():
    fs, ft = torch.from_numpy(FS), torch.from_numpy(FT)
    cos = (unit(FS) * unit(FT)).sum(1)
    np.testing.assert_allclose(feature_distance(fs, ft, "cosine").numpy(), 1 - cos, atol=1e-12)
    d2 = ((unit(FS) - unit(FT)) ** 2).sum(1)
    np.testing.assert_allclose(feature_distance(fs, ft, "sql2").numpy(), d2, atol=1e-12)
    np.testing.assert_allclose(feature_distance(fs, ft, "l2").numpy(), np.sqrt(d2), atol=1e-12)
    raw = ((FS - FT) ** 2).sum(1)
    np.testing.assert_allclose(feature_distance(fs, ft, "sql2", normalize=False).numpy(), raw)
    np.testing.assert_allclose(
        feature_distance(fs, ft, "l2", normalize=False).numpy(), np.sqrt(raw), atol=1e-12
    )
    # first row: unit vectors (0.6, 0.8) and (0.8, 0.6): cos = 0.96
    assert feature_distance(fs, ft, "cosine")[0].item() == pytest.approx(0.04)
    assert feature_distance(fs, ft, "sql2")[0].item() == pytest.approx(0.08)


def test_feature_distance_flattens_and_rejects_bad_input():
    x = torch.randn(2, 3, 4)
    assert feature_distance(x, x.clone(), "l2").shape == (2,)
    with pytest.raises(ValueError, match="unknown distance"):
        feature_distance(x, x, "l1")
    with pytest.raises(ValueError, match="shapes differ"):
        feature_distance(x, torch.randn(2, 12))


def test_margin_from_spec():
    assert margin_from_spec("cosine", angle_deg=30) == pytest.approx(1 - math.sqrt(3) / 2)
    assert margin_from_spec("l2", angle_deg=60) == pytest.approx(1.0)  # chord of 60 deg
    assert margin_from_spec("sql2", angle_deg=90) == pytest.approx(2.0)
    assert margin_from_spec("sql2", margin=0.3**2) == pytest.approx(0.09)
    assert margin_from_spec("l2", margin=0.09) == 0.09
    assert margin_from_spec("cosine", angle_deg=0) == 0.0
    with pytest.raises(ValueError, match="exactly one"):
        margin_from_spec("cosine")
    with pytest.raises(ValueError, match="exactly one"):
        margin_from_spec("cosine", margin=0.1, angle_deg=30)
    with pytest.raises(ValueError):
        margin_from_spec("l2", margin=-1.0)


@pytest.mark.parametrize("metric", ["cosine", "l2", "sql2"])
def test_angular_margin_29_vs_31_degrees(metric):
    m = margin_from_spec(metric, angle_deg=30)
    inside = pair_at_angle(29.0)
    outside = pair_at_angle(31.0)
    assert soft_feature_loss(*inside, metric=metric, margin=m).item() == 0.0
    assert soft_feature_loss(*outside, metric=metric, margin=m).item() > 0.0
    # value just past the margin: dist(31 deg) - dist(30 deg)
    expected = {"cosine": math.cos(math.radians(30)) - math.cos(math.radians(31))}
    if metric in expected:
        got = soft_feature_loss(*outside, metric=metric, margin=m).item()
        assert got == pytest.approx(expected[metric], rel=1e-9)


@pytest.mark.parametrize("metric", ["cosine", "l2", "sql2"])
def test_hinge_gradient_zero_inside_nonzero_outside(metric):
    m = margin_from_spec(metric, angle_deg=30)
    for deg, expect_zero in [(10.0, True), (29.0, True), (0.0, True), (45.0, False)]:
        f_s, f_t = pair_at_angle(deg)
        if deg == 0.0:
            f_t = f_s.clone()  # coinciding features: no NaN from the Euclidean norm
        f_s.requires_grad_(True)
        loss = soft_feature_loss(f_s, f_t, metric=metric, margin=m)
        (grad,) = torch.autograd.grad(loss, f_s)
        assert torch.isfinite(grad).all()
        assert (grad.abs().max().item() == 0.0) is expect_zero


def test_weights_and_reductions_by_hand():
    fs, ft = torch.from_numpy(FS), torch.from_numpy(FT)
    d = 1 - (unit(FS) * unit(FT)).sum(1)
    hinge = np.maximum(d - 0.03, 0.0)
    w = np.array([0.5, 2.0, 1.5])
    per = soft_feature_loss(fs, ft, "cosine", 0.03, torch.from_numpy(w), reduction="none")
    np.testing.assert_allclose(per.numpy(), w * hinge, atol=1e-12)
    got = soft_feature_loss(fs, ft, "cosine", 0.03, torch.from_numpy(w)).item()
    # mean over the batch, the weights not renormalised
    assert got == pytest.approx((w * hinge).sum() / 3)
    got = soft_feature_loss(fs, ft, "cosine", 0.03, reduction="sum").item()
    assert got == pytest.approx(hinge.sum())
    with pytest.raises(ValueError, match="reduction"):
        soft_feature_loss(fs, ft, reduction="max")


def test_identical_features_give_zero_loss():
    x = torch.randn(5, 16)
    for metric in ["cosine", "l2", "sql2"]:
        assert soft_feature_loss(x, x.clone(), metric=metric, margin=0.0).item() == pytest.approx(
            0.0, abs=1e-6
        )


@pytest.mark.parametrize("metric", ["cosine", "l2", "sql2"])
def test_gradient_step_on_student_reduces_feature_loss(metric):
    torch.manual_seed(0)
    f_s = torch.randn(6, 10, requires_grad=True)
    f_t = torch.randn(6, 10)
    loss = soft_feature_loss(f_s, f_t, metric=metric, margin=0.01)
    (grad,) = torch.autograd.grad(loss, f_s)
    with torch.no_grad():
        after = soft_feature_loss(f_s - 0.05 * grad, f_t, metric=metric, margin=0.01)
    assert after.item() < loss.item()


def test_soft_classifier_loss_by_hand():
    rng = np.random.default_rng(0)
    ls, lt = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    y = np.array([1, 4, 0])
    y_t = np.array([2, 4, 0])
    mixed = np.concatenate([ls, lt])
    ce = -log_softmax(mixed)[np.arange(6), np.concatenate([y, y])].mean()
    mse = ((ls - lt) ** 2).mean()
    args = torch.from_numpy(ls), torch.from_numpy(lt), torch.from_numpy(y)
    assert soft_classifier_loss(*args).item() == pytest.approx(ce)
    assert soft_classifier_loss(*args, beta=2.0).item() == pytest.approx(ce + 2.0 * mse)
    sq = ((ls - lt) ** 2).sum(1)
    assert soft_classifier_loss(*args, beta=1.0, dist="sql2").item() == pytest.approx(
        ce + sq.mean()
    )
    assert soft_classifier_loss(*args, beta=1.0, dist="l2").item() == pytest.approx(
        ce + np.sqrt(sq).mean()
    )
    ce_t = -log_softmax(mixed)[np.arange(6), np.concatenate([y, y_t])].mean()
    got = soft_classifier_loss(*args, y_t=torch.from_numpy(y_t)).item()
    assert got == pytest.approx(ce_t)
    with pytest.raises(ValueError):
        logit_distance(args[0], args[1], "cosine")


def test_soft_classifier_gradient_reaches_both_halves_and_step_reduces_it():
    torch.manual_seed(1)
    ls = torch.randn(4, 6, requires_grad=True)
    lt = torch.randn(4, 6, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    loss = soft_classifier_loss(ls, lt, y, beta=1.0)
    gs, gt = torch.autograd.grad(loss, (ls, lt))
    assert gs.abs().sum() > 0 and gt.abs().sum() > 0
    with torch.no_grad():
        assert soft_classifier_loss(ls - 0.1 * gs, lt, y, beta=1.0) < loss


def test_quality_weights_by_hand():
    q = torch.tensor([10.0, 20.0, 25.0, 40.0, 5.0], requires_grad=True)
    mu, sigma = 20.0, 10.0
    z = (np.array([10.0, 20.0, 25.0, 40.0, 5.0]) - mu) / ((sigma + 1e-3) / (1 / 3))
    w = quality_weights(q, mu, sigma)
    np.testing.assert_allclose(w.detach().numpy(), 1.0 + np.clip(z, -1, 1), rtol=1e-6)
    assert not w.requires_grad
    w = quality_weights(q, torch.tensor(mu), torch.tensor(sigma), w_base=2.0, h=1.0, clip=None)
    z = (np.array([10.0, 20.0, 25.0, 40.0, 5.0]) - mu) / (sigma + 1e-3)
    np.testing.assert_allclose(w.numpy(), 2.0 + z, rtol=1e-6)  # no clip: literal Eq. 11
    w = quality_weights(torch.tensor([1000.0, -1000.0]), 0.0, 1.0)
    torch.testing.assert_close(w, torch.tensor([2.0, 0.0]))  # clipped to w_base +- 1


def test_update_moving_stats():
    q = torch.tensor([1.0, 2.0, 3.0, 6.0], requires_grad=True)
    mu, sigma = torch.tensor(20.0), torch.tensor(100.0)
    new_mu, new_sigma = update_moving_stats(mu, sigma, q, momentum=0.99)
    std = np.std([1.0, 2.0, 3.0, 6.0], ddof=1)
    assert new_mu.item() == pytest.approx(0.99 * 20 + 0.01 * 3.0)
    assert new_sigma.item() == pytest.approx(0.99 * 100 + 0.01 * std, rel=1e-6)
    assert not new_mu.requires_grad and not new_sigma.requires_grad
    assert mu.item() == 20.0 and sigma.item() == 100.0  # inputs untouched
    one_mu, one_sigma = update_moving_stats(mu, sigma, torch.tensor([4.0]), momentum=0.5)
    assert one_mu.item() == pytest.approx(12.0) and one_sigma.item() == 100.0
