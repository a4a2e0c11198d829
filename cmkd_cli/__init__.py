"""cmkd: cross-modal knowledge distillation toolkit (soft constrained CMKD and C2KD).

`from cmkd_cli import load`: a trained student (`student.pt`) with its preprocessing
(`cmkd_cli.student.api`). Imported on first use, so `cmkd --help` stays fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from cmkd_cli.student.api import load  # lazy: `import cmkd_cli` stays free of torch

        return load
    raise AttributeError(f"module 'cmkd_cli' has no attribute {name!r}")
