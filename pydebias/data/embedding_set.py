"""EmbeddingSet: features + labels (+ optional group and concept labels) of one split."""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch

from .. import _arrays
from ..validation import check_features, check_ids, check_table, count_ids


class EmbeddingSet:
    """Embeddings of one split, validated at construction.

    Parameters
    ----------
    features : (N, M) numpy array, ``np.memmap`` or torch tensor (CPU or CUDA),
        float32/float64/float16/bfloat16. Kept as given (no copy).
    labels : (N,) non-negative integer class ids.
    groups : optional (N,) non-negative integer group ids (e.g. class x spurious
        attribute). Methods that may not use group labels never read them.
    concepts : optional (N,) 0/1 concept labels (artifact present), for ClArC.
    name, split : free-form names, carried into reports.
    check_finite : scan the features for NaN/inf (in chunks, so memmaps stream).
    """

    def __init__(self, features, labels, groups=None, concepts=None, name: Optional[str] = None,
                 split: Optional[str] = None, n_classes: Optional[int] = None,
                 n_groups: Optional[int] = None, check_finite: bool = True):
        check_features(features, "features")
        n = features.shape[0]
        self.features = features
        self.labels = check_ids(labels, "labels", n, n_classes, "n_classes")
        self.groups = None if groups is None else check_ids(groups, "groups", n, n_groups, "n_groups")
        self.concepts = None if concepts is None else check_ids(concepts, "concepts", n)
        if self.concepts is not None and self.concepts.size and self.concepts.max() > 1:
            raise ValueError("concepts: expected 0/1 per sample (1 = concept present)")
        self.name, self.split = name, split
        self.n_classes = count_ids(self.labels, n_classes, "labels", "n_classes")
        self.n_groups = 0 if self.groups is None else count_ids(self.groups, n_groups, "groups", "n_groups")
        # every head is at least one float32 row per class, and group tables as large:
        # a sparse id (10**12) must not reach them
        size = _arrays.nbytes(features)
        check_table(self.n_classes, 4 * self.n_features, size, "classes",
                    "n_classes" if n_classes is not None else "labels")
        check_table(self.n_groups, 4 * self.n_features, size, "groups",
                    "n_groups" if n_groups is not None else "groups")
        if check_finite:
            self._check_finite()

    def _check_finite(self) -> None:
        x = self.features
        m = x.shape[1]
        rows = _arrays.default_chunk_rows(m, 4, 32 << 20)
        for sl in _arrays.row_chunks(x.shape[0], rows):
            chunk = x[sl]
            bad = (~torch.isfinite(chunk)).any().item() if _arrays.is_tensor(chunk) \
                else not np.isfinite(chunk).all()
            if bad:
                raise ValueError(
                    f"features: rows {sl.start}..{sl.stop - 1} contain NaN or inf; "
                    "drop or impute them, or pass check_finite=False to skip this scan")

    # -- views ----------------------------------------------------------------
    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def has_groups(self) -> bool:
        return self.groups is not None

    def group_counts(self) -> np.ndarray:
        if self.groups is None:
            raise ValueError("groups: this set has no group labels")
        return np.bincount(self.groups, minlength=self.n_groups)

    def tensor(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Features as a torch tensor (a copy only when dtype/device change)."""
        return _arrays.as_tensor(self.features).to(dtype=dtype, device=device)

    def subset(self, index, split: Optional[str] = None) -> "EmbeddingSet":
        """Rows ``index`` (indices or boolean mask) as a new set (features copied; from an
        ``np.memmap``, above 64 MB into a temporary memmap in ``$PYDEBIAS_SCRATCH``, not
        into memory)."""
        index = np.asarray(index)
        if index.dtype == np.bool_:
            index = np.flatnonzero(index)
        feats = _arrays.take_rows(self.features, index.astype(np.int64, copy=False))
        # rows of a checked set: copy the set, not the checks (ids, counts, finiteness)
        out = copy.copy(self)
        out.features, out.labels = feats, self.labels[index]
        out.groups = None if self.groups is None else self.groups[index]
        out.concepts = None if self.concepts is None else self.concepts[index]
        out.split = split or self.split
        return out

    def holdout_mask(self, fraction: float, seed: int = 0) -> np.ndarray:
        """Boolean (N,) mask of a class-stratified random ``fraction`` of the rows (the
        holdout of :meth:`split_holdout`), without copying any features."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        hold = np.zeros(len(self), dtype=bool)
        for c in range(self.n_classes):
            idx = np.flatnonzero(self.labels == c)
            k = int(round(fraction * idx.size))
            hold[rng.choice(idx, size=k, replace=False)] = True
        return hold

    def split_holdout(self, fraction: float, seed: int = 0):
        """Class-stratified random split into (rest, holdout) with ``fraction`` held out
        (both copied; :meth:`holdout_mask` gives the rows without a copy)."""
        hold = self.holdout_mask(fraction, seed)
        return self.subset(~hold), self.subset(hold)

    def fingerprint(self) -> str:
        """A hash of features and labels (streamed), recorded in result JSON."""
        import hashlib

        h = hashlib.sha256()
        h.update(str((tuple(self.features.shape), str(self.features.dtype))).encode())
        x = self.features
        for sl in _arrays.row_chunks(x.shape[0], _arrays.default_chunk_rows(x.shape[1], 4, 32 << 20)):
            chunk = x[sl]
            if _arrays.is_tensor(chunk):
                chunk = chunk.detach().cpu()
                chunk = chunk.view(torch.int16) if chunk.dtype == torch.bfloat16 else chunk
                chunk = chunk.contiguous().numpy()
            h.update(np.ascontiguousarray(chunk).tobytes())
        h.update(self.labels.tobytes())
        if self.groups is not None:
            h.update(self.groups.tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        g = f", groups={self.n_groups}" if self.groups is not None else ""
        return (f"EmbeddingSet(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"features={self.n_features}, classes={self.n_classes}{g})")
