"""Distillation methods, one module each; `METHODS` imports them on its first lookup."""

from cmkd_cli.methods.base import METHODS, Method, ParamGroup, StepOutput, register_method

__all__ = ["METHODS", "Method", "ParamGroup", "StepOutput", "register_method"]
