"""Reduced-precision training steps (`train.amp: bf16 | fp16`), on a GPU or a CPU.

What runs in which precision (our choice; the papers train in fp32 and say nothing):

- the **bodies** of the student and of a teacher the method runs (a model's `backbone`, or
  the whole model when it has none) run under `torch.autocast` on the run's device: their
  convolutions and matrix products in bf16/fp16 (oneDNN uses AVX512-BF16/AMX on a CPU that
  has them, cuDNN/cuBLAS on a GPU);
- their outputs, and the features a method taps inside them, come back in **fp32**, so the
  classifier heads, the method's own modules (proxies, projections), C2KD's Kendall
  selection and every loss compute in fp32 as written: logits rounded to bf16's 8
  significant bits would tie non-target classes that Eq. 6's ranking tells apart;
- parameters, gradients and optimiser state stay fp32 (autocast casts per operation, the
  weights are never converted); fp16 scales the loss (`GradScaler` on the run's device).

Only training steps run reduced (`ReducedPrecision.step`); validation, testing, `eval`,
`embed`, `score` and `export` run the same modules in fp32.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

LOWER = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ReducedPrecision:
    """The policy of one run: `wrap(model)` once, then train inside `with policy.step():`."""

    def __init__(self, amp: str, device: torch.device) -> None:
        self.dtype = LOWER.get(amp)
        self.device_type = device.type
        self.active = False

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Bodies run reduced inside this block (a training step's forward pass)."""
        self.active = self.enabled
        try:
            yield
        finally:
            self.active = False

    def wrap(self, model: nn.Module) -> None:
        """Route `model`'s body through the policy. The body's `forward` becomes an instance
        attribute bound to it (state-dict keys unchanged; `torch.compile` traces the autocast
        block; a deep copy stays bound to the copy)."""
        if not self.enabled:
            return
        body = getattr(model, "backbone", model)
        if not isinstance(body, nn.Module) or "forward" in vars(body):
            return
        body.forward = types.MethodType(functools.partial(_forward, self), body)


def _forward(policy: ReducedPrecision, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(module).forward
    if not policy.active:
        return forward(module, *args, **kwargs)
    with torch.autocast(policy.device_type, dtype=policy.dtype):
        out = forward(module, *args, **kwargs)
    return to_fp32(out)


def to_fp32(value: Any) -> Any:
    """`value` (a tensor, named tuple, tuple, list or dict of them) with its bf16/fp16
    tensors in fp32; anything else unchanged."""
    if torch.is_tensor(value):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(to_fp32(v) for v in value))
    if isinstance(value, dict):
        return {k: to_fp32(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_fp32(v) for v in value)
    return value


#: torch's probes for the instructions that make each format fast on a CPU
CPU_PROBES = {
    "bf16": ("AVX512-BF16 or AMX", ("_is_avx512_bf16_supported", "_is_amx_tile_supported")),
    "fp16": ("AMX-FP16", ("_is_amx_fp16_supported",)),
}


def cpu_native_formats() -> list[str]:
    """The reduced formats this CPU computes natively (`cmkd doctor` lists them)."""
    cpu = torch.cpu
    return [
        amp
        for amp, (_, probes) in CPU_PROBES.items()
        if any(getattr(cpu, p, lambda: False)() for p in probes)
    ]


def cpu_support_warning(amp: str, device: torch.device) -> str | None:
    """Why `amp` will be slow on this CPU (no native bf16/fp16 instructions), or None."""
    if device.type != "cpu" or amp not in LOWER or amp in cpu_native_formats():
        return None
    return (
        f"train.amp={amp}: this CPU has no {CPU_PROBES[amp][0]} instructions, so {amp} runs "
        "emulated and is likely slower than fp32; set train.amp=none"
    )
