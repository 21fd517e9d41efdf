"""NeuronTune (Zheng, Ye & Zhang, ICML 2025, arXiv 2505.24048): find the embedding
neurons that fire more on the samples a model gets wrong, zero them, retrain the head.

Post hoc and annotation-free: group labels are never read.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import numpy as np
from torch import nn

from ..metrics import predict
from ..nn.last_layer import balance_weights, train_linear_head
from ..stats import _group_ids, grouped_quantiles
from ..validation import check_choice, check_embedding_set, check_fraction, check_number
from .base import EmbeddingMethod, copy_head
from .baselines import RETRAIN_ON, erm_head
from .guard import guard_check, selection_score
from ..validation import check_features

__all__ = ["NeuronTune", "neuron_deltas", "spurious_masks"]

MASK_MODES = ("intersection", "union", "per_class")


def neuron_deltas(features, labels, correct, n_classes: int, backend: str = "auto", rows=None,
                  process_group=None):
    """δ[y, i] = median(v_i | y, misclassified) − median(v_i | y, correct), shape (C, M).

    Medians are the lower median (``np.quantile(method="lower")``, as ``torch.median``).
    Rows of classes without a misclassified or without a correct sample are NaN: they
    carry no evidence. ``rows``: optional boolean (N,) mask of the rows to use (the
    others are passed over in the same read, not copied out). Returns ``(delta,
    counts)`` with counts of shape (C, 2). ``process_group``: each rank passes its own
    rows; medians and counts are those of all the ranks' rows (exact, not gathered).
    """
    # Only the medians (grouped quantiles) are needed, not the moments: on a memmap that saves the grouped moments
    # pass (measured, 2,000,000 x 1,024 float16: 1.51x -> 0.67x one read of the file).
    check_features(features)
    n, m = features.shape
    g, G, _ = _group_ids(features, labels, correct, None, None, n_classes)
    if rows is not None:
        rows = np.asarray(rows)
        if rows.shape != (n,) or rows.dtype != np.bool_:
            raise ValueError(f"rows: expected a boolean mask of shape ({n},), got {rows.dtype} {rows.shape}")
        g = np.where(rows, g, G)  # the rows left out form one more group, dropped below
    med = grouped_quantiles(features, g, G + (rows is not None), (0.5,), "lower",
                            backend=backend, process_group=process_group)[0][:G].reshape(n_classes, 2, m)
    delta = med[:, 0, :] - med[:, 1, :]  # [:, 0] misclassified, [:, 1] correct
    counts = np.bincount(g, minlength=G + 1)[:G].reshape(n_classes, 2)
    if process_group is not None:
        from ..distributed import all_reduce

        counts = all_reduce(counts, "sum", process_group)
    delta[(counts == 0).any(1)] = np.nan
    return delta, counts


def candidate_lams(delta: np.ndarray) -> List[float]:
    """Thresholds that select the top 1, 2, 4, ... neurons by δ (max over classes), then
    every neuron with δ > 0 (the paper's λ = 0), and none (λ = +inf)."""
    score = np.nanmax(np.where(np.isnan(delta), -np.inf, delta), axis=0)
    pos = np.sort(score[score > 0])[::-1]
    lams = [float(pos[k]) for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k < pos.size]
    return sorted(set(lams + [0.0]), reverse=True) + [float("inf")]


def spurious_masks(delta: np.ndarray, lam: float, mode: str) -> np.ndarray:
    """Keep-masks from δ: (M,) for intersection/union, (C, M) for per_class (1 = keep)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask_mode: expected one of {MASK_MODES}, got {mode!r}")
    evidence = ~np.isnan(delta).all(1)
    spurious = np.where(np.isnan(delta), False, delta > lam)  # (C, M)
    if not evidence.any():
        return np.ones(delta.shape if mode == "per_class" else delta.shape[1], dtype=np.float32)
    if mode == "per_class":
        return (~spurious).astype(np.float32)
    sel = spurious[evidence]
    s = sel.all(0) if mode == "intersection" else sel.any(0)
    return (~s).astype(np.float32)


class NeuronTune(EmbeddingMethod):
    """NeuronTune: identification on ``val``, neuron masking, last-layer retraining.

    Reads ``val`` (identification, class labels only) and the ERM ``head`` (trained on
    ``train`` when not given); retrains on ``train`` (the paper's main variant) or on
    ``val``'s identification rows (``retrain_on="val"``). The defaults were chosen by
    measurement; the evidence is in docs/methods.md, "NeuronTune".

    Parameters
    ----------
    retrain_on : ``"train"`` or ``"val"``: the split the masked head is retrained on.
    lam : threshold λ on δ. The paper uses 0; ``"auto"`` (default) tries the masks that
        zero the top 1, 2, 4, ... neurons by δ, λ = 0 and none, scores each retrained head
        label-free on half of the holdout (the guard's figures) and keeps λ = 0 unless
        another scores more than ``lam_margin`` higher.
    lam_margin : the noise margin of that choice (default 0.05).
    mask_mode : ``"union"`` (default: zero a neuron spurious for any class),
        ``"intersection"`` (the paper's literal rule: for every class) or ``"per_class"``
        (zero ``W[y, i]`` for the classes it is spurious for).
    n_rounds : identify → retrain repeated with the new head (> 1: an extension).
    l2, optimizer, epochs : the retraining: class-balanced cross-entropy, full-batch
        L-BFGS, ``l2`` on the standardised weights.
    holdout : fraction of ``val`` held out for λ selection and the guard; 0 turns both off.
    holdout_max_rows : at most this many rows are held out (copied out of a memmap); the
        identification rows are read in place.
    guard, guard_tolerance : the holdout's label-free check always runs (``report_["guard"]``,
        a warning when it calls the new head harmful); ``guard=True`` then returns (a copy
        of) the ERM head, the new one staying in ``debiased_head_``. Off by default: over
        five seeds acting on the check cost more than it saved (docs/methods.md).
    process_group : a ``torch.distributed`` group whose ranks each pass their own ``val``
        rows (and the same ``train`` and ``head``): identification reads the medians of
        all ranks' rows (:mod:`pydebias.distributed`), so every rank selects the same
        neurons and retrains the same head. Needs ``retrain_on="train"``, a numeric
        ``lam`` and ``holdout=0`` (the λ choice and the guard score held-out rows, which
        are not reduced across ranks yet).
    """

    def __init__(self, retrain_on: str = "train", lam: Union[float, str] = "auto", mask_mode: str = "union",
                 n_rounds: int = 1, lam_margin: float = 0.05,
                 l2: float = 1e-4, optimizer: str = "lbfgs", epochs: int = 100, holdout: float = 0.2,
                 guard: bool = False, guard_tolerance: float = 0.25, holdout_max_rows: int = 200_000,
                 seed: int = 0, backend: str = "auto", process_group=None):
        self.retrain_on = retrain_on
        self.lam, self.mask_mode, self.n_rounds, self.lam_margin = lam, mask_mode, n_rounds, lam_margin
        self.l2, self.optimizer, self.epochs = l2, optimizer, epochs
        self.holdout, self.guard, self.guard_tolerance = holdout, guard, guard_tolerance
        self.holdout_max_rows = holdout_max_rows
        self.seed, self.backend, self.process_group = seed, backend, process_group

    def fit(self, train, val=None, *, head: Optional[nn.Linear] = None) -> nn.Linear:
        """Identify on ``val`` with the ERM ``head``; retrain on ``train`` or on ``val``'s
        identification rows (``retrain_on``)."""
        check_choice(self.retrain_on, "retrain_on", RETRAIN_ON)
        check_choice(self.mask_mode, "mask_mode", MASK_MODES)
        check_number(self.n_rounds, "n_rounds", 1, integer=True)
        check_number(self.holdout_max_rows, "holdout_max_rows", 1, integer=True)
        check_fraction(self.holdout, "holdout")
        check_number(self.lam_margin, "lam_margin", 0.0)
        check_number(self.guard_tolerance, "guard_tolerance", 0.0)
        auto = isinstance(self.lam, str)
        if auto and self.lam != "auto":
            raise ValueError(f"lam: expected a number or 'auto', got {self.lam!r}")
        if not auto:
            check_number(self.lam, "lam", finite=False)
        if auto and self.holdout <= 0:
            raise ValueError("lam='auto' selects on held-out identification data: pass holdout > 0")
        if self.process_group is not None and (self.retrain_on != "train" or auto or self.holdout > 0):
            raise ValueError("process_group: NeuronTune across processes identifies on each rank's val rows and "
                             "retrains on train (the same on every rank); pass retrain_on='train', a numeric lam "
                             "(e.g. 0.0) and holdout=0")
        id_set = self._need_val(val, "NeuronTune", process_group=self.process_group)
        tune_set = check_embedding_set(train, "train") if self.retrain_on == "train" else None
        head = erm_head(train, head, id_set.n_features, id_set.n_classes, self.seed)
        # The identification rows are read in place (a memmap is never copied whole);
        # only the holdout, at most holdout_max_rows, and (retrain_on="val") the tuning rows
        # are taken out.
        ident_rows, hold = None, None
        if self.holdout > 0:
            frac = min(self.holdout, self.holdout_max_rows / max(1, len(id_set)))
            held = id_set.holdout_mask(frac, seed=self.seed)
            ident_rows, hold = ~held, id_set.subset(held)
        n_ident = len(id_set) if ident_rows is None else int(ident_rows.sum())
        sel = None
        if auto:
            hold, sel = hold.split_holdout(0.5, seed=self.seed + 1)
        for part, what in ((hold, "the guard"), (sel, "the choice of lam")):
            if part is not None and len(part) == 0:
                raise ValueError(f"holdout: {self.holdout} of {len(id_set)} val rows leaves no row for {what}; "
                                 "raise holdout or give more val rows")
        if auto:
            sel_right = predict(head, sel.features) == sel.labels
        tune = tune_set if tune_set is not None else (
            id_set if ident_rows is None else id_set.subset(ident_rows))
        C = max(id_set.n_classes, head.out_features)
        if self.process_group is not None:  # a rank's val rows may lack a class
            from ..distributed import all_reduce

            C = int(all_reduce(np.array([C], np.int64), "max", self.process_group)[0])
        current = head
        rounds = []
        for r in range(self.n_rounds):
            correct = predict(current, id_set.features) == id_set.labels
            delta, counts = neuron_deltas(id_set.features, id_set.labels, correct, C, backend=self.backend,
                                          rows=ident_rows, process_group=self.process_group)
            weights = balance_weights(tune.labels, C)

            def retrain(keep):
                return train_linear_head(tune.features, tune.labels, C, sample_weight=weights, l2=self.l2,
                                         optimizer=self.optimizer, epochs=self.epochs, feature_mask=keep,
                                         seed=self.seed)
            selection = []
            if auto:
                best = None
                for lam in candidate_lams(delta):
                    keep = spurious_masks(delta, lam, self.mask_mode)
                    h = retrain(keep)
                    score = selection_score(h, sel, sel_right)
                    selection.append({"lam": lam, "n_zeroed": int((keep == 0).any(0).sum() if keep.ndim == 2
                                                                  else (keep == 0).sum()), "score": score})
                    if best is None or score > best[0] + 1e-12:  # ties keep the larger λ
                        best = (score, lam, keep, h)
                    if lam == 0.0:
                        paper = (score, lam, keep, h)
                # the paper's λ = 0 unless a candidate beats it by more than the noise margin
                _, lam_used, keep, current = paper if paper[0] >= best[0] - self.lam_margin else best
            else:
                lam_used = float(self.lam)
                keep = spurious_masks(delta, lam_used, self.mask_mode)
                current = retrain(keep)
            skipped = [int(c) for c in np.flatnonzero(np.isnan(delta).all(1))]
            sets = (1 - keep).astype(bool)
            rounds.append({
                "delta": np.where(np.isnan(delta), None, delta).tolist(),
                "counts_misclassified_correct": counts.tolist(),
                "skipped_classes": skipped,
                "spurious": ([np.flatnonzero(row).tolist() for row in sets] if sets.ndim == 2
                             else np.flatnonzero(sets).tolist()),
                "n_spurious_per_class": (sets.sum(1).tolist() if sets.ndim == 2
                                         else [int(sets.sum())] * C),
                "sfit": float(np.nansum(np.abs(delta))),
                "lam": lam_used, "selection": selection,
            })
            self.mask_ = keep
        self.delta_ = np.array([[np.nan if v is None else v for v in row] for row in rounds[-1]["delta"]])
        from ..distributed import describe

        report: Dict = {"method": "NeuronTune", "retrain_on": self.retrain_on,
                        "params": {**self.get_params(), "process_group": describe(self.process_group)},
                        "rounds": rounds, "sfit": rounds[0]["sfit"],
                        "n_identification": n_ident, "n_tune": len(tune)}
        result = current
        self.debiased_head_ = current  # kept even when the guard returns the ERM head
        if hold is not None:
            g = guard_check(current, head, hold, self.guard_tolerance, "NeuronTune")
            g["kept_erm_head"] = bool(self.guard and g["harmful"])
            report["guard"] = g
            if g["kept_erm_head"]:
                result = copy_head(head)
        self.report_ = report
        self.head_ = result
        return result

    def spurious_neurons(self) -> np.ndarray:
        """Neurons zeroed for at least one class in the fitted mask."""
        keep = self.mask_
        return np.flatnonzero((keep == 0).any(0) if keep.ndim == 2 else keep == 0)
