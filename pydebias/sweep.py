"""mask-sweep evaluation: per-group accuracy of K candidate masks in one pass.

``mask_sweep`` reads the embeddings once, in row chunks (numpy arrays, memmaps larger
than RAM, CPU or CUDA tensors), and for every chunk computes the logits of all K masked
heads at once, their arg-max (ties to the first class, as ``torch.argmax``) and the
correct predictions per (mask, class, group). Only ``chunk_rows × K × C`` logits exist
at any time, never ``K × N``.

Backends: ``"cpp"``/``"auto"`` on the CPU run one BLAS GEMM per chunk against the
stacked masked weights (K·C, M) (see :mod:`pydebias.nn.masked` for why the CPU path is
torch's BLAS), ``"triton"`` runs ``pydebias.kernels.mask_sweep`` (logits, arg-max and
integer counters fused, nothing but the counters written), ``"torch"`` runs the
reference: a python loop of K masked forward passes per chunk.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from . import _arrays, backends, reference
from .nn.masked import _check_weight, check_masks, fold_masks
from .validation import check_features, check_ids, check_table

__all__ = ["SweepResult", "mask_sweep"]

_LOGITS_BUDGET = 1 << 22  # logits per chunk (chunk_rows * K * C), 16 MB in float32
_WEIGHT_BUDGET = 1 << 24  # stacked masked weights kept at once (K_block * C * M)
_NAN = ("features: the masked logits contain NaN (NaN in the features, or +inf and -inf "
        "meeting in one product sum); drop or impute those rows")


class SweepResult:
    """Correct counts of K masks per group and per class, and the accuracies they give.

    ``group_correct`` (K, G), ``group_count`` (G,), ``class_correct`` (K, C),
    ``class_count`` (C,), int64 numpy arrays. A group (or class) with no rows is
    *absent*: its accuracy is NaN in the (K, G) table and it does not enter the
    worst-group minimum (as in :class:`pydebias.GroupReport`).
    """

    def __init__(self, group_correct: np.ndarray, group_count: np.ndarray,
                 class_correct: np.ndarray, class_count: np.ndarray, backend: str):
        self.group_correct = group_correct
        self.group_count = group_count
        self.class_correct = class_correct
        self.class_count = class_count
        self.backend = backend

    @property
    def n(self) -> int:
        return int(self.class_count.sum())

    @property
    def n_masks(self) -> int:
        return int(self.class_correct.shape[0])

    @property
    def correct(self) -> np.ndarray:
        """(K,) correct predictions of each mask over all rows."""
        return self.class_correct.sum(1)

    @property
    def accuracy(self) -> np.ndarray:
        """(K,) accuracy of each mask over all rows."""
        return self.correct / max(self.n, 1)

    @staticmethod
    def _ratio(right: np.ndarray, count: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, right / np.maximum(count, 1), np.nan)

    @property
    def group_accuracy(self) -> np.ndarray:
        """(K, G) accuracy per mask and group; NaN for absent groups."""
        return self._ratio(self.group_correct, self.group_count[None, :])

    @property
    def class_accuracy(self) -> np.ndarray:
        """(K, C) accuracy per mask and class; NaN for absent classes."""
        return self._ratio(self.class_correct, self.class_count[None, :])

    @property
    def worst_group_accuracy(self) -> np.ndarray:
        """(K,) minimum over the present groups."""
        return self.group_accuracy[:, self.group_count > 0].min(1)

    @property
    def worst_class_accuracy(self) -> np.ndarray:
        """(K,) minimum over the present classes (the label-only selection criterion)."""
        return self.class_accuracy[:, self.class_count > 0].min(1)

    @property
    def mean_group_accuracy(self) -> np.ndarray:
        """(K,) unweighted mean over the present groups."""
        return self.group_accuracy[:, self.group_count > 0].mean(1)

    @property
    def balanced_accuracy(self) -> np.ndarray:
        """(K,) unweighted mean over the present classes."""
        return self.class_accuracy[:, self.class_count > 0].mean(1)

    def best(self, metric: str = "worst_group_accuracy") -> int:
        """Index of the mask with the highest ``metric`` (the first one on ties)."""
        allowed = ("worst_group_accuracy", "worst_class_accuracy", "mean_group_accuracy",
                   "balanced_accuracy", "accuracy")
        if metric not in allowed:
            raise ValueError(f"metric: expected one of {allowed}, got {metric!r}")
        return int(np.argmax(getattr(self, metric)))

    def to_dict(self) -> Dict:
        return {"n": self.n, "backend": self.backend,
                "group_correct": self.group_correct.tolist(), "group_count": self.group_count.tolist(),
                "class_correct": self.class_correct.tolist(), "class_count": self.class_count.tolist(),
                "accuracy": self.accuracy.tolist(),
                "worst_group_accuracy": self.worst_group_accuracy.tolist(),
                "worst_class_accuracy": self.worst_class_accuracy.tolist()}

    def __repr__(self) -> str:
        wga = self.worst_group_accuracy
        return (f"SweepResult(masks={self.n_masks}, n={self.n}, groups={self.group_count.size}, "
                f"best worst-group={np.max(wga):.4f} at mask {int(np.argmax(wga))})")


def _to_tensor(a, name: str) -> Optional[torch.Tensor]:
    if a is None or isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(a).__name__}")


@torch.no_grad()
def mask_sweep(features, labels, weight, bias, masks, groups=None, n_groups: Optional[int] = None,
               backend: str = "auto", chunk_rows: Optional[int] = None) -> SweepResult:
    """Per-group and per-class correct counts of K masked linear heads, one pass over ``features``.

    ``features`` (N, M) numpy array / memmap / torch tensor (float32/64, float16,
    bfloat16; half types are widened to float32 per chunk); ``labels`` (N,) in
    ``[0, C)``; ``weight`` (C, M) and ``bias`` (C,) or None (torch or numpy);
    ``masks`` (K, M) input-neuron masks or (K, C, M) per-class weight masks (0/1 or
    real-valued, finite); ``groups`` (N,) in ``[0, n_groups)``, or None to use the
    classes as groups. ``chunk_rows`` defaults so that a chunk holds at most about 4M
    logits (chunk_rows·K·C) and 64 MB of features. NaN logits raise ``ValueError``.
    """
    check_features(features)
    n, n_in = features.shape
    weight = _to_tensor(weight, "weight")
    bias = _to_tensor(bias, "bias")
    _check_weight(weight, bias)
    n_cls = weight.shape[0]
    if weight.shape[1] != n_in:
        raise ValueError(f"weight: expected shape ({n_cls}, {n_in}) to match features with {n_in} "
                         f"columns, got {tuple(weight.shape)}")
    m = check_masks(masks, n_cls, n_in)
    n_masks = m.shape[0]
    if n == 0:
        raise ValueError("features: no rows; a sweep needs at least one labelled row")
    y = check_ids(labels, "labels", n, n_cls, "weight.shape[0] classes")
    if groups is None:
        if n_groups is not None and n_groups != n_cls:
            raise ValueError(f"n_groups: without groups the classes are the groups, so n_groups must be "
                             f"None or {n_cls}, got {n_groups}")
        g, n_grp = None, n_cls
    else:
        if n_groups is not None and int(n_groups) < 1:
            raise ValueError(f"n_groups: expected a positive number of groups, got {n_groups}")
        g = check_ids(groups, "groups", n, None if n_groups is None else int(n_groups), "n_groups")
        n_grp = int(n_groups) if n_groups is not None else int(g.max()) + 1
    check_table(n_grp, 16 * n_masks * max(1, n_cls), _arrays.nbytes(features), "groups", "n_groups" if n_groups is not None
                else "groups")
    # "fold": torch's BLAS on folded weights (the CPU path; needs no pydebias._C)
    which = backends.resolve_linear(backend, features, needs_grad=False)
    which = "cpp" if which == "fold" else which  # recorded as the backend of the result
    if chunk_rows is None:
        itemsize = features.element_size() if _arrays.is_tensor(features) else features.dtype.itemsize
        chunk_rows = min(_arrays.default_chunk_rows(n_in, itemsize),
                         max(1, _LOGITS_BUDGET // (n_masks * n_cls)))
    chunk_rows = int(chunk_rows)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows: expected a positive number of rows, got {chunk_rows}")
    chunk_rows = min(chunk_rows, 1 << 24)  # float32 counts per chunk stay exact
    # cell = label * G + group (groups given) or label (classes are the groups)
    cells = y if g is None else y * n_grp + g
    n_cells = n_cls if g is None else n_cls * n_grp
    per_class = m.dim() == 3

    if which == "torch":
        gc = np.zeros((n_masks, n_grp), np.int64)
        cc = np.zeros((n_masks, n_cls), np.int64)
        for sl in _arrays.row_chunks(n, chunk_rows):
            x = _arrays.as_tensor(features[sl])
            if torch.isnan(x).any():
                raise ValueError(_NAN)
            yt = torch.from_numpy(y[sl])
            gt = yt if g is None else torch.from_numpy(g[sl])
            a, b = reference.mask_sweep(x, yt, gt, n_grp, weight, bias, m)
            gc += a.numpy()
            cc += b.numpy()
    else:
        counts = np.zeros((n_masks, n_cells), np.int64)
        run = _chunk_triton if which == "triton" else _chunk_folded(weight, bias, m, features, n_masks)
        for sl in _arrays.row_chunks(n, chunk_rows):
            counts += run(features[sl], y[sl], cells[sl], n_cells, weight, bias, m, per_class)
        if g is None:
            cc = counts
            gc = counts
        else:
            by = counts.reshape(n_masks, n_cls, n_grp)
            cc, gc = by.sum(2), by.sum(1)
    class_count = np.bincount(y, minlength=n_cls)[:n_cls].astype(np.int64)
    group_count = class_count if g is None else np.bincount(g, minlength=n_grp)[:n_grp].astype(np.int64)
    return SweepResult(gc, group_count, cc, class_count, which)


def _chunk_triton(chunk, y, cells, n_cells, weight, bias, masks, per_class) -> np.ndarray:
    from .kernels import mask_sweep as triton_impl

    x = _arrays.as_tensor(_arrays.contiguous_rows(chunk))
    if not x.is_cuda and not backends.triton_interpreted():
        raise ValueError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is imported")
    dev = x.device
    counts, nan = triton_impl.mask_sweep(x, torch.from_numpy(y).to(dev), torch.from_numpy(cells).to(dev), n_cells,
                                weight.to(dev), None if bias is None else bias.to(dev), masks.to(dev),
                                per_class)
    if nan:
        raise ValueError(_NAN)
    return counts.cpu().numpy()


def _count_by_cell(hits: torch.Tensor, cells: torch.Tensor, n_cells: int) -> torch.Tensor:
    """(n_cells, K) sums of the 0/1 float rows of ``hits`` (rows, K) per cell, exact integers.

    Few cells: one small GEMM against the one-hot of the cells (float32 sums of 0/1 are
    exact below 2**24 rows, which the caller guarantees); many cells: ``index_add_``.
    """
    if n_cells <= 64:
        one_hot = torch.zeros(n_cells, cells.shape[0], dtype=hits.dtype, device=hits.device)
        one_hot[cells, torch.arange(cells.shape[0], device=hits.device)] = 1
        return one_hot @ hits
    return torch.zeros(n_cells, hits.shape[1], dtype=hits.dtype, device=hits.device).index_add_(0, cells, hits)


def _chunk_folded(weight, bias, masks, features, n_masks):
    """The BLAS path: one GEMM per chunk against the stacked masked weights.

    Every cell holds one label (``cell = label * G + group``), so the correct count of
    a (mask, cell) is the number of its rows whose arg-max is the cell's label. With two
    classes the GEMM computes only the logit difference ``d = l1 - l0`` (K columns
    instead of 2K, against ``m1 ⊙ W1 - m0 ⊙ W0``): the arg-max is 1 exactly when
    ``d > 0`` (a tie goes to class 0, as ``torch.argmax``), and class-0 cells count
    ``rows - positives``. Only differences within float rounding of a tie can decide
    otherwise than the reference's two logits, as between any two GEMM summation orders.
    """
    fdt = features.dtype if _arrays.is_tensor(features) else torch.from_numpy(np.empty(0, features.dtype)).dtype
    ct = reference._compute_dtype(fdt, weight.dtype)
    device = features.device if _arrays.is_tensor(features) else torch.device("cpu")
    n_cls, n_in = weight.shape
    binary = n_cls == 2
    cols = 1 if binary else n_cls  # GEMM columns per mask
    w = weight.to(device=device, dtype=ct)
    b = torch.zeros(n_cls, dtype=ct, device=device) if bias is None else bias.to(device=device, dtype=ct)
    m = masks.to(device=device, dtype=ct)

    def stacked(k0, k1):
        ws = fold_masks(w, m[k0:k1])  # ((k1-k0)*C, M)
        bs = b.repeat(k1 - k0)
        if binary:
            ws = ws[1::2] - ws[0::2]
            bs = bs[1::2] - bs[0::2]
        return ws, bs

    # masks per block so the stacked weights stay within budget; cached when they all fit
    kb = max(1, min(n_masks, _WEIGHT_BUDGET // max(1, cols * n_in)))
    blocks = [(k0, min(n_masks, k0 + kb)) for k0 in range(0, n_masks, kb)]
    cached = {blk: stacked(*blk) for blk in blocks} if len(blocks) == 1 else None

    def run(chunk, y, cells, n_cells, *_):
        x = _arrays.as_tensor(chunk)
        if x.device != device:
            x = x.to(device)
        x = x.to(ct)
        rows = x.shape[0]
        on_cpu = device.type == "cpu"
        per_cell = np.bincount(cells, minlength=n_cells)[:n_cells]
        if on_cpu:
            # Rows sorted by cell once per chunk; counts are then segment sums (numpy,
            # single-threaded: small passes that OpenMP would only slow down on a busy machine).
            order = np.argsort(cells, kind="stable")
            present = per_cell > 0
            starts = (np.cumsum(per_cell) - per_cell)[present]
        else:
            cell_t = torch.from_numpy(cells).to(device)
        label1 = (np.arange(n_cells) // (n_cells // n_cls)) == 1  # cell = label * G + group
        out = np.zeros((n_masks, n_cells), np.int64)

        def count(hits_fn, logits):
            if on_cpu:
                hits = hits_fn(logits.numpy())[order].view(np.uint8)  # (rows sorted by cell, kb)
                c = np.zeros((n_cells, hits.shape[1]), np.int64)
                c[present] = np.add.reduceat(hits, starts, axis=0, dtype=np.int64)
                return c.T
            return _count_by_cell(hits_fn(logits).to(torch.float32), cell_t, n_cells).T.round().to(
                torch.int64).cpu().numpy()

        for k0, k1 in blocks:
            ws, bs = cached[(k0, k1)] if cached is not None else stacked(k0, k1)
            logits = torch.addmm(bs, x, ws.T)  # (rows, kb * cols)
            total = logits.numpy().sum() if on_cpu else logits.sum()
            if bool(total != total) and bool(torch.isnan(logits).any()):
                raise ValueError(_NAN)
            if binary:
                pos = count(lambda d: d > 0, logits)  # rows where class 1 wins (ties go to 0)
                out[k0:k1] = np.where(label1[None, :], pos, per_cell[None, :] - pos)
            else:
                lab = y if on_cpu else torch.from_numpy(y).to(device)
                out[k0:k1] = count(lambda z: z.reshape(rows, k1 - k0, n_cls).argmax(2) == lab[:, None], logits)
        return out

    return run

