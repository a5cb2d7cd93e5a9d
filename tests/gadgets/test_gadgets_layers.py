"""The gadgets' sub-packages are layers: wire → framework → library → serve (no import points up).

``gadgets/__init__.py`` names the layers. The framework resolves gadget class names through its
registry and imports no gadget, so chains ↔ gadgets form no cycle; every host imports
:mod:`gadgets.library`, which registers them all.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

LAYERS = ("wire", "framework", "library", "serve")
"""The sub-packages of gadgets, lowest first: each may import only those before it."""


def gadgets_imports(path: Path) -> list[tuple[int, str]]:
    """Return ``(line, sub-package)`` of every import of a gadgets sub-package in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            names = [node.module]
        found += [(node.lineno, n.split(".")[1]) for n in names
                  if n.startswith("gadgets.") and n.count(".") >= 1]  # fmt: skip
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_no_gadgets_module_imports_a_layer_above_its_own(layer: str) -> None:
    files = sorted((REPO / "gadgets" / layer).rglob("*.py"))
    assert files, f"no modules in gadgets/{layer}/"
    above = LAYERS[LAYERS.index(layer) + 1 :]
    upward = [f"{path.relative_to(REPO)}:{line}: imports gadgets.{name}"
              for path in files
              for line, name in gadgets_imports(path) if name in above]  # fmt: skip
    assert upward == []


def test_every_gadgets_module_lives_in_a_layer() -> None:
    loose = [p.name for p in (REPO / "gadgets").glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    assert {p.name for p in (REPO / "gadgets").iterdir() if (p / "__init__.py").is_file()} == set(
        LAYERS
    )


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """Control: an import of a higher layer, plain or from, is found."""
    module = tmp_path / "m.py"
    module.write_text("import os\nimport gadgets.serve.server\nfrom gadgets.library import recon\n")
    assert gadgets_imports(module) == [(2, "serve"), (3, "library")]


def test_the_framework_registers_no_gadget_until_the_library_is_imported() -> None:
    code = (
        "import json, sys\n"
        "import gadgets.framework.chain, gadgets.library.background_jobs as _\n"
        "from gadgets.framework.core import REGISTRY\n"
        "print(json.dumps(sorted(REGISTRY)))\n"
    )
    bare = (
        "import json, sys\n"
        "import gadgets.framework.chain\n"
        "from gadgets.framework.core import REGISTRY\n"
        "print(json.dumps([sorted(REGISTRY),"
        " sorted(m for m in sys.modules if m.startswith('gadgets.library'))]))\n"
    )
    run = [sys.executable, "-c"]
    registered, library = json.loads(
        subprocess.run([*run, bare], cwd=REPO, check=True, capture_output=True, text=True).stdout
    )
    assert registered == []
    assert library == []
    full = json.loads(
        subprocess.run([*run, code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    )
    assert {"SenseGadget", "TwinPreviewGadget", "RetroSimGadget", "RetrieveGadget"} <= set(full)
