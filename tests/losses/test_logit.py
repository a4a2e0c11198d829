"""Logit baselines (DKD, non-target KL, DIST, NKD, DML) against independent numpy versions."""

import numpy as np
import pytest
import torch

from cmkd_cli.losses.logit import (
    dist_loss,
    dkd_loss,
    dml_loss,
    linear_warmup,
    nckd_loss,
    nkd_loss,
    nontarget_kl,
    nontarget_logits,
    tckd_loss,
)
from tests.numpy_ref import kl, softmax, t

RNG = np.random.default_rng(42)
ZS = RNG.standard_normal((4, 6)) * 2
ZT = RNG.standard_normal((4, 6)) * 2
Y = np.array([0, 3, 5, 2])


def mdistiller_dkd(zs, zt, y, alpha, beta, temp):
    """numpy transcription of mdistiller's dkd_loss (cat_mask + the -1000 trick)."""
    gt = np.zeros_like(zs)
    gt[np.arange(len(y)), y] = 1.0
    ps, pt = softmax(zs / temp), softmax(zt / temp)
    bs = np.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = np.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = kl(bt, bs).sum() * temp**2 / len(y)
    ps2, pt2 = softmax(zs / temp - 1000.0 * gt), softmax(zt / temp - 1000.0 * gt)
    nz = gt == 0
    nckd = (pt2 * nz * (np.log(np.where(nz, pt2, 1)) - np.log(np.where(nz, ps2, 1)))).sum()
    nckd = nckd * temp**2 / len(y)
    return tckd, nckd, alpha * tckd + beta * nckd


def test_dkd_matches_mdistiller():
    for temp in [1.0, 4.0]:
        tckd, nckd, total = mdistiller_dkd(ZS, ZT, Y, 1.0, 8.0, temp)
        assert tckd_loss(t(ZS), t(ZT), t(Y), T=temp).item() == pytest.approx(tckd, rel=1e-9)
        assert nckd_loss(t(ZS), t(ZT), t(Y), T=temp).item() == pytest.approx(nckd, rel=1e-9)
        assert dkd_loss(t(ZS), t(ZT), t(Y), T=temp).item() == pytest.approx(total, rel=1e-9)
    _, _, total = mdistiller_dkd(ZS, ZT, Y, 2.0, 0.5, 3.0)
    got = dkd_loss(t(ZS), t(ZT), t(Y), alpha=2.0, beta=0.5, T=3.0).item()
    assert got == pytest.approx(total, rel=1e-9)


def test_dkd_stays_finite_on_extreme_logits():
    zs = torch.tensor([[200.0, -200.0, 0.0], [-300.0, 300.0, 10.0]], requires_grad=True)
    zt = torch.tensor([[-200.0, 200.0, 0.0], [300.0, -300.0, 10.0]])
    loss = dkd_loss(zs, zt, torch.tensor([0, 1]), T=1.0)
    (grad,) = torch.autograd.grad(loss, zs)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_nontarget_logits_matches_boolean_mask():
    z = t(ZS)
    mask = torch.ones_like(z, dtype=torch.bool)
    mask[torch.arange(4), t(Y)] = False
    assert torch.equal(nontarget_logits(z, t(Y)), z[mask].view(4, 5))


def test_nontarget_kl_modes_by_hand():
    temp = 2.0
    gt = np.zeros_like(ZS, dtype=bool)
    gt[np.arange(4), Y] = True
    # "zero": target logit set to 0, softmax over all C (C2KD's ntkl)
    pa, pb = softmax(np.where(gt, 0.0, ZS) / temp), softmax(np.where(gt, 0.0, ZT) / temp)
    zero = kl(pb, pa)
    # "remove": softmax over the C-1 non-target classes
    ra = softmax(ZS[~gt].reshape(4, 5) / temp)
    rb = softmax(ZT[~gt].reshape(4, 5) / temp)
    remove = kl(rb, ra)
    got_zero = nontarget_kl(t(ZS), t(ZT), t(Y), T=temp, mode="zero").numpy()
    got_remove = nontarget_kl(t(ZS), t(ZT), t(Y), T=temp, mode="remove").numpy()
    np.testing.assert_allclose(got_zero, zero, rtol=1e-10)
    np.testing.assert_allclose(got_remove, remove, rtol=1e-10)
    assert np.abs(got_zero - got_remove).min() > 1e-3  # the two modes differ
    # "remove" is NCKD without T^2 and batch mean
    nckd = nckd_loss(t(ZS), t(ZT), t(Y), T=temp).item()
    assert nckd == pytest.approx(got_remove.mean() * temp**2)
    with pytest.raises(ValueError, match="mode"):
        nontarget_kl(t(ZS), t(ZT), t(Y), mode="drop")


def test_nontarget_kl_direction_trains_a():
    za = t(ZS).clone().requires_grad_(True)
    zb = t(ZT).clone().requires_grad_(True)
    loss = nontarget_kl(za, zb.detach(), t(Y)).sum()
    (grad_a,) = torch.autograd.grad(loss, za)
    assert grad_a.abs().sum() > 0
    with torch.no_grad():
        assert nontarget_kl(za - 0.1 * grad_a, zb, t(Y)).sum() < loss


def pearson_np(a, b, eps=1e-8):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def test_dist_by_hand():
    for beta, gamma, tau in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)]:
        ys, yt = softmax(ZS / tau), softmax(ZT / tau)
        inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(4)])
        intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(6)])
        expected = tau**2 * (beta * inter + gamma * intra)
        got = dist_loss(t(ZS), t(ZT), beta=beta, gamma=gamma, tau=tau).item()
        assert got == pytest.approx(expected, rel=1e-6)
        exact = tau**2 * (
            beta * (1 - pearson_np(ys, yt).mean()) + gamma * (1 - pearson_np(ys.T, yt.T).mean())
        )
        assert got == pytest.approx(exact, rel=1e-12)


def test_nkd_by_hand():
    for gamma, temp in [(1.5, 1.0), (1.0, 2.0)]:
        ps, pt = softmax(ZS), softmax(ZT)
        loss_t = -(pt[np.arange(4), Y] * np.log(ps[np.arange(4), Y])).mean()
        keep = np.ones_like(ZS, dtype=bool)
        keep[np.arange(4), Y] = False
        ns = softmax(ZS[keep].reshape(4, 5) / temp)
        nt = softmax(ZT[keep].reshape(4, 5) / temp)
        loss_non = -gamma * temp**2 * (nt * np.log(ns)).sum(1).mean()
        got = nkd_loss(t(ZS), t(ZT), t(Y), gamma=gamma, T=temp).item()
        assert got == pytest.approx(loss_t + loss_non, rel=1e-10)


def test_dml_by_hand_and_detached_target():
    temp = 3.0
    expected = kl(softmax(ZT / temp), softmax(ZS / temp)).mean() * temp**2
    za = t(ZS).clone().requires_grad_(True)
    zb = t(ZT).clone().requires_grad_(True)
    loss = dml_loss(za, zb, T=temp)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    ga, gb = torch.autograd.grad(loss, (za, zb), allow_unused=True)
    assert ga.abs().sum() > 0 and gb is None


def test_identical_logits_give_zero():
    z = t(ZS)
    y = t(Y)
    for value in [
        tckd_loss(z, z.clone(), y),
        nckd_loss(z, z.clone(), y),
        dkd_loss(z, z.clone(), y),
        dml_loss(z, z.clone()),
        nontarget_kl(z, z.clone(), y, mode="zero").abs().max(),
        nontarget_kl(z, z.clone(), y, mode="remove").abs().max(),
    ]:
        assert value.item() == pytest.approx(0.0, abs=1e-9)
    # DIST's Pearson has eps=1e-8 in its denominator (official code): 0 up to ~eps / var
    assert dist_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_nkd_nontarget_part_is_stationary_at_the_teacher():
    # NKD is a cross-entropy (not 0 at z_S = z_T), but its normalised non-target term is
    # minimised there: its gradient vanishes at the teacher's logits.
    z = t(ZT).clone().requires_grad_(True)
    non_target_part = nkd_loss(z, t(ZT), t(Y), gamma=1.5, T=2.0) - nkd_loss(
        z, t(ZT), t(Y), gamma=0.0
    )
    (grad,) = torch.autograd.grad(non_target_part, z)
    assert grad.abs().max().item() < 1e-12
    assert nkd_loss(t(ZT), t(ZT), t(Y)).item() > 0


@pytest.mark.parametrize("name", ["dkd", "dist", "nkd", "dml", "tckd", "nckd"])
def test_gradient_step_on_student_reduces_loss(name):
    torch.manual_seed(0)
    zs = torch.randn(8, 10, requires_grad=True)
    zt = torch.randn(8, 10) * 3
    y = torch.randint(0, 10, (8,))
    fns = {
        "dkd": lambda s: dkd_loss(s, zt, y),
        "tckd": lambda s: tckd_loss(s, zt, y),
        "nckd": lambda s: nckd_loss(s, zt, y),
        "dist": lambda s: dist_loss(s, zt),
        "nkd": lambda s: nkd_loss(s, zt, y),
        "dml": lambda s: dml_loss(s, zt),
    }
    loss = fns[name](zs)
    (grad,) = torch.autograd.grad(loss, zs)
    with torch.no_grad():
        assert fns[name](zs - 0.01 * grad).item() < loss.item()


def test_linear_warmup():
    assert linear_warmup(1, 20) == pytest.approx(0.05)
    assert linear_warmup(10, 20) == pytest.approx(0.5)
    assert linear_warmup(20, 20) == 1.0 and linear_warmup(100, 20) == 1.0
    assert linear_warmup(0, 20) == 0.0
    assert linear_warmup(3, 0) == 1.0
