"""Self-KD baselines (Zipf's LS, USKD, DLB) against numpy transcriptions of the official code."""

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from cmkd_cli.losses.selfkd import (
    dlb_loss,
    uskd_loss,
    zipf_dense_votes,
    zipf_label_smoothing_loss,
    zipf_rank,
)
from tests.numpy_ref import log_softmax, softmax, t

RNG = np.random.default_rng(11)
Z = RNG.standard_normal((5, 7)) * 2
W = RNG.standard_normal((5, 7))
Y = np.array([0, 3, 6, 2, 2])


def nontarget(x, y):
    keep = np.ones_like(x, dtype=bool)
    keep[np.arange(len(y)), y] = False
    return x[keep].reshape(len(y), -1)


def official_zipf(logits, y, scores, power=1.0, mask=False):
    rank = rankdata(-scores, axis=1, method="min")
    dist = nontarget((1.0 / rank) ** power, y)
    dist = dist / dist.sum(1, keepdims=True)
    res = log_softmax(nontarget(logits, y))
    loss = (dist * (np.log(dist) - res)).sum(1)
    if mask:
        ok = logits.argmax(1) == y
        return (loss * ok).sum() / ok.sum() if ok.any() else 0.0
    return loss.mean()


def test_zipf_rank_matches_rankdata_min_with_ties():
    s = RNG.integers(0, 4, (6, 9)).astype(np.float64)
    np.testing.assert_array_equal(zipf_rank(t(s)).numpy(), rankdata(-s, axis=1, method="min"))


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_zipf_ls_matches_official(power):
    got = zipf_label_smoothing_loss(t(Z), t(Y), power=power).item()
    assert got == pytest.approx(official_zipf(Z, Y, Z, power), rel=1e-10)
    tied = np.round(Z)  # ranking scores with ties
    got = zipf_label_smoothing_loss(t(Z), t(Y), rank_scores=t(tied), power=power).item()
    assert got == pytest.approx(official_zipf(Z, Y, tied, power), rel=1e-10)


def test_zipf_ls_loss_mask():
    y = Z.argmax(1).copy()
    y[[1, 3]] = (y[[1, 3]] + 1) % 7  # two samples wrong
    got = zipf_label_smoothing_loss(t(Z), t(y), loss_mask=True).item()
    assert got == pytest.approx(official_zipf(Z, y, Z, mask=True), rel=1e-10)
    wrong = (Z.argmax(1) + 1) % 7
    assert zipf_label_smoothing_loss(t(Z), t(wrong), loss_mask=True).item() == 0.0


def test_zipf_dense_votes_and_gradient():
    dense = torch.tensor([[0, 0, 2, 1, 0], [3, 3, 3, 1, 1]])
    votes = zipf_dense_votes(dense, 4)
    torch.testing.assert_close(votes, torch.tensor([[3.0, 1, 1, 0], [0, 2, 0, 3]]))
    z = torch.randn(2, 4, requires_grad=True)
    loss = zipf_label_smoothing_loss(z, torch.tensor([0, 3]), rank_scores=votes)
    (g,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    with torch.no_grad():
        assert (
            zipf_label_smoothing_loss(z - 0.5 * g, torch.tensor([0, 3]), rank_scores=votes) < loss
        )


def official_uskd(logit_s, w_fc, y, alpha, beta, mu):
    """numpy transcription of cls_KD's USKDLoss.forward (hard labels)."""
    n, c = logit_s.shape
    idx = np.arange(n)
    s_i = softmax(logit_s)
    s_t = s_i[idx, y][:, None]
    p_t = s_t**2
    p_t = p_t + 1 - p_t.mean(0, keepdims=True)
    s_i = log_softmax(logit_s)
    s_t = s_i[idx, y][:, None]
    loss_t = -(p_t * s_t).sum(1).mean()
    target = np.zeros_like(logit_s)
    target[idx, y] = 0.9
    target = target + 0.1 / c
    w_i = log_softmax(w_fc)
    loss_weak = -(mu * target * w_i).sum(1).mean()
    w_i = softmax(w_fc)
    w_t = w_i[idx, y][:, None]
    rank = w_i / (1 - w_t + 1e-6) + s_i / (1 - s_t + 1e-6)
    order = np.argsort(-rank, axis=1, kind="stable")
    ids_sort = np.argsort(order, axis=1)
    z_i = (1 / np.arange(1, c + 1))[ids_sort]
    nz = nontarget(z_i, y)
    nz = nz / nz.sum(1, keepdims=True)
    loss_non = -(nz * log_softmax(nontarget(logit_s, y))).sum(1).mean()
    return alpha * loss_t + beta * loss_non + loss_weak


@pytest.mark.parametrize(("alpha", "beta", "mu"), [(1.0, 0.1, 0.005), (0.1, 0.1, 0.1)])
def test_uskd_matches_official(alpha, beta, mu):
    expected = official_uskd(Z, W, Y, alpha, beta, mu)
    got = uskd_loss(t(Z), t(W), t(Y), alpha=alpha, beta=beta, mu=mu).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_uskd_gradients_reach_both_heads_and_step_reduces_it():
    z = t(Z).clone().requires_grad_(True)
    w = t(W).clone().requires_grad_(True)
    loss = uskd_loss(z, w, t(Y))
    gz, gw = torch.autograd.grad(loss, (z, w))
    assert gz.abs().sum() > 0 and gw.abs().sum() > 0
    with torch.no_grad():
        assert uskd_loss(z - 0.1 * gz, w - 0.1 * gw, t(Y)) < loss
    no_weak = uskd_loss(t(Z), None, t(Y))
    assert torch.isfinite(no_weak)


def test_dlb_by_hand():
    temp = 3.0
    prev = RNG.standard_normal((5, 7))
    p, q = softmax(prev / temp), softmax(Z / temp)
    expected = temp**2 * (p * (np.log(p) - np.log(q))).sum(1).mean()
    now = t(Z).clone().requires_grad_(True)
    before = t(prev).clone().requires_grad_(True)
    loss = dlb_loss(now, before)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    g_now, g_prev = torch.autograd.grad(loss, (now, before), allow_unused=True)
    assert g_prev is None and g_now.abs().sum() > 0
    assert dlb_loss(t(Z), t(Z).clone()).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        assert dlb_loss(now - 0.5 * g_now, before) < loss
