"""Pure-torch reference implementations: one per kernel, written for clarity.

Every native kernel (C++ in ``csrc/``, Triton in ``kernels/``) is tested against the
function of the same name here, and ``backend="torch"`` runs these.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


def grouped_moments(x: torch.Tensor, groups: torch.Tensor, n_groups: int
                    ) -> Tuple[torch.Tensor, ...]:
    """Per (group, column): count, mean, M2 = sum of squared deviations, min, max.

    Two passes in float64 on each group's values minus that group's first row (exact
    for values near each other, so neither pass cancels when |mean| >> std). Empty
    groups give NaN moments and count 0.
    """
    x = x.to(torch.float64)
    groups = groups.to(device=x.device, dtype=torch.int64)
    n, m = x.shape
    count = torch.bincount(groups, minlength=n_groups)[:n_groups]
    rows = torch.arange(n, device=x.device)
    first = torch.full((n_groups,), n, dtype=torch.int64, device=x.device).scatter_reduce(
        0, groups, rows, "amin", include_self=True)
    shift = torch.zeros(n_groups, m, dtype=torch.float64, device=x.device)
    have = first < n
    if have.any():
        picked = x[first[have]]
        shift[have] = torch.where(torch.isfinite(picked), picked, torch.zeros_like(picked))
    d = x - shift[groups]
    total = torch.zeros(n_groups, m, dtype=torch.float64, device=x.device).index_add_(0, groups, d)
    nf = count.to(torch.float64)[:, None]
    dmean = total / nf  # 0/0 -> NaN for empty groups, as intended
    mean = shift + dmean
    dev = d - dmean[groups]
    m2 = torch.zeros_like(total).index_add_(0, groups, dev * dev)
    m2 = torch.where(count[:, None] > 0, m2, torch.full_like(m2, float("nan")))
    idx = groups[:, None].expand(-1, m)
    lo = torch.full_like(total, float("inf")).scatter_reduce(0, idx, x, "amin", include_self=True)
    hi = torch.full_like(total, float("-inf")).scatter_reduce(0, idx, x, "amax", include_self=True)
    empty = (count == 0)[:, None]
    lo = torch.where(empty, torch.full_like(lo, float("nan")), lo)
    hi = torch.where(empty, torch.full_like(hi, float("nan")), hi)
    return count, mean, m2, lo, hi


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The promoted dtype of the inputs, at least float32 (half types accumulate in float32)."""
    dt = dtypes[0]
    for d in dtypes[1:]:
        dt = torch.promote_types(dt, d)
    return torch.float32 if dt in (torch.float16, torch.bfloat16) else dt


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias, mask) -> torch.Tensor:
    """Logits of a linear head on masked inputs, literally ``(x * m) @ W.T + b``.

    ``x`` (N, M), ``weight`` (C, M), ``bias`` (C,) or None; ``mask`` is None, an
    input-neuron mask (M,) or per-class masks (C, M) (class ``c`` sees ``x * m[c]``,
    which is the same as zeroing ``W[c, i]``). Computed in the promoted dtype of ``x``
    and ``weight`` (float32 for half types) and returned in that dtype.
    """
    ct = _compute_dtype(x.dtype, weight.dtype)
    x = x.to(ct)
    w = weight.to(device=x.device, dtype=ct)
    if mask is None:
        out = x @ w.T
    else:
        m = mask.to(device=x.device, dtype=ct)
        if m.dim() == 1:
            out = (x * m) @ w.T
        else:  # one masked copy of x per class
            out = torch.stack([(x * m[c]) @ w[c] for c in range(w.shape[0])], dim=1)
    if bias is not None:
        out = out + bias.to(device=x.device, dtype=ct)
    return out


def mask_sweep(x: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, n_groups: int,
               weight: torch.Tensor, bias, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Correct predictions per (mask, group) and per (mask, class): a python loop over masks.

    ``masks`` (K, M) input masks or (K, C, M) per-class masks; predictions are
    ``torch.argmax`` of :func:`masked_linear` (ties go to the first class). Returns
    int64 ``(group_correct (K, G), class_correct (K, C))``.
    """
    labels = labels.to(device=x.device, dtype=torch.int64)
    groups = groups.to(device=x.device, dtype=torch.int64)
    n_classes = weight.shape[0]
    group_correct, class_correct = [], []
    for k in range(masks.shape[0]):
        pred = masked_linear(x, weight, bias, masks[k]).argmax(1)
        ok = (pred == labels).to(torch.float64)  # exact for counts below 2**53
        group_correct.append(torch.bincount(groups, weights=ok, minlength=n_groups)[:n_groups])
        class_correct.append(torch.bincount(labels, weights=ok, minlength=n_classes)[:n_classes])
    return (torch.stack(group_correct).round().to(torch.int64).cpu(),
            torch.stack(class_correct).round().to(torch.int64).cpu())


def grouped_quantiles(x: torch.Tensor, groups: torch.Tensor, n_groups: int, levels: Sequence[float]
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per (level, group, column): the order statistics of 0-based rank floor((n-1) q)
    ("lower") and ceil((n-1) q) ("higher") among the group's n rows, float64, shape
    (Q, G, M) each; NaN for empty groups. Sorts each group's rows (the kernels do not).
    """
    x = x.to(torch.float64)  # exact for every input dtype
    groups = groups.to(device=x.device, dtype=torch.int64)
    m = x.shape[1]
    q = torch.tensor(list(levels), dtype=torch.float64)
    lower = torch.full((len(levels), n_groups, m), float("nan"), dtype=torch.float64, device=x.device)
    higher = lower.clone()
    for k in range(n_groups):
        rows = x[groups == k]
        n = rows.shape[0]
        if n == 0:
            continue
        ordered = rows.sort(dim=0).values
        pos = (n - 1) * q  # float64, as numpy computes the virtual index
        lower[:, k] = ordered[torch.floor(pos).to(torch.int64)]
        higher[:, k] = ordered[torch.ceil(pos).to(torch.int64)]
    return lower, higher
