"""Baselines every comparison needs: ERM and DFR (group-balanced last-layer retraining)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from ..metrics import evaluate
from ..nn.last_layer import balance_weights, train_linear_head
from .base import Method

__all__ = ["ERM", "DFR"]


class ERM(Method):
    """Plain empirical risk minimisation of a linear head on the training embeddings."""

    def __init__(self, l2: float = 1e-4, optimizer: str = "lbfgs", epochs: int = 100, seed: int = 0):
        self.l2, self.optimizer, self.epochs, self.seed = l2, optimizer, epochs, seed

    def fit(self, train) -> nn.Linear:
        train = self._check_set(train, "train")
        self.head_ = train_linear_head(train.features, train.labels, train.n_classes, l2=self.l2,
                                       optimizer=self.optimizer, epochs=self.epochs, seed=self.seed)
        self.report_ = {"method": "ERM", "n_train": len(train)}
        return self.head_


class DFR(Method):
    """Deep Feature Reweighting (Kirichenko et al., 2022): retrain the last layer on
    held-out data with **group-balanced** weights. Needs group labels; the reference the
    annotation-free methods are compared against.

    ``l2`` is chosen from ``l2_grid`` by worst-group accuracy on a random half of the
    held-out set, then the head is refit on all of it (the DFR paper's protocol).
    """

    def __init__(self, l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), optimizer: str = "lbfgs",
                 epochs: int = 100, seed: int = 0):
        self.l2_grid, self.optimizer, self.epochs, self.seed = tuple(l2_grid), optimizer, epochs, seed

    def _fit_on(self, s, l2):
        w = balance_weights(s.groups, s.n_groups)
        return train_linear_head(s.features, s.labels, s.n_classes, sample_weight=w, l2=l2,
                                 optimizer=self.optimizer, epochs=self.epochs, seed=self.seed)

    def fit(self, val, head=None) -> nn.Linear:
        val = self._check_set(val, "val", need_groups=True)
        if not self.l2_grid:
            raise ValueError("l2_grid: give at least one value")
        scores = {}
        if len(self.l2_grid) > 1:
            fit_half, sel_half = val.split_holdout(0.5, seed=self.seed)
            for l2 in self.l2_grid:
                rep = evaluate(self._fit_on(fit_half, l2), sel_half)
                scores[l2] = rep.worst_group_accuracy if rep.worst_group_accuracy is not None else -1.0
            best = max(self.l2_grid, key=lambda v: (scores[v], -v))
        else:
            best = self.l2_grid[0]
        self.head_ = self._fit_on(val, best)
        self.report_ = {"method": "DFR", "l2": best, "selection_worst_group": scores,
                        "group_counts": np.bincount(val.groups, minlength=val.n_groups).tolist()}
        return self.head_
