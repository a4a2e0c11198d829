"""Speed switches keep the maths: channels_last and torch.compile give the eager outputs on CPU;
a partially tuned teacher builds no graph below its tuned stages; loader defaults."""

from __future__ import annotations

import pytest
import torch

from cmkd_cli.engine import loaders
from cmkd_cli.engine.speed import apply_speed_switches, channels_last_inputs
from cmkd_cli.schema import TrainConfig
from tests.methods._logit_helpers import batch, build, capture

B = 16


def twins():
    """Two c2kd methods with the same weights (the helpers seed every module they build)."""
    a, b = build("c2kd", tune="full"), build("c2kd", tune="full")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    return a, b


def step(method, b):
    """Losses and the gradients of every trainable parameter after one backward."""
    out = method(b)
    sum(out.losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.losses.items()}, grads


def assert_same_step(a, b, atol):
    """Equal losses and gradients up to float32 summation order (NHWC kernels add in
    another order: gradients of ~1e-2 differ by ~1e-5)."""
    (la, ga), (lb, gb) = a, b
    assert la.keys() == lb.keys() and ga.keys() == gb.keys()
    for k in la:
        torch.testing.assert_close(la[k], lb[k], atol=atol, rtol=atol)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], atol=10 * atol, rtol=1e-3)


def test_channels_last_gives_the_same_c2kd_step():
    eager, fast = twins()
    apply_speed_switches(fast, TrainConfig(channels_last=True))
    conv = fast.student.backbone.block1[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    b = batch(B)
    cl = channels_last_inputs(b)
    assert cl["x"].is_contiguous(memory_format=torch.channels_last)
    assert cl["y"] is b["y"] and torch.equal(cl["x"], b["x"])
    assert_same_step(step(eager, b), step(fast, cl), atol=1e-5)


def test_compile_gives_the_same_c2kd_step_and_keeps_checkpoint_keys():
    eager, fast = twins()
    apply_speed_switches(fast, TrainConfig(compile=True, compile_backend="aot_eager"))
    assert fast.state_dict().keys() == eager.state_dict().keys()
    seen = capture(fast.proxy_s)  # the proxies still read the hooked layer of the compiled nets
    b = batch(B)
    assert_same_step(step(eager, b), step(fast, b), atol=1e-5)
    assert len(seen) == 1


def test_partial_tuning_builds_no_graph_below_the_tuned_stages():
    m = build("c2kd", tune="partial")
    below, top = capture(m.teacher.backbone.block1), capture(m.teacher.backbone.block2)
    out = m(batch(B))
    assert not below[-1].requires_grad and below[-1].grad_fn is None  # backward stops above it
    assert top[-1].requires_grad
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in m.teacher.backbone.block1.parameters())


def test_default_workers_follow_the_cpu_count(monkeypatch):
    monkeypatch.setattr(loaders, "usable_cores", lambda: 16)
    assert loaders.default_workers() == 8  # at most 8
    assert loaders.default_workers(processes_per_node=4) == 3  # 4 cores each, one for the step
    monkeypatch.setattr(loaders, "usable_cores", lambda: 2)
    assert loaders.default_workers() == 1
    assert loaders.default_workers(processes_per_node=2) == 0
    cpu = loaders.loader_options(None, torch.device("cpu"))
    assert cpu == {"num_workers": 1, "pin_memory": False, "persistent_workers": True}
    assert loaders.loader_options(0, torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this machine (torchrun)
    assert loaders.loader_options(None, torch.device("cuda"), world_size=4)["num_workers"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loaders_pin_memory():
    assert loaders.loader_options(2, torch.device("cuda"))["pin_memory"] is True
