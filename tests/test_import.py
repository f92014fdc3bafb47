"""`import pyscale` is lean; `import pyscale.ops` imports torch but creates no CUDA context."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_pyscale_imports_neither_torch_nor_triton():
    _run("""
        import sys, pyscale
        heavy = {'torch', 'triton', 'numpy', 'scipy', 'pandas', 'rich'} & set(sys.modules)
        assert not heavy, heavy
        assert pyscale.__version__
    """)


def test_import_pyscale_is_fast():
    code = """
        import time
        t = time.perf_counter()
        import pyscale
        print(time.perf_counter() - t)
    """
    # The best of three fresh interpreters: one run on a loaded CI machine can stall for reasons of its own.
    assert min(float(_run(code)) for _ in range(3)) < 0.5


def test_cli_parser_builds_without_torch():
    _run("""
        import sys
        from pyscale import cli
        cli.build_parser()
        assert 'torch' not in sys.modules
    """)


def test_import_ops_creates_no_cuda_context():
    _run("""
        import sys, torch, pyscale.ops
        assert 'torch' in sys.modules
        if torch.cuda.is_available():
            assert not torch.cuda.is_initialized()
    """)


def test_lazy_submodule_access():
    _run("""
        import sys, pyscale
        assert 'pyscale.store' not in sys.modules
        pyscale.store.Store
        assert 'pyscale.store' in sys.modules
        try:
            pyscale.nonexistent
        except AttributeError as e:
            assert 'nonexistent' in str(e)
        else:
            raise AssertionError('no AttributeError')
    """)
