"""The project's map (ARCHITECTURE.md) against the code: every module is placed in the layer table, every
import is one its unit may make, every allowed import sits on a lower floor, and the README lists every
PYSCALE_* variable the code reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`([\w.]+)`\s*\|[^|]*\|([^|]*)\|\s*$")


def _layer_table() -> dict[str, tuple[int, set[str]]]:
    """unit -> (floor, units it may import), read from ARCHITECTURE.md's layer table."""
    table = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            table[m.group(2)] = (int(m.group(1)), set(re.findall(r"`([\w.]+)`", m.group(3))))
    return table


TABLE = _layer_table()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "kernels":
        parts = ["pyscale", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> str | None:
    """The table's unit of a module: the longest unit name that is the module or a package above it."""
    if module == "pyscale.models":  # the package door: configs eagerly, gpt.py by name
        return "pyscale.models.config"
    best = None
    for unit in TABLE:
        if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best)):
            best = unit
    return best


def _sources() -> list[Path]:
    files = sorted((ROOT / "pyscale").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    return [p for p in files if "__pycache__" not in p.parts]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return skipped


def _imports(path: Path) -> set[str]:
    """pyscale modules `path` imports at run time (names imported from a package count as submodules)."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*head, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {name for name in found if name.startswith("pyscale")}


def test_the_table_is_read():
    assert len(TABLE) >= 20, TABLE
    assert TABLE["pyscale.kernels"] == (1, set())


def test_every_module_is_placed():
    unplaced = [str(p.relative_to(ROOT)) for p in _sources() if _unit(_module_name(p)) is None
                and _module_name(p) != "pyscale"]
    assert not unplaced, f"modules missing from ARCHITECTURE.md's layer table: {unplaced}"


def test_every_allowed_import_sits_on_a_lower_floor():
    for unit, (floor, allowed) in TABLE.items():
        for other in allowed:
            assert other in TABLE, f"{unit} may import {other}, which the table does not list"
            assert TABLE[other][0] < floor, f"{unit} (floor {floor}) may import {other} (floor {TABLE[other][0]})"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layer_table(path):
    me = _unit(_module_name(path))
    if me is None:  # the package root: lazy by name
        return
    allowed = TABLE[me][1] | {me}
    bad = []
    for name in sorted(_imports(path)):
        unit = _unit(name)
        if name == "pyscale" or unit is None:
            continue  # the root's version and backend, or a name the root exports
        if unit not in allowed:
            bad.append(f"{name} ({unit})")
    assert not bad, f"{path.relative_to(ROOT)} ({me}) imports {bad}; ARCHITECTURE.md allows {sorted(allowed)}"


def _environment_names() -> set[str]:
    """PYSCALE_* names in the code and scripts that users run (C macros in csrc/ are not variables)."""
    paths = [*_sources(), ROOT / "setup.py", ROOT / "install.sh", *sorted((ROOT / "bench").glob("*.py")),
             *sorted((ROOT / "bench").glob("*.sh"))]
    names = set()
    for path in paths:
        names.update(re.findall(r"\bPYSCALE_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return names - {"PYSCALE_WITH_CUDA"}  # a compiler macro setup.py passes to nvcc, not a variable


def test_readme_lists_every_environment_variable():
    names = _environment_names()
    assert {"PYSCALE_BACKEND", "PYSCALE_HOME"} <= names, names
    readme = (ROOT / "README.md").read_text()
    missing = sorted(n for n in names if n not in readme)
    assert not missing, f"README.md does not mention {missing}"
