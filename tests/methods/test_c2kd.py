"""C2KD (paper B Eq. 6): each term equals the pure loss on the right tensors; the KRC filter,
the selectors, teacher tuning and the Table 5 ablation switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

from cmkd_cli.losses.c2kd import bidirectional_kl
from cmkd_cli.losses.kd import kd_loss
from cmkd_cli.losses.logit import nckd_loss, nontarget_kl
from tests.methods._logit_helpers import batch, build, capture, grads
from tests.numpy_ref import released_ofsd

B = 16


def run(tune: str = "full", **fields):
    """Build c2kd, run one step on a fixed batch; return (method, batch, out, p_s, p_t)."""
    m = build("c2kd", tune=tune, **fields)
    seen_s = capture(m.proxy_s) if m.cfg.proxy else [None]
    seen_t = capture(m.proxy_t) if m.cfg.proxy else [None]
    b = batch(B)
    return m, b, m(b), seen_s[-1], seen_t[-1]


def scipy_taus(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    return np.array([kendalltau(a[i], b[i]).statistic for i in range(len(a))])


def test_default_terms_are_eq6_on_the_proxies_and_heads():
    m, b, out, p_s, p_t = run()
    z_s, z_t = out.logits, m.teacher(b["t"]).logits
    assert set(out.losses) == {"task", "task_teacher", "proxy_s", "proxy_t", "ofsd_t2s", "ofsd_s2t"}
    torch.testing.assert_close(out.losses["task"], F.cross_entropy(z_s, b["y"]))
    torch.testing.assert_close(out.losses["task_teacher"], F.cross_entropy(z_t, b["y"]))
    torch.testing.assert_close(out.losses["proxy_s"], bidirectional_kl(z_s, p_s))
    torch.testing.assert_close(out.losses["proxy_t"], bidirectional_kl(z_t, p_t))
    ofsd, keep = released_ofsd(p_s.detach().double(), p_t.detach().double(), b["y"])
    total = out.losses["ofsd_t2s"] + out.losses["ofsd_s2t"]
    assert total.item() == pytest.approx(ofsd, rel=1e-5)
    assert float(out.stats["kept"]) == pytest.approx(keep.mean())
    assert 0 < float(out.stats["kept"]) < 1  # the random nets disagree on some samples


def test_kept_and_krc_stats_match_scipy_kendalltau_on_the_proxies():
    _, _, out, p_s, p_t = run()
    taus = scipy_taus(p_t, p_s)
    assert isinstance(out.stats["kept"], torch.Tensor)
    assert float(out.stats["kept"]) == pytest.approx(np.mean(taus > 0.0))
    assert float(out.stats["krc"]) == pytest.approx(np.nanmean(taus), abs=1e-6)


def test_omega_one_keeps_nothing_and_the_ofsd_terms_are_exactly_zero():
    _, _, out, _, _ = run(omega=1.0)
    assert float(out.stats["kept"]) == 0.0
    assert out.losses["ofsd_t2s"].item() == 0.0 and out.losses["ofsd_s2t"].item() == 0.0


def test_selector_none_keeps_every_sample_and_nt_off_is_the_full_bidirectional_kl():
    _, _, out, p_s, p_t = run(selector="none", omega=5.0, non_target=False)
    assert float(out.stats["kept"]) == 1.0
    torch.testing.assert_close(
        out.losses["ofsd_t2s"] + out.losses["ofsd_s2t"], bidirectional_kl(p_t, p_s)
    )


def test_target_remove_is_dkd_nckd_between_the_proxies():
    _, b, out, p_s, p_t = run(selector="none", target="remove")
    torch.testing.assert_close(out.losses["ofsd_t2s"], nckd_loss(p_s, p_t.detach(), b["y"], T=1.0))


@pytest.mark.parametrize("selector", ["cosine", "pearson"])
def test_cosine_and_pearson_selectors_threshold_their_score(selector: str):
    _, _, out, p_s, p_t = run(selector=selector, omega=0.1)
    s, t = p_s.detach(), p_t.detach()
    if selector == "pearson":
        s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    expected = (F.cosine_similarity(t, s, dim=1) > 0.1).float().mean()
    torch.testing.assert_close(out.stats["kept"], expected)


def test_gradcos_selector_uses_the_per_sample_gradient_cosine_wrt_student_proxy_logits():
    _, b, out, p_s, p_t = run(selector="gradcos")
    cos = []
    for i in range(B):
        z = p_s[i : i + 1].detach().requires_grad_(True)
        y = b["y"][i : i + 1]
        g_kd = torch.autograd.grad(nontarget_kl(z, p_t[i : i + 1].detach(), y).sum(), z)[0]
        g_ce = torch.autograd.grad(F.cross_entropy(z, y), z)[0]
        cos.append(F.cosine_similarity(g_kd, g_ce).item())
    assert float(out.stats["kept"]) == pytest.approx(np.mean(np.array(cos) > 0.0))


def test_random_selector_keeps_as_many_samples_as_krc_with_a_seeded_generator():
    _, _, krc, _, _ = run()
    _, _, rnd, _, _ = run(selector="random", seed=5)
    _, _, rnd2, _, _ = run(selector="random", seed=5)
    assert float(rnd.stats["kept"]) == float(krc.stats["kept"])
    assert rnd.losses["ofsd_t2s"].item() == rnd2.losses["ofsd_t2s"].item()


def test_proxies_and_teacher_get_gradient_when_fully_tuned():
    m, _, out, _, _ = run("full")
    sum(out.losses.values()).backward()
    for module in (m.proxy_s, m.proxy_t, m.teacher, m.student):
        assert all(v > 0 for v in grads(module).values()), type(module).__name__


def test_frozen_teacher_gets_no_gradient_and_no_ce_while_its_proxy_learns():
    m, _, out, p_s, p_t = run("frozen")
    assert "task_teacher" not in out.losses
    z_t = m.teacher(batch(B)["t"]).logits
    torch.testing.assert_close(out.losses["proxy_t"], kd_loss(p_t, z_t, 1.0))
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(v > 0 for v in grads(m.proxy_t).values())


def test_partial_tuning_trains_only_the_top_stages_and_head():
    m, _, out, _, _ = run("partial")
    sum(out.losses.values()).backward()
    g = grads(m.teacher)
    assert all(v == 0 for n, v in g.items() if n.startswith("backbone.block1"))
    top = ("backbone.block2", "backbone.fc", "head")
    assert all(v > 0 for n, v in g.items() if n.startswith(top))


def test_bidirectional_off_drops_the_student_to_teacher_terms_and_any_kd_into_the_teacher():
    m, b, out, p_s, p_t = run("full", bidirectional=False)
    assert set(out.losses) == {"task", "task_teacher", "proxy_s", "proxy_t", "ofsd_t2s"}
    z_t = m.teacher(b["t"]).logits
    torch.testing.assert_close(out.losses["proxy_t"], kd_loss(p_t, z_t, 1.0))
    sum(v for k, v in out.losses.items() if k != "task_teacher").backward()
    assert all(v == 0 for v in grads(m.teacher).values())


def test_proxy_off_runs_ofsd_between_the_main_heads():
    m, b, out, _, _ = run("full", proxy=False)
    assert set(out.losses) == {"task", "task_teacher", "ofsd_t2s", "ofsd_s2t"}
    assert m.extra_modules() == {}
    z_t = m.teacher(b["t"]).logits
    ofsd, _ = released_ofsd(out.logits.detach().double(), z_t.detach().double(), b["y"])
    total = out.losses["ofsd_t2s"] + out.losses["ofsd_s2t"]
    assert total.item() == pytest.approx(ofsd, rel=1e-5)


def test_table5_row_a_is_vanilla_kd_at_t1():
    m, b, out, _, _ = run(
        "frozen", proxy=False, bidirectional=False, non_target=False, selector="none"
    )
    assert set(out.losses) == {"task", "ofsd_t2s"}
    torch.testing.assert_close(
        out.losses["ofsd_t2s"], kd_loss(out.logits, m.teacher(b["t"]).logits, 1.0)
    )


def test_a_teacher_without_stages_feeds_its_embedding_to_the_proxy():
    from tests.methods._feature_helpers import prompt_teacher

    m = build("c2kd", tune="full", teacher=prompt_teacher(dim=16))
    assert m.t_feat.path is None and m.t_feat.channels == 16
    out = m(batch(B, prompt=True))
    sum(out.losses.values()).backward()
    assert all(v > 0 for v in grads(m.proxy_t).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
@pytest.mark.parametrize("selector", ["krc", "random", "gradcos"])
def test_a_cuda_step_never_synchronises_with_the_host(selector: str):
    m = build("c2kd", tune="full", selector=selector).cuda()
    b = {k: v.cuda() for k, v in batch(B).items()}
    m(b)  # warm-up: lazy CUDA initialisation may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = m(b)
        sum(out.losses.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.stats["kept"].is_cuda
