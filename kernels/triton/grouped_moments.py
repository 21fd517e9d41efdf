"""grouped moments in Triton: per (group, column) shifted sum, sum of squares, min, max.

Each program owns a stripe of rows and a block of columns, loads each tile once and
reduces it into all groups at once (a one-hot over at most ``GROUP_BLOCK`` groups),
writing per-program partials that the launcher sums in a fixed order, so results are
deterministic (no float atomics).
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

GROUP_BLOCK = 16  # groups reduced per launch; more groups take more launches


@triton.jit
def _grouped_moments_kernel(
    x_ptr, grp_ptr, shift_ptr, s1_ptr, s2_ptr, lo_ptr, hi_ptr,
    n_rows, n_cols, rows_per_prog, group_offset,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GB: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < n_cols
    gids = group_offset + tl.arange(0, GB)
    acc1 = tl.zeros((GB, BLOCK_C), dtype=tl.float64)
    acc2 = tl.zeros((GB, BLOCK_C), dtype=tl.float64)
    lo = tl.full((GB, BLOCK_C), float("inf"), dtype=tl.float64)
    hi = tl.full((GB, BLOCK_C), float("-inf"), dtype=tl.float64)
    row_start = pid_r * rows_per_prog
    row_end = tl.minimum(row_start + rows_per_prog, n_rows)
    for r0 in range(row_start, row_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        rmask = rows < row_end
        grp = tl.load(grp_ptr + rows, mask=rmask, other=-1)
        tile_mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * n_cols + cols[None, :],
                    mask=tile_mask, other=0.0).to(tl.float64)
        # (GB, BLOCK_R, 1) one-hot of each row's group against this launch's groups
        hit = (grp[None, :] == gids[:, None])[:, :, None] & tile_mask[None, :, :]
        # each row's own group's shift row: (BLOCK_R, BLOCK_C) float64, 8 bytes per value read
        shift = tl.load(shift_ptr + grp[:, None].to(tl.int64) * n_cols + cols[None, :],
                        mask=tile_mask & (grp[:, None] >= 0), other=0.0)
        d = x - shift
        d3 = tl.where(hit, d[None, :, :], 0.0)
        acc1 += tl.sum(d3, axis=1)
        acc2 += tl.sum(d3 * d3, axis=1)
        lo = tl.minimum(lo, tl.min(tl.where(hit, x[None, :, :], float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(hit, x[None, :, :], float("-inf")), axis=1))
    out = pid_r * GB * n_cols + tl.arange(0, GB)[:, None] * n_cols + cols[None, :]
    omask = cmask[None, :] & (tl.arange(0, GB)[:, None] < GB)
    tl.store(s1_ptr + out, acc1, mask=omask)
    tl.store(s2_ptr + out, acc2, mask=omask)
    tl.store(lo_ptr + out, lo, mask=omask)
    tl.store(hi_ptr + out, hi, mask=omask)


def grouped_moments(x: torch.Tensor, groups: torch.Tensor, n_groups: int, shift: torch.Tensor,
                    block_rows: int = 32, block_cols: int = 64, programs_per_col_block: int = 0
                    ) -> Tuple[torch.Tensor, ...]:
    """Shifted grouped sums of a 2-D tensor: (count, s1, s2, min, max), float64, shape (G, M).

    ``shift`` (float64, (G, M): one row per group) is subtracted from each row of that
    group before summing.
    Empty groups come back with min=+inf, max=-inf and zero sums.
    """
    n, m = x.shape
    x = x.contiguous()
    groups = groups.to(device=x.device, dtype=torch.int32).contiguous()
    shift = shift.to(device=x.device, dtype=torch.float64).contiguous()
    col_blocks = triton.cdiv(m, block_cols)
    if programs_per_col_block <= 0:
        # Enough programs to fill a GPU; a handful under the interpreter.
        target = 4 if x.device.type == "cpu" else 1024
        programs_per_col_block = max(1, min(triton.cdiv(n, block_rows), target // col_blocks or 1))
    rows_per_prog = triton.cdiv(max(n, 1), programs_per_col_block)
    rows_per_prog = triton.cdiv(rows_per_prog, block_rows) * block_rows
    n_prog = max(1, triton.cdiv(max(n, 1), rows_per_prog))
    s1 = torch.empty(n_groups, m, dtype=torch.float64, device=x.device)
    s2, lo, hi = torch.empty_like(s1), torch.empty_like(s1), torch.empty_like(s1)
    for g0 in range(0, n_groups, GROUP_BLOCK):
        parts = [torch.empty(n_prog, GROUP_BLOCK, m, dtype=torch.float64, device=x.device)
                 for _ in range(4)]
        _grouped_moments_kernel[(n_prog, col_blocks)](
            x, groups, shift, *parts, n, m, rows_per_prog, g0,
            BLOCK_R=block_rows, BLOCK_C=block_cols, GB=GROUP_BLOCK,
        )
        g1 = min(n_groups, g0 + GROUP_BLOCK)
        k = g1 - g0
        s1[g0:g1] = parts[0][:, :k].sum(0)
        s2[g0:g1] = parts[1][:, :k].sum(0)
        lo[g0:g1] = parts[2][:, :k].amin(0)
        hi[g0:g1] = parts[3][:, :k].amax(0)
    count = torch.bincount(groups.to(torch.int64), minlength=n_groups)[:n_groups]
    return count, s1, s2, lo, hi
