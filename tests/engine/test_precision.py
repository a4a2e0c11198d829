"""`train.amp` on a CPU: the networks' bodies run in bf16/fp16 inside training steps only;
heads, proxies, the Kendall selection and the losses see fp32; weights and gradients stay
fp32; validation and a trained student compute in fp32."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from cmkd_cli.config import load_recipe
from cmkd_cli.engine.distributed import init_distributed
from cmkd_cli.engine.loop import fit, reduced_precision
from cmkd_cli.engine.precision import (
    ReducedPrecision,
    cpu_native_formats,
    cpu_support_warning,
    to_fp32,
)
from cmkd_cli.engine.speed import apply_speed_switches
from cmkd_cli.models.base import ModelOutput
from cmkd_cli.schema import TrainConfig
from cmkd_cli.stages.experiment import build_experiment
from tests.engine.test_speed import step, twins
from tests.methods._logit_helpers import batch, capture

B = 16
CPU = torch.device("cpu")


def _cosine(a: dict, b: dict) -> float:
    x = torch.cat([a[k].flatten() for k in sorted(a)])
    y = torch.cat([b[k].flatten() for k in sorted(b)])
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_c2kd_step_runs_bodies_reduced_and_heads_losses_in_fp32(amp):
    eager, fast = twins()
    policy = reduced_precision(fast, amp, CPU, warn=False)
    body = capture(fast.student.backbone.block1)
    t_body = capture(fast.teacher.backbone.block1)
    logits, proxy_in = capture(fast.student), capture(fast.proxy_s.adapt)
    b = batch(B)
    with policy.step():
        losses, grads = step(fast, b)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert body[-1].dtype == dtype and t_body[-1].dtype == dtype
    assert logits[-1].logits.dtype == torch.float32  # the head ran on an fp32 embedding
    assert proxy_in[-1].dtype == torch.float32  # the tapped layer3 reaches the proxy in fp32
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    assert all(g.dtype == torch.float32 for g in grads.values())
    ref_losses, ref_grads = step(eager, b)
    for k, v in ref_losses.items():  # the same step, to the format's rounding
        torch.testing.assert_close(losses[k], v, rtol=5e-2, atol=5e-2)
    assert _cosine(grads, ref_grads) > 0.99


def test_outside_a_step_the_wrapped_networks_compute_in_fp32_exactly():
    eager, fast = twins()
    policy = reduced_precision(fast, "bf16", CPU, warn=False)
    assert not policy.active
    x = batch(B)["x"]
    eager.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(fast.student(x).logits, eager.student(x).logits)
    with policy.step():
        assert policy.active
    assert not policy.active
    assert fast.state_dict().keys() == eager.state_dict().keys()


def test_amp_none_leaves_the_networks_alone():
    _, fast = twins()
    policy = reduced_precision(fast, "none", CPU)
    assert not policy.enabled and "forward" not in vars(fast.student.backbone)
    with policy.step():
        assert not policy.active


def test_a_deep_copy_runs_its_own_weights():
    _, fast = twins()
    reduced_precision(fast, "bf16", CPU, warn=False)
    other = copy.deepcopy(fast.student)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    x = batch(B)["x"]
    other.eval()
    assert other.backbone.forward.__self__ is other.backbone
    assert torch.count_nonzero(other(x).embedding) == 0


def test_compiled_bodies_still_run_reduced():
    _, fast = twins()
    policy = reduced_precision(fast, "bf16", CPU, warn=False)
    apply_speed_switches(fast, TrainConfig(compile=True, compile_backend="aot_eager"))
    body = capture(fast.student.backbone.block1)
    with policy.step():
        losses, _ = step(fast, batch(B))
    assert body[-1].dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_to_fp32_reaches_into_named_tuples_and_containers():
    h = torch.ones(2, dtype=torch.bfloat16)
    out = to_fp32({"a": [ModelOutput(h, None), (h, 3)], "i": torch.ones(2, dtype=torch.long)})
    assert out["a"][0].embedding.dtype == torch.float32 and out["a"][0].logits is None
    assert out["a"][1][0].dtype == torch.float32 and out["a"][1][1] == 3
    assert out["i"].dtype == torch.long


def test_cpu_without_bf16_instructions_is_warned(monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False)
    assert "bf16" not in cpu_native_formats()
    msg = cpu_support_warning("bf16", CPU)
    assert "AVX512-BF16 or AMX" in msg and "train.amp=none" in msg
    assert cpu_support_warning("none", CPU) is None
    assert cpu_support_warning("bf16", torch.device("cuda")) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_support_warning("bf16", CPU) is None and "bf16" in cpu_native_formats()


def test_doctor_says_which_formats_this_cpu_computes_natively(cli):
    res = cli("--json", "doctor")
    detail = next(c["detail"] for c in res.json()["checks"] if c["name"] == "torch")
    native = cpu_native_formats()
    assert f"CPU train.amp: {'/'.join(native) + ' native' if native else 'fp32 only'}" in detail


def test_fit_with_bf16_trains_reduced_and_validates_and_saves_fp32(tmp_path: Path) -> None:
    sets = ["seeds=[1]", "compare=[]", "train.threads=1", "teacher.pretrain.epochs=1"]
    sets += ["method.name=kd", "train.epochs=2", "train.amp=bf16", "output.tensorboard=false"]
    recipe = load_recipe("quickstart", [*sets, "data.params.labelled_fraction=0.5"])
    exp = build_experiment(recipe)
    seen = {True: set(), False: set()}
    block = exp.method.student.backbone.block1
    block.register_forward_hook(lambda m, _i, out: seen[m.training].add(out.dtype))
    result = fit(exp.method, exp.data, exp.task, recipe, tmp_path, init_distributed("cpu"))
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
    assert result.best_val["accuracy"] > 0.3  # it learned (10 classes)
    best = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=True)
    floats = [v for v in best["student"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    assert isinstance(exp.method.student.backbone.forward.__self__, torch.nn.Module)


def test_policy_is_device_agnostic():
    policy = ReducedPrecision("bf16", torch.device("cuda"))
    assert policy.device_type == "cuda" and policy.dtype == torch.bfloat16
