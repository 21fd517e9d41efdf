"""Last-layer (linear head) training on fixed embeddings.

Balancing is done with per-sample loss weights (``1 / size of the sample's class or
group``), which is what balanced sampling gives in expectation, without the noise.
Features are standardised for conditioning and the standardisation is folded into the
returned ``nn.Linear`` so that it takes raw embeddings.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from .. import _arrays
from ..validation import check_number

__all__ = ["train_linear_head", "balance_weights"]


def balance_weights(ids: np.ndarray, n: Optional[int] = None, process_group=None) -> np.ndarray:
    """Per-sample weights that give every id the same total weight (mean weight 1).
    ``process_group``: each rank passes its rows' ids (and the same ``n``); counts and
    totals are over all ranks, so the weights are those of the union."""
    count = np.bincount(ids, minlength=n or 0).astype(np.float64)
    size = float(ids.size)
    if process_group is not None:
        from ..distributed import all_reduce

        both = all_reduce(np.append(count, size), "sum", process_group)  # one round trip
        count, size = both[:-1], float(both[-1])
    present = count > 0
    w = np.zeros_like(count)
    w[present] = 1.0 / count[present]
    sw = w[ids]
    total = float(sw.sum())
    if process_group is not None:
        total = float(all_reduce(np.array([total]), "sum", process_group)[0])
    return sw * (size / total)


def train_linear_head(features, labels, n_classes: int, sample_weight: Optional[np.ndarray] = None,
                      l2: float = 1e-4, optimizer: str = "lbfgs", epochs: int = 100,
                      batch_size: int = 1024, lr: float = 1e-2, standardize: bool = True,
                      feature_mask: Optional[np.ndarray] = None, seed: int = 0,
                      init: Optional[nn.Linear] = None, anchor: Optional[nn.Linear] = None,
                      process_group=None) -> nn.Linear:
    """Fit ``logits = (W * mask) x + b`` by weighted cross-entropy + an L2 penalty.

    ``optimizer="lbfgs"`` runs full-batch L-BFGS for at most ``epochs`` iterations
    (deterministic, best for up to ~10^6 x 10^3 in memory); ``"adam"`` runs
    ``epochs`` epochs of minibatches of ``batch_size``. An ``np.memmap`` is streamed:
    standardised from one native statistics pass, each L-BFGS evaluation summed over
    64 MB row chunks, so memory stays at a chunk plus the head. ``feature_mask`` is an input
    mask (M,) — the neuron is zeroed for every class — or a per-class weight mask
    (C, M) zeroing ``W[c, i]``; masked weights are exactly 0 in the returned head.
    The penalty is ``l2 * ||W - W_anchor||^2`` in standardised units (``anchor``
    defaults to zero); ``init`` starts the optimiser from an existing head.

    ``process_group`` (a ``torch.distributed`` group; L-BFGS only): each rank passes its
    own rows, weights and the same other arguments; the standardisation comes from
    statistics of all ranks' rows and every evaluation's loss and gradient are summed
    over the ranks by ``all_reduce``, so each rank runs the same L-BFGS iterations as one
    process on the union and returns the same head.
    """
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer: expected 'lbfgs' or 'adam', got {optimizer!r}")
    l2 = check_number(l2, "l2", 0.0)
    epochs = check_number(epochs, "epochs", 1, integer=True)
    if optimizer == "adam":
        lr = check_number(lr, "lr", 0.0, low_open=True)
        batch_size = check_number(batch_size, "batch_size", 1, integer=True)
    if process_group is not None and optimizer != "lbfgs":
        raise ValueError("optimizer: across processes only 'lbfgs' (full batch) is supported, got "
                         f"{optimizer!r}")
    # a memmap is read in row chunks at every evaluation, never converted whole (a float32
    # copy of 2,000,000 x 1,024 is 8 GB); in-memory input is converted once, as before.
    # Across processes every evaluation is summed chunk by chunk and over the ranks.
    streamed = isinstance(features, np.memmap) or process_group is not None

    def rows():  # checks of this rank's rows
        y = torch.from_numpy(_arrays.to_numpy(labels).astype(np.int64))
        if y.numel() and int(y.max()) >= n_classes:
            raise ValueError(f"labels: found class {int(y.max())} >= n_classes={n_classes}")
        x = features if streamed else _arrays.as_tensor(features).to(torch.float32)
        n, m = x.shape
        w = torch.ones(n, dtype=torch.float32) if sample_weight is None else \
            torch.as_tensor(np.asarray(sample_weight), dtype=torch.float32)
        if w.shape != (n,):
            raise ValueError(f"sample_weight: expected shape ({n},), got {tuple(w.shape)}")
        keep = torch.ones(m) if feature_mask is None else \
            torch.as_tensor(np.asarray(feature_mask), dtype=torch.float32)
        if keep.shape not in ((m,), (n_classes, m)):
            raise ValueError(f"feature_mask: expected shape ({m},) or ({n_classes}, {m}), got {tuple(keep.shape)}")
        return y, x, w, keep

    if process_group is None:
        y, x, w, keep = rows()
        n_total = y.numel()
    else:  # one rank's bad rows raise on every rank, before the first reduction could leave others waiting
        from ..distributed import all_reduce, checked, sum_grads

        y, x, w, keep = checked(process_group, rows)
        n_total = int(all_reduce(np.array([y.numel()], np.int64), "sum", process_group)[0])
    if n_total == 0:
        raise ValueError("labels: no training samples")
    n, m = x.shape
    keep = keep.expand(n_classes, m)
    if standardize and streamed:  # one native pass over the file (float64 sums)
        from ..stats import neuron_stats

        st = neuron_stats(x, groups=np.zeros(n, np.int64), n_groups=1, quantiles=(), process_group=process_group)
        mu = torch.from_numpy(st.mean.reshape(m)).float()
        sd = torch.from_numpy(st.std.reshape(m)).float().clamp_min(1e-6) if n_total > 1 else torch.ones(m)
    elif standardize:
        mu = x.mean(0)
        sd = x.std(0).clamp_min(1e-6) if n > 1 else torch.ones(m)
    else:
        mu, sd = torch.zeros(m), torch.ones(m)
    if not (torch.isfinite(mu).all() and torch.isfinite(sd).all()):
        big = float(np.abs(x).max()) if streamed else float(x.abs().max())
        raise ValueError(f"features: values up to {big:.3g} overflow float32 arithmetic "
                         "(or are NaN / inf); rescale them before training a head")
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(m, n_classes)

    def standardised(head: nn.Linear):
        hw, hb = head.weight.detach().float(), head.bias.detach().float()
        return hw * sd, hb + hw @ mu

    with torch.no_grad():
        if init is not None:
            iw, ib = standardised(init)
            lin.weight.copy_(iw * keep)
            lin.bias.copy_(ib)
        else:
            lin.weight.copy_(torch.randn(n_classes, m, generator=gen) * 0.01)
            lin.bias.zero_()
    center = standardised(anchor)[0] * keep if anchor is not None else torch.zeros(n_classes, m)

    def loss_on(zb, yb, wb):  # zb: standardised rows
        logits = zb @ (lin.weight * keep).T + lin.bias
        ce = nn.functional.cross_entropy(logits, yb, reduction="none")
        return (ce * wb).sum() / wb.sum() + l2 * ((lin.weight * keep - center) ** 2).sum()

    if optimizer == "lbfgs" and streamed:
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=epochs, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)
        chunk = _arrays.default_chunk_rows(m, x.element_size() if _arrays.is_tensor(x) else x.dtype.itemsize)
        w_total = w.sum()
        if process_group is not None:
            w_total = torch.from_numpy(all_reduce(w_total.double().numpy().reshape(1), "sum", process_group))[0].float()

        def closure():  # the same loss, summed chunk by chunk (gradients accumulate)
            opt.zero_grad()
            total = torch.zeros(())
            for sl in _arrays.row_chunks(n, chunk):
                # np.array copies: a map is read-only
                xb = x[sl].float() if _arrays.is_tensor(x) else torch.from_numpy(np.array(x[sl], dtype=np.float32))
                zb = (xb - mu) / sd
                logits = zb @ (lin.weight * keep).T + lin.bias
                part = (nn.functional.cross_entropy(logits, y[sl], reduction="none") * w[sl]).sum() / w_total
                part.backward()
                total += part.detach()
            if process_group is not None:  # the union's loss and gradient, on every rank
                total = torch.tensor(sum_grads(lin.parameters(), float(total), process_group), dtype=torch.float32)
            pen = l2 * ((lin.weight * keep - center) ** 2).sum()
            pen.backward()
            return total + pen.detach()
        opt.step(closure)
    elif optimizer == "lbfgs":
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=epochs, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)
        # Standardised once, not at every evaluation: each made two n x m temporaries and
        # took three quarters of the fit (measured, 50,000 x 1,024: 122 ms an evaluation).
        z = (x - mu) / sd

        def closure():
            opt.zero_grad()
            loss = loss_on(z, y, w)
            loss.backward()
            return loss
        opt.step(closure)
        del z
    else:
        opt = torch.optim.Adam(lin.parameters(), lr=lr)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                xb = torch.from_numpy(np.asarray(x[idx.numpy()], dtype=np.float32)) if streamed else x[idx]
                opt.zero_grad()
                loss_on((xb - mu) / sd, y[idx], w[idx]).backward()
                opt.step()
    # fold: ((x - mu) / sd) @ (W * keep).T + b  ==  x @ W'.T + (b - W' mu),  W' = W * keep / sd
    head = nn.Linear(m, n_classes)
    with torch.no_grad():
        wf = lin.weight * keep / sd
        head.weight.copy_(wf)
        head.bias.copy_(lin.bias - wf @ mu)
    if not (torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()):
        raise FloatingPointError("train_linear_head: the fit diverged (non-finite weights); check the features' "
                                 "scale, sample_weight and l2")
    return head
