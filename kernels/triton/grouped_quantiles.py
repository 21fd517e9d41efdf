"""exact grouped quantiles in Triton: radix select over order-preserving float keys.

Each value is mapped to an integer key whose unsigned order is the float order
(``-0.0`` just below ``+0.0``): the sign bit is flipped for positives, all bits for
negatives. A target order statistic is then found one 8-bit digit at a time, most
significant first: one launch per digit histograms, per (target, group, column), the
digit of every value whose higher digits match the prefix found so far
(``tl.atomic_add`` into ``(T, G, M, 256)`` int32 bins); the launcher picks the bin that
holds the remaining rank, appends it to the prefix and subtracts the counts below it.
After 4 passes (8 for float64) the prefix is the key of the answer, exactly: no column
is sorted and the result is a data value bit for bit. fp16/bf16 widen exactly to fp32.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import triton
import triton.language as tl

RADIX_BITS = 8
BINS = 1 << RADIX_BITS


@triton.jit
def _digit_histogram_kernel(
    x_ptr, grp_ptr, prefix_ptr, hist_ptr,
    n_rows, n_cols, n_groups, n_targets, shift, high_mask,
    WIDE: tl.constexpr, BF16: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < n_rows
    cmask = cols < n_cols
    mask = rmask[:, None] & cmask[None, :]
    grp = tl.load(grp_ptr + rows, mask=rmask, other=0).to(tl.int64)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    if WIDE:
        bits = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.int64, bitcast=True)
        key = bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
        key = key ^ (-9223372036854775807 - 1)  # flip the sign bit: unsigned order in int64 bits
    else:
        if BF16:  # raw 16-bit patterns: a bf16 is the top half of its fp32
            bits = (tl.load(x_ptr + offs, mask=mask, other=0).to(tl.int32) & 0xFFFF) << 16
        else:
            bits = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.int32, bitcast=True)
        key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648
    digit = (key >> shift) & (BINS - 1)
    for t in range(0, n_targets):
        cell = (t * n_groups + grp[:, None]) * n_cols + cols[None, :]  # (t, g, c)
        prefix = tl.load(prefix_ptr + cell, mask=mask, other=0)
        match = mask & (((prefix ^ key) & high_mask) == 0)  # higher digits as found so far
        tl.atomic_add(hist_ptr + cell * BINS + digit, tl.full(digit.shape, 1, tl.int32), mask=match)


def grouped_quantiles(x: torch.Tensor, groups: torch.Tensor, n_groups: int, levels: Sequence[float],
                      block_rows: int = 0, block_cols: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Order statistics of ranks floor((n-1) q) and ceil((n-1) q) per (level, group,
    column): ``(lower, higher)``, float64, shape ``(Q, G, M)``; NaN for empty groups.
    The caller rejects NaN input."""
    n, m = x.shape
    if block_rows <= 0:  # the interpreter pays per program: fewer, larger tiles there
        block_rows = 512 if x.device.type == "cpu" else 32
    x = x.contiguous()
    dev = x.device
    wide = x.dtype == torch.float64
    key_bits = 64 if wide else 32
    bf16 = x.dtype == torch.bfloat16
    xin = x.view(torch.int16) if bf16 else x  # a view, read as bit patterns
    groups = groups.to(device=dev, dtype=torch.int32).contiguous()
    count = torch.bincount(groups.to(torch.int64), minlength=n_groups)[:n_groups]
    q = torch.tensor(list(levels), dtype=torch.float64, device=dev)
    pos = (count.to(torch.float64).clamp(min=1) - 1)[None, :] * q[:, None]  # as numpy computes it
    ranks = torch.stack([torch.floor(pos), torch.ceil(pos)]).to(torch.int64)  # (2, Q, G)
    T = 2 * len(levels)
    want = ranks.reshape(T, n_groups, 1).expand(T, n_groups, m).contiguous()  # remaining rank
    prefix = torch.zeros(T, n_groups, m, dtype=torch.int64, device=dev)
    grid = (triton.cdiv(max(n, 1), block_rows), triton.cdiv(m, block_cols))
    for shift in range(key_bits - RADIX_BITS, -1, -RADIX_BITS):
        hist = torch.zeros(T, n_groups, m, BINS, dtype=torch.int32, device=dev)
        if n and T:
            # bits above this digit; a mask, not a shift, so the sign bit of 64-bit keys is no trap
            high_mask = 0 if shift + RADIX_BITS >= 64 else -(1 << (shift + RADIX_BITS))
            _digit_histogram_kernel[grid](xin, groups, prefix, hist, n, m, n_groups, T, shift, high_mask,
                                          WIDE=wide, BF16=bf16, BLOCK_R=block_rows,
                                          BLOCK_C=block_cols)
        cum = hist.to(torch.int64).cumsum(-1)
        digit = (cum <= want[..., None]).sum(-1).clamp(max=BINS - 1)  # first bin passing the rank
        below = torch.where(digit > 0, cum.gather(-1, (digit - 1).clamp(min=0)[..., None])[..., 0], 0)
        want = want - below
        prefix = prefix | (digit << shift)
    values = _key_to_float(prefix, wide)
    empty = (count == 0)[None, :, None]
    values = torch.where(empty, torch.full_like(values, float("nan")), values)
    lower, higher = values.reshape(2, len(levels), n_groups, m)
    return lower, higher


def _key_to_float(key: torch.Tensor, wide: bool) -> torch.Tensor:
    """Inverse of the kernel's key map, as float64."""
    if wide:
        k = key ^ torch.iinfo(torch.int64).min
        bits = k ^ ((k >> 63) & 0x7FFFFFFFFFFFFFFF)
        return bits.view(torch.float64)
    k = (key - 2147483648).to(torch.int32)
    bits = k ^ ((k >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32).to(torch.float64)
