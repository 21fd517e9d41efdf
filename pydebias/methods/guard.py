"""Do-no-harm guard shared by the annotation-free methods (METHODS.md, "Do no harm").

Compares a debiased head with the ERM head on a held-out part of the identification
split using only what an annotation-free method may see (labels, never groups).

Plain accuracy on a held-out split that is biased like the training data rewards the
shortcut, so a head that really stops using it *loses* accuracy there; the guard
therefore also splits the holdout into pseudo-groups (class x ERM right/wrong), the
usual annotation-free proxy for bias-aligned / bias-conflicting samples (as in JTT and
AFR). ERM scores 1 on its right cells and 0 on its wrong ones, i.e. 0.5 on their mean
(the *pseudo-group balanced accuracy*, PGA). A debiasing head trades some of the former
for much of the latter; a head that merely scrambles predictions gains little. The rule:
the new head must gain more PGA than it loses balanced (class-mean) accuracy — what it
wins on the samples ERM gets wrong must pay for what it loses on the rest. It is
rejected when

* its PGA gain is below ``max(min_gain, balanced-accuracy drop)``, or
* its balanced accuracy falls more than ``tolerance`` (a cap for collapses).

Measured on ``planted`` (seed 0): NeuronTune with a biased identification split loses
13.4 points of balanced accuracy on the holdout but gains 24.4 of PGA (kept; test
worst-group accuracy 0.30 -> 0.82); NSF where there is no shortcut to remove
(``planted(corr=0.5)``, tests/test_nsf.py) loses 13.8 and gains 11.5 (rejected; it would
cost 34 points of worst-group accuracy).

What it costs and what it cannot see (``pydebias report --seeds 0 1 2 3 4``,
docs/report_seeds.md: NeuronTune, NeuronTune† and NSF on every built-in setting, 285
fits): it fired 19 times, gave up 149.5 points of worst-group accuracy where the head it
set aside was better and avoided 12.8 where it was worse, and none of the 9 results that
lose more than 5 points against ERM was among those it caught. On a biased
identification split the groups a harmful head hurts are nearly absent from the
holdout (fashion-square's T-shirts without the square: 5 of the 5,000 val rows, so at
most one in a holdout; the minority groups of the two-class built-ins: 12 rows each in
NeuronTune's 500-row holdout, 31 in NSF's 1,250, so a 5-point loss is 0.6-1.6 rows),
and the figures of the harmful heads fall inside the range of the beneficial ones.
Rejecting only heads with no PGA gain or a collapse would give up 49.2 points instead of
149.5 and avoid the same 12.8, but it keeps the shortcut-free case above; no threshold
on the ratio of PGA gain to balanced-accuracy drop separates that case (0.84) from the
costly false alarms (0.33-0.99), so the rule stays as it is.
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
                      + "; ".join(reasons), RuntimeWarning, stacklevel=3)
    return {"erm": before, "debiased": after, "balanced_accuracy_drop": bal_drop,
            "pseudo_group_gain": pga_gain, "tolerance": tolerance, "min_gain": min_gain,
            "harmful": bool(reasons), "reasons": reasons, "n_holdout": len(holdout)}


def selection_score(head, holdout, erm_right: np.ndarray) -> float:
    """Label-free score of a candidate head on held-out identification data:
    PGA + balanced accuracy, i.e. the guard's net gain up to a constant (ERM's)."""
    C = max(holdout.n_classes, getattr(head, "out_features", 0))
    f = label_free_figures(predict(head, holdout.features), holdout.labels, erm_right, C)
    return f["pseudo_group_balanced_accuracy"] + f["balanced_accuracy"]
