"""Diagnostics that read group labels: why a neuron-level method can or cannot work.

Nothing here is a debiasing method. These functions explain a benchmark's embeddings
with the attribute the methods are not allowed to see, so a table can say *why* a
method fell short (e.g. "the shortcut is spread over 24 of 44 live neurons").
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import _arrays
from ..validation import check_features

__all__ = ["attribute_of_groups", "attribute_association", "live_neurons", "shortcut_localisation"]


def attribute_of_groups(eval_set) -> np.ndarray:
    """The binary spurious attribute ``a`` of every row of a set whose groups are
    ``g = 2*y + a`` (every built-in benchmark's convention)."""
    if eval_set.groups is None:
        raise ValueError("eval_set: has no group labels; the attribute is read from groups g = 2*y + a")
    g, y = eval_set.groups, eval_set.labels
    if not np.array_equal(g // 2, y):
        raise ValueError("eval_set: groups are not g = 2*y + a (g // 2 differs from the label); "
                         "pass the attribute explicitly")
    return (g % 2).astype(np.int64)


def attribute_association(features, labels, attr, n_classes: Optional[int] = None,
                          chunk_rows: int = 65536) -> np.ndarray:
    """Per neuron, the mean over classes of |Pearson correlation| between its activation
    and the attribute *within* the class, shape (M,).

    Within-class, so a neuron that only tells the classes apart (and so correlates with
    ``a`` through ``y`` on biased data) scores 0. Classes where the attribute or the
    neuron is constant contribute 0; a neuron that never varies scores 0. One pass over
    ``features`` in float64 blocks of ``chunk_rows`` (a memmap is never loaded whole).
    """
    x = features if isinstance(features, np.ndarray) else _arrays.to_numpy(features)
    check_features(x)
    n, m = x.shape
    y, a = np.asarray(labels), np.asarray(attr).astype(np.float64)
    if y.shape != (n,) or a.shape != (n,):
        raise ValueError(f"labels, attr: expected shape ({n},), got {y.shape} and {a.shape}")
    C = int(n_classes if n_classes is not None else y.max() + 1)
    # per class: count, sums of a and a^2, and per neuron sums of x, x^2 and x*a
    cnt, sa, saa = (np.bincount(y, weights=w, minlength=C)[:C] for w in (None, a, a * a))
    sx, sxx, sxa = (np.zeros((C, m)) for _ in range(3))
    for s in range(0, n, chunk_rows):
        xb = np.asarray(x[s:s + chunk_rows], dtype=np.float64)
        onehot = np.zeros((xb.shape[0], C))
        onehot[np.arange(xb.shape[0]), y[s:s + chunk_rows]] = 1.0
        sx += onehot.T @ xb
        sxx += onehot.T @ (xb * xb)
        sxa += (onehot * a[s:s + chunk_rows, None]).T @ xb
    k = np.maximum(cnt, 1)[:, None]
    cov = sxa - sx * (sa[:, None] / k)
    var_x = np.maximum(sxx - sx * sx / k, 0.0)
    var_a = np.maximum(saa - sa * sa / np.maximum(cnt, 1), 0.0)[:, None]
    # relative cut-offs: sums of squares that are rounding residue of a constant count as 0
    ok = ((var_x > 1e-12 * np.maximum(sxx, 1e-300)) & (var_a > 1e-12 * np.maximum(saa, 1e-300)[:, None])
          & (cnt[:, None] >= 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, cov / np.sqrt(var_x * var_a), 0.0)
    return np.abs(r).sum(0) / C


def live_neurons(features, chunk_rows: int = 65536) -> np.ndarray:
    """Indices of the neurons that are non-zero on at least one row (one blocked pass)."""
    check_features(features)
    x = features if isinstance(features, np.ndarray) else _arrays.to_numpy(features)
    live = np.zeros(x.shape[1], dtype=bool)
    for s in range(0, x.shape[0], chunk_rows):
        live |= (np.asarray(x[s:s + chunk_rows]) != 0).any(0)
    return np.flatnonzero(live)


def _default_ks(n_live: int) -> List[int]:
    # zeroing every live neuron leaves a constant head: not a point worth a retraining
    return [0] + [k for k in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256) if k < n_live]


def shortcut_localisation(train, rank_set, test, ks: Optional[Sequence[int]] = None,
                          gain_points: float = 5.0, l2: float = 1e-4, seed: int = 0) -> Dict:
    """How many neurons must be zeroed before last-layer retraining stops using the shortcut?

    Ranks the live neurons (active on some training row) by
    :func:`attribute_association` on ``rank_set`` (use a split whose classes contain
    both attribute values, e.g. a group-balanced validation split), zeroes the top ``k``
    for each ``k`` in ``ks``, retrains the head on ``train`` exactly as NeuronTune's main
    variant does (class-balanced cross-entropy, L-BFGS, ``l2``) and evaluates on
    ``test``. This is an *oracle* mask — it reads the attribute — so it bounds what a
    label-free identification of the same size can reach with that retraining.

    Returns ``{"n_features", "n_live", "order", "association", "curve": [{"k",
    "worst_group", "mean"}], "k_gain", "group_balanced"}``, where ``k_gain`` is the
    smallest ``k`` whose worst-group accuracy exceeds the unmasked (``k = 0``)
    retraining's by at least ``gain_points`` points (None if none does), and
    ``group_balanced`` is ``{"worst_group", "mean"}`` of the same retraining on ``train``
    with group-balanced weights and no mask (DFR's weighting on train; None when ``train``
    has no group labels): what the oracle's reweighting of the training rows reaches, a
    reference for any method that retrains the head on them.
    """
    from ..metrics import evaluate
    from ..nn.last_layer import balance_weights, train_linear_head

    for s, name in ((train, "train"), (rank_set, "rank_set"), (test, "test")):
        if s.n_features != train.n_features:
            raise ValueError(f"{name}: has {s.n_features} features, train has {train.n_features}")
    if test.groups is None:
        raise ValueError("test: needs group labels (worst-group accuracy)")
    live = live_neurons(train.features)
    assoc = attribute_association(rank_set.features, rank_set.labels, attribute_of_groups(rank_set),
                                  rank_set.n_classes)
    order = live[np.argsort(-assoc[live], kind="stable")]
    ks = _default_ks(live.size) if ks is None else sorted({int(k) for k in ks})
    if ks and (ks[0] < 0 or ks[-1] > live.size):
        raise ValueError(f"ks: expected values in 0..{live.size} (the live neurons), got {ks[0]}..{ks[-1]}")
    C = max(train.n_classes, test.n_classes)
    weights = balance_weights(train.labels, C)
    curve = []
    for k in ks:
        keep = np.ones(train.n_features, dtype=np.float32)
        keep[order[:k]] = 0
        head = train_linear_head(train.features, train.labels, C, sample_weight=weights, l2=l2,
                                 feature_mask=keep, seed=seed)
        rep = evaluate(head, test)
        curve.append({"k": k, "worst_group": rep.worst_group_accuracy, "mean": rep.accuracy})
    balanced = None
    if train.groups is not None:
        head = train_linear_head(train.features, train.labels, C, sample_weight=balance_weights(train.groups),
                                 l2=l2, seed=seed)
        rep = evaluate(head, test)
        balanced = {"worst_group": rep.worst_group_accuracy, "mean": rep.accuracy}
    base = curve[0]["worst_group"] if curve and curve[0]["k"] == 0 else None
    k_gain = None
    if base is not None:
        k_gain = next((c["k"] for c in curve if c["worst_group"] >= base + gain_points / 100), None)
    return {"n_features": int(train.n_features), "n_live": int(live.size), "order": order.tolist(),
            "association": assoc.tolist(), "curve": curve, "k_gain": k_gain,
            "group_balanced": balanced}
