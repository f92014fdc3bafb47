"""The meters work without torch (the import rules of pyscale/profile are in tests/test_architecture.py)."""

from __future__ import annotations

import subprocess
import sys


def test_meters_import_without_torch():
    code = ("import sys; import pyscale.profile.power as p; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(p.NullMeter('x').description)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
