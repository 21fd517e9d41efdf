"""Group-robustness metrics: one report used by every method and table."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import _arrays
from .validation import check_embedding_set, check_ids

__all__ = ["GroupReport", "evaluate", "predict", "COVERAGES", "ensemble_confidence", "selective_thresholds",
           "selective_curve"]


def predict(head_or_model, features, batch_size: Optional[int] = None, device=None,
            n_classes: Optional[int] = None) -> np.ndarray:
    """Arg-max predictions of a module on (N, M) features, in batches, without grad.

    A float32 ``nn.Linear`` with at most ``NATIVE_PREDICT_MAX_CLASSES`` classes on
    float16/bfloat16 CPU rows runs as one native pass (``_C.linear_argmax``; its logits
    are summed in SIMD order, so on exact near-ties the class may differ from torch's).
    Everything else goes through the module in batches: ``batch_size`` defaults to the
    rows of about 8 MB of float32 (2,048 at M = 1,024), so a widened float16 batch stays
    in cache for the GEMM (measured on a 2,000,000 x 1,024 float16 memmap through the
    torch path: 0.63 s in batches of 16,384 rows, 0.44 s in 2,048; natively 0.09-0.14 s
    with AVX-512 and at most four classes, AVX2 + F16C close behind, 0.26 s otherwise;
    docs/performance.md). ``n_classes``: the model
    must give at least that many logits (a 1-logit head would predict class 0 always)."""
    if batch_size is None:
        batch_size = max(256, (8 << 20) // (4 * max(1, features.shape[1])))
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive number of rows, got {batch_size}")
    if not callable(head_or_model):
        raise TypeError(f"head_or_model: expected a torch module or callable, got {type(head_or_model).__name__}")
    if isinstance(head_or_model, torch.nn.Module):
        p = next(head_or_model.parameters(), None)
        device = device or (p.device if p is not None else "cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    else:
        dtype = torch.float32
    out = np.empty(features.shape[0], dtype=np.int64)
    if n_classes is not None and isinstance(head_or_model, torch.nn.Linear) and head_or_model.out_features < n_classes:
        raise ValueError(f"head_or_model: gives {head_or_model.out_features} logits for {n_classes} classes")
    if _native_linear_argmax(head_or_model, features, out, device):
        return out
    buf = np.empty(min(batch_size, features.shape[0]) * features.shape[1], dtype=np.float32)
    with torch.no_grad():
        for sl in _arrays.row_chunks(features.shape[0], batch_size):
            chunk = features[sl]
            x = (_arrays.float32_rows(chunk, buf) if dtype == torch.float32 else _arrays.as_tensor(chunk))
            x = x.to(device=device, dtype=dtype)
            logits = head_or_model(x)
            if logits.ndim != 2 or (n_classes is not None and logits.shape[1] < n_classes):
                raise ValueError(f"head_or_model: gives logits of shape {tuple(logits.shape)}, expected "
                                 f"(rows, >= {n_classes or 1} classes)")
            out[sl] = logits.argmax(1).cpu().numpy()
    return out


#: heads up to this many classes on 16-bit CPU features go through ``_C.linear_argmax``
NATIVE_PREDICT_MAX_CLASSES = 64


def _native_linear_argmax(head, features, out: np.ndarray, device) -> bool:
    """Predictions of a plain float32 ``nn.Linear`` head on float16/bfloat16 CPU rows in one
    native pass (no widened copy, no GEMM over it; measured on a 2,000,000 x 1,024 float16
    memmap: see the README's performance section). Returns False where it does not apply
    (other modules or dtypes, CUDA, large heads): the torch path then runs."""
    from . import backends

    if type(head) is not torch.nn.Linear or head.out_features > NATIVE_PREDICT_MAX_CLASSES:
        return False
    w = head.weight
    if w.dtype != torch.float32 or w.device.type != "cpu" or (device is not None and torch.device(device).type != "cpu"):
        return False
    if _arrays.is_tensor(features):
        if features.device.type != "cpu" or features.dtype not in (torch.float16, torch.bfloat16):
            return False
    elif np.dtype(features.dtype) != np.float16:
        return False
    lib = backends.native()
    if lib is None:
        return False
    weight = w.detach().contiguous().numpy()
    bias = (head.bias.detach().float().contiguous().numpy() if head.bias is not None
            else np.zeros(head.out_features, dtype=np.float32))
    rows = _arrays.default_chunk_rows(features.shape[1], 2)
    for sl in _arrays.row_chunks(features.shape[0], rows):
        chunk = features[sl]
        arr, code = _arrays.native_view(_arrays.contiguous_rows(chunk.detach() if _arrays.is_tensor(chunk) else chunk))
        lib.linear_argmax(arr, code, weight, bias, out[sl])
    return True


class GroupReport:
    """Accuracy per group and class, worst-group / worst-class / mean / weighted accuracy.

    A group with no samples is *absent*: its accuracy is ``None`` and it does not enter
    the worst-group minimum. ``weighted_accuracy`` averages group accuracies with the
    training group proportions (the Waterbirds/CelebA convention) when they were given.
    """

    def __init__(self, labels: np.ndarray, preds: np.ndarray, groups: Optional[np.ndarray],
                 n_classes: int, n_groups: int = 0, train_proportions: Optional[Sequence[float]] = None,
                 group_names: Optional[Sequence[str]] = None, n_boot: int = 0, seed: int = 0):
        ok = preds == labels
        self.n = int(labels.size)
        self.accuracy = float(ok.mean()) if self.n else None
        self.per_class = self._per(labels, ok, n_classes)
        accs = [c["accuracy"] for c in self.per_class if c["accuracy"] is not None]
        self.worst_class_accuracy = min(accs) if accs else None
        self.balanced_accuracy = float(np.mean(accs)) if accs else None
        self.prediction_share = (np.bincount(preds, minlength=n_classes)[:n_classes] / max(self.n, 1)).tolist()
        self.group_names = list(group_names) if group_names is not None else None
        self.per_group: List[Dict] = []
        self.worst_group_accuracy = None
        self.weighted_accuracy = None
        self.worst_group_ci = None
        if groups is not None:
            n_groups = max(n_groups, int(groups.max()) + 1 if groups.size else 0)
            self.per_group = self._per(groups, ok, n_groups)
            present = [g["accuracy"] for g in self.per_group if g["accuracy"] is not None]
            self.worst_group_accuracy = min(present) if present else None
            if train_proportions is not None:
                w = np.asarray(train_proportions, dtype=np.float64)
                if w.shape != (n_groups,):
                    raise ValueError(f"train_proportions: expected {n_groups} values, got {w.shape}")
                a = np.array([g["accuracy"] if g["accuracy"] is not None else np.nan for g in self.per_group])
                keep = ~np.isnan(a) & (w > 0)
                self.weighted_accuracy = float((a[keep] * w[keep]).sum() / w[keep].sum()) if keep.any() else None
            if n_boot > 0:
                self.worst_group_ci = self._bootstrap(groups, ok, n_groups, n_boot, seed)

    @staticmethod
    def _per(ids: np.ndarray, ok: np.ndarray, k: int) -> List[Dict]:
        count = np.bincount(ids, minlength=k)[:k]
        right = np.bincount(ids, weights=ok.astype(np.float64), minlength=k)[:k]
        return [{"id": i, "count": int(count[i]), "correct": int(right[i]),
                 "accuracy": float(right[i] / count[i]) if count[i] else None} for i in range(k)]

    @staticmethod
    def _bootstrap(groups, ok, k, n_boot, seed):
        """95 % percentile interval of the worst-group accuracy, resampling within groups."""
        rng = np.random.default_rng(seed)
        members = [ok[groups == g] for g in range(k)]
        members = [m for m in members if m.size]
        worst = np.empty(n_boot)
        for b in range(n_boot):
            worst[b] = min(rng.choice(m, size=m.size, replace=True).mean() for m in members)
        lo, hi = np.percentile(worst, [2.5, 97.5])
        return [float(lo), float(hi)]

    def to_dict(self) -> Dict:
        return {k: getattr(self, k) for k in (
            "n", "accuracy", "worst_group_accuracy", "worst_group_ci", "weighted_accuracy",
            "worst_class_accuracy", "balanced_accuracy", "prediction_share", "per_group",
            "per_class", "group_names")}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """The report as a plain-text table (one line per group)."""
        pct = lambda v: "  absent" if v is None else f"{100 * v:7.2f}%"  # noqa: E731
        lines = [f"{'group':<16}{'count':>8}{'accuracy':>10}"]
        for g in self.per_group:
            name = self.group_names[g["id"]] if self.group_names else str(g["id"])
            lines.append(f"{name:<16}{g['count']:>8}{pct(g['accuracy']):>10}")
        lines.append(f"{'mean':<16}{self.n:>8}{pct(self.accuracy):>10}")
        if self.per_group:
            ci = "" if self.worst_group_ci is None else \
                f"  (95% CI {100 * self.worst_group_ci[0]:.1f}-{100 * self.worst_group_ci[1]:.1f})"
            lines.append(f"{'worst group':<16}{'':>8}{pct(self.worst_group_accuracy):>10}{ci}")
        if self.weighted_accuracy is not None:
            lines.append(f"{'train-weighted':<16}{'':>8}{pct(self.weighted_accuracy):>10}")
        lines.append(f"{'worst class':<16}{'':>8}{pct(self.worst_class_accuracy):>10}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        f = lambda v: "None" if v is None else f"{v:.4f}"  # noqa: E731
        return f"GroupReport(n={self.n}, accuracy={f(self.accuracy)}, worst_group={f(self.worst_group_accuracy)})"


def evaluate(head_or_model, eval_set, train_set=None, train_proportions=None, group_names=None,
             n_boot: int = 0, seed: int = 0) -> GroupReport:
    """Evaluate a head/model (or an array of predictions) on an :class:`EmbeddingSet`.

    ``train_set`` (with groups) or ``train_proportions`` gives the weights of the
    training-proportion-weighted accuracy; ``n_boot > 0`` adds a bootstrap 95 %
    interval for the worst-group accuracy.
    """
    check_embedding_set(eval_set, "eval_set")
    if isinstance(head_or_model, (np.ndarray, torch.Tensor)):
        preds = check_ids(head_or_model, "head_or_model (predictions)", len(eval_set))
    else:
        preds = predict(head_or_model, eval_set.features, n_classes=eval_set.n_classes)
    if train_set is not None and train_proportions is None and train_set.groups is not None:
        c = train_set.group_counts()
        train_proportions = c / c.sum()
    return GroupReport(eval_set.labels, preds, eval_set.groups, eval_set.n_classes, eval_set.n_groups,
                       train_proportions, group_names, n_boot, seed)


# -- selective classification (MaskTune's evaluation) ----------------------------
#: the coverages MaskTune reports
COVERAGES = (0.8, 0.85, 0.9, 0.95, 1.0)


def ensemble_confidence(logits_a: torch.Tensor, logits_b: torch.Tensor):
    """MaskTune's two-model confidence: ``p = softmax(softmax(z_a) * softmax(z_b))``;
    returns ``(max p, argmax p)``, (N,) each."""
    p = torch.softmax(torch.softmax(logits_a.double(), 1) * torch.softmax(logits_b.double(), 1), 1)
    conf, pred = p.max(1)
    return conf, pred


def selective_thresholds(confidence, coverages: Sequence[float] = COVERAGES) -> np.ndarray:
    """The confidence threshold of each coverage ``c`` from held-out confidences: the
    ``round(c N)``-th highest (1-based), so that accepting ``confidence >= threshold``
    accepts ``round(c N)`` of these samples when there are no ties."""
    conf = np.sort(np.asarray(confidence, dtype=np.float64).ravel())[::-1]
    if conf.size == 0:
        raise ValueError("confidence: need at least one held-out confidence to set thresholds")
    cov = np.asarray(coverages, dtype=np.float64)
    if cov.ndim != 1 or np.any(~(cov > 0)) or np.any(cov > 1):
        raise ValueError(f"coverages: expected numbers in (0, 1], got {list(np.atleast_1d(coverages))}")
    rank = np.clip(np.rint(cov * conf.size).astype(np.int64), 1, conf.size)
    return conf[rank - 1]


def selective_curve(confidence, correct, thresholds, coverages: Sequence[float] = COVERAGES) -> List[Dict]:
    """Per coverage: the fraction of samples accepted (``confidence >= threshold``) and
    the error rate on them (``None`` when none is accepted)."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape:
        raise ValueError(f"correct: expected one flag per confidence ({conf.size}), got {ok.size}")
    out = []
    for c, t in zip(coverages, np.asarray(thresholds, dtype=np.float64)):
        acc = conf >= t
        n = int(acc.sum())
        out.append({"coverage": float(c), "threshold": float(t), "accepted": n / max(conf.size, 1),
                    "error": float(1.0 - ok[acc].mean()) if n else None})
    return out
