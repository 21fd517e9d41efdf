"""Pure-torch reference implementations: one per kernel, written for clarity.

Every native kernel (C++ in ``csrc/``, Triton in ``kernels/``) is tested against the
function of the same name here, and ``backend="torch"`` runs these.
"""
from __future__ import annotations

from typing import Tuple

import torch


def grouped_moments(x: torch.Tensor, groups: torch.Tensor, n_groups: int
                    ) -> Tuple[torch.Tensor, ...]:
    """Per (group, column): count, mean, M2 = sum of squared deviations, min, max.

    Two passes in float64 (mean first, then deviations). Empty groups give NaN
    moments and count 0.
    """
    x = x.to(torch.float64)
    groups = groups.to(device=x.device, dtype=torch.int64)
    m = x.shape[1]
    count = torch.bincount(groups, minlength=n_groups)[:n_groups]
    total = torch.zeros(n_groups, m, dtype=torch.float64, device=x.device).index_add_(0, groups, x)
    n = count.to(torch.float64)[:, None]
    mean = total / n  # 0/0 -> NaN for empty groups, as intended
    dev = x - mean[groups]
    m2 = torch.zeros_like(total).index_add_(0, groups, dev * dev)
    m2 = torch.where(count[:, None] > 0, m2, torch.full_like(m2, float("nan")))
    idx = groups[:, None].expand(-1, m)
    lo = torch.full_like(total, float("inf")).scatter_reduce(0, idx, x, "amin", include_self=True)
    hi = torch.full_like(total, float("-inf")).scatter_reduce(0, idx, x, "amax", include_self=True)
    empty = (count == 0)[:, None]
    lo = torch.where(empty, torch.full_like(lo, float("nan")), lo)
    hi = torch.where(empty, torch.full_like(hi, float("nan")), hi)
    return count, mean, m2, lo, hi
