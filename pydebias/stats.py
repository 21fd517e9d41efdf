"""Per-neuron activation statistics split by group (class x correctness, or any grouping).

``neuron_stats`` makes one streaming pass over the features (numpy, memmap or torch)
through the backend chosen in :mod:`pydebias.backends`; the result is a
:class:`NeuronStats` that merges with another (Chan et al.'s parallel update) and
round-trips through a JSON-safe dict, so shards computed on different workers or
files combine into the statistics of the whole.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _arrays, backends, reference

__all__ = ["NeuronStats", "neuron_stats"]


class NeuronStats:
    """Count, mean, variance, min and max per (group, neuron), accumulated in float64.

    Arrays are stored flat over groups, ``(G,)`` and ``(G, M)``, and exposed with the
    group layout they were computed with: ``group_shape == (C, 2)`` for class x
    correctness (``[c, 0]`` = class ``c`` misclassified, ``[c, 1]`` = correct), else
    ``(G,)``. Empty groups have ``count == 0`` and NaN moments; ``var`` is the unbiased
    (ddof=1) variance and is NaN where fewer than two rows were seen.
    """

    def __init__(self, count, mean, m2, min, max, group_shape: Optional[Sequence[int]] = None):
        self._count = np.asarray(count, dtype=np.int64).reshape(-1)
        self._mean = np.asarray(mean, dtype=np.float64).reshape(self._count.size, -1)
        self._m2 = np.asarray(m2, dtype=np.float64).reshape(self._mean.shape)
        self._min = np.asarray(min, dtype=np.float64).reshape(self._mean.shape)
        self._max = np.asarray(max, dtype=np.float64).reshape(self._mean.shape)
        self.group_shape: Tuple[int, ...] = tuple(group_shape) if group_shape else (self._count.size,)
        if int(np.prod(self.group_shape)) != self._count.size:
            raise ValueError(f"group_shape: {self.group_shape} does not hold {self._count.size} groups")

    @classmethod
    def from_shifted_sums(cls, count, s1, s2, lo, hi, shift, group_shape=None) -> "NeuronStats":
        """Finish kernel accumulators: sums of ``x - shift`` and of its square."""
        count = np.asarray(count, dtype=np.int64)
        n = count.astype(np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = shift[None, :] + s1 / n
            m2 = s2 - s1 * s1 / n
        m2 = np.where(np.isfinite(m2), np.maximum(m2, 0.0), m2)
        empty = (count == 0)[:, None]
        nan = np.float64("nan")
        return cls(count, np.where(empty, nan, mean), np.where(empty, nan, m2),
                   np.where(empty, nan, lo), np.where(empty, nan, hi), group_shape)

    # -- shapes ---------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return self._count.size

    @property
    def n_features(self) -> int:
        return self._mean.shape[1]

    def _shaped(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.group_shape + a.shape[1:])

    @property
    def count(self) -> np.ndarray:
        return self._shaped(self._count)

    @property
    def mean(self) -> np.ndarray:
        return self._shaped(self._mean)

    @property
    def m2(self) -> np.ndarray:
        """Sum of squared deviations from the group mean."""
        return self._shaped(self._m2)

    @property
    def var(self) -> np.ndarray:
        n = self._count.astype(np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(n >= 2, self._m2 / (n - 1), np.nan)
        return self._shaped(v)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    @property
    def min(self) -> np.ndarray:
        return self._shaped(self._min)

    @property
    def max(self) -> np.ndarray:
        return self._shaped(self._max)

    @property
    def median(self) -> np.ndarray:
        raise NotImplementedError(
            "median: exact grouped quantiles (kernel K2) are not in this build yet; "
            "compute them with numpy on the rows of each group")

    # -- combining ------------------------------------------------------------
    def merge(self, other: "NeuronStats") -> "NeuronStats":
        """Statistics of the union of the two row sets (Chan's parallel update)."""
        if not isinstance(other, NeuronStats):
            raise TypeError(f"other: expected NeuronStats, got {type(other).__name__}")
        if other._mean.shape != self._mean.shape or other.group_shape != self.group_shape:
            raise ValueError(
                f"other: shapes differ ({self.group_shape}, M={self.n_features}) vs "
                f"({other.group_shape}, M={other.n_features}); merge statistics of the same grouping")
        na = self._count.astype(np.float64)[:, None]
        nb = other._count.astype(np.float64)[:, None]
        n = na + nb
        a_empty, b_empty = na == 0, nb == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (na * np.where(a_empty, 0, self._mean) + nb * np.where(b_empty, 0, other._mean)) / n
            delta = other._mean - self._mean
            m2 = self._m2 + other._m2 + delta * delta * na * nb / n
        mean = np.where(a_empty, other._mean, np.where(b_empty, self._mean, mean))
        m2 = np.where(a_empty, other._m2, np.where(b_empty, self._m2, m2))
        lo = np.where(a_empty, other._min, np.where(b_empty, self._min, np.minimum(self._min, other._min)))
        hi = np.where(a_empty, other._max, np.where(b_empty, self._max, np.maximum(self._max, other._max)))
        return NeuronStats(self._count + other._count, mean, m2, lo, hi, self.group_shape)

    def __add__(self, other: "NeuronStats") -> "NeuronStats":
        return self.merge(other)

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> Dict:
        """JSON-safe dict (NaN and infinities as strings, float64 exact via repr)."""
        def enc(a):
            return [[_enc_float(v) for v in row] for row in a.tolist()]
        return {
            "format": "pydebias.NeuronStats/1",
            "group_shape": list(self.group_shape),
            "count": self._count.tolist(),
            "mean": enc(self._mean), "m2": enc(self._m2),
            "min": enc(self._min), "max": enc(self._max),
        }

    @classmethod
    def from_dict(cls, d: Dict) -> "NeuronStats":
        if d.get("format") != "pydebias.NeuronStats/1":
            raise ValueError("d: not a NeuronStats dict (missing format 'pydebias.NeuronStats/1')")
        dec = lambda a: np.array([[_dec_float(v) for v in row] for row in a], dtype=np.float64)  # noqa: E731
        count = np.array(d["count"], dtype=np.int64)
        shape = (count.size, -1)
        return cls(count, dec(d["mean"]).reshape(shape), dec(d["m2"]).reshape(shape),
                   dec(d["min"]).reshape(shape), dec(d["max"]).reshape(shape), d["group_shape"])

    def equals(self, other: "NeuronStats", rtol: float = 0.0, atol: float = 0.0) -> bool:
        """Element-wise equality (NaN == NaN), within the given tolerances."""
        return (self.group_shape == other.group_shape
                and np.array_equal(self._count, other._count)
                and all(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
                        for a, b in [(self._mean, other._mean), (self._m2, other._m2),
                                     (self._min, other._min), (self._max, other._max)]))

    def __repr__(self) -> str:
        return f"NeuronStats(groups={self.group_shape}, neurons={self.n_features}, rows={int(self._count.sum())})"


def _enc_float(v: float):
    return v if np.isfinite(v) else repr(v)


def _dec_float(v) -> float:
    return float(v)


# -- the public entry point ----------------------------------------------------------
def _group_ids(n: int, labels, correct, groups, n_groups, n_classes):
    """Flat int64 group ids and the layout they index."""
    if groups is not None:
        g = _arrays.to_numpy(groups)
        _check_ints(g, "groups", n)
        G = int(n_groups) if n_groups is not None else (int(g.max()) + 1 if g.size else 0)
        if g.size and (g.min() < 0 or g.max() >= G):
            raise ValueError(f"groups: ids must lie in [0, {G}); got range [{g.min()}, {g.max()}]")
        return g.astype(np.int64, copy=False), G, (G,)
    if labels is None:
        raise ValueError("labels: pass labels (with optional correct=) or groups=")
    y = _arrays.to_numpy(labels)
    _check_ints(y, "labels", n)
    C = int(n_classes) if n_classes is not None else (int(y.max()) + 1 if y.size else 0)
    if y.size and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"labels: classes must lie in [0, {C}); got range [{y.min()}, {y.max()}]")
    if correct is None:
        return y.astype(np.int64, copy=False), C, (C,)
    ok = _arrays.to_numpy(correct)
    if ok.shape != (n,):
        raise ValueError(f"correct: expected shape ({n},), got {ok.shape}")
    if ok.dtype != np.bool_:
        if not np.isin(ok, (0, 1)).all():
            raise ValueError("correct: expected booleans (prediction == label)")
    return 2 * y.astype(np.int64) + ok.astype(np.int64), 2 * C, (C, 2)


def _check_ints(a: np.ndarray, name: str, n: int) -> None:
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) to match the feature rows, got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected integer ids, got dtype {a.dtype}")


def _shift_of(x) -> np.ndarray:
    """A per-column value near the data (its first row), finite, to centre the sums."""
    if x.shape[0] == 0:
        return np.zeros(x.shape[1], dtype=np.float64)
    first = _arrays.to_numpy(x[:1]).astype(np.float64).reshape(-1)
    return np.where(np.isfinite(first), first, 0.0)


def neuron_stats(features, labels=None, correct=None, groups=None, *, n_groups: Optional[int] = None,
                 n_classes: Optional[int] = None, backend: str = "auto",
                 chunk_rows: Optional[int] = None) -> NeuronStats:
    """Per-neuron statistics of ``features`` (N, M) split by group, in one pass.

    Groups are, in order of precedence: ``groups`` (any integer ids), or
    ``labels`` with ``correct`` (class x correctness, layout ``(C, 2)``, flat id
    ``2*y + correct``), or ``labels`` alone. Inputs may be numpy arrays, memmaps
    (streamed in chunks of ``chunk_rows`` rows, never copied whole) or torch tensors
    (CUDA tensors run the Triton kernels). Accepts float32/64, float16 and bfloat16;
    accumulates in float64. NaN in ``features`` raises ``ValueError``; +-inf is allowed
    and propagates as numpy would (an inf mean, a NaN variance).
    """
    _arrays.check_2d(features)
    n, m = features.shape
    g, G, shape = _group_ids(n, labels, correct, groups, n_groups, n_classes)
    which = backends.resolve(backend, features)
    shift = _shift_of(features)
    if which == "triton":
        return _stats_triton(features, g, G, shift, shape)
    if chunk_rows is None:
        chunk_rows = _arrays.default_chunk_rows(m, features.element_size() if _arrays.is_tensor(features)
                                                else features.dtype.itemsize)
    if which == "cpp":
        count = np.zeros(G, dtype=np.int64)
        s1 = np.zeros((G, m)); s2 = np.zeros((G, m))
        lo = np.full((G, m), np.inf); hi = np.full((G, m), -np.inf)
        lib = backends.native()
        for sl in _arrays.row_chunks(n, chunk_rows):
            arr, code = _arrays.native_view(_arrays.contiguous_rows(features[sl]))
            lib.grouped_moments_accumulate(arr, code, np.ascontiguousarray(g[sl]), G, shift,
                                           count, s1, s2, lo, hi)
        _raise_on_nan(s1, lo, hi, features, chunk_rows)
        return NeuronStats.from_shifted_sums(count, s1, s2, lo, hi, shift, shape)
    # torch reference, chunk by chunk, merged
    total = NeuronStats(np.zeros(G, np.int64), *(np.full((G, m), np.nan) for _ in range(4)), shape)
    for sl in _arrays.row_chunks(n, chunk_rows):
        x = _arrays.as_tensor(features[sl])
        if torch.isnan(x).any():
            raise ValueError("features: contains NaN; drop or impute those rows before computing statistics")
        part = reference.grouped_moments(x, torch.from_numpy(g[sl]).to(x.device), G)
        total = total.merge(NeuronStats(*(t.cpu().numpy() for t in part), shape))
    return total


def _stats_triton(features, g, G, shift, shape) -> NeuronStats:
    from .kernels import grouped_moments as k1

    x = _arrays.as_tensor(features)
    count, s1, s2, lo, hi = k1.grouped_moments(x, torch.from_numpy(g).to(x.device), G,
                                               torch.from_numpy(shift).to(x.device))
    s = [t.cpu().numpy() for t in (count, s1, s2, lo, hi)]
    _raise_on_nan(s[1], s[3], s[4], x, x.shape[0] or 1)
    return NeuronStats.from_shifted_sums(*s, shift, shape)


_NAN_MESSAGE = "features: contains NaN; drop or impute those rows before computing statistics"


def _raise_on_nan(s1, lo, hi, features, chunk_rows: int) -> None:
    """The kernels do not compare for NaN in their hot loop: a NaN propagates into its
    sum. +inf and -inf in one (group, column) also sum to NaN, so only in that case
    is the data itself scanned."""
    nan_sum = np.isnan(s1)
    if not nan_sum.any():
        return
    both_inf = (lo == -np.inf) & (hi == np.inf)
    if (nan_sum & ~both_inf).any():
        raise ValueError(_NAN_MESSAGE)
    for sl in _arrays.row_chunks(features.shape[0], chunk_rows):
        chunk = features[sl]
        if torch.isnan(chunk).any() if _arrays.is_tensor(chunk) else np.isnan(chunk).any():
            raise ValueError(_NAN_MESSAGE)
