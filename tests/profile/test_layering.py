"""Layering (DESIGN.md §1): pyscale/profile imports hw, store, sysinfo and _ext only -- never an op, an nn
module or a model -- and the meters work without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pyscale.profile

FORBIDDEN = ("pyscale.ops", "pyscale.nn", "pyscale.models", "pyscale.kernels", "pyscale.benchmark")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_profile_imports_no_op_nn_or_model():
    root = Path(pyscale.profile.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        bad = sorted(n for n in _imports(path) if n.startswith(FORBIDDEN))
        assert not bad, f"{path.relative_to(root)} imports {bad}"


def test_meters_import_without_torch():
    code = ("import sys; import pyscale.profile.power as p; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(p.NullMeter('x').description)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
