"""mask-sweep evaluation in Triton: correct predictions of K masked heads per cell.

Each program owns a block of rows and a block of ``KB`` masks. It accumulates the
masked logits of all ``KB x C`` (mask, class) pairs in one tile product per x tile
(the masks are applied to the W tile, as in masked linear), takes the arg-max over classes
(ties to the first class, like ``torch.argmax``), and adds each correct prediction to
the integer counter of its (mask, cell), where ``cell = label * G + group`` is
computed by the caller. With few cells the program first reduces its rows into a
(KB, cells) tile and issues one atomic add per counter; with many cells it adds per
(row, mask). Integer atomics: the counts do not depend on the order of programs.
Logits that are NaN are counted in ``nan_ptr`` so the caller can refuse the input.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .masked_linear import masked_tile_dot

ONE_HOT_CELLS = 64  # at most this many cells: reduce in the program, then one atomic per counter


@triton.jit
def _mask_sweep_kernel(
    x_ptr, w_ptr, b_ptr, m_ptr, lab_ptr, cell_ptr, cnt_ptr, nan_ptr,
    n_rows, n_in, n_cls, n_masks, n_cells, mask_rows, per_class,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, ONE_HOT: tl.constexpr,
    BLOCK_N: tl.constexpr, KB: tl.constexpr, CP: tl.constexpr, BLOCK_M: tl.constexpr,
    CELLS_P: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n_rows
    js = tl.arange(0, KB * CP)  # column j = local mask (j // CP), class (j % CP)
    k = pid_k * KB + js // CP
    c = js % CP
    jmask = (c < n_cls) & (k < n_masks)
    w_row = c.to(tl.int64) * n_in
    m_row = (k * mask_rows + c * per_class).to(tl.int64) * n_in
    x_row = rows.to(tl.int64) * n_in
    acc = masked_tile_dot(x_ptr, w_ptr, m_ptr, x_row, w_row, m_row, rmask, jmask, n_in,
                          tl.zeros((BLOCK_N, KB * CP), dtype=ACC), True, ACC, BLOCK_M)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c < n_cls, other=0.0).to(ACC)[None, :]
    # padded classes can never win the arg-max
    logits = tl.where((c < n_cls)[None, :], acc, float("-inf"))
    logits = tl.reshape(logits, (BLOCK_N, KB, CP))
    kk = pid_k * KB + tl.arange(0, KB)
    live = rmask[:, None] & (kk < n_masks)[None, :]
    is_nan = tl.max((logits != logits).to(tl.int32), axis=2)
    # NaN rows are only counted (the caller raises); keep them out of the arg-max
    logits = tl.where(logits != logits, float("-inf"), logits)
    pred = tl.argmax(logits, axis=2, tie_break_left=True)  # (BLOCK_N, KB)
    tl.atomic_add(nan_ptr, tl.sum(tl.sum(tl.where(live, is_nan, 0), axis=1), axis=0))
    lab = tl.load(lab_ptr + rows, mask=rmask, other=-1)
    cell = tl.load(cell_ptr + rows, mask=rmask, other=-1)
    ok = live & (pred == lab[:, None])
    if ONE_HOT:
        cells = tl.arange(0, CELLS_P)
        hit = (cell[:, None] == cells[None, :])  # (BLOCK_N, CELLS_P)
        tile = tl.sum((ok[:, :, None] & hit[:, None, :]).to(tl.int32), axis=0)  # (KB, CELLS_P)
        dst = cnt_ptr + kk[:, None].to(tl.int64) * n_cells + cells[None, :]
        tl.atomic_add(dst, tile, mask=(kk < n_masks)[:, None] & (cells < n_cells)[None, :])
    else:
        dst = cnt_ptr + kk[None, :].to(tl.int64) * n_cells + cell[:, None]
        tl.atomic_add(dst, tl.full((BLOCK_N, KB), 1, tl.int32), mask=ok)


def mask_sweep(x: torch.Tensor, labels: torch.Tensor, cells: torch.Tensor, n_cells: int,
               weight: torch.Tensor, bias: Optional[torch.Tensor], masks: torch.Tensor,
               per_class: bool, block_rows: int = 32, block_in: int = 32,
               one_hot_cells: int = ONE_HOT_CELLS):
    """Correct counts (K, n_cells) int64 and the number of NaN logits of one row chunk.

    ``x`` (N, M), ``labels`` and ``cells`` (N,) integer, ``weight`` (C, M), ``masks``
    (K, M) or (K, C, M) with ``per_class``. All on one device (CUDA, or CPU under
    ``TRITON_INTERPRET=1``); at most 2**31 - 1 rows per call (int32 counters).
    """
    n, m = x.shape
    n_cls = weight.shape[0]
    n_masks = masks.shape[0]
    if n >= 2 ** 31:
        raise ValueError("x: at most 2**31 - 1 rows per launch; pass row chunks")
    x = x.contiguous()
    acc = tl.float64 if torch.float64 in (x.dtype, weight.dtype) else tl.float32
    wdt = torch.float64 if acc == tl.float64 else torch.float32
    weight = weight.to(device=x.device, dtype=wdt).contiguous()
    masks = masks.to(device=x.device, dtype=wdt).contiguous()
    b_arg = weight if bias is None else bias.to(device=x.device, dtype=wdt).contiguous()
    labels = labels.to(device=x.device, dtype=torch.int32).contiguous()
    cells = cells.to(device=x.device, dtype=torch.int32).contiguous()
    counts = torch.zeros(n_masks, n_cells, dtype=torch.int32, device=x.device)
    nan = torch.zeros(1, dtype=torch.int32, device=x.device)
    if n > 0:
        cp = triton.next_power_of_2(n_cls)
        # KB * CP >= 16 for the tile product, and at most 64 columns unless C alone is wider
        kb = max(1, min(triton.next_power_of_2(n_masks), 64 // cp) if cp <= 64 else 1)
        kb = max(kb, 16 // cp if cp < 16 else 1)
        block_m = max(16, min(block_in, triton.next_power_of_2(m)))
        block_n = max(16, min(block_rows, triton.next_power_of_2(n)))
        one_hot = n_cells <= one_hot_cells
        grid = (triton.cdiv(n, block_n), triton.cdiv(n_masks, kb))
        _mask_sweep_kernel[grid](
            x, weight, b_arg, masks, labels, cells, counts, nan,
            n, m, n_cls, n_masks, n_cells, n_cls if per_class else 1, int(per_class),
            HAS_BIAS=bias is not None, ACC=acc, ONE_HOT=one_hot,
            BLOCK_N=block_n, KB=kb, CP=cp, BLOCK_M=block_m,
            CELLS_P=triton.next_power_of_2(n_cells) if one_hot else 1,
        )
    return counts.to(torch.int64), int(nan.item())
