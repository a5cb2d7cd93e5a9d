"""The layers mr0core → scheduler → gadgets (DESIGN.md): no import points up.

Every import statement counts, function-local ones too; the scheduler reaches the gadgets'
functions only through plug-in modules its user names (``function_modules``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

ABOVE = {"mr0core": ("scheduler", "gadgets"), "scheduler": ("gadgets",)}
"""Package → the packages above it, which it must not import."""


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """Return ``(line, top-level package)`` of every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_module_imports_a_layer_above_its_own(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules found under {package}/"
    upward = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in files
        for line, name in imported_packages(path)
        if name in ABOVE[package]
    ]
    assert upward == []


def test_the_check_sees_function_local_and_from_imports(tmp_path: Path) -> None:
    """Control: the parser finds the forms an upward import could take."""
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nfrom . import sibling\n"
        "def f():\n    from gadgets.framework.chain import open_chain\n"
        "    import gadgets.framework.core\n"
    )
    assert imported_packages(module) == [(1, "os"), (4, "gadgets"), (5, "gadgets")]


def private_imports(path: Path) -> list[tuple[int, str]]:
    """Return ``(line, name)`` of every private name (``_x``, not dunder) imported from a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found += [
                (node.lineno, alias.name)
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
    return found


@pytest.mark.parametrize("package", ["mr0core", "scheduler", "gadgets"])
def test_no_module_imports_another_modules_private_names(package: str) -> None:
    """A name another module needs is public; a private one may change without notice."""
    found = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for line, name in private_imports(path)
    ]
    assert found == []


def test_the_private_import_check_sees_them(tmp_path: Path) -> None:
    """Control: a private name is found, a dunder or a public one is not."""
    module = tmp_path / "m.py"
    module.write_text(
        "from __future__ import annotations\nfrom a import _x, y, __version__\n"
        "def f():\n    from .b import _z\n"
    )
    assert private_imports(module) == [(2, "_x"), (4, "_z")]
