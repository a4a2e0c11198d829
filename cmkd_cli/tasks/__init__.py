"""Tasks: the supervised loss and the validation metrics a method trains and is judged on.

A task is an `nn.Module` (its loss may own parameters, e.g. the learnable scale of the
angular prototypical loss); the method holds it as `method.task`, calls
`task.loss(output, batch)`, and the engine calls `task.evaluate(model, loader, device)`.
"""

from __future__ import annotations

from typing import Any

from cmkd_cli.errors import UsageError
from cmkd_cli.registry import Registry, check_kwargs

TASKS: Registry = Registry("task", package="cmkd_cli.tasks")


def task_class(name: str) -> Any:
    """The registered task class `name`."""
    return TASKS.get(name, field="task")


def check_metric(task: str, metric: str) -> None:
    """`eval.metric` must be one the task reports (checked before any work)."""
    names = task_class(task).metrics
    if metric not in names:
        raise UsageError(f"eval.metric: {metric!r} is not one of {sorted(names)} (task {task})")


def build_task(name: str, num_classes: int, params: dict[str, Any] | None = None) -> Any:
    cls = task_class(name)
    params = dict(params or {})
    check_kwargs(cls.__init__, params, field="task_params")
    return cls(num_classes=num_classes, **params)


from cmkd_cli.tasks.classification import ClassificationTask  # noqa: E402  (re-export)

__all__ = ["TASKS", "ClassificationTask", "build_task", "check_metric", "task_class"]
