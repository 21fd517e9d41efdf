"""``planted``: synthetic embeddings with known spurious neurons, of any size.

Two classes y and a binary spurious attribute a, correlated with y at ``corr`` in
train (and ``val_corr`` in val; test is balanced). Groups are ``g = 2*y + a``.
Neurons come in three kinds, all non-negative like post-ReLU activations:

* core: fire with the class, weakly (``core_strength``), present in every group;
* spurious: half fire when a = 1, half when a = 0, strongly (``spurious_strength``),
  so an ERM head leans on them and fails on the groups where a != y;
* noise: fire independently of both.

``spurious_neurons`` in the returned dict is the ground truth for identification.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .embedding_set import EmbeddingSet


def _draw(rng, n: int, corr: float, n_core: int, n_spur: int, n_noise: int,
          core_strength: float, spurious_strength: float, dtype) -> tuple:
    y = rng.integers(0, 2, size=n)
    a = np.where(rng.random(n) < corr, y, 1 - y)
    sign_c = (2 * y - 1)[:, None].astype(np.float32)
    core = rng.standard_normal((n, n_core), dtype=np.float32) + 0.5 * core_strength * sign_c + 1.0
    half = n_spur // 2
    spur = rng.standard_normal((n, n_spur), dtype=np.float32) * 0.5 + 0.5
    spur[:, :half] += spurious_strength * a[:, None]
    spur[:, half:] += spurious_strength * (1 - a)[:, None]
    noise = rng.standard_normal((n, n_noise), dtype=np.float32) + 0.5
    x = np.maximum(np.concatenate([core, spur, noise], axis=1), 0.0)
    return x.astype(dtype, copy=False), y.astype(np.int64), (2 * y + a).astype(np.int64)


def planted(n_train: int = 20000, n_val: int = 5000, n_test: int = 5000, n_features: int = 64,
            n_core: int = 16, n_spurious: int = 8, corr: float = 0.95, val_corr: Optional[float] = None,
            core_strength: float = 0.5, spurious_strength: float = 1.5, dtype=np.float32,
            seed: int = 0) -> Dict:
    """Train/val/test :class:`EmbeddingSet` s with planted spurious neurons.

    Neurons ``[n_core, n_core + n_spurious)`` are spurious (returned as
    ``spurious_neurons``); val is biased like train unless ``val_corr`` is given
    (0.5 = balanced).
    """
    if n_core + n_spurious > n_features:
        raise ValueError(f"n_features: {n_features} < n_core + n_spurious = {n_core + n_spurious}")
    if n_spurious < 2 or n_spurious % 2:
        raise ValueError("n_spurious: expected an even number >= 2 (half per attribute value)")
    if not 0.5 <= corr <= 1.0:
        raise ValueError(f"corr: expected a value in [0.5, 1], got {corr}")
    val_corr = corr if val_corr is None else val_corr
    n_noise = n_features - n_core - n_spurious
    out = {}
    ss = np.random.SeedSequence(seed)
    for (split, n, c), child in zip([("train", n_train, corr), ("val", n_val, val_corr),
                                     ("test", n_test, 0.5)], ss.spawn(3)):
        x, y, g = _draw(np.random.default_rng(child), n, c, n_core, n_spurious, n_noise,
                        core_strength, spurious_strength, dtype)
        out[split] = EmbeddingSet(x, y, groups=g, name="planted", split=split, n_classes=2, n_groups=4)
    out["spurious_neurons"] = np.arange(n_core, n_core + n_spurious)
    out["group_names"] = ["y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"]
    return out
