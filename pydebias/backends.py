"""The one place that decides which implementation runs.

``backend="auto"`` sends CUDA tensors to the Triton kernels, CPU arrays and tensors to
the C++ extension ``pydebias._C``, and anything else (or a missing extension) to the
pure-torch reference. Every public function that computes takes ``backend=`` and calls
:func:`resolve` exactly once; the masked linear layer asks :func:`resolve_linear` (its
CPU kernel is BLAS on folded weights) and FAISS work asks :func:`faiss_on_gpu`.
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


def resolve_linear(backend: str, x, needs_grad: bool) -> str:
    """The masked linear layer's implementation: ``"fold"`` (BLAS / cuBLAS on weights
    with the masks folded in, differentiable), ``"triton"`` (no backward) or ``"torch"``.
    ``"auto"`` takes Triton only for CUDA input that needs no gradient."""
    if backend == "auto":
        return "triton" if resolve("auto", x) == "triton" and not needs_grad else "fold"
    if backend == "cpp":
        if _is_cuda(x):
            raise ValueError("backend='cpp' runs on CPU data; move the tensor with .cpu() or use 'triton'")
        return "fold"  # torch's BLAS on folded weights; pydebias._C is not needed
    which = resolve(backend, x)
    if which == "triton" and needs_grad:
        raise RuntimeError("backend='triton': the Triton masked linear has no backward; "
                           "use backend='auto' (folded GEMM) when gradients are needed")
    return which


def faiss():
    """The FAISS module (faiss-cpu is a core dependency; faiss-gpu the ``[gpu]`` extra)."""
    try:
        import faiss as module
    except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError("pydebias.cluster needs FAISS: pip install faiss-cpu (or faiss-gpu)") from e
    return module


def faiss_gpu_available() -> bool:
    """True when the installed FAISS has GPU support and a GPU is visible."""
    module = faiss()
    return hasattr(module, "StandardGpuResources") and getattr(module, "get_num_gpus", lambda: 0)() > 0


def faiss_on_gpu(x, gpu) -> bool:
    """Whether FAISS work on ``x`` runs on the GPU: ``gpu="auto"`` when faiss-gpu is
    installed and ``x`` is a CUDA tensor; ``True`` / ``False`` force it."""
    if gpu == "auto":
        return _is_cuda(x) and faiss_gpu_available()
    if gpu not in (True, False):
        raise ValueError(f"gpu: expected 'auto', True or False, got {gpu!r}")
    if gpu and not faiss_gpu_available():
        raise ValueError("gpu: faiss-gpu is not installed or no GPU is visible; use gpu='auto' or False")
    return gpu
