"""Test set-up: Triton kernels run under its CPU interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton is first imported, hence here.
"""
import os

import pytest

#: Code that loads the extension named by $PYDEBIAS_TEST_NATIVE (a sanitizer build,
#: tests/test_sanitizers.py) as pydebias._C before pydebias imports its own; subprocesses
#: started by tests run it first too.
NATIVE_PREAMBLE = """
import os, sys, importlib.util
_path = os.environ.get("PYDEBIAS_TEST_NATIVE")
if _path and "pydebias._C" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("pydebias._C", _path)
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    sys.modules["pydebias._C"] = _mod
"""
exec(NATIVE_PREAMBLE)

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("PYDEBIAS_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pydebias_cache"))

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
