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

__all__ = ["train_linear_head", "balance_weights"]


def balance_weights(ids: np.ndarray, n: Optional[int] = None) -> np.ndarray:
    """Per-sample weights that give every id the same total weight (mean weight 1)."""
    count = np.bincount(ids, minlength=n or 0).astype(np.float64)
    present = count > 0
    w = np.zeros_like(count)
    w[present] = 1.0 / count[present]
    sw = w[ids]
    return sw * (ids.size / sw.sum())


def train_linear_head(features, labels, n_classes: int, sample_weight: Optional[np.ndarray] = None,
                      l2: float = 1e-4, optimizer: str = "lbfgs", epochs: int = 100,
                      batch_size: int = 1024, lr: float = 1e-2, standardize: bool = True,
                      feature_mask: Optional[np.ndarray] = None, seed: int = 0,
                      init: Optional[nn.Linear] = None) -> nn.Linear:
    """Fit ``logits = W x + b`` by weighted cross-entropy + ``l2 * ||W||^2``.

    ``optimizer="lbfgs"`` runs full-batch L-BFGS for at most ``epochs`` iterations
    (deterministic, best for up to ~10^6 x 10^3 in memory); ``"adam"`` runs
    ``epochs`` epochs of minibatches of ``batch_size``. ``feature_mask`` (M,) zeroes
    input neurons during training and in the returned head (their weights are 0).
    """
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer: expected 'lbfgs' or 'adam', got {optimizer!r}")
    if l2 < 0:
        raise ValueError(f"l2: expected >= 0, got {l2}")
    y = torch.from_numpy(_arrays.to_numpy(labels).astype(np.int64))
    if y.numel() == 0:
        raise ValueError("labels: no training samples")
    if int(y.max()) >= n_classes:
        raise ValueError(f"labels: found class {int(y.max())} >= n_classes={n_classes}")
    x = _arrays.as_tensor(features).to(torch.float32)
    n, m = x.shape
    w = torch.ones(n, dtype=torch.float32) if sample_weight is None else \
        torch.as_tensor(np.asarray(sample_weight), dtype=torch.float32)
    if w.shape != (n,):
        raise ValueError(f"sample_weight: expected shape ({n},), got {tuple(w.shape)}")
    keep = torch.ones(m) if feature_mask is None else torch.as_tensor(np.asarray(feature_mask), dtype=torch.float32)
    if keep.shape != (m,):
        raise ValueError(f"feature_mask: expected shape ({m},), got {tuple(keep.shape)}")
    if standardize:
        mu = x.mean(0)
        sd = x.std(0).clamp_min(1e-6)
    else:
        mu, sd = torch.zeros(m), torch.ones(m)
    z_scale = keep / sd  # a masked neuron contributes 0 whatever its value
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(m, n_classes)
    with torch.no_grad():
        if init is not None:  # start from an existing head expressed in standardised units
            lin.weight.copy_(init.weight.detach().float() * sd)
            lin.bias.copy_(init.bias.detach().float() + init.weight.detach().float() @ mu)
        else:
            lin.weight.copy_(torch.randn(n_classes, m, generator=gen) * 0.01)
            lin.bias.zero_()

    def loss_on(xb, yb, wb):
        logits = lin((xb - mu) * z_scale)
        ce = nn.functional.cross_entropy(logits, yb, reduction="none")
        return (ce * wb).sum() / wb.sum() + l2 * (lin.weight ** 2).sum()

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=epochs, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

        def closure():
            opt.zero_grad()
            loss = loss_on(x, y, w)
            loss.backward()
            return loss
        opt.step(closure)
    else:
        opt = torch.optim.Adam(lin.parameters(), lr=lr)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                opt.zero_grad()
                loss_on(x[idx], y[idx], w[idx]).backward()
                opt.step()
    # fold: W (x - mu) * keep / sd + b  ==  (W * keep / sd) x + (b - (W * keep / sd) mu)
    head = nn.Linear(m, n_classes)
    with torch.no_grad():
        wf = lin.weight * z_scale
        head.weight.copy_(wf)
        head.bias.copy_(lin.bias - wf @ mu)
    return head
