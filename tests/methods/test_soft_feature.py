"""Paper A `soft_feature`: hinge on the projected teacher feature, margins, quality weights."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from cmkd_cli.errors import UsageError
from cmkd_cli.losses.soft import quality_weights, soft_feature_loss
from tests.methods._feature_helpers import batch, build, prompt_teacher


def test_term_is_the_hinge_on_the_student_and_projected_teacher_embeddings():
    m = build("soft_feature", teacher=prompt_teacher(16), weight=2.0)
    assert m.projection.dim == 16 and m.projection.out_dim == 8 and m.projection.alpha == 0.6
    b = batch(prompt=True)
    out = m(b)
    f_s = m.student(b["x"]).embedding
    f_t = m.projection(m.teacher(b["t"]).embedding)
    expected = 2.0 * soft_feature_loss(f_s, f_t, "cosine", 1 - math.cos(math.radians(30)))
    assert out.losses["soft_feature"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(out.stats) == {"inside_margin", "distance", "margin"}


def test_a_margin_beyond_every_distance_gives_zero_loss_and_no_student_gradient():
    m = build("soft_feature", teacher=prompt_teacher(16), metric="sql2", margin=4.0)
    out = m(batch(prompt=True))
    assert out.losses["soft_feature"].item() == 0.0
    assert float(out.stats["inside_margin"]) == 1.0
    out.losses["soft_feature"].backward()
    grads = [p.grad for p in m.student.parameters() if p.grad is not None]
    assert all(g.abs().sum() == 0 for g in grads)
    m.zero_grad()
    small = build("soft_feature", teacher=prompt_teacher(16), metric="sql2", margin=0.0)
    small(batch(prompt=True)).losses["soft_feature"].backward()  # the same step pulls when m = 0
    assert small.student.backbone.fc.weight.grad.abs().sum() > 0


def test_margin_specs():
    assert build("soft_feature", margin_angle_deg=60.0).margin == pytest.approx(0.5)  # 1 - cos
    assert build("soft_feature").margin == pytest.approx(1 - math.cos(math.radians(30)))
    assert build("soft_feature", metric="l2", margin=0.3).margin == 0.3
    with pytest.raises(ValidationError, match="not margin and margin_angle_deg"):
        build("soft_feature", margin=0.1, margin_angle_deg=30.0)
    with pytest.raises(ValidationError, match="method.margin_quantile: give one of"):
        build("soft_feature", margin=0.1, margin_quantile=0.5)


def test_a_quantile_margin_binds_a_share_q_of_the_samples():
    m = build("soft_feature", teacher=prompt_teacher(16), metric="sql2", margin_quantile=0.5)
    b = batch(b=8, prompt=True)
    out = m(b)  # the first batch sets m to the median of its own distances
    with torch.no_grad():
        f_s = torch.nn.functional.normalize(m.student(b["x"]).embedding)
        f_t = torch.nn.functional.normalize(m.projection(m.teacher(b["t"]).embedding))
    dist = ((f_s - f_t) ** 2).sum(1)
    middle = dist.sort().values[3:5].mean()  # the median of 8 values, interpolated
    assert float(m.margin_running) == pytest.approx(float(middle), rel=1e-5)
    assert float(out.stats["inside_margin"]) == 0.5 and float(out.stats["margin"]) > 0
    assert out.losses["soft_feature"].item() == pytest.approx(
        (dist - m.margin_running).clamp_min(0).mean().item(), rel=1e-5
    )
    first = float(m.margin_running)
    m(batch(b=8, prompt=True, seed=4))  # then a running average (momentum 0.9)
    assert float(m.margin_running) != first and int(m.margin_updates) == 2
    m.eval()
    m(batch(b=8, prompt=True, seed=5))  # evaluation reads it without moving it
    assert int(m.margin_updates) == 2
    state = m.checkpoint_state()
    fresh = build("soft_feature", teacher=prompt_teacher(16), metric="sql2", margin_quantile=0.5)
    fresh.load_checkpoint_state(state, resume=True)
    assert float(fresh.margin_running) == float(m.margin_running)


def test_without_projection_the_widths_must_agree():
    with pytest.raises(UsageError, match=r"method\.projection"):
        build("soft_feature", teacher=prompt_teacher(16), projection=False)
    m = build("soft_feature", teacher=prompt_teacher(8), projection=False)
    assert m.projection is None and [g.name for g in m.trainable_groups()] == ["student"]


def _q(m, b):
    return m.teacher(b["t"]).embedding.norm(dim=1)


def test_quality_stats_move_with_momentum_and_weight_each_sample():
    m = build("soft_feature", quality={"enabled": True, "momentum": 0.9})  # image teacher
    b1, b2 = batch(seed=1), batch(seed=2)
    m(b1)
    q1 = _q(m, b1)
    torch.testing.assert_close(m.quality_mu, q1.mean()[None])
    torch.testing.assert_close(m.quality_sigma, q1.std()[None])
    out = m(b2)
    q2 = _q(m, b2)
    mu = 0.9 * q1.mean() + 0.1 * q2.mean()
    sigma = 0.9 * q1.std() + 0.1 * q2.std()
    torch.testing.assert_close(m.quality_mu, mu[None])
    torch.testing.assert_close(m.quality_sigma, sigma[None])
    assert m.quality_updates.item() == 2
    w = quality_weights(q2, mu, sigma, 1.0, 0.3333, 1.0)
    assert w.std() > 0  # the weights differ per sample
    f_s = m.student(b2["x"]).embedding
    f_t = m.projection(m.teacher(b2["t"]).embedding)
    expected = soft_feature_loss(f_s, f_t, "cosine", m.margin, weights=w)
    assert out.losses["soft_feature"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert float(out.stats["weight"]) == pytest.approx(w.mean().item(), rel=1e-5)


def test_quality_buffers_survive_a_checkpoint():
    m = build("soft_feature", quality={"enabled": True, "source": "both"})
    m(batch(seed=1))
    state = m.checkpoint_state()
    assert {"quality_mu", "quality_sigma", "quality_updates"} <= set(state)
    assert state["quality_mu"].shape == (2,)  # teacher and student scores
    fresh = build("soft_feature", quality={"enabled": True, "source": "both"})
    fresh.load_checkpoint_state(state)
    torch.testing.assert_close(fresh.quality_mu, m.quality_mu)
    torch.testing.assert_close(fresh.quality_sigma, m.quality_sigma)
    assert fresh.quality_updates.item() == 1
    fresh.eval()(batch(seed=2))  # evaluation does not move the statistics
    torch.testing.assert_close(fresh.quality_mu, m.quality_mu)
