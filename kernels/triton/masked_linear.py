"""fused masked linear in Triton: ``logits[n, k, c] = sum_i x[n, i] * m[k, c, i] * W[c, i] + b[c]``.

The masked input ``x * m`` is never formed: each program loads an x tile once and
applies the masks to the (much smaller) W tile in registers before the tile product,
so K masks cost one pass over x. Output column ``j = k * C + c`` reads weight row ``c``
and mask row ``k * mask_rows + c * per_class`` (``per_class`` is 0 for input-neuron
masks, whose one row serves every class). Accumulates in float32 (float64 when an
input is float64) with IEEE products (no TF32), so results match the torch reference
to float rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def masked_tile_dot(x_ptr, w_ptr, m_ptr, x_row, w_row, m_row, rmask, jmask, n_in, acc,
                    HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr):
    """acc += x[rows] @ (W ⊙ mask)ᵀ over all input columns, one x tile at a time; column
    j of each (BLOCK_M, J) weight tile is ``W[c_j, cols] * mask[row_j, cols]`` (shared by
    masked linear and mask sweep)."""
    for m0 in range(0, n_in, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        cmask = cols < n_in
        x = tl.load(x_ptr + x_row[:, None] + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        wmask = cmask[:, None] & jmask[None, :]
        w = tl.load(w_ptr + w_row[None, :] + cols[:, None], mask=wmask, other=0.0).to(ACC)
        if HAS_MASK:
            w = w * tl.load(m_ptr + m_row[None, :] + cols[:, None], mask=wmask, other=0.0).to(ACC)
        acc = tl.dot(x, w, acc, input_precision="ieee")
    return acc


@triton.jit
def _masked_linear_kernel(
    x_ptr, w_ptr, b_ptr, m_ptr, out_ptr,
    n_rows, n_in, n_cls, n_out, mask_rows, per_class,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_j = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n_rows
    js = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    jmask = js < n_out
    k = js // n_cls
    c = js % n_cls
    w_row = c.to(tl.int64) * n_in
    m_row = (k * mask_rows + c * per_class).to(tl.int64) * n_in
    x_row = rows.to(tl.int64) * n_in
    acc = masked_tile_dot(x_ptr, w_ptr, m_ptr, x_row, w_row, m_row, rmask, jmask, n_in,
                          tl.zeros((BLOCK_N, BLOCK_J), dtype=ACC), HAS_MASK, ACC, BLOCK_M)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=jmask, other=0.0).to(ACC)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * n_out + js[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & jmask[None, :])


def _pow2_between(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  masks: Optional[torch.Tensor], per_class: bool, out_dtype: torch.dtype,
                  block_rows: int = 64, block_in: int = 32) -> torch.Tensor:
    """Masked logits (N, K, C) for ``x`` (N, M), ``weight`` (C, M), ``bias`` (C,) or None.

    ``masks`` is None (K = 1, no mask), ``(K, M)`` input masks (``per_class=False``) or
    ``(K, C, M)`` per-class masks (``per_class=True``). All tensors on one device (CUDA,
    or CPU under ``TRITON_INTERPRET=1``); shapes are checked by the caller.
    """
    n, m = x.shape
    n_cls = weight.shape[0]
    x = x.contiguous()
    acc = tl.float64 if torch.float64 in (x.dtype, weight.dtype) else tl.float32
    wdt = torch.float64 if acc == tl.float64 else torch.float32
    weight = weight.to(device=x.device, dtype=wdt).contiguous()
    if masks is None:
        n_masks, mask_rows, m_arg = 1, 0, weight
    else:
        n_masks = masks.shape[0]
        mask_rows = n_cls if per_class else 1
        m_arg = masks.to(device=x.device, dtype=wdt).contiguous()
    b_arg = weight if bias is None else bias.to(device=x.device, dtype=wdt).contiguous()
    n_out = n_masks * n_cls
    out = torch.empty(n, n_out, dtype=out_dtype, device=x.device)
    if n == 0:
        return out.view(n, n_masks, n_cls)
    block_j = _pow2_between(n_out, 16, 64)
    block_m = _pow2_between(m, 16, block_in)
    block_n = _pow2_between(n, 16, block_rows)
    grid = (triton.cdiv(n, block_n), triton.cdiv(n_out, block_j))
    _masked_linear_kernel[grid](
        x, weight, b_arg, m_arg, out, n, m, n_cls, n_out, mask_rows, int(per_class),
        HAS_MASK=masks is not None, HAS_BIAS=bias is not None, ACC=acc,
        BLOCK_N=block_n, BLOCK_J=block_j, BLOCK_M=block_m,
    )
    return out.view(n, n_masks, n_cls)
