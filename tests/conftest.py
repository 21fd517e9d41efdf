"""Test set-up: Triton kernels run under its CPU interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton is first imported, hence here.
"""
import os
import sys

import pytest

# `python -m pytest` puts the checkout first on sys.path, and its top-level kernels/ folder
# (pydebias.kernels) would shadow the Hugging Face `kernels` package that transformers
# imports; the tests run against the installed package, so the checkout comes off the path.
_ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _ROOT]

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("PYDEBIAS_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pydebias_cache"))

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
