"""C2KD (paper B Eq. 3-6) against a numpy transcription of the released training step."""

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from cmkd_cli.losses.c2kd import bidirectional_kl, ofsd_loss, selection_score
from cmkd_cli.losses.kd import kd_loss
from cmkd_cli.losses.logit import nontarget_kl
from tests.numpy_ref import kl, softmax, t

RNG = np.random.default_rng(7)
PS = RNG.standard_normal((6, 5)) * 2  # student proxy logits
PT = RNG.standard_normal((6, 5)) * 2  # teacher proxy logits
Y = np.array([0, 1, 4, 2, 3, 0])
PT[1] = PS[1] * 2 + 0.5  # perfectly rank-aligned sample: KRC = 1
PT[2] = -PS[2]  # reversed: KRC = -1


def released_ofsd(ps, pt, y, omega, temp=1.0):
    """numpy transcription of helper.py: kendalltau per sample, ntkl in both directions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        krc = np.array([kendalltau(pt[i], ps[i])[0] for i in range(len(y))])
    mask = (krc > omega).astype(float)  # NaN > omega is False
    gt = np.zeros_like(ps, dtype=bool)
    gt[np.arange(len(y)), y] = True
    p_s = softmax(np.where(gt, 0.0, ps) / temp)
    p_t = softmax(np.where(gt, 0.0, pt) / temp)
    s_from_t = (mask * kl(p_t, p_s)).mean()  # ntkl(stu, tea.detach()): mean over the full batch
    t_from_s = (mask * kl(p_s, p_t)).mean()
    return s_from_t + t_from_s, mask


@pytest.mark.parametrize("omega", [0.0, -0.5, 0.3, 0.99])
def test_ofsd_matches_released_code(omega):
    expected, mask = released_ofsd(PS, PT, Y, omega)
    loss, keep = ofsd_loss(t(PS), t(PT), t(Y), omega=omega)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    np.testing.assert_array_equal(keep.numpy(), mask)
    assert keep[1] == 1.0 and keep[2] == 0.0


def test_ofsd_remove_mode_and_temperature_by_hand():
    temp = 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = np.array([kendalltau(PT[i], PS[i])[0] for i in range(6)]) > 0
    keep = np.ones_like(PS, dtype=bool)
    keep[np.arange(6), Y] = False
    rs, rt = softmax(PS[keep].reshape(6, 4) / temp), softmax(PT[keep].reshape(6, 4) / temp)
    expected = temp**2 * (mask * (kl(rt, rs) + kl(rs, rt))).sum() / 6
    loss, _ = ofsd_loss(t(PS), t(PT), t(Y), mode="remove", T=temp)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    zero_loss, _ = ofsd_loss(t(PS), t(PT), t(Y), mode="zero", T=temp)
    assert abs(zero_loss.item() - loss.item()) > 1e-4


def test_ofsd_selectors():
    cos = (PS * PT).sum(1) / (np.linalg.norm(PS, axis=1) * np.linalg.norm(PT, axis=1))
    np.testing.assert_allclose(selection_score(t(PS), t(PT), "cosine").numpy(), cos, rtol=1e-7)
    pea = np.array([np.corrcoef(PS[i], PT[i])[0, 1] for i in range(6)])
    np.testing.assert_allclose(selection_score(t(PS), t(PT), "pearson").numpy(), pea, rtol=1e-7)
    _, keep = ofsd_loss(t(PS), t(PT), t(Y), selector="cosine", omega=0.2)
    np.testing.assert_array_equal(keep.numpy(), (cos > 0.2).astype(float))
    loss_all, keep_all = ofsd_loss(t(PS), t(PT), t(Y), selector="none")
    assert keep_all.sum().item() == 6
    gt = np.zeros_like(PS, dtype=bool)
    gt[np.arange(6), Y] = True
    p_s, p_t = softmax(np.where(gt, 0.0, PS)), softmax(np.where(gt, 0.0, PT))
    assert loss_all.item() == pytest.approx((kl(p_t, p_s) + kl(p_s, p_t)).mean(), rel=1e-10)
    with pytest.raises(ValueError, match="selector"):
        ofsd_loss(t(PS), t(PT), t(Y), selector="gradcos")


def test_ofsd_gradients_targets_detached_and_nothing_kept():
    ps = t(PS).clone().requires_grad_(True)
    pt = t(PT).clone().requires_grad_(True)
    loss, keep = ofsd_loss(ps, pt, t(Y))
    gs, gt = torch.autograd.grad(loss, (ps, pt))
    dropped = keep == 0
    assert gs[dropped].abs().max() == 0 and gt[dropped].abs().max() == 0
    assert gs[~dropped].abs().sum() > 0 and gt[~dropped].abs().sum() > 0
    # the student proxy's gradient is that of KL(p_T.detach() || p_S) alone
    ps2 = t(PS).clone().requires_grad_(True)
    ref = (nontarget_kl(ps2, t(PT), t(Y)) * keep).sum() / 6
    (g_ref,) = torch.autograd.grad(ref, ps2)
    torch.testing.assert_close(gs, g_ref)
    # constant proxies: KRC is NaN, nothing kept, loss an exact 0 still on the graph
    flat = torch.zeros(3, 5, requires_grad=True)
    loss, keep = ofsd_loss(flat, torch.randn(3, 5), torch.tensor([0, 1, 2]))
    assert keep.sum().item() == 0 and loss.item() == 0.0 and loss.requires_grad


def test_ofsd_step_reduces_student_side():
    ps = t(PS).clone().requires_grad_(True)
    loss, keep = ofsd_loss(ps, t(PT), t(Y))
    (g,) = torch.autograd.grad(loss, ps)
    with torch.no_grad():
        after, _ = ofsd_loss(ps - 0.05 * g, t(PT), t(Y))
    assert after.item() < loss.item()


def test_bidirectional_kl_by_hand_and_detached_targets():
    temp = 1.0
    pa, pb = softmax(PS / temp), softmax(PT / temp)
    expected = kl(pa, pb).mean() + kl(pb, pa).mean()
    za = t(PS).clone().requires_grad_(True)
    zb = t(PT).clone().requires_grad_(True)
    loss = bidirectional_kl(za, zb)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    ga, gb = torch.autograd.grad(loss, (za, zb))
    za2 = t(PS).clone().requires_grad_(True)
    (ga_ref,) = torch.autograd.grad(kd_loss(za2, t(PT), 1.0), za2)  # KL(p_b.detach() || p_a)
    torch.testing.assert_close(ga, ga_ref)
    zb2 = t(PT).clone().requires_grad_(True)
    (gb_ref,) = torch.autograd.grad(kd_loss(zb2, t(PS), 1.0), zb2)
    torch.testing.assert_close(gb, gb_ref)
    assert bidirectional_kl(za, za.detach().clone()).item() == pytest.approx(0.0, abs=1e-12)
    # temperature: T^2-scaled, each direction as Hinton KD
    loss_t = bidirectional_kl(t(PS), t(PT), T=4.0).item()
    pa4, pb4 = softmax(PS / 4), softmax(PT / 4)
    assert loss_t == pytest.approx(16 * (kl(pa4, pb4).mean() + kl(pb4, pa4).mean()), rel=1e-10)


def test_identical_proxies_give_zero_and_keep_everything():
    z = t(PS)
    loss, keep = ofsd_loss(z, z.clone(), t(Y))
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and keep.sum().item() == 6
