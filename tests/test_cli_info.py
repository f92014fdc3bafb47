from __future__ import annotations

import json
import subprocess
import sys

from pyscale import cli


def test_info_json_lists_devices_and_backends(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = {b["name"] for b in info["backends"]}
    assert {"torch", "triton (GPU)", "triton interpreter", "_C CPU ops", "_C CUDA ops", "NVML", "RAPL"} <= names
    for b in info["backends"]:
        assert isinstance(b["available"], bool) and b["detail"]  # a missing backend says why
    assert info["devices"] and info["devices"][0]["kind"] in ("cpu", "cuda")
    assert info["versions"]["pyscale"]


def test_info_table_and_python_m(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pyscale", "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "backends" in proc.stdout


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_the_library_never_imports_the_cli():
    """`pyscale info` and the report share the library's collection (pyscale.sysinfo.collect); no module
    outside the command layer imports pyscale.cli or pyscale.commands."""
    import ast
    from pathlib import Path

    import pyscale

    root = Path(pyscale.__file__).parent
    library = [p for p in root.rglob("*.py")
               if p.name not in ("cli.py", "__main__.py") and "commands" not in p.relative_to(root).parts]
    assert len(library) > 40
    for path in library:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n == "pyscale.cli" or n.startswith("pyscale.commands")]
            assert not bad, f"{path.relative_to(root)} imports {bad}"


def test_cpu_cache_sizes_come_from_sysfs(tmp_path):
    from pyscale import sysinfo

    for name, level, kind, size in (("index0", 1, "Data", "48K"), ("index1", 1, "Instruction", "64K"),
                                    ("index2", 2, "Unified", "2048K"), ("index3", 3, "Unified", "480M")):
        d = tmp_path / name
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert sysinfo.cpu_cache_bytes(1, tmp_path) == 48 * 2**10  # data, not instruction
    assert sysinfo.cpu_cache_bytes(2, tmp_path) == 2 * 2**20 and sysinfo.cpu_cache_bytes(3, tmp_path) == 480 * 2**20
    assert sysinfo.cpu_cache_bytes(4, tmp_path) is None and sysinfo.cpu_cache_bytes(2, tmp_path / "none") is None
