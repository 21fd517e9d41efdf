"""``planted``: synthetic embeddings with known spurious neurons, of any size.

Two classes y and a binary spurious attribute a, correlated with y at ``corr`` in
train (and ``val_corr`` in val; test is balanced). Groups are ``g = 2*y + a``.
Neurons are sparse and non-negative like post-ReLU activations (``relu`` of a Gaussian
whose mean is negative when the neuron is "off", so its median there is exactly 0):

* core: half fire for class 0, half for class 1, weakly (on-mean ``core_strength``);
* spurious: half fire when a = 1, half when a = 0, strongly (on-mean
  ``spurious_strength``), so an ERM head leans on them and fails where a != y;
* noise: fire rarely, independently of both.

``spurious_neurons`` in the returned dict is the ground truth for identification.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ._spurious import attribute_for
from .embedding_set import EmbeddingSet


_OFF = -1.0  # mean of an "off" neuron before the ReLU: P(active) = 16 %


def _sparse(rng, on, n_cols: int, on_mean: float, scale: float = 1.0) -> np.ndarray:
    """relu(N(on_mean or _OFF, scale)) per row, by the row's boolean ``on``."""
    mean = np.where(on[:, None], on_mean, _OFF).astype(np.float32)
    return np.maximum(mean + scale * rng.standard_normal((on.size, n_cols), dtype=np.float32), 0.0)


def _draw(rng, n: int, corr: float, n_core: int, n_spur: int, n_noise: int,
          core_strength: float, spurious_strength: float, dtype) -> tuple:
    y = rng.integers(0, 2, size=n)
    a = attribute_for(rng, y, corr)
    hc, hs = n_core // 2, n_spur // 2
    parts = [_sparse(rng, y == 0, hc, core_strength), _sparse(rng, y == 1, n_core - hc, core_strength),
             _sparse(rng, a == 1, hs, spurious_strength, 0.5), _sparse(rng, a == 0, n_spur - hs, spurious_strength, 0.5),
             _sparse(rng, np.zeros(n, bool), n_noise, 0.0)]
    x = np.concatenate(parts, axis=1)
    return x.astype(dtype, copy=False), y.astype(np.int64), (2 * y + a).astype(np.int64)


def planted(n_train: int = 20000, n_val: int = 5000, n_test: int = 5000, n_features: int = 64,
            n_core: int = 16, n_spurious: int = 8, corr: float = 0.95, val_corr: Optional[float] = None,
            core_strength: float = -0.3, spurious_strength: float = 1.5, dtype=np.float32,
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


def planted_memmap(path: str, n_rows: int, n_features: int = 1024, n_core: int = 32, n_spurious: int = 16,
                   corr: float = 0.95, core_strength: float = -0.3, spurious_strength: float = 1.5,
                   dtype=np.float16, seed: int = 0, chunk_rows: int = 65536, progress: bool = False) -> Dict:
    """One biased ``planted`` split written straight to an ``.npy`` memmap, chunk by chunk.

    For scale tests (10^6-10^8 rows): memory use is one chunk, the file appears under
    ``path`` only when complete (written as ``path + '.partial'``, then renamed), and an
    existing complete file with the same parameters is reused. Returns ``{'set':
    EmbeddingSet over the read-only memmap, 'spurious_neurons': ...}``.
    """
    import json
    import os

    from tqdm import tqdm

    if n_core + n_spurious > n_features:
        raise ValueError(f"n_features: {n_features} < n_core + n_spurious = {n_core + n_spurious}")
    params = dict(n_rows=n_rows, n_features=n_features, n_core=n_core, n_spurious=n_spurious, corr=corr,
                  core_strength=core_strength, spurious_strength=spurious_strength,
                  dtype=np.dtype(dtype).name, seed=seed, chunk_rows=chunk_rows)
    side = path + ".json"
    labels_path = path + ".labels.npy"
    fresh = not (os.path.exists(path) and os.path.exists(side) and os.path.exists(labels_path))
    if not fresh:
        with open(side) as f:
            fresh = json.load(f) != params
    if fresh:
        tmp = path + ".partial"
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_rows, n_features))
        labels = np.empty((2, n_rows), dtype=np.int64)
        children = np.random.SeedSequence(seed).spawn((n_rows + chunk_rows - 1) // chunk_rows)
        for k, start in enumerate(tqdm(range(0, n_rows, chunk_rows), disable=not progress, desc="planted")):
            n = min(chunk_rows, n_rows - start)
            x, y, g = _draw(np.random.default_rng(children[k]), n, corr, n_core, n_spurious,
                            n_features - n_core - n_spurious, core_strength, spurious_strength, np.float32)
            mm[start:start + n] = x.astype(dtype)
            labels[0, start:start + n], labels[1, start:start + n] = y, g
        mm.flush()
        del mm
        np.save(labels_path + ".tmp.npy", labels)
        os.replace(labels_path + ".tmp.npy", labels_path)
        with open(side + ".tmp", "w") as f:
            json.dump(params, f)
        os.replace(tmp, path)
        os.replace(side + ".tmp", side)
    feats = np.load(path, mmap_mode="r")
    labels = np.load(labels_path)
    s = EmbeddingSet(feats, labels[0], groups=labels[1], name="planted", split="train", n_classes=2,
                     n_groups=4, check_finite=False)
    return {"set": s, "spurious_neurons": np.arange(n_core, n_core + n_spurious),
            "group_names": ["y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"]}
