"""`cmkd export`: a student with its front-end as TorchScript or ONNX, verified.

Reads a `student.pt` (or best.pt) and real inputs to check the export on: the `--input`
files, else the first test samples of the run's own data (read through the stored
recipe). Writes OUT/model.ts or OUT/model.onnx, OUT/model.json (inputs, outputs, what
stays outside the graph, class names, preprocessing, the check's figures) and OUT/README.md,
only after the exported file, loaded back, matched eager PyTorch on those inputs within
`--atol` (exit 1 otherwise). See `cmkd_cli.student.export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from cmkd_cli.config import validate_recipe
from cmkd_cli.data.datasets import build_data
from cmkd_cli.data.preprocess import TextInput
from cmkd_cli.errors import CmkdError, UsageError
from cmkd_cli.schema import StrictModel
from cmkd_cli.student.api import Student, load
from cmkd_cli.student.export import export_student


class ExportOptions(StrictModel):
    checkpoint: Path = Field(description="student.pt or a run's best.pt")
    format: Literal["torchscript", "onnx"] = Field(description="torchscript or onnx")
    out: Path = Field(description="output folder")
    inputs: list[Path] = Field(default_factory=list, description="real inputs to verify on")
    examples: int = Field(4, ge=1, description="test samples used when no --input is given")
    atol: float = Field(1e-4, gt=0, description="largest allowed difference from eager")


class ExportResult(BaseModel):
    out: str
    file: str
    how: str
    verified_on: list[str]
    max_abs_diff: float
    tolerance: float


def run_examples(student: Student, n: int) -> tuple[list[Any], list[str]]:
    """The first `n` test samples' raw inputs from the run's data (stored recipe)."""
    recipe = student.package.get("recipe")
    where = student.package["source"].get("checkpoint")
    try:
        split = build_data(validate_recipe(recipe, origin=f"{where} (stored recipe)").data).test
    except CmkdError as exc:
        raise UsageError(
            f"give --input FILE (real inputs to check the export on): the run's test data "
            f"cannot be read ({exc})"
        ) from None
    if not hasattr(split, "raw_input"):
        raise UsageError("give --input FILE: the run's test split keeps no raw inputs")
    items = [split.raw_input(i) for i in range(min(n, len(split)))]
    return items, [_label(x, f"test sample {i}") for i, x in enumerate(items)]


def _label(x: Any, default: str) -> str:
    return str(x) if isinstance(x, str | Path) and len(str(x)) < 200 else default


def run(options: ExportOptions) -> ExportResult:
    student = load(options.checkpoint, "cpu")
    if options.inputs:
        if isinstance(student.input, TextInput):
            examples: list[Any] = [p.read_text(encoding="utf-8").strip() for p in options.inputs]
        else:
            examples = list(options.inputs)
        labels = [str(p) for p in options.inputs]
    else:
        examples, labels = run_examples(student, options.examples)
    spec = export_student(student, options.format, options.out, examples, labels, options.atol)
    return ExportResult(
        out=str(options.out),
        file=str(options.out / spec["file"]),
        how=spec["how"],
        verified_on=labels,
        max_abs_diff=spec["verified"]["max_abs_diff"],
        tolerance=spec["verified"]["tolerance"],
    )


def render(result: ExportResult) -> str:
    return (
        f"wrote {result.file} ({result.how}) with model.json and README.md; on "
        f"{len(result.verified_on)} real inputs it matches eager PyTorch to "
        f"{result.max_abs_diff:.2g} (tolerance {result.tolerance:g})"
    )
