"""The baselines every comparison needs, on fixed embeddings: ERM, class-balanced
retraining, JTT, AFR and DFR (the group-label reference). Rules and evidence for the
defaults: docs/methods.md."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from torch import nn

from .. import _arrays
from ..metrics import predict
from ..nn.last_layer import balance_weights, train_linear_head
from ..validation import check_choice, check_embedding_set, check_fraction, check_linear_head, check_number
from .base import EmbeddingMethod

__all__ = ["ERM", "DFR", "ClassBalanced", "JTT", "AFR", "erm_head"]

RETRAIN_ON = ("train", "val")


def erm_head(train, head: Optional[nn.Linear], n_features: int, n_classes: int, seed: int) -> nn.Linear:
    """The caller's ERM ``head`` (checked against the set's width and classes), or one
    trained by ``ERM(seed=seed)`` on ``train`` when none is given."""
    if head is None:
        head = ERM(seed=seed).fit(check_embedding_set(train, "train"))
    return check_linear_head(head, "head", n_features, n_classes)


class ERM(EmbeddingMethod):
    """Plain empirical risk minimisation of a linear head. Reads ``train``."""

    def __init__(self, l2: float = 1e-4, optimizer: str = "lbfgs", epochs: int = 100, seed: int = 0):
        self.l2, self.optimizer, self.epochs, self.seed = l2, optimizer, epochs, seed

    def fit(self, train, val=None, *, head: Optional[nn.Linear] = None) -> nn.Linear:
        train = check_embedding_set(train, "train")
        check_number(self.seed, "seed", integer=True)
        self.head_ = train_linear_head(train.features, train.labels, train.n_classes, l2=self.l2,
                                       optimizer=self.optimizer, epochs=self.epochs, seed=self.seed)
        self.report_ = {"method": "ERM", "n_train": len(train)}
        return self.head_


class DFR(EmbeddingMethod):
    """Deep Feature Reweighting (Kirichenko et al., 2022): retrain the last layer on
    ``val`` with **group-balanced** weights. Reads ``val`` and its group labels; the
    reference the annotation-free methods are compared against.

    ``l2`` is chosen from ``l2_grid`` by worst-group accuracy on a random half of ``val``,
    then the head is refit on all of it (the DFR paper's protocol).

    ``process_group`` (``torch.distributed``; L-BFGS): each rank passes its own ``val``
    rows; group weights, the fit (loss and gradient summed over ranks) and the selection
    half's worst-group accuracy cover all ranks' rows, and every rank returns the same
    head. Each rank halves its own rows, so the selection half differs from one process's.
    """

    def __init__(self, l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), optimizer: str = "lbfgs",
                 epochs: int = 100, seed: int = 0, process_group=None):
        self.l2_grid, self.optimizer, self.epochs, self.seed = tuple(l2_grid), optimizer, epochs, seed
        self.process_group = process_group

    def _fit_on(self, s, l2, C, G):
        pg = self.process_group
        w = balance_weights(s.groups, G, process_group=pg)
        return train_linear_head(s.features, s.labels, C, sample_weight=w, l2=l2, optimizer=self.optimizer,
                                 epochs=self.epochs, seed=self.seed, process_group=pg)

    def _worst_group(self, head, s, G) -> float:
        """Worst-group accuracy of ``head`` on ``s`` (over all ranks' rows); -1 if no group
        has a row."""
        ok = predict(head, s.features) == s.labels
        right = np.bincount(s.groups, weights=ok, minlength=G)[:G]
        total = np.bincount(s.groups, minlength=G)[:G].astype(np.float64)
        if self.process_group is not None:
            from ..distributed import all_reduce_many

            right, total = all_reduce_many([right, total], "sum", self.process_group)
        seen = total > 0
        return float((right[seen] / total[seen]).min()) if seen.any() else -1.0

    def fit(self, train, val=None, *, head: Optional[nn.Linear] = None) -> nn.Linear:
        val = self._need_val(val, "DFR", need_groups=True, process_group=self.process_group)
        if not self.l2_grid:
            raise ValueError("l2_grid: give at least one value")
        for v in self.l2_grid:
            check_number(v, "l2_grid", 0.0)
        C, G = val.n_classes, val.n_groups
        if self.process_group is not None:  # a rank's rows may lack a class or group
            from ..distributed import all_reduce

            if self.optimizer != "lbfgs":
                raise ValueError(f"optimizer: DFR across processes needs 'lbfgs', got {self.optimizer!r}")
            C, G = (int(v) for v in all_reduce(np.array([C, G], np.int64), "max", self.process_group))
        scores = {}
        if len(self.l2_grid) > 1:
            fit_half, sel_half = val.split_holdout(0.5, seed=self.seed)
            for l2 in self.l2_grid:
                scores[l2] = self._worst_group(self._fit_on(fit_half, l2, C, G), sel_half, G)
            best = max(self.l2_grid, key=lambda v: (scores[v], -v))
        else:
            best = self.l2_grid[0]
        self.head_ = self._fit_on(val, best, C, G)
        counts = np.bincount(val.groups, minlength=G)[:G]
        if self.process_group is not None:
            from ..distributed import global_sum

            counts = global_sum(counts, self.process_group).astype(np.int64)
        from ..distributed import describe

        self.report_ = {"method": "DFR", "l2": best, "selection_worst_group": scores,
                        "group_counts": counts.tolist(), "process_group": describe(self.process_group)}
        return self.head_


class ClassBalanced(EmbeddingMethod):
    """Class-balanced last-layer retraining on ``train`` or ``val`` (``retrain_on``):
    NeuronTune's retraining without its masks, the control that shows what the masks
    add. ``head``, when given, sets the number of classes."""

    def __init__(self, retrain_on: str = "train", l2: float = 1e-4, optimizer: str = "lbfgs", epochs: int = 100,
                 seed: int = 0):
        self.retrain_on = retrain_on
        self.l2, self.optimizer, self.epochs, self.seed = l2, optimizer, epochs, seed

    def fit(self, train, val=None, *, head: Optional[nn.Linear] = None) -> nn.Linear:
        check_choice(self.retrain_on, "retrain_on", RETRAIN_ON)
        s = (check_embedding_set(train, "train") if self.retrain_on == "train"
             else self._need_val(val, "ClassBalanced(retrain_on='val')"))
        C = s.n_classes
        if head is not None:
            C = max(C, check_linear_head(head, "head", s.n_features).out_features)
        self.head_ = train_linear_head(s.features, s.labels, C, sample_weight=balance_weights(s.labels, C),
                                       l2=self.l2, optimizer=self.optimizer, epochs=self.epochs, seed=self.seed)
        self.report_ = {"method": "ClassBalanced", "retrain_on": self.retrain_on, "n_tune": len(s)}
        return self.head_


class JTT(EmbeddingMethod):
    """Just Train Twice (Liu et al., 2021), on the last layer: an identification head
    trained briefly (``id_epochs`` L-BFGS iterations, strong ``id_l2``) marks the training
    errors, which are then up-weighted in a second training.

    ``up_weight="balanced"`` (default) weighs every (class, error or not) cell of train
    equally, i.e. the errors of a class are up-weighted by (its correct rows / its
    errors): the error set stands in for the minority groups, as groups do in DFR. A
    number multiplies the errors' weight by it (the paper's rule; it picks the number
    with group labels). The paper retrains the whole network; on fixed embeddings only
    the head is retrained (the usual last-layer form in comparisons such as AFR's).
    Reads ``train``.
    """

    def __init__(self, up_weight="balanced", id_epochs: int = 10, id_l2: float = 1e-2, l2: float = 1e-4,
                 epochs: int = 100, seed: int = 0):
        self.up_weight, self.id_epochs, self.id_l2 = up_weight, id_epochs, id_l2
        self.l2, self.epochs, self.seed = l2, epochs, seed

    def fit(self, train, val=None, *, head: Optional[nn.Linear] = None) -> nn.Linear:
        s = check_embedding_set(train, "train")
        if isinstance(self.up_weight, str):
            if self.up_weight != "balanced":
                raise ValueError(f"up_weight: expected a number >= 1 or 'balanced', got {self.up_weight!r}")
        else:
            check_number(self.up_weight, "up_weight", 1.0)
        check_number(self.id_epochs, "id_epochs", 1, integer=True)
        check_number(self.id_l2, "id_l2", 0.0)
        first = train_linear_head(s.features, s.labels, s.n_classes, l2=self.id_l2, epochs=self.id_epochs,
                                  seed=self.seed)
        wrong = predict(first, s.features) != s.labels
        C = s.n_classes
        if self.up_weight == "balanced":
            w = balance_weights(2 * s.labels + wrong, 2 * C)
        else:
            w = np.where(wrong, float(self.up_weight), 1.0)
        # the weight of an error over that of a correct row of its class (0 where a class has no errors)
        ratio = [float(w[wrong & (s.labels == c)][0] / w[~wrong & (s.labels == c)][0])
                 if (wrong & (s.labels == c)).any() and (~wrong & (s.labels == c)).any() else 0.0 for c in range(C)]
        self.head_ = train_linear_head(s.features, s.labels, C, sample_weight=w, l2=self.l2,
                                       epochs=self.epochs, seed=self.seed)
        self.report_ = {"method": "JTT", "n_errors": int(wrong.sum()), "n_train": len(s),
                        "up_weight": self.up_weight, "error_weight_per_class": ratio}
        return self.head_


def afr_eligible(ess: float, ess_max: float, min_ess: float) -> bool:
    """Whether AFR's ``gamma="auto"`` fits a candidate whose weights have Kish effective
    sample size ``ess`` (a fraction of the rows; ``ess_max`` the largest among candidates)."""
    return ess >= min_ess or ess == ess_max


def afr_pick(candidates: Sequence[dict], min_ess: float) -> float:
    """The gamma ``gamma="auto"`` keeps: the best ``score`` among the eligible candidates
    (``{"gamma", "ess", "score"}`` each), the first on ties. Replays the choice at another
    ``min_ess`` from candidates that were all scored."""
    ess_max = max(c["ess"] for c in candidates)
    ok = [c for c in candidates if afr_eligible(c["ess"], ess_max, min_ess) and c["score"] is not None]
    return max(ok, key=lambda c: c["score"])["gamma"]


class AFR(EmbeddingMethod):
    """Automatic Feature Reweighting (Qiu et al., 2023): retrain the last layer on ``val``,
    weighting each sample by ``exp(-gamma * p_erm(y | x))`` (samples the ERM head
    finds hard weigh more), weights normalised to equal totals per class, starting from
    the ERM head with an L2 penalty ``l2`` pulling towards its weights.

    The paper picks ``gamma`` with group labels on validation data. ``gamma="auto"``
    (default) picks it without them: each of ``gammas`` is fitted on val less a
    ``holdout`` part and scored there by the guard's label-free score (pseudo-group +
    balanced accuracy, :func:`pydebias.methods.guard.selection_score`); the best is
    refitted on all of val. A candidate whose weights leave a Kish effective sample size
    ``(sum w)^2 / sum w^2`` below ``min_ess`` x the fitted rows is not fitted (a handful of
    rows would carry the head); the candidate with the largest one always is. A number
    fixes ``gamma``. Reads ``val`` and the ERM ``head`` (trained on ``train`` when not given).
    """

    def __init__(self, gamma="auto", gammas: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0), holdout: float = 0.2,
                 min_ess: float = 0.05, l2: float = 1e-3, epochs: int = 100, seed: int = 0):
        self.gamma, self.gammas, self.holdout, self.min_ess = gamma, gammas, holdout, min_ess
        self.l2, self.epochs, self.seed = l2, epochs, seed

    @staticmethod
    def _p_right(s, head) -> np.ndarray:
        """The ERM head's probability of each row's label, (N,) float64."""
        import torch

        p = np.empty(len(s), dtype=np.float64)
        x = s.features
        with torch.no_grad():  # in row chunks: a memmap is never read whole
            for sl in _arrays.row_chunks(len(s), _arrays.default_chunk_rows(s.n_features, 4)):
                logits = head(_arrays.float32_rows(x[sl]).to(head.weight.dtype))
                p[sl] = torch.softmax(logits, 1)[torch.arange(logits.shape[0]), torch.from_numpy(s.labels[sl])].numpy()
        return p

    @staticmethod
    def _weights(labels: np.ndarray, n_classes: int, p_right: np.ndarray, gamma: float) -> np.ndarray:
        """``exp(-gamma * p)``, equal totals per class, mean 1."""
        w = np.exp(-gamma * p_right)
        totals = np.bincount(labels, weights=w, minlength=n_classes)
        w = w / totals[labels]
        return w * (len(w) / w.sum())

    def _fit_weights(self, s, head, w: np.ndarray) -> nn.Linear:
        return train_linear_head(s.features, s.labels, s.n_classes, sample_weight=w, l2=self.l2,
                                 epochs=self.epochs, seed=self.seed, init=head, anchor=head)

    def fit(self, train, val=None, *, head: Optional[nn.Linear] = None) -> nn.Linear:
        from .guard import selection_score

        s = self._need_val(val, "AFR")
        auto = isinstance(self.gamma, str)
        if auto and self.gamma != "auto":
            raise ValueError(f"gamma: expected a number or 'auto', got {self.gamma!r}")
        if auto:  # gamma='auto' scores each candidate on held-out val rows
            check_fraction(self.holdout, "holdout", low_open=True)
            check_number(self.min_ess, "min_ess", 0.0, 1.0)
            if not self.gammas:
                raise ValueError("gammas: expected at least one candidate gamma, got none")
            for g in self.gammas:
                check_number(g, "gammas", 0.0)
        else:
            check_number(self.gamma, "gamma", 0.0)
        head = erm_head(train, head, s.n_features, s.n_classes, self.seed)
        if head.out_features != s.n_classes:
            raise ValueError(f"head: has {head.out_features} outputs, val has {s.n_classes} classes; AFR starts "
                             "from the ERM head, so they must match")
        scores = []
        gamma = self.gamma
        p_val = self._p_right(s, head)  # one pass over val: the fit rows' weights are a subset of these
        if auto:
            held = s.holdout_mask(self.holdout, seed=self.seed)
            fit_rows, hold = s.subset(~held), s.subset(held)
            if len(hold) == 0 or len(fit_rows) == 0:
                raise ValueError(f"holdout: {self.holdout} of {len(s)} val rows leaves no row to fit or to score "
                                 "gamma on; give more val rows or a fixed gamma")
            right = predict(head, hold.features) == hold.labels
            ws = [self._weights(fit_rows.labels, s.n_classes, p_val[~held], float(g)) for g in self.gammas]
            scores = [{"gamma": float(g), "ess": float(w.sum() ** 2 / (w * w).sum() / len(w)), "score": None}
                      for g, w in zip(self.gammas, ws)]
            ess_max = max(c["ess"] for c in scores)
            for c, w in zip(scores, ws):  # a gamma whose weights rest on a few rows is not fitted (docs/methods.md)
                if afr_eligible(c["ess"], ess_max, self.min_ess):
                    c["score"] = selection_score(self._fit_weights(fit_rows, head, w), hold, right)
            gamma = afr_pick(scores, self.min_ess)
        self.gamma_ = float(gamma)
        w = self._weights(s.labels, s.n_classes, p_val, self.gamma_)
        self.head_ = self._fit_weights(s, head, w)
        self.report_ = {"method": "AFR", "gamma": self.gamma_, "selection": scores, "min_ess": self.min_ess,
                        "weight_max_over_mean": float(w.max())}
        return self.head_
