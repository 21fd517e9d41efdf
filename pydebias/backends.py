"""The one place that decides which implementation runs.

``backend="auto"`` sends CUDA tensors to the Triton kernels, CPU arrays and tensors to
the C++ extension ``pydebias._C``, and anything else (or a missing extension) to the
pure-torch reference. Every public function that computes takes ``backend=`` and calls
:func:`resolve` exactly once.
"""
from __future__ import annotations

import functools
import importlib
import os

BACKENDS = ("auto", "cpp", "triton", "torch")


@functools.lru_cache(maxsize=None)
def native():
    """The compiled extension, or None when the package was not built (source checkout)."""
    try:
        return importlib.import_module("pydebias._C")
    except ImportError:
        return None


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1``, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _is_cuda(x) -> bool:
    return bool(getattr(x, "is_cuda", False))


def resolve(backend: str, data) -> str:
    """Pick the implementation for ``data`` (numpy array, memmap or torch tensor)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if _is_cuda(data):
            return "triton" if triton_available() else "torch"
        return "cpp" if native() is not None else "torch"
    if backend == "cpp":
        if native() is None:
            raise RuntimeError(
                "backend='cpp': pydebias._C is not built; install the package with `pip install .`"
            )
        if _is_cuda(data):
            raise ValueError("backend='cpp' runs on CPU data; move the tensor with .cpu() or use 'triton'")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton': triton is not installed; `pip install triton`")
        if not _is_cuda(data) and not triton_interpreted():
            raise ValueError(
                "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                "triton is imported to run the interpreter on the CPU"
            )
    return backend
