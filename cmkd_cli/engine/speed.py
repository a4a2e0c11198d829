"""Recipe switches that change how fast a step runs, not what it computes.

- `train.channels_last`: the method's modules (student, teacher, heads) and every 4-D
  floating-point input of a batch in `torch.channels_last` memory format, which cuDNN's and
  oneDNN's convolution kernels prefer (NHWC); outputs equal the default format's up to
  floating-point summation order (tested on CPU).
- `train.compile`: `torch.compile` of the student and of a teacher the method runs (not a
  cached one), in place (`nn.Module.compile`, so state-dict keys and checkpoints do not
  change; forward hooks that read features keep working), with `compile_backend` (default
  inductor) and `compile_mode`. The first steps compile (minutes for a ResNet on a CPU);
  later ones run the fused kernels. Same outputs on CPU (tested through the `aot_eager`
  backend, which traces as inductor does but runs torch's kernels, and checked with inductor
  by `benchmarks/c2kd_step.py --compile`).

Their effect on a GPU is measured by `benchmarks/c2kd_step.py` where one is available.
"""

from __future__ import annotations

from typing import Any

import torch

from cmkd_cli.methods.base import Method


def channels_last_inputs(batch: Any) -> Any:
    """`batch` (tensors, dicts, lists) with its 4-D floating-point tensors in channels_last."""
    if torch.is_tensor(batch):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: channels_last_inputs(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(channels_last_inputs(v) for v in batch)
    return batch


def apply_speed_switches(method: Method, train: Any) -> None:
    """Put `method` in channels_last and/or compile its networks, as the recipe's `train`
    section asks (`channels_last`, `compile`, `compile_backend`, `compile_mode`)."""
    if train.channels_last:
        method.to(memory_format=torch.channels_last)
    if train.compile:
        options = {"backend": train.compile_backend, "mode": train.compile_mode}
        for network in method.networks_run():
            network.compile(**options)
