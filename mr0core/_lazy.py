"""Lazy package attributes (PEP 562), so that importing one light module does not load torch.

``import mr0core`` used to import every subpackage (and torch, 1.3–1.8 s) at once; the MRD client
needs only :mod:`mr0core.clitools` and :mod:`mr0core.io.rawfile`. A package lists its public
names with the module each lives in; the module is imported on first access, and the names still
show in ``dir()`` and ``__all__``, so ``from mr0core import Sequence`` and ``mr0.util.simulate``
work as before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(
    package: str, names: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``__getattr__`` and ``__dir__`` for ``package``.

    ``names`` maps each public name to its module (absolute, or relative to ``package`` with a
    leading dot); a name that equals its module's last part and has no attribute of that name in
    the module is the module itself (``"util": ".util"``). Loaded values are cached in
    ``namespace`` (the package's globals).
    """

    def __getattr__(name: str) -> Any:
        module_name = names.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name, package)
        value = getattr(module, name) if hasattr(module, name) else module
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
