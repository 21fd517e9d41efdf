"""Do-no-harm guard shared by the annotation-free methods (NeuronTune, NSF).

Compares a debiased head with the ERM head on a held-out part of the identification
split, reading labels only, never groups. Plain accuracy on a split biased like train
rewards the shortcut, so the holdout is also split into pseudo-groups (class x ERM
right / wrong, the usual annotation-free stand-in for bias-aligned / bias-conflicting
samples); ERM scores 0.5 on their mean, the pseudo-group balanced accuracy (PGA).
A new head is called harmful when its PGA gain is below ``max(min_gain, balanced-
accuracy drop)`` or its balanced accuracy falls more than ``tolerance``. What it costs
and what it cannot see, measured over five seeds: docs/methods.md, "Do no harm".
"""
from __future__ import annotations

import warnings
from typing import Dict

import numpy as np

from ..metrics import predict


def label_free_figures(pred: np.ndarray, y: np.ndarray, erm_right: np.ndarray, n_classes: int) -> Dict[str, float]:
    per_class = [float((pred[y == c] == c).mean()) for c in range(n_classes) if (y == c).any()]
    cells = [float((pred[m] == y[m]).mean()) for c in range(n_classes) for r in (False, True)
             for m in [(y == c) & (erm_right == r)] if m.any()]
    share = np.bincount(pred, minlength=n_classes)[:n_classes] / max(1, len(pred))
    return {"accuracy": float((pred == y).mean()), "worst_class_accuracy": min(per_class),
            "balanced_accuracy": float(np.mean(per_class)),
            "pseudo_group_balanced_accuracy": float(np.mean(cells)),
            # 1 = predictions spread evenly over classes, 0 = a single class predicted
            "prediction_balance": float(1 - (share.max() - share.min()))}


def guard_check(new_head, erm_head, holdout, tolerance: float, method: str, min_gain: float = 0.02) -> Dict:
    """Figures of both heads on ``holdout`` and whether the new head should be rejected
    (``harmful``); the caller decides whether to act on it."""
    y = holdout.labels
    C = max(holdout.n_classes, getattr(erm_head, "out_features", 0))
    erm_pred = predict(erm_head, holdout.features)
    right = erm_pred == y
    before = label_free_figures(erm_pred, y, right, C)
    after = label_free_figures(predict(new_head, holdout.features), y, right, C)
    bal_drop = before["balanced_accuracy"] - after["balanced_accuracy"]
    pga_gain = after["pseudo_group_balanced_accuracy"] - before["pseudo_group_balanced_accuracy"]
    reasons = []
    if pga_gain < max(min_gain, bal_drop):
        reasons.append(f"its gain on the samples ERM gets wrong does not pay for its loss (pseudo-group balanced "
                       f"accuracy {before['pseudo_group_balanced_accuracy']:.3f} -> "
                       f"{after['pseudo_group_balanced_accuracy']:.3f}, balanced accuracy "
                       f"{before['balanced_accuracy']:.3f} -> {after['balanced_accuracy']:.3f})")
    if bal_drop > tolerance:
        reasons.append(f"balanced accuracy fell {bal_drop:.3f} (> tolerance {tolerance})")
    if reasons:
        warnings.warn(f"{method}: the debiased head looks harmful on held-out identification data: "
                      + "; ".join(reasons) + ". These label-free figures often misjudge a head when the "
                      "identification split is biased like train; the method is safest with a group-balanced "
                      "(or at least not shortcut-aligned) identification split (docs/methods.md, 'Do no harm'). "
                      "guard=True returns the ERM head in this case.", RuntimeWarning, stacklevel=3)
    return {"erm": before, "debiased": after, "balanced_accuracy_drop": bal_drop,
            "pseudo_group_gain": pga_gain, "tolerance": tolerance, "min_gain": min_gain,
            "harmful": bool(reasons), "reasons": reasons, "n_holdout": len(holdout)}


def selection_score(head, holdout, erm_right: np.ndarray) -> float:
    """Label-free score of a candidate head on held-out identification data:
    PGA + balanced accuracy, i.e. the guard's net gain up to a constant (ERM's)."""
    C = max(holdout.n_classes, getattr(head, "out_features", 0))
    f = label_free_figures(predict(head, holdout.features), holdout.labels, erm_right, C)
    return f["pseudo_group_balanced_accuracy"] + f["balanced_accuracy"]
