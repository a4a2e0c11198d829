"""Distillation methods, one module each; `METHODS` imports them on its first lookup."""

from cmkd_cli.methods._feature_common import FeatureSource, feature_source
from cmkd_cli.methods.base import METHODS, Method, ParamGroup, StepOutput, register_method

__all__ = [
    "METHODS",
    "FeatureSource",
    "Method",
    "ParamGroup",
    "StepOutput",
    "feature_source",
    "register_method",
]
