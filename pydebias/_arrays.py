"""Zero-copy views between torch tensors, numpy arrays and memmaps, and row chunking."""
from __future__ import annotations

import os
import tempfile
import warnings
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

# Element codes shared with csrc/common.h (enum Elem).
F32, F64, F16, BF16 = 0, 1, 2, 3
_NP_CODES = {np.dtype(np.float32): F32, np.dtype(np.float64): F64, np.dtype(np.float16): F16}
_TORCH_CODES = {torch.float32: F32, torch.float64: F64, torch.float16: F16, torch.bfloat16: BF16}


def is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def supported_dtype(dt) -> bool:
    """Whether the kernels take this numpy or torch dtype."""
    return dt in _TORCH_CODES if isinstance(dt, torch.dtype) else np.dtype(dt) in _NP_CODES


def native_view(x) -> Tuple[np.ndarray, int]:
    """A numpy view of a CPU array/tensor and its element code (bf16 travels as uint16)."""
    if is_tensor(x):
        code = _TORCH_CODES[x.dtype]
        if code == BF16:
            x = x.view(torch.int16)
        arr = x.numpy()
        if code == BF16:
            arr = arr.view(np.uint16)
        return arr, code
    code = _NP_CODES[np.dtype(x.dtype)]
    if code == F16:
        return x.view(np.uint16), code
    return x, code


def as_tensor(x) -> torch.Tensor:
    """A torch view of x without copying where torch can share the memory."""
    if is_tensor(x):
        return x
    with warnings.catch_warnings():
        # read-only memmaps are only ever read through this view
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(x))


def to_numpy(x) -> np.ndarray:
    """A CPU numpy array of x (labels, group ids, small outputs); float64 for bf16."""
    if is_tensor(x):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def nbytes(x) -> int:
    """Bytes of an array or tensor's elements (a memmap's file size, not what is resident)."""
    return int(x.numel() * x.element_size()) if is_tensor(x) else int(x.size * x.dtype.itemsize)


def default_chunk_rows(n_cols: int, itemsize: int, target_bytes: int = 64 << 20) -> int:
    return max(1, target_bytes // max(1, n_cols * itemsize))


def row_chunks(n: int, chunk_rows: int) -> Iterator[slice]:
    for start in range(0, n, chunk_rows):
        yield slice(start, min(n, start + chunk_rows))


def contiguous_rows(x):
    """Row chunk ready for a kernel: C-contiguous (a copy only for strided input)."""
    if is_tensor(x):
        return x.contiguous()
    return np.ascontiguousarray(x)


def float32_rows(x, buffer: Optional[np.ndarray] = None) -> torch.Tensor:
    """Rows as a float32 torch tensor for a GEMM. float16/bfloat16 CPU data is widened by
    the native kernel (torch's own CPU conversion runs slower than reading the data),
    into ``buffer`` when it is given and large enough (reused across chunks: fresh pages
    cost a fault each)."""
    if is_tensor(x) and (x.is_cuda or x.dtype == torch.float32):
        return x.float()
    arr, code = native_view(contiguous_rows(x.detach() if is_tensor(x) else x))
    if code in (F16, BF16):
        from .backends import native

        lib = native()
        if lib is not None:
            size = arr.shape[0] * arr.shape[1]
            out = (buffer.reshape(-1)[:size].reshape(arr.shape) if buffer is not None and buffer.size >= size
                   else np.empty(arr.shape, dtype=np.float32))
            lib.widen(arr, code, out)
            return torch.from_numpy(out)
    return as_tensor(arr if code not in (F16, BF16) else x).to(torch.float32)


def scratch_dir() -> str:
    """Where out-of-core copies go: ``$PYDEBIAS_SCRATCH`` or the system temporary folder."""
    return os.environ.get("PYDEBIAS_SCRATCH") or tempfile.gettempdir()


def scratch_array(shape: Tuple[int, ...], dtype) -> np.memmap:
    """A zero-filled ``np.memmap`` on a temporary file in :func:`scratch_dir`, for arrays
    derived from a memmap (a row subset, z-scores) that must not be held in memory. The
    file is unlinked at once where the OS allows it (POSIX), so it disappears with the
    mapping, also when the process dies; elsewhere it is removed when the array is freed."""
    import weakref

    d = scratch_dir()
    if not os.path.isdir(d):
        raise ValueError(f"PYDEBIAS_SCRATCH: {d!r} is not a folder; create it or point it at one with free space")
    fd, path = tempfile.mkstemp(prefix="pydebias-", suffix=".scratch", dir=d)
    os.close(fd)
    try:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size == 0:  # np.memmap cannot map an empty file
            os.remove(path)
            return np.zeros(shape, dtype=dtype)  # type: ignore[return-value]
        out = np.memmap(path, dtype=dtype, mode="w+", shape=tuple(shape))
    except BaseException:
        os.remove(path)
        raise
    try:
        os.remove(path)
    except OSError:  # Windows: an open mapping keeps the file
        weakref.finalize(out, os.remove, path)
    return out


#: arrays derived from a memmap go to a scratch file above this size (smaller ones, e.g.
#: a capped holdout, are cheaper in memory)
SCRATCH_MIN_BYTES = 64 << 20


def empty_like_source(source, shape: Tuple[int, ...], dtype) -> np.ndarray:
    """An array for data derived from ``source``: a :func:`scratch_array` when ``source``
    is an ``np.memmap`` and the result exceeds ``SCRATCH_MIN_BYTES``, else in memory."""
    if isinstance(source, np.memmap) and int(np.prod(shape)) * np.dtype(dtype).itemsize > SCRATCH_MIN_BYTES:
        return scratch_array(shape, dtype)
    return np.empty(shape, dtype=dtype)


def take_rows(x, index: np.ndarray):
    """Rows ``index`` of x: a tensor or in-memory array copy, or for an ``np.memmap``
    (above ``SCRATCH_MIN_BYTES`` of rows) a :func:`scratch_array` filled chunk by chunk
    (memory: one chunk)."""
    if is_tensor(x):
        return x[torch.from_numpy(index).to(x.device)]
    if not isinstance(x, np.memmap):
        return np.asarray(x[index])
    out = empty_like_source(x, (index.size,) + tuple(x.shape[1:]), x.dtype)
    step = default_chunk_rows(int(np.prod(x.shape[1:], dtype=np.int64)), x.dtype.itemsize)
    for sl in row_chunks(index.size, step):
        out[sl] = x[index[sl]]
    return out
