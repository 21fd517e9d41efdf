"""Small CPU backbones for the built-in image benchmarks, and their on-disk cache.

The protocol (see the design notes, "Backbones: pretrain, then ERM"): a backbone is
(1) pretrained on a broader task whose labels carry no shortcut, then (2) fine-tuned
as a whole by ERM on the biased task. Its penultimate activations (post-ReLU) are the
embeddings the post-hoc methods work on; its own last layer is the ERM head.

Everything here runs on the CPU in seconds to a few minutes, is seeded (same seed and
thread count -> identical bytes), and is cached under :func:`cache_root`.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["SmallCNN", "train_classifier", "extract_embeddings", "cache_root", "cache_key",
           "load_cache", "save_cache"]

#: Bump when the training or data-generation code changes, so old caches are not reused.
CODE_VERSION = "backbones-1"

# make_batch(index: np.ndarray) -> (inputs tensor, labels tensor)
BatchFn = Callable[[np.ndarray], Tuple[torch.Tensor, torch.Tensor]]


class SmallCNN(nn.Module):
    """Two conv blocks, a ``embed_dim``-unit ReLU penultimate layer and a linear head.

    ``embed(x)`` gives the (B, embed_dim) penultimate activations, ``head`` is an
    :class:`torch.nn.Linear` on them, ``forward(x) = head(embed(x))``. Input is
    (B, in_channels, 28, 28).
    """

    def __init__(self, n_classes: int, in_channels: int = 3, width: Tuple[int, int] = (16, 32),
                 embed_dim: int = 64, image_size: int = 28):
        super().__init__()
        c1, c2 = width
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten())
        side = image_size // 4
        self.fc = nn.Sequential(nn.Linear(c2 * side * side, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, n_classes)
        self.embed_dim = embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def reset_head(self, n_classes: int) -> None:
        """Replace the head by a fresh one with ``n_classes`` outputs (uses the torch RNG)."""
        self.head = nn.Linear(self.embed_dim, n_classes)


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
def extract_embeddings(model: SmallCNN, make_batch: BatchFn, n: int,
                       batch_size: int = 1024) -> np.ndarray:
    """(n, embed_dim) float32 penultimate activations, rows in order 0..n-1."""
    model.eval()
    out = np.empty((n, model.embed_dim), dtype=np.float32)
    for s in range(0, n, batch_size):
        idx = np.arange(s, min(s + batch_size, n))
        x, _ = make_batch(idx)
        out[s:s + idx.size] = model.embed(x).numpy()
    return out


# -- cache ---------------------------------------------------------------------
def cache_root(cache_dir: Optional[str] = None) -> str:
    """``cache_dir`` if given, else ``$PYDEBIAS_CACHE``, else ``~/.cache/pydebias``."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    env = os.environ.get("PYDEBIAS_CACHE")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "pydebias")


def cache_key(name: str, params: Dict, seed: int, version: str = CODE_VERSION) -> str:
    """sha256 of (data set name, its parameters, seed, code version), as hex."""
    blob = json.dumps({"name": name, "params": params, "seed": int(seed), "version": version},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_cache(path: str) -> Optional[Dict]:
    """The cached dict at ``path``, or None when absent or unreadable (then it is rebuilt)."""
    if not os.path.exists(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: ignore it, it will be overwritten
        return None


def save_cache(path: str, obj: Dict) -> None:
    """Write ``obj`` (tensors, numbers, strings, dicts/lists of them) atomically."""
    import io

    from ..results import write_atomic

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())
