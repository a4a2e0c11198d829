"""The model registry: `@register_model("name")` on a builder `fn(num_classes, **params)`."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from cmkd_cli.registry import Registry, check_kwargs

MODELS: Registry = Registry("model", package="cmkd_cli.models")
register_model = MODELS.register


def create_model(
    name: str, num_classes: int | None, params: dict[str, Any] | None = None, field: str = "model"
) -> nn.Module:
    """Build a registered model; unknown names or parameters name the recipe field at fault."""
    builder = MODELS.get(name, field=f"{field}.name")
    params = dict(params or {})
    check_kwargs(builder, params, field=f"{field}.params")
    return builder(num_classes=num_classes, **params)


def model_params(
    name: str, params: dict[str, Any], class_names: list[str], field: str = "model"
) -> dict[str, Any]:
    """A builder's parameters, checked; `class_names` is filled in when the builder takes it
    (the prompt teacher embeds the class names)."""
    params = dict(params)
    builder = MODELS.get(name, field=f"{field}.name")
    check_kwargs(builder, params, field=f"{field}.params")
    if "class_names" in inspect.signature(builder).parameters:
        params.setdefault("class_names", list(class_names))
    return params
