"""C2KD's losses (paper B Eq. 3-6), as the `c2kd` and `kd_filter` methods run them, against a
numpy transcription of the released training step."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

from cmkd_cli.losses import c2kd
from cmkd_cli.losses.c2kd import (
    bidirectional_kl,
    chunked_kendall_tau_b,
    filtered_dist,
    filtered_kl,
    gradcos_score,
    group_mean,
    per_sample_kl,
    select_samples,
)
from cmkd_cli.losses.kd import kd_loss
from cmkd_cli.losses.logit import dist_loss, nontarget_kl, nontarget_view
from cmkd_cli.losses.rank import kendall_tau_b
from tests.numpy_ref import kl, released_ofsd, softmax, t

RNG = np.random.default_rng(7)
PS = RNG.standard_normal((6, 5)) * 2  # student proxy logits
PT = RNG.standard_normal((6, 5)) * 2  # teacher proxy logits
Y = np.array([0, 1, 4, 2, 3, 0])
PT[1] = PS[1] * 2 + 0.5  # perfectly rank-aligned sample: KRC = 1
PT[2] = -PS[2]  # reversed: KRC = -1


def ofsd(ps, pt, y, omega=0.0, mode="zero", selector="krc", T=1.0):
    """The two OFSD directions as `methods.c2kd` composes them (paper B Eq. 6 line 4)."""
    keep, _ = select_samples(ps, pt, y, selector, omega, T, mode)
    return filtered_kl(ps, pt, y, keep, T, mode) + filtered_kl(pt, ps, y, keep, T, mode), keep


@pytest.mark.parametrize("omega", [0.0, -0.5, 0.3, 0.99])
def test_ofsd_matches_released_code(omega):
    expected, mask = released_ofsd(PS, PT, Y, omega)
    loss, keep = ofsd(t(PS), t(PT), t(Y), omega=omega)
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
    loss, _ = ofsd(t(PS), t(PT), t(Y), mode="remove", T=temp)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    zero_loss, _ = ofsd(t(PS), t(PT), t(Y), mode="zero", T=temp)
    assert zero_loss.item() == pytest.approx(released_ofsd(PS, PT, Y, 0.0, temp)[0], rel=1e-10)
    assert abs(zero_loss.item() - loss.item()) > 1e-4


def test_filtered_kl_with_every_sample_kept_is_the_batch_kd_and_full_kl_by_hand():
    ones = torch.ones(6, dtype=torch.float64)
    full = filtered_kl(t(PS), t(PT), t(Y), ones, 4.0, None)
    torch.testing.assert_close(full, kd_loss(t(PS), t(PT), 4.0))
    by_hand = 16 * kl(softmax(PT / 4), softmax(PS / 4)).mean()
    assert full.item() == pytest.approx(by_hand, rel=1e-10)
    torch.testing.assert_close(
        per_sample_kl(t(PS), t(PT), t(Y), 1.0, "zero"),
        nontarget_kl(t(PS), t(PT), t(Y), 1.0, "zero"),
    )


def test_selectors_cosine_pearson_none_and_unknown():
    cos = (PS * PT).sum(1) / (np.linalg.norm(PS, axis=1) * np.linalg.norm(PT, axis=1))
    pea = np.array([np.corrcoef(PS[i], PT[i])[0, 1] for i in range(6)])
    keep, krc = select_samples(t(PS), t(PT), t(Y), "cosine", 0.2)
    np.testing.assert_array_equal(keep.numpy(), (cos > 0.2).astype(float))
    torch.testing.assert_close(krc, kendall_tau_b(t(PT), t(PS)))
    keep, _ = select_samples(t(PS), t(PT), t(Y), "pearson", 0.1)
    np.testing.assert_array_equal(keep.numpy(), (pea > 0.1).astype(float))
    loss_all, keep_all = ofsd(t(PS), t(PT), t(Y), selector="none", omega=5.0)
    assert keep_all.sum().item() == 6
    gt = np.zeros_like(PS, dtype=bool)
    gt[np.arange(6), Y] = True
    p_s, p_t = softmax(np.where(gt, 0.0, PS)), softmax(np.where(gt, 0.0, PT))
    assert loss_all.item() == pytest.approx((kl(p_t, p_s) + kl(p_s, p_t)).mean(), rel=1e-10)
    with pytest.raises(ValueError, match="selector"):
        select_samples(t(PS), t(PT), t(Y), "spearman", 0.0)


def test_random_selector_keeps_as_many_as_krc_with_its_generator():
    krc_keep, _ = select_samples(t(PS), t(PT), t(Y), "krc", 0.0)
    draws = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(3)
        keep, _ = select_samples(t(PS), t(PT), t(Y), "random", 0.0, generator=gen)
        draws.append(keep)
    assert draws[0].sum() == krc_keep.sum()
    torch.testing.assert_close(draws[0], draws[1])


def test_gradcos_is_the_cosine_of_each_samples_kd_and_ce_logit_gradients():
    score = gradcos_score(t(PS), t(PT), t(Y), 2.0, "zero")
    for i in range(6):
        z = t(PS[i : i + 1]).clone().requires_grad_(True)
        (g_kd,) = torch.autograd.grad(nontarget_kl(z, t(PT[i : i + 1]), t(Y[i : i + 1]), 2.0), z)
        (g_ce,) = torch.autograd.grad(F.cross_entropy(z, t(Y[i : i + 1])), z)
        assert score[i].item() == pytest.approx(F.cosine_similarity(g_kd, g_ce).item(), rel=1e-6)
    keep, _ = select_samples(t(PS), t(PT), t(Y), "gradcos", 0.0, 2.0, "zero")
    np.testing.assert_array_equal(keep.numpy(), (score > 0).double().numpy())


def test_filtered_dist_is_dist_on_the_kept_rows_times_the_kept_fraction():
    keep = t(np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    rows = torch.tensor([0, 1, 3, 5])
    got = filtered_dist(t(PS), t(PT), t(Y), keep, 2.0, "remove")
    z_s = nontarget_view(t(PS)[rows], t(Y)[rows], "remove")
    z_t = nontarget_view(t(PT)[rows], t(Y)[rows], "remove")
    torch.testing.assert_close(got, dist_loss(z_s, z_t, 1.0, 1.0, 2.0) * (4 / 6))
    all_kept = filtered_dist(t(PS), t(PT), t(Y), torch.ones(6), 1.0, None)
    torch.testing.assert_close(all_kept, dist_loss(t(PS), t(PT), 1.0, 1.0, 1.0))
    z = t(PS).clone().requires_grad_(True)
    none = filtered_dist(z, t(PT), t(Y), torch.zeros(6), 1.0, None)
    assert none.item() == 0.0 and none.requires_grad


def test_group_mean_leaves_nan_out_and_gives_nan_to_an_empty_group():
    values = torch.tensor([1.0, 3.0, float("nan"), 4.0, float("nan")])
    group = torch.tensor([0, 0, 1, 1, 2])
    got = group_mean(values, group, 4)
    assert got[:2].tolist() == [2.0, 4.0] and got[2:].isnan().all()


def test_dense_selection_decides_per_image_on_the_mean_pixel_krc():
    image = torch.tensor([0, 0, 0, 1, 1, 1])
    keep, krc = select_samples(t(PS), t(PT), t(Y), "krc", 0.0, groups=(image, 2))
    per_pixel = kendall_tau_b(t(PT), t(PS))
    expected = torch.stack([per_pixel[:3].nanmean(), per_pixel[3:].nanmean()])
    torch.testing.assert_close(krc, expected)
    torch.testing.assert_close(keep, (expected > 0).double())


def test_chunked_krc_equals_one_call(monkeypatch):
    a, b = torch.randn(50, 7, dtype=torch.float64), torch.randn(50, 7, dtype=torch.float64)
    whole = kendall_tau_b(a, b)
    monkeypatch.setattr(c2kd, "KRC_CHUNK_ROWS", 8)
    torch.testing.assert_close(chunked_kendall_tau_b(a, b), whole)


def test_ofsd_gradients_targets_detached_and_nothing_kept():
    ps = t(PS).clone().requires_grad_(True)
    pt = t(PT).clone().requires_grad_(True)
    loss, keep = ofsd(ps, pt, t(Y))
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
    loss, keep = ofsd(flat, torch.randn(3, 5), torch.tensor([0, 1, 2]))
    assert keep.sum().item() == 0 and loss.item() == 0.0 and loss.requires_grad


def test_ofsd_step_reduces_student_side():
    ps = t(PS).clone().requires_grad_(True)
    loss, keep = ofsd(ps, t(PT), t(Y))
    (g,) = torch.autograd.grad(loss, ps)
    with torch.no_grad():
        after, _ = ofsd(ps - 0.05 * g, t(PT), t(Y))
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
    loss, keep = ofsd(z, z.clone(), t(Y))
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and keep.sum().item() == 6
