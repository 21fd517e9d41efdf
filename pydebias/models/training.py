"""Seeded CPU training of the small backbones and their embeddings, in row order.

Same seed and thread count give identical bytes on one machine (torch's CPU kernels sum
in another order on another instruction set, so another CPU trains other weights).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import torch
from torch import nn

from .protocol import EncoderHead
from .small import TabularMLP

# make_batch(index: np.ndarray) -> (inputs tensor, labels tensor)
BatchFn = Callable[[np.ndarray], Tuple[torch.Tensor, torch.Tensor]]


def train_classifier(model: nn.Module, make_batch: BatchFn, n: int, epochs: int,
                     rng: np.random.Generator, lr: float = 1e-3, batch_size: int = 128,
                     weight_decay: float = 0.0) -> Dict:
    """Cross-entropy training with Adam; rows are shuffled by ``rng`` each epoch.

    Returns a small log: the mean loss and training accuracy of each epoch.
    """
    if n <= 0 or epochs < 0:
        raise ValueError(f"n, epochs: expected n > 0 and epochs >= 0, got {n}, {epochs}")
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    log = {"loss": [], "accuracy": []}
    model.train()
    for _ in range(epochs):
        order = rng.permutation(n)
        tot_loss, tot_ok = 0.0, 0
        for s in range(0, n, batch_size):
            x, y = make_batch(order[s:s + batch_size])
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += float(loss.detach()) * y.shape[0]
            tot_ok += int((out.argmax(1) == y).sum())
        log["loss"].append(tot_loss / n)
        log["accuracy"].append(tot_ok / n)
    model.eval()
    return log


@torch.no_grad()
def embed_batches(model: EncoderHead, make_batch: BatchFn, n: int, batch_size: int = 1024) -> np.ndarray:
    """(n, embed_dim) float32 penultimate activations, rows in order 0..n-1."""
    model.eval()
    out = np.empty((n, model.embed_dim), dtype=np.float32)
    for s in range(0, n, batch_size):
        idx = np.arange(s, min(s + batch_size, n))
        x, _ = make_batch(idx)
        out[s:s + idx.size] = model.embed(x).numpy()
    return out


def train_tabular_mlp(x: np.ndarray, y: np.ndarray, hidden: int, embed_dim: int, epochs: int, lr: float,
                      batch_size: int, ss_torch, ss_train) -> Tuple[TabularMLP, Dict]:
    """A :class:`TabularMLP` trained by ERM on rows ``x``, labels ``y`` (two classes),
    seeded by the ``SeedSequence``s ``ss_torch`` (initial weights) and ``ss_train`` (batch
    order), on one thread (tiny matrices: faster, and the same bytes whatever the
    machine's thread setting)."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def batch(i):
        i = torch.from_numpy(np.asarray(i, dtype=np.int64))
        return xt[i], yt[i]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ss_torch.generate_state(1, dtype=np.uint32)[0]))
            model = TabularMLP(x.shape[1], 2, hidden, embed_dim)
            log = train_classifier(model, batch, x.shape[0], epochs, np.random.default_rng(ss_train), lr=lr,
                                   batch_size=batch_size)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, log
