"""Quantile sketch: a mergeable streaming quantile sketch per (group, neuron), with a rank-error bound.

For data read once (larger than memory, or spread over workers) where the exact
quantiles of :func:`pydebias.stats.grouped_quantiles` (several passes over one array)
do not apply. Each worker sketches its shard; ``a.merge(b)`` (or ``a + b``) is the sketch
of the union, with the same kind of guarantee.

Design: a deterministic *compactor hierarchy* (Manku-Rajagopalan-Lindsay; the
deterministic form of KLL, chosen over KLL's random compactions and over t-digest
because its rank error has a hard, data-independent bound -- no distribution, heavy
tail, point mass or ordering of the rows can break it -- and because it merges
exactly as it builds). Level ``h`` holds data values of weight ``2**h``. When a level
holds ``k`` or more items it is *compacted*: sorted, and every other item of an even
number of them (alternately the odd and the even positions) moves up one level with
twice the weight. Every stored item is a data value, returned bit for bit.

Error bound. A compaction at level ``h`` moves the weighted rank of any value by at most
``2**h``; the sketch adds these up exactly (:meth:`QuantileSketch.rank_error_bound`).
A level-``h`` compaction consumes at least ``k`` items of weight ``2**h``, so level ``h``
is compacted at most ``n / (k 2**h)`` times and contributes at most ``n / k``; with
``L = floor(log2(n / k)) + 1`` levels ever compacted, the bound is
``E <= L n / k``. The answer ``v`` to ``quantile(q)`` satisfies, for the target rank
``r = floor((n - 1) q)``::

    #{x < v} - E  <=  r  <=  #{x <= v} - 1 + E

i.e. ``v`` is the exact order statistic of some rank within ``E`` of ``r``. With the
default ``k = 4096``, ``L n / k <= 0.5 %`` of ``n`` for every ``n < 2**31`` rows per group
(``L <= 20``, ``20 / 4096 = 0.49 %``). Merging adds the parts' bounds plus the
compactions the merge itself makes, and the same counting argument bounds the total by
``L n / k`` of the union.

Memory: at most about ``k (L + 1)`` values per (group, neuron), stored as float32 for
float32/float16/bfloat16 input (exact) and float64 otherwise. All neurons of a group see
the same rows, so their compactions happen together: each level is one ``(M, size)``
array sorted along its rows, which keeps the work vectorised in numpy.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _arrays
from .validation import check_chunk_rows, check_features

__all__ = ["QuantileSketch", "sketch_quantiles"]

DEFAULT_K = 4096


class _Levels:
    """One group's compactor hierarchy: level h is a list of (M, size) value blocks."""

    def __init__(self, m: int, dtype):
        self.m = m
        self.dtype = dtype
        self.blocks: List[List[np.ndarray]] = [[]]
        self.sizes: List[int] = [0]
        self.parity: List[int] = [0]

    def _ensure(self, h: int) -> None:
        while len(self.blocks) <= h:
            self.blocks.append([])
            self.sizes.append(0)
            self.parity.append(0)

    def add(self, h: int, block: np.ndarray) -> None:
        if block.shape[1]:
            self._ensure(h)
            self.blocks[h].append(block)
            self.sizes[h] += block.shape[1]

    def level(self, h: int) -> np.ndarray:
        if len(self.blocks[h]) != 1:
            self.blocks[h] = [np.concatenate(self.blocks[h], axis=1) if self.blocks[h]
                              else np.empty((self.m, 0), dtype=self.dtype)]
        return self.blocks[h][0]

    def compact(self, k: int) -> int:
        """Compact every level holding >= k items, lowest first; the added error bound."""
        err = 0
        h = 0
        while h < len(self.blocks):
            if self.sizes[h] >= k:
                items = self.level(h)
                even = items.shape[1] & ~1
                part = np.sort(items[:, :even], axis=1)
                up = part[:, self.parity[h]::2]
                self.parity[h] ^= 1
                rest = items[:, even:]
                self.blocks[h] = [rest]
                self.sizes[h] = rest.shape[1]
                self.add(h + 1, np.ascontiguousarray(up))
                err += 1 << h
            h += 1
        return err

    def items(self) -> Tuple[np.ndarray, np.ndarray]:
        vals, weights = [], []
        for h in range(len(self.blocks)):
            if self.sizes[h]:
                vals.append(self.level(h))
                weights.append(np.full(self.sizes[h], 1 << h, dtype=np.int64))
        if not vals:
            return np.empty((self.m, 0), dtype=self.dtype), np.empty(0, dtype=np.int64)
        return np.concatenate(vals, axis=1), np.concatenate(weights)

    def copy(self, dtype=None) -> "_Levels":
        out = _Levels(self.m, dtype or self.dtype)
        out.blocks = [[self.level(h).astype(out.dtype, copy=True)] for h in range(len(self.blocks))]
        out.sizes = list(self.sizes)
        out.parity = list(self.parity)
        return out


class QuantileSketch:
    """Mergeable quantile sketch of every neuron of ``(N, M)`` features, per group.

    ``update(features, groups)`` adds rows (numpy, memmap or torch; float32/64,
    float16, bfloat16); ``quantile(q)`` returns shape ``group_shape + (M,)``, each value
    a data value whose rank is within :meth:`rank_error_bound` of ``floor((n-1) q)``
    (see the module docstring for the bound, <= 0.5 % of the rows with the default
    ``k``). NaN raises ``ValueError``; +-inf are ordinary values. Empty groups give NaN.
    """

    def __init__(self, n_features: int, n_groups: int = 1, k: int = DEFAULT_K,
                 group_shape: Optional[Sequence[int]] = None):
        if int(n_features) < 1:
            raise ValueError(f"n_features: expected >= 1, got {n_features}")
        if int(n_groups) < 1:
            raise ValueError(f"n_groups: expected >= 1, got {n_groups}")
        if int(k) < 2 or int(k) % 2:
            raise ValueError(f"k: expected an even level capacity >= 2, got {k}")
        self.n_features, self.n_groups, self.k = int(n_features), int(n_groups), int(k)
        self.group_shape = tuple(group_shape) if group_shape else (self.n_groups,)
        if math.prod(self.group_shape) != self.n_groups:
            raise ValueError(f"group_shape: {self.group_shape} does not hold {self.n_groups} groups")
        self._count = np.zeros(self.n_groups, dtype=np.int64)
        self._err = np.zeros(self.n_groups, dtype=np.int64)
        self._dtype = None
        self._levels: List[Optional[_Levels]] = [None] * self.n_groups

    # -- building ----------------------------------------------------------------
    def update(self, features, groups=None, chunk_rows: Optional[int] = None) -> "QuantileSketch":
        """Add the rows of ``features`` (group ids ``groups``, default all 0); returns self."""
        check_features(features)
        n, m = features.shape
        if m != self.n_features:
            raise ValueError(f"features: expected {self.n_features} columns, got {m}")
        if groups is None:
            g = np.zeros(n, dtype=np.int64)
        else:
            g = _arrays.to_numpy(groups)
            if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
                raise ValueError(f"groups: expected {n} integer ids, got shape {g.shape}, dtype {g.dtype}")
            if n and (g.min() < 0 or g.max() >= self.n_groups):
                raise ValueError(f"groups: ids must lie in [0, {self.n_groups}); got [{g.min()}, {g.max()}]")
        check_chunk_rows(chunk_rows)
        if chunk_rows is None:
            chunk_rows = max(self.k, _arrays.default_chunk_rows(m, 4, 32 << 20))
        for sl in _arrays.row_chunks(n, chunk_rows):
            x = self._values(features[sl])
            gs = g[sl]
            for k in np.unique(gs):
                rows = x[gs == k]
                self._add(int(k), np.ascontiguousarray(rows.T))
        return self

    def _values(self, chunk) -> np.ndarray:
        """The chunk as float32 (exact for 32- and 16-bit floats) or float64."""
        if _arrays.is_tensor(chunk):
            narrow = chunk.dtype in (torch.float32, torch.float16, torch.bfloat16)
            x = chunk.detach().cpu().to(torch.float32 if narrow else torch.float64).numpy()
        else:
            narrow = np.dtype(chunk.dtype) in (np.dtype(np.float32), np.dtype(np.float16))
            x = np.asarray(chunk, dtype=np.float32 if narrow else np.float64)
        if np.isnan(x).any():
            raise ValueError("features: contains NaN; drop or impute those rows before sketching")
        want = x.dtype if self._dtype is None else np.promote_types(self._dtype, x.dtype)
        self._set_dtype(want)
        return x.astype(self._dtype, copy=False)

    def _set_dtype(self, dtype) -> None:
        dtype = np.dtype(dtype)
        if self._dtype == dtype:
            return
        self._dtype = dtype
        self._levels = [lv.copy(dtype) if lv is not None else None for lv in self._levels]

    def _add(self, k: int, cols: np.ndarray) -> None:
        lv = self._levels[k]
        if lv is None:
            lv = self._levels[k] = _Levels(self.n_features, self._dtype)
        self._count[k] += cols.shape[1]
        # feed level 0 in pieces of at most k so no level grows past 2k before compacting
        for s in range(0, cols.shape[1], self.k):
            lv.add(0, cols[:, s:s + self.k])
            self._err[k] += lv.compact(self.k)

    # -- combining -------------------------------------------------------------
    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        """The sketch of the union of both row sets (neither input changes)."""
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"other: expected QuantileSketch, got {type(other).__name__}")
        if (other.n_features, other.n_groups, other.k) != (self.n_features, self.n_groups, self.k):
            raise ValueError("other: sketches differ in n_features, n_groups or k; merge sketches built alike")
        out = QuantileSketch(self.n_features, self.n_groups, self.k, self.group_shape)
        dts = [d for d in (self._dtype, other._dtype) if d is not None]
        out._dtype = np.result_type(*dts) if dts else None
        out._count = self._count + other._count
        out._err = self._err + other._err
        for k in range(self.n_groups):
            a, b = self._levels[k], other._levels[k]
            if a is None and b is None:
                continue
            lv = (a if a is not None else b).copy(out._dtype)
            if a is not None and b is not None:
                for h in range(len(b.blocks)):
                    if b.sizes[h]:
                        lv.add(h, b.level(h).astype(out._dtype, copy=True))
                out._err[k] += lv.compact(self.k)
            out._levels[k] = lv
        return out

    def __add__(self, other: "QuantileSketch") -> "QuantileSketch":
        return self.merge(other)

    # -- queries ---------------------------------------------------------------
    @property
    def count(self) -> np.ndarray:
        return self._count.reshape(self.group_shape)

    def rank_error_bound(self) -> np.ndarray:
        """Per group, the largest possible rank error (in rows) of any quantile answer."""
        return self._err.reshape(self.group_shape)

    def quantile(self, q: float) -> np.ndarray:
        """Approximate quantile ``q`` per (group, neuron), float64, shape ``group_shape + (M,)``."""
        q = float(q)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q: expected a level in [0, 1], got {q}")
        out = np.full((self.n_groups, self.n_features), np.nan)
        for k in range(self.n_groups):
            n = int(self._count[k])
            if n == 0:
                continue
            vals, w = self._levels[k].items()
            r = int(math.floor((n - 1) * q))
            order = np.argsort(vals, axis=1, kind="stable")
            cw = np.cumsum(w[order], axis=1)
            j = (cw <= r).sum(axis=1)  # first item whose cumulative weight passes r
            at = np.take_along_axis(order, j[:, None], axis=1)  # total weight is n > r: j is in range
            out[k] = np.take_along_axis(vals, at, axis=1)[:, 0]
        return out.reshape(self.group_shape + (self.n_features,))

    @property
    def median(self) -> np.ndarray:
        return self.quantile(0.5)

    def __repr__(self) -> str:
        return (f"QuantileSketch(groups={self.group_shape}, neurons={self.n_features}, k={self.k}, "
                f"rows={int(self._count.sum())})")


def sketch_quantiles(features, groups=None, n_groups: Optional[int] = None, quantiles: Sequence[float] = (0.5,),
                     k: int = DEFAULT_K, chunk_rows: Optional[int] = None) -> np.ndarray:
    """One streaming pass: approximate quantiles, shape ``(len(quantiles), G, M)``."""
    check_features(features)
    if groups is not None and n_groups is None:
        g = _arrays.to_numpy(groups)
        n_groups = int(g.max()) + 1 if g.size else 1
    s = QuantileSketch(features.shape[1], n_groups or 1, k).update(features, groups, chunk_rows)
    return np.stack([s.quantile(q).reshape(s.n_groups, -1) for q in quantiles])
