"""Read intermediate features by module path with forward hooks (MMRazor-style recorders)."""

from __future__ import annotations

import torch
from torch import nn

from cmkd_cli.errors import UsageError


class FeatureTaps:
    """Record the outputs of named sub-modules of `model` on every forward pass.

    `taps = FeatureTaps(model, ["backbone.layer3"])`; after `model(x)`, `taps["backbone.layer3"]`
    is that module's output (gradients flow through it).
    """

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        modules = dict(model.named_modules())
        self.paths = list(paths)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in paths:
            if path not in modules:
                near = [n for n in modules if n and n.split(".")[-1] == path.split(".")[-1]]
                hint = f" (did you mean {', '.join(near[:3])}?)" if near else ""
                raise UsageError(f"feature tap {path!r} is not a module of the model{hint}")
            self._handles.append(modules[path].register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def hook(_module: nn.Module, _inp: object, out: torch.Tensor) -> None:
            self.outputs[path] = out

        return hook

    def __getitem__(self, path: str) -> torch.Tensor:
        """The output, in fp32 when the module ran under reduced-precision autocast
        (cmkd_cli.engine.precision: a method's heads and losses compute in fp32)."""
        out = self.outputs[path]
        if torch.is_tensor(out) and out.dtype in (torch.bfloat16, torch.float16):
            return out.float()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
