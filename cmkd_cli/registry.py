"""Name -> factory registries (models, methods, tasks, datasets, readers), in the style of timm.

Every plug-in kind is found the same way: a `Registry` names the package whose modules
register into it, and imports that package's public modules on the first lookup
(`Registry.discover`), never at import time, so `cmkd --help` loads no plug-in.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cmkd_cli.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a name to a registered object, with errors that list the choices.

    `package` (dotted name): its public modules (names not starting with `_`) are imported
    by `discover()` before the first lookup; each registers its entries on import.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._discovered = package is None

    def discover(self) -> Registry[T]:
        """Import every public module of `package` once (a failed import is retried next time)."""
        if self._discovered:
            return self
        self._discovered = True  # set first: a module may look the registry up as it loads
        try:
            root = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(root.__path__):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{module.name}")
        except BaseException:
            self._discovered = False
            raise
        return self

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str, field: str | None = None) -> T:
        self.discover()
        if name not in self._items:
            where = f"{field}: " if field else ""
            raise UsageError(
                f"{where}unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self.discover()._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self.discover()._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self.discover()._items


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], field: str) -> None:
    """Fail with the dotted field name when `kwargs` holds a key `fn` does not accept."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            allowed = ", ".join(k for k in params if k not in ("self", "num_classes"))
            raise UsageError(f"{field}.{key}: unknown parameter; allowed: {allowed}")
