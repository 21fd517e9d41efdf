"""Test set-up: Triton kernels run under its CPU interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton is first imported, hence here.
"""
import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("PYDEBIAS_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pydebias_cache"))

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
