"""Checkpoint averaging (wespeaker's `avg_model`) with BatchNorm statistics recomputed.

`average_weights`: the element-wise mean of the students of the last K epoch snapshots
(`train.keep_last: K` keeps them in RUN/epochs/); floating tensors are averaged in float64,
integer buffers (BatchNorm's `num_batches_tracked`) are the last epoch's.

Averaging the weights does not average what the network computes: the running mean and
variance of a BatchNorm layer averaged over epochs are not the statistics of the averaged
network's own activations (Izmailov et al. 2018, SWA, Sec. 3.2, which recomputes them with
one pass over the training data). `recompute_batchnorm` does that pass: every BatchNorm
layer's statistics are reset and re-estimated as the plain (cumulative) average over
`batches` training batches, with every other layer in evaluation mode (no dropout), as
`torch.optim.swa_utils.update_bn` does for BatchNorm. wespeaker keeps the averaged
statistics; `cmkd average --bn-batches 0` does the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from cmkd_cli.engine.distributed import to_device


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of state dicts with the same keys (integer buffers: the last one's)."""
    if not states:
        raise ValueError("no state dicts to average")
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            total = torch.stack([s[key].double() for s in states]).sum(0)
            out[key] = (total / len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module, batches: Iterable[Any], device: torch.device, input_key: str = "x"
) -> int:
    """Re-estimate every BatchNorm layer's running statistics on `batches`; returns how many
    batches were used (0 when the model has no BatchNorm: nothing to do)."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    n = 0
    for batch in batches:
        model(to_device(batch[input_key], device))
        n += 1
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return n
