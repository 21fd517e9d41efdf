"""Per-neuron activation statistics split by group (class x correctness, or any grouping).

``neuron_stats`` streams over the features (numpy, memmap or torch) through the backend
chosen in :mod:`pydebias.backends`: one pass for the moments (grouped moments), which in-memory
float32 input shares with the counting pass of the exact quantiles (grouped quantiles: sampled
brackets, one counting pass, a select over the few values kept); the result is a
:class:`NeuronStats` that merges with another (Chan et al.'s parallel update) and
round-trips through a JSON-safe dict, so shards computed on different workers or
files combine into the statistics of the whole.
"""
from __future__ import annotations

import threading
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _arrays, backends, reference
from .validation import check_chunk_rows, check_correct, check_features, check_ids, check_table, count_ids

__all__ = ["NeuronStats", "neuron_stats", "grouped_quantiles"]

QUANTILE_METHODS = ("lower", "higher", "midpoint")


class NeuronStats:
    """Count, mean, variance, min and max per (group, neuron), accumulated in float64.

    Arrays are stored flat over groups, ``(G,)`` and ``(G, M)``, and exposed with the
    group layout they were computed with: ``group_shape == (C, 2)`` for class x
    correctness (``[c, 0]`` = class ``c`` misclassified, ``[c, 1]`` = correct), else
    ``(G,)``. Empty groups have ``count == 0`` and NaN moments; ``var`` is the unbiased
    (ddof=1) variance and is NaN where fewer than two rows were seen.

    Exact quantiles (the grouped-quantile kernel), when computed, are kept per level ``q`` as the two order
    statistics around it: ``lower`` = rank ``floor((n-1) q)`` and ``higher`` = rank
    ``ceil((n-1) q)`` (0-based, ``n`` rows in the group), i.e. ``np.quantile(v, q,
    method="lower"/"higher")`` bit for bit. :meth:`quantile` returns either, or their
    ``"midpoint"``; ``.median`` is ``quantile(0.5)`` with the method chosen at
    construction (``"lower"`` by default). Exact quantiles of a union cannot be computed
    from those of its parts, so :meth:`merge` drops them (use :mod:`pydebias.sketch` for
    mergeable approximate quantiles).
    """

    def __init__(self, count, mean, m2, min, max, group_shape: Optional[Sequence[int]] = None,
                 quantiles: Optional[Dict[float, Tuple[np.ndarray, np.ndarray]]] = None,
                 quantile_method: str = "lower"):
        self._count = np.asarray(count, dtype=np.int64).reshape(-1)
        self._mean = np.asarray(mean, dtype=np.float64).reshape(self._count.size, -1)
        self._m2 = np.asarray(m2, dtype=np.float64).reshape(self._mean.shape)
        self._min = np.asarray(min, dtype=np.float64).reshape(self._mean.shape)
        self._max = np.asarray(max, dtype=np.float64).reshape(self._mean.shape)
        self.group_shape: Tuple[int, ...] = tuple(group_shape) if group_shape else (self._count.size,)
        if int(np.prod(self.group_shape)) != self._count.size:
            raise ValueError(f"group_shape: {self.group_shape} does not hold {self._count.size} groups")
        _check_method(quantile_method)
        self.quantile_method = quantile_method
        self._quantiles: Dict[float, Tuple[np.ndarray, np.ndarray]] = {
            float(q): (np.asarray(lo, dtype=np.float64).reshape(self._mean.shape),
                       np.asarray(hi, dtype=np.float64).reshape(self._mean.shape))
            for q, (lo, hi) in (quantiles or {}).items()}

    @classmethod
    def from_shifted_sums(cls, count, s1, s2, lo, hi, shift, group_shape=None, **quantile_kw) -> "NeuronStats":
        """Finish kernel accumulators: sums of ``x - shift[g]`` and of its square."""
        count = np.asarray(count, dtype=np.int64)
        n = count.astype(np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = shift + s1 / n  # shift: (G, M), one row per group
            m2 = s2 - s1 * s1 / n
        m2 = np.where(np.isfinite(m2), np.maximum(m2, 0.0), m2)
        empty = (count == 0)[:, None]
        nan = np.float64("nan")
        return cls(count, np.where(empty, nan, mean), np.where(empty, nan, m2),
                   np.where(empty, nan, lo), np.where(empty, nan, hi), group_shape, **quantile_kw)

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
    def quantile_levels(self) -> Tuple[float, ...]:
        """The levels ``q`` whose exact quantiles were computed (empty after a merge)."""
        return tuple(sorted(self._quantiles))

    @property
    def median(self) -> np.ndarray:
        """Exact per-group median, ``quantile(0.5)`` with :attr:`quantile_method`."""
        return self.quantile(0.5)

    def quantile(self, q: float, method: Optional[str] = None) -> np.ndarray:
        """Exact quantile ``q`` per (group, neuron), shape ``group_shape + (M,)``.

        ``method``: ``"lower"`` (order statistic ``floor((n-1) q)``), ``"higher"``
        (``ceil``) or ``"midpoint"`` (``higher - (higher - lower) / 2`` where the two
        differ, else ``lower``; equals ``np.quantile(method="midpoint")`` on finite data,
        where numpy gives NaN from an infinite neighbour it does not use, this does not).
        Empty groups give NaN.
        """
        method = _check_method(self.quantile_method if method is None else method)
        key = float(q)
        if key not in self._quantiles:
            have = ", ".join(map(repr, self.quantile_levels)) or "none"
            why = (" (merge() drops exact quantiles)" if not self._quantiles else "")
            raise ValueError(f"q: quantile {q!r} was not computed (have: {have}){why}; pass "
                             f"quantiles=(..., {q!r}) to neuron_stats")
        lo, hi = self._quantiles[key]
        if method == "lower":
            out = lo
        elif method == "higher":
            out = hi
        else:
            with np.errstate(invalid="ignore"):
                out = np.where(lo == hi, lo, hi - (hi - lo) * 0.5)
        return self._shaped(out)

    # -- combining ------------------------------------------------------------
    def merge(self, other: "NeuronStats") -> "NeuronStats":
        """Statistics of the union of the two row sets (Chan's parallel update).

        Exact quantiles are dropped: the order statistics of a union are not a function
        of the parts' order statistics. Merge :class:`pydebias.sketch.QuantileSketch`
        objects for mergeable quantiles with a rank-error bound.
        """
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
        d = {
            "format": "pydebias.NeuronStats/1",
            "group_shape": list(self.group_shape),
            "count": self._count.tolist(),
            "mean": enc(self._mean), "m2": enc(self._m2),
            "min": enc(self._min), "max": enc(self._max),
        }
        if self._quantiles:  # optional keys: older readers ignore them
            d["quantile_method"] = self.quantile_method
            d["quantiles"] = [{"q": q, "lower": enc(lo), "higher": enc(hi)}
                              for q, (lo, hi) in sorted(self._quantiles.items())]
        return d

    @classmethod
    def from_dict(cls, d: Dict) -> "NeuronStats":
        if d.get("format") != "pydebias.NeuronStats/1":
            raise ValueError("d: not a NeuronStats dict (missing format 'pydebias.NeuronStats/1')")
        dec = lambda a: np.array([[_dec_float(v) for v in row] for row in a], dtype=np.float64)  # noqa: E731
        count = np.array(d["count"], dtype=np.int64)
        shape = (count.size, -1)
        quantiles = {float(e["q"]): (dec(e["lower"]).reshape(shape), dec(e["higher"]).reshape(shape))
                     for e in d.get("quantiles", [])}
        return cls(count, dec(d["mean"]).reshape(shape), dec(d["m2"]).reshape(shape),
                   dec(d["min"]).reshape(shape), dec(d["max"]).reshape(shape), d["group_shape"],
                   quantiles=quantiles, quantile_method=d.get("quantile_method", "lower"))

    def equals(self, other: "NeuronStats", rtol: float = 0.0, atol: float = 0.0) -> bool:
        """Element-wise equality (NaN == NaN) of the moments within the given tolerances,
        and exact equality of the quantile levels both hold (merge() drops them)."""
        return (self.group_shape == other.group_shape
                and np.array_equal(self._count, other._count)
                and all(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
                        for a, b in [(self._mean, other._mean), (self._m2, other._m2),
                                     (self._min, other._min), (self._max, other._max)])
                and all(np.array_equal(a, b, equal_nan=True)  # exact quantiles: bit equality
                        for q in self._quantiles.keys() & other._quantiles.keys()
                        for a, b in zip(self._quantiles[q], other._quantiles[q])))

    def __repr__(self) -> str:
        return f"NeuronStats(groups={self.group_shape}, neurons={self.n_features}, rows={int(self._count.sum())})"


def _check_method(method: str) -> str:
    if method not in QUANTILE_METHODS:
        raise ValueError(f"quantile_method: expected one of {QUANTILE_METHODS}, got {method!r}")
    return method


def _enc_float(v: float):
    return v if np.isfinite(v) else repr(v)


def _dec_float(v) -> float:
    return float(v)


# -- the public entry point ----------------------------------------------------------
def _group_ids(features, labels, correct, groups, n_groups, n_classes):
    """Flat int64 group ids and the layout they index; the per-group tables (about six
    float64 rows of M values each) must stay a small multiple of the features."""
    n, m = features.shape
    size = _arrays.nbytes(features)
    if groups is not None:
        g = check_ids(groups, "groups", n, n_groups, "n_groups")
        G = count_ids(g, n_groups, "groups", "n_groups")
        check_table(G, 48 * m, size, "groups", "n_groups" if n_groups is not None else "groups")
        return g, G, (G,)
    if labels is None:
        raise ValueError("labels: pass labels (with optional correct=) or groups=")
    y = check_ids(labels, "labels", n, n_classes, "n_classes")
    C = count_ids(y, n_classes, "labels", "n_classes")
    check_table(C, 96 * m, size, "classes", "n_classes" if n_classes is not None else "labels")
    if correct is None:
        return y, C, (C,)
    ok = check_correct(correct, n)
    return 2 * y + ok.astype(np.int64), 2 * C, (C, 2)


def _shift_of(x, g: np.ndarray, G: int) -> np.ndarray:
    """(G, M) float64: each group's first row (finite values; 0 elsewhere and for empty
    groups), the point the sums are taken around. A shift shared by all groups
    cancels catastrophically for a group far from it (a class offset by 1e8)."""
    first = np.full(G, -1, dtype=np.int64)
    rows = np.arange(g.size - 1, -1, -1, dtype=np.int64)
    first[g[::-1]] = rows  # the last write per group is its first row
    have = np.flatnonzero(first >= 0)
    shift = np.zeros((G, x.shape[1]), dtype=np.float64)
    if have.size:
        order = np.argsort(first[have])  # rows in file order: a memmap is read forward
        idx = first[have][order]
        picked = x[torch.from_numpy(idx).to(x.device)] if _arrays.is_tensor(x) else x[idx]
        vals = _arrays.to_numpy(picked).astype(np.float64)
        shift[have[order]] = np.where(np.isfinite(vals), vals, 0.0)
    return shift


def neuron_stats(features, labels=None, correct=None, groups=None, *, n_groups: Optional[int] = None,
                 n_classes: Optional[int] = None, backend: str = "auto",
                 chunk_rows: Optional[int] = None, quantiles: Sequence[float] = (0.5,),
                 quantile_method: str = "lower", process_group=None) -> NeuronStats:
    """Per-neuron statistics of ``features`` (N, M) split by group, in one pass.

    Groups are, in order of precedence: ``groups`` (any integer ids), or
    ``labels`` with ``correct`` (class x correctness, layout ``(C, 2)``, flat id
    ``2*y + correct``), or ``labels`` alone. Inputs may be numpy arrays, memmaps
    (streamed in chunks of ``chunk_rows`` rows, never copied whole) or torch tensors
    (CUDA tensors run the Triton kernels). Accepts float32/64, float16 and bfloat16;
    accumulates in float64. NaN in ``features`` raises ``ValueError``; +-inf is allowed
    and propagates as numpy would (an inf mean, a NaN variance).

    ``quantiles``: levels whose exact per-group quantiles (the grouped-quantile kernel, see
    :func:`grouped_quantiles`) are computed too, after the one moments pass; the
    default ``(0.5,)`` makes ``.median`` available, as the API promises. With the C++
    backend and memory-resident C-contiguous input the brackets come from two row samples
    first, and then one fused pass reads X once for the moments and the quantile counts
    (memmaps and strided input: the moments pass, then the quantile pass); pass
    ``quantiles=()`` for moments only. Computing them
    eagerly keeps ``NeuronStats`` free of references to the (possibly huge) features.
    ``quantile_method`` is what ``.median`` / ``.quantile(q)`` return by default.

    ``process_group``: a ``torch.distributed`` group (``dist.group.WORLD`` under
    ``torchrun``) whose ranks each pass their own rows (the same neurons and arguments):
    every rank gets the statistics of all the rows, reduced by ``all_reduce`` without
    gathering them (:mod:`pydebias.distributed`); counts, min, max and exact quantiles
    equal the single-process ones bit for bit. CPU input; ids need not cover every group
    on every rank.
    """
    if process_group is not None:
        return _neuron_stats_distributed(features, labels, correct, groups, n_groups, n_classes, chunk_rows,
                                         quantiles, quantile_method, process_group)
    check_features(features)
    n, m = features.shape
    g, G, shape = _group_ids(features, labels, correct, groups, n_groups, n_classes)
    which = backends.resolve(backend, features)
    levels = tuple(dict.fromkeys(_check_levels(quantiles)))
    _check_method(quantile_method)
    shift = _shift_of(features, g, G)
    check_chunk_rows(chunk_rows)
    if chunk_rows is None:
        chunk_rows = _arrays.default_chunk_rows(m, features.element_size() if _arrays.is_tensor(features)
                                                else features.dtype.itemsize)
    if levels and which == "cpp" and _in_memory_rows(features):
        # grouped moments + grouped quantiles in one read of X: brackets from samples first, then one fused pass
        stats, (lower, higher) = _moments_and_quantiles_cpp(features, g, G, shift, shape, levels,
                                                            chunk_rows)
        stats._quantiles = {q: (lower[i], higher[i]) for i, q in enumerate(levels)}
    else:
        stats = _moments(features, g, G, shift, shape, which, chunk_rows)
    if levels and not stats._quantiles:
        lower, higher = _exact_quantiles(features, g, G, levels, which, chunk_rows)
        stats._quantiles = {q: (lower[i], higher[i]) for i, q in enumerate(levels)}
    stats.quantile_method = quantile_method
    return stats


def _neuron_stats_distributed(features, labels, correct, groups, n_groups, n_classes, chunk_rows, quantiles,
                              quantile_method, group, moments: bool = True) -> NeuronStats:
    """neuron_stats over the ranks of ``group``: local native passes, tables reduced
    (``moments=False``: counts and quantiles only, one pass fewer on a memmap)."""
    import torch.distributed as dist

    from . import distributed as D

    D.check_group(group)
    err = None
    try:
        check_features(features)
        if _arrays.is_tensor(features) and features.device.type != "cpu":
            raise ValueError("features: process_group takes CPU rows for now; move them with .cpu() or use "
                             "a memmap")
        levels = tuple(dict.fromkeys(_check_levels(quantiles)))
        _check_method(quantile_method)
        check_chunk_rows(chunk_rows)
        ids = groups if groups is not None else labels
        local_max = int(np.max(np.asarray(ids))) if ids is not None and len(ids) else -1
    except Exception as e:  # noqa: BLE001 - raised on every rank below
        err, local_max = e, -1
    D.agree(err, group)
    m_all = D.all_reduce(np.array([features.shape[1], -features.shape[1]], np.int64), "max", group)
    if m_all[0] != -m_all[1]:
        raise ValueError(f"features: the ranks hold different numbers of neurons ({-m_all[1]} to {m_all[0]}); "
                         "every rank must pass rows of the same layer")
    if groups is not None:
        n_groups = D.global_ids(local_max, n_groups, group)
    else:
        n_classes = D.global_ids(local_max, n_classes, group)
    try:
        g, G, shape = _group_ids(features, labels, correct, groups, n_groups, n_classes)
        n, m = features.shape
        local_shift = _shift_of(features, g, G)
        if chunk_rows is None:
            chunk_rows = _arrays.default_chunk_rows(m, features.element_size() if _arrays.is_tensor(features)
                                                    else features.dtype.itemsize)
        local_count = np.bincount(g, minlength=G)[:G].astype(np.int64)
    except Exception as e:  # noqa: BLE001
        err = e
    D.agree(err, group)
    # one shift per (group, neuron) on every rank, a row of the lowest rank holding the
    # group: the shifted sums then add across ranks as in one process (per-rank means
    # combined instead lose the digits below a large offset)
    rank = dist.get_rank(group)
    owner = D.all_reduce(np.where(local_count > 0, rank, np.iinfo(np.int64).max), "min", group)
    shift = D.all_reduce(np.where((owner == rank)[:, None], local_shift, 0.0), "sum", group)
    lib = backends.native()
    acc = {}

    def collect(lo, hi, mass, expect, wide):
        """One pass: the counts and kept values against the brackets, and (memory-resident
        rows) the moments in the same read."""
        cnt, keep, off, fill = _keep_space(expect, wide, G)
        if moments and _in_memory_rows(features):
            acc.update(count=np.zeros(G, np.int64), s1=np.zeros((G, m)), s2=np.zeros((G, m)),
                       lo=np.full((G, m), np.inf), hi=np.full((G, m), -np.inf))
            arr, code = _arrays.native_view(features)
            lib.moments_quantile_collect(arr, code, np.ascontiguousarray(g), G, shift, acc["count"], acc["s1"],
                                         acc["s2"], acc["lo"], acc["hi"], lo, hi, mass, cnt, keep, off, fill)
            _raise_on_nan(acc["s1"], acc["lo"], acc["hi"], features, chunk_rows)
        else:
            for sl in _arrays.row_chunks(n, chunk_rows):
                arr, code = _arrays.native_view(_arrays.contiguous_rows(features[sl]))
                lib.quantile_collect(arr, code, np.ascontiguousarray(g[sl]), G, lo, hi, mass, cnt, keep, off, fill)
        return cnt, keep, off, fill

    quantile_tables = {}
    if levels:
        lower, higher = _quantiles_distributed(lib, features, g, G, levels, group, local_count, collect)
        quantile_tables = {q: (lower[i], higher[i]) for i, q in enumerate(levels)}
    if not moments:
        count = D.all_reduce(local_count, "sum", group)
        nan = np.full((G, m), np.nan)
        return NeuronStats(count, nan, nan, nan, nan, shape, quantiles=quantile_tables,
                           quantile_method=quantile_method)
    try:
        sums = [acc[k] for k in ("count", "s1", "s2", "lo", "hi")] if acc \
            else _moment_sums(features, g, G, shift, chunk_rows)
    except Exception as e:  # noqa: BLE001
        err = e
    D.agree(err, group)
    total = D.combine_sums(*sums, group)
    return NeuronStats.from_shifted_sums(*total, shift, shape, quantiles=quantile_tables,
                                         quantile_method=quantile_method)


def _quantiles_distributed(lib, features, g, G, levels, group, local_count, collect):
    """(lower, higher), each (Q, G, M) float64, of the union of every rank's rows.

    ``collect(lo, hi, mass, expect, wide)`` runs this rank's one counting pass against the
    brackets and returns ``(cnt, keep, off, fill)`` as the C++ kernels fill them;
    ``local_count`` (G,) this rank's rows per group."""
    from . import distributed as D

    n, m = features.shape
    Q = len(levels)
    count = D.all_reduce(local_count, "sum", group)
    ranks = _target_ranks(count, levels)  # (Q, G, 2), global
    lo, hi, mass, expect, wide = _brackets_distributed(features, g, G, count, ranks, group)
    error = None
    try:
        cnt, keep, off, fill = collect(lo, hi, mass, expect, wide)
        # this rank's kept values: cell c = flat (level, group, neuron) holds keep[off[c]:][:sizes[c]]
        sizes = np.where(fill >= 0, fill, 0).astype(np.int64)
        # per cell, the kept values below the point mass (its copies are counted, not kept)
        flat_mass = np.ascontiguousarray(mass.reshape(-1), np.float64)
        counts = np.zeros((4, Q * G * m), np.int64)
        if lib.count_bracket(keep, off, sizes, flat_mass, flat_mass, counts):
            raise ValueError(_NAN_MESSAGE)  # the kernels keep a NaN inside its bracket
        under_local = counts[0]
    except Exception as e:  # noqa: BLE001
        error = e
    D.agree(error, group)
    fill_ok = fill.reshape(Q, G, m) >= 0
    below, at, kept, over, under = D.all_reduce_many(
        [cnt[0], cnt[2], np.where(fill_ok, fill.reshape(Q, G, m), 0), (~fill_ok).astype(np.int64),
         under_local.reshape(Q, G, m)], "sum", group)
    over = over > 0  # a rank's keep region overflowed
    out = np.full((2, Q, G, m), np.nan)
    missed = np.zeros((Q, G, m), bool)
    targets = np.full((2, Q * G * m), -1, np.int64)  # lower and higher order statistics, selected together
    for j in range(2):
        r = np.broadcast_to(ranks[..., j][..., None], (Q, G, m))
        k = r - below
        miss = over | (r < below) | (r >= below + at + kept)
        miss &= (count > 0)[None, :, None]
        on_mass = ~miss & (k >= under) & (k < under + at)
        out[j][on_mass] = mass[on_mass]
        want = ~miss & ~on_mass & (count > 0)[None, :, None]
        kk = np.where(k >= under + at, k - at, k)
        targets[j] = np.where(want.reshape(-1), kk.reshape(-1), -1)
        missed |= miss
    if (targets >= 0).any():
        got = D.radix_select_csr(keep, off, sizes, targets, group, bounds=(lo.reshape(-1), hi.reshape(-1)))
        for j in range(2):
            sel = targets[j] >= 0
            out[j].reshape(-1)[sel] = got[j][sel]
    if missed.any():
        _fallback_distributed(features, g, G, ranks, missed, out, group)
    return out[0], out[1]


#: rows per group in the global sample that brackets each target across ranks (every
#: rank samples its share with one stride, so the union is a uniform sample)
QUANTILE_DIST_SAMPLE_ROWS = 4096


def _brackets_distributed(features, g, G, count, ranks, group):
    """Brackets around each global target rank from a global row sample: every rank
    takes every step-th row (one step for all ranks; whole groups when small), and the
    sample's order statistics ``QUANTILE_BRACKET_Z`` standard deviations either side of
    the target come from a distributed radix select over it (no sample is gathered).
    Returns (lo, hi, mass, expect, wide): ``expect`` this rank's keep-region sizes, from
    its share of the sample inside each bracket."""
    from . import distributed as D

    n, m = features.shape
    Q = ranks.shape[0]
    total = int(count.sum())
    step = max(1, total // max(1, QUANTILE_DIST_SAMPLE_ROWS * G))
    take = np.zeros(n, dtype=bool)
    take[::step] = True
    take |= np.isin(g, np.flatnonzero(count <= QUANTILE_DIST_SAMPLE_ROWS))
    idx = np.flatnonzero(take)
    arr, code = _arrays.native_view(features)
    wide = code == _arrays.F64
    rows = np.take(arr, idx, axis=0).astype(np.float64 if wide else np.float32, copy=False)
    D.agree(ValueError(_NAN_MESSAGE) if np.isnan(rows).any() else None, group)  # every rank, before any other reduction
    gs = g[idx]
    sampled = np.bincount(gs, minlength=G)[:G].astype(np.int64)
    c2 = D.all_reduce(sampled, "sum", group)
    a, b = _sample_bracket_ranks(count, c2, ranks, QUANTILE_BRACKET_Z)
    top = np.maximum(c2 - 1, 0)
    # the sample by cell (group, neuron): group blocks in order, each transposed, so a cell's
    # values are contiguous (what the native rounds and counts read)
    order = np.argsort(gs, kind="stable")
    first = np.concatenate([[0], np.cumsum(sampled)])
    vals = np.concatenate([rows[order[first[k]:first[k + 1]]].T.reshape(-1) for k in range(G)]) if len(gs) \
        else rows.reshape(-1)
    off = (first[:-1, None] * m + np.arange(m)[None, :] * sampled[:, None]).reshape(-1)
    live = np.repeat(sampled, m)
    lib = backends.native()
    # one radix select over the sample values, cell = (group, neuron), for every level and end
    target = np.stack([np.where((c2 > 0)[None, :], np.clip(r, 0, top), -1)[..., None].repeat(m, axis=2)
                       for r in (a, b)])  # (2, Q, G, M)
    ends = D.radix_select_csr(vals, off, live, target.reshape(2 * Q, G * m), group).reshape(2, Q, G, m)
    lo = np.where((a < 0)[..., None], -np.inf, ends[0])
    hi = np.where((b > top)[..., None], np.inf, ends[1])
    # a value repeated at a bracket end (ReLU zeros) is counted as the point mass, not kept
    mass = np.full((Q, G, m), np.nan)
    expect = np.zeros((Q, G, m), np.int64)
    local_count = np.bincount(g, minlength=G)[:G]
    for q in range(Q):
        counts = np.zeros((4, G, m), np.int64)  # per cell: < lo, <= lo, < hi, <= hi
        lib.count_bracket(vals, off, live, np.ascontiguousarray(lo[q], np.float64),
                          np.ascontiguousarray(hi[q], np.float64), counts)
        below_lo, upto_lo, below_hi, upto_hi = counts
        at_lo, at_hi = upto_lo - below_lo, upto_hi - below_hi
        heavy_lo, heavy_hi = (c >= 2 for c in D.all_reduce_many([at_lo, at_hi], "sum", group))
        mass[q] = np.where(heavy_lo, lo[q], np.where(heavy_hi, hi[q], np.nan))
        # this rank's share of its sample inside the bracket (shards may differ: not the global share)
        inside = upto_hi - below_lo
        kept = inside - np.where(heavy_lo, at_lo, np.where(heavy_hi, at_hi, 0))
        expect[q] = np.ceil(kept / np.maximum(sampled, 1)[:, None] * local_count[:, None])
    return lo, hi, mass, _with_margin(expect, local_count, sampled), wide


def _fallback_distributed(features, g, G, ranks, missed, out, group) -> None:
    """Cells whose bracket missed: radix select over their columns' rows on every rank."""
    from . import distributed as D

    Q, _, m = missed.shape
    cells_q, cells_g, cells_m = np.nonzero(missed)
    vals, cell = [], []
    for i, (q, k, c) in enumerate(zip(cells_q, cells_g, cells_m)):
        rows = np.flatnonzero(g == k)
        if rows.size:
            col = features[rows, c] if not _arrays.is_tensor(features) else features[torch.from_numpy(rows), int(c)]
            v = _arrays.to_numpy(col)
            vals.append(v.astype(np.float32 if v.dtype != np.float64 else np.float64))
            cell.append(np.full(rows.size, i, np.int64))
    wide = features.dtype in (np.float64, torch.float64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.float64 if wide else np.float32)
    v = v.astype(np.float64 if wide else np.float32)
    sizes = np.bincount(np.concatenate(cell) if cell else np.zeros(0, np.int64), minlength=cells_q.size)
    off = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    got = D.radix_select_csr(v, off, sizes, ranks[cells_q, cells_g, :].T.astype(np.int64), group)
    for j in range(2):
        out[j][cells_q, cells_g, cells_m] = got[j]


def _moments(features, g, G, shift, shape, which, chunk_rows) -> NeuronStats:
    """grouped moments: one pass over the features through the chosen backend."""
    n, m = features.shape
    if which == "triton":
        return _stats_triton(features, g, G, shift, shape)
    if which == "cpp":
        return NeuronStats.from_shifted_sums(*_moment_sums(features, g, G, shift, chunk_rows), shift, shape)
    # torch reference, chunk by chunk, merged
    total = NeuronStats(np.zeros(G, np.int64), *(np.full((G, m), np.nan) for _ in range(4)), shape)
    for sl in _arrays.row_chunks(n, chunk_rows):
        x = _arrays.as_tensor(features[sl])
        if torch.isnan(x).any():
            raise ValueError("features: contains NaN; drop or impute those rows before computing statistics")
        part = reference.grouped_moments(x, torch.from_numpy(g[sl]).to(x.device), G)
        total = total.merge(NeuronStats(*(t.cpu().numpy() for t in part), shape))
    return total


def _moment_sums(features, g, G, shift, chunk_rows):
    """The C++ accumulators (count, s1, s2, min, max) of one pass, sums of ``x - shift[g]``."""
    n, m = features.shape
    count = np.zeros(G, dtype=np.int64)
    s1 = np.zeros((G, m)); s2 = np.zeros((G, m))
    lo = np.full((G, m), np.inf); hi = np.full((G, m), -np.inf)
    lib = backends.native()
    for sl in _arrays.row_chunks(n, chunk_rows):
        arr, code = _arrays.native_view(_arrays.contiguous_rows(features[sl]))
        lib.grouped_moments_accumulate(arr, code, np.ascontiguousarray(g[sl]), G, shift, count, s1, s2, lo, hi)
    _raise_on_nan(s1, lo, hi, features, chunk_rows)
    return count, s1, s2, lo, hi


# -- exact grouped quantiles ----------------------------------------------------
#: sample rows per group for the C++ brackets; groups up to this size are taken whole
QUANTILE_SAMPLE_ROWS = 1024
#: the second-stage sample is this many times larger (1: a single stage)
QUANTILE_REFINE = 16
#: bracket half-width in standard deviations of the sample rank (miss chance ~6e-5 a side)
QUANTILE_BRACKET_Z = 4.0


def grouped_quantiles(features, groups, n_groups: Optional[int] = None, quantiles: Sequence[float] = (0.5,),
                      method: str = "lower", *, backend: str = "auto",
                      chunk_rows: Optional[int] = None, process_group=None) -> np.ndarray:
    """Exact quantiles of each column of ``features`` (N, M) within each group.

    Returns float64 of shape ``(len(quantiles), G, M)``. For a group of ``n`` rows and
    level ``q``: ``method="lower"`` is the order statistic of 0-based rank
    ``floor((n-1) q)``, ``"higher"`` of rank ``ceil((n-1) q)`` -- exactly
    ``np.quantile(v, q, method="lower"/"higher")`` on the values widened to float64 --
    and ``"midpoint"`` is the mean of the two (see :meth:`NeuronStats.quantile`). The
    median (q = 0.5) is ``lower`` by default. Empty groups give NaN; NaN in the data
    raises ``ValueError``; -0.0 and +0.0 count as equal (either may be returned).

    No column is sorted. The C++ backend (1) brackets each target rank from a strided
    sample of ``QUANTILE_SAMPLE_ROWS`` rows per group, then narrows the brackets by
    counting a ``QUANTILE_REFINE`` times larger strided sample (read in place) against
    them and selecting its order statistics around the target; (2) makes one pass over
    the rows that counts, per (group, neuron), the values below each bracket and at its
    point mass (a value repeated in the sample, e.g. ReLU zeros: counted, not stored) and
    keeps the few others inside it (about 3 % with the defaults); (3) selects the target
    among the kept values (radix select over order-preserving float keys); and falls back
    to an exact ``np.partition`` of a column in the rare case (~1e-4 per column) its
    bracket missed. Memory-resident input is read in one call; memmaps and strided input
    stream in chunks of ``chunk_rows`` rows (each phase-2 chunk read once).

    ``process_group``: each rank passes its own rows and gets the quantiles of all of them
    (as :func:`neuron_stats` does; ``n_groups`` defaults to one more than the largest id
    on any rank).
    """
    if process_group is not None:
        levels = _check_levels(quantiles)
        _check_method(method)
        stats = _neuron_stats_distributed(features, None, None, groups, n_groups, None, chunk_rows,
                                          tuple(dict.fromkeys(levels)), method, process_group, moments=False)
        G, m = stats.n_groups, stats.n_features
        return np.stack([stats.quantile(q, method).reshape(G, m) for q in levels]) if levels \
            else np.zeros((0, G, m))
    check_features(features)
    n, m = features.shape
    g, G, _ = _group_ids(features, None, None, groups, n_groups, None)
    which = backends.resolve(backend, features)
    levels = _check_levels(quantiles)
    _check_method(method)
    check_chunk_rows(chunk_rows)
    if chunk_rows is None:
        chunk_rows = _arrays.default_chunk_rows(m, features.element_size() if _arrays.is_tensor(features)
                                                else features.dtype.itemsize)
    unique = tuple(dict.fromkeys(levels))  # computed once each, returned as asked
    lower, higher = _exact_quantiles(features, g, G, unique, which, chunk_rows)
    stats = NeuronStats(np.bincount(g, minlength=G)[:G], *(np.zeros((G, m)),) * 4,
                        quantiles={q: (lower[i], higher[i]) for i, q in enumerate(unique)})
    return np.stack([stats.quantile(q, method).reshape(G, m) for q in levels]) if levels \
        else np.zeros((0, G, m))


def _check_levels(quantiles) -> Tuple[float, ...]:
    try:
        levels = tuple(float(q) for q in quantiles)
    except TypeError:
        raise TypeError(f"quantiles: expected a sequence of levels in [0, 1], got {quantiles!r}") from None
    if any(not (0.0 <= q <= 1.0) for q in levels):
        raise ValueError(f"quantiles: levels must lie in [0, 1], got {levels}")
    return levels


def _target_ranks(count: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """(Q, G, 2) int64: 0-based ranks floor((n-1) q) and ceil((n-1) q), as numpy computes them."""
    n1 = np.maximum(count, 1).astype(np.float64) - 1
    q = np.asarray(levels, dtype=np.float64)[:, None]
    pos = n1[None, :] * q
    return np.stack([np.floor(pos), np.ceil(pos)], axis=-1).astype(np.int64)


def _exact_quantiles(features, g, G, levels, which, chunk_rows):
    """(lower, higher), each (Q, G, M) float64, through the chosen backend."""
    if which == "cpp":
        return _quantiles_cpp(features, g, G, levels, chunk_rows)
    if which == "triton":
        from .kernels import grouped_quantiles as impl
    else:
        impl = reference
    x = _arrays.as_tensor(features)
    if x.shape[0] and torch.isnan(x).any():
        raise ValueError(_NAN_MESSAGE)
    lo, hi = impl.grouped_quantiles(x, torch.from_numpy(g).to(x.device), G, levels)
    return lo.cpu().numpy(), hi.cpu().numpy()


def _sample_rows(features, idx: np.ndarray, slot: str = "sample"):
    """The rows idx of features, C-contiguous, copied into the reused scratch buffer
    ``slot`` (a fresh 8 MB copy per call spent most of its time faulting in pages)."""
    arr, code = _arrays.native_view(features.detach() if _arrays.is_tensor(features) else features)
    out = _scratch(idx.size * arr.shape[1], arr.dtype, slot=slot).reshape(idx.size, arr.shape[1])
    np.take(arr, idx, axis=0, out=out)
    return out, code


def _strided_sample(n: int, g: np.ndarray, count: np.ndarray, per_group: int) -> np.ndarray:
    """Every step-th row (about per_group rows per group), plus every row of the groups
    with at most per_group rows (their brackets are then exact)."""
    G = count.size
    take = np.zeros(n, dtype=bool)
    take[::max(1, n // max(1, per_group * G))] = True
    small = np.flatnonzero(count <= per_group)
    if small.size:
        take |= np.isin(g, small)
    return np.flatnonzero(take)


_workspace = threading.local()


def _scratch(size: int, dtype, slot: str = "keep") -> np.ndarray:
    """An uninitialised scratch array of `size` elements, reused between calls of one
    thread (one buffer per slot): the keep buffers are tens of MB, and faulting in fresh
    pages for every call cost about 0.3x one read of X (measured, 500,000 x 512 float32)."""
    dtype = np.dtype(dtype)
    nbytes = int(size) * dtype.itemsize
    buf = getattr(_workspace, slot, None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(max(nbytes, 1), dtype=np.uint8)
        setattr(_workspace, slot, buf)
    return buf[:nbytes].view(dtype)


def _keep_space(expect, wide, G):
    """Phase-2 buffers sized from the brackets' estimates: (cnt, keep, off, fill)."""
    Q, _, m = expect.shape
    cap = expect.reshape(-1)
    cap = cap + cap // 4 + 64  # 25 % + 64 slack over the estimate
    off = np.zeros(cap.size + 1, dtype=np.int64)
    np.cumsum(cap, out=off[1:])
    dtype = np.float64 if wide else np.float32
    keep = _scratch(int(off[-1]), dtype)
    fill = np.zeros(cap.size, dtype=np.int64)
    cnt = np.zeros((3, Q, G, m), dtype=np.int64)
    return cnt, keep, off, fill


def _select(lib, count, ranks, mass, cnt, keep, off, fill):
    """Phase 3: (lower, higher, miss), each (Q, G, M)."""
    shape = cnt.shape[1:]
    lower = np.empty(shape); higher = np.empty(shape)
    miss = np.zeros(shape, dtype=np.uint8)
    lib.quantile_select(count, ranks, mass, cnt, keep, off, fill, lower, higher, miss)
    return lower, higher, miss


def _count_and_select(lib, chunks, G, lo, hi, mass, expect, count, ranks, wide):
    """Phases 2 and 3 over an iterable of (rows, code, group ids): (lower, higher, miss)."""
    cnt, keep, off, fill = _keep_space(expect, wide, G)
    for arr, code, gs in chunks:
        lib.quantile_collect(arr, code, gs, G, lo, hi, mass, cnt, keep, off, fill)
    lower, higher, miss = _select(lib, count, ranks, mass, cnt, keep, off, fill)
    return lower, higher, miss, cnt


def _in_memory_rows(features) -> bool:
    """C-contiguous, memory-resident (not a memmap) CPU input: read in one call."""
    if _arrays.is_tensor(features):
        return features.device.type == "cpu" and features.is_contiguous()
    return isinstance(features, np.ndarray) and features.flags.c_contiguous \
        and not isinstance(features, np.memmap)


def _moments_and_quantiles_cpp(features, g, G, shift, shape, levels, chunk_rows):
    """grouped moments and grouped quantiles with one read of X: the brackets come from row samples (phase 1), then
    one fused C++ pass accumulates the moments and counts/keeps against the brackets,
    block by cache-resident block (phase 2); phase 3 and the fallback as in grouped quantiles alone."""
    lib = backends.native()
    n, m = features.shape
    count, ranks, lo, hi, mass, expect, wide = _brackets_cpp(lib, features, g, G, levels)
    cnt, keep, off, fill = _keep_space(expect, wide, G)
    mcount = np.zeros(G, dtype=np.int64)
    s1 = np.zeros((G, m)); s2 = np.zeros((G, m))
    mn = np.full((G, m), np.inf); mx = np.full((G, m), -np.inf)
    arr, code = _arrays.native_view(features)
    lib.moments_quantile_collect(arr, code, np.ascontiguousarray(g), G, shift, mcount, s1, s2, mn, mx,
                                 lo, hi, mass, cnt, keep, off, fill)
    _raise_on_nan(s1, mn, mx, features, chunk_rows)
    stats = NeuronStats.from_shifted_sums(mcount, s1, s2, mn, mx, shift, shape)
    lower, higher, miss = _select(lib, count, ranks, mass, cnt, keep, off, fill)
    if miss.any():
        _fallback(features, g, ranks, miss, lower, higher, chunk_rows)
    return stats, (lower, higher)


def _quantiles_cpp(features, g, G, levels, chunk_rows):
    lib = backends.native()
    n, m = features.shape
    count, ranks, lo, hi, mass, expect, wide = _brackets_cpp(lib, features, g, G, levels)
    # Phase 2 (one pass) and phase 3; exact fallback where a bracket missed. Memory-resident
    # C-contiguous input goes in one call (one thread split, no per-chunk synchronisation:
    # measured 6.7x vs 10.3x one read in 32k-row chunks on a busy machine); memmaps and
    # strided input stream in chunks of chunk_rows.
    if _in_memory_rows(features):
        chunk_rows = max(n, 1)
    chunks = ((*_arrays.native_view(_arrays.contiguous_rows(features[sl])), np.ascontiguousarray(g[sl]))
              for sl in _arrays.row_chunks(n, chunk_rows))
    lower, higher, miss, _ = _count_and_select(lib, chunks, G, lo, hi, mass, expect, count, ranks, wide)
    if miss.any():
        _fallback(features, g, ranks, miss, lower, higher, chunk_rows)
    return lower, higher


def _brackets_cpp(lib, features, g, G, levels):
    """Phase 1: per (level, group, neuron) brackets from two row samples.
    Returns (count, ranks, lo, hi, mass, expect, wide)."""
    n, m = features.shape
    count = np.bincount(g, minlength=G)[:G].astype(np.int64)
    ranks = _target_ranks(count, levels)
    Q = len(levels)
    z = QUANTILE_BRACKET_Z
    # Phase 1, first stage: brackets from a small strided sample (only its rows are read).
    idx = _strided_sample(n, g, count, QUANTILE_SAMPLE_ROWS)
    sample, code = _sample_rows(features, idx)
    wide = code == _arrays.F64
    lo = np.empty((Q, G, m)); hi = np.empty((Q, G, m)); mass = np.empty((Q, G, m))
    expect = np.empty((Q, G, m), dtype=np.int64)
    g1 = np.ascontiguousarray(g[idx])
    lib.quantile_brackets(sample, code, g1, G, count, ranks, z, lo, hi, mass, expect)
    del sample
    expect = _with_margin(expect, count, np.bincount(g1, minlength=G)[:G])
    # Second stage: a sample QUANTILE_REFINE times larger is counted against those
    # brackets, and its order statistics around the target (selected exactly by the same
    # kernels) give brackets sqrt(QUANTILE_REFINE) times narrower, so the full pass keeps
    # that many times fewer values. A cell whose first bracket missed in the larger
    # sample keeps its first bracket.
    per2 = QUANTILE_SAMPLE_ROWS * QUANTILE_REFINE
    if QUANTILE_REFINE > 1 and n > 2 * per2 * G:
        lo, hi, mass, expect = _refine_brackets(lib, features, g, count, ranks, per2, z,
                                                lo, hi, mass, expect, wide)
    return count, ranks, lo, hi, mass, expect, wide


def _with_margin(expect, count, sampled):
    """Region sizes from a sample's estimate of the values inside each bracket, raised by
    five standard errors of the sampled fraction (sampled rows per group; none where the
    group was taken whole). The fraction from 1024 sample rows is off by ~1 % of the
    group (absolute) on a ~13 % bracket: the +25 % slack of _keep_space alone overflowed
    about one region in a thousand on the bench array, each a slow exact fallback."""
    n = np.maximum(count, 1)[None, :, None].astype(np.float64)
    f = expect / n
    k = np.maximum(sampled, 1)[None, :, None]
    se = np.where((sampled >= count)[None, :, None], 0.0, np.sqrt(f * (1 - f) / k))
    return np.minimum(np.ceil(np.minimum(f + 5 * se, 1.0) * n), count[None, :, None]).astype(np.int64)


def _sample_bracket_ranks(count, c2, ranks, z):
    """(Q, G) ranks ``a``, ``b`` in a sample of ``c2`` rows per group (of ``count``) of the
    bracket ends around each target: ``z`` standard deviations of the sample rank either
    side (as the C++ phase 1 places them); exact ranks where the whole group is sampled.
    ``a < 0`` / ``b >= c2``: the bracket is open on that side."""
    n1 = np.maximum(count - 1, 1).astype(np.float64)
    scale = (np.maximum(c2, 1) - 1) / n1
    p = ranks[..., 0] / n1
    d = z * np.sqrt(c2 * p * (1 - p) + 1.0) + 2.0
    a = np.floor(ranks[..., 0] * scale - d).astype(np.int64)
    b = np.ceil(ranks[..., 1] * scale + d).astype(np.int64)
    whole = c2 == count
    return np.where(whole, ranks[..., 0], a), np.where(whole, ranks[..., 1], b)


def _refine_brackets(lib, features, g, count, ranks, per2, z, lo1, hi1, mass1, expect1, wide):
    n = features.shape[0]
    # Every step-th row, read in place through a strided view (no copy), plus a copy of
    # the rows of the groups small enough to take whole that the stride skips.
    step = max(1, n // max(1, per2 * count.size))
    on_stride = np.zeros(n, dtype=bool)
    on_stride[::step] = True
    extra = np.flatnonzero(np.isin(g, np.flatnonzero(count <= per2)) & ~on_stride)
    parts = [(*_arrays.native_view(features[::step]), np.ascontiguousarray(g[::step]))]
    if extra.size:
        parts.append((*_sample_rows(features, extra, slot="extra"), np.ascontiguousarray(g[extra])))
    g2 = np.concatenate([p[2] for p in parts])
    c2 = np.bincount(g2, minlength=count.size)[:count.size].astype(np.int64)
    a, b = _sample_bracket_ranks(count, c2, ranks, z)
    top = np.maximum(c2 - 1, 0)
    r2 = np.stack([np.clip(a, 0, top), np.clip(b, 0, top)], axis=-1)
    exp2 = np.ceil(expect1 * (c2 / np.maximum(count, 1))[None, :, None]).astype(np.int64)
    lower, higher, miss, cnt = _count_and_select(lib, parts, count.size, lo1, hi1, mass1,
                                                 exp2, c2, r2, wide)
    del parts
    ok = (miss == 0) & (c2 > 0)[None, :, None]
    lo = np.where(ok, np.where((a < 0)[..., None], -np.inf, lower), lo1)
    hi = np.where(ok, np.where((b >= c2)[..., None], np.inf, higher), hi1)
    # a point mass counted in the sample between the new ends stays the bracket's mass
    keep_mass = ok & (mass1 >= lo) & (mass1 <= hi) & (cnt[2] >= 2)
    mass = np.where(keep_mass, mass1, np.where(lo == hi, lo, np.nan))
    # Sample values kept between the new ends: the rank window less the mass copies in
    # it. Copies may also lie outside the window (a mass straddling an end); only those
    # that cannot fit outside are certainly inside, so subtract no more than that (all
    # of cnt[2] underestimated the region and overflowed it into the slow fallback).
    window = (np.minimum(b, top) - np.maximum(a, 0) + 1)[..., None]
    inside = np.maximum(cnt[2] - (c2[None, :, None] - window), 0)
    span = window - np.where(keep_mass, inside, 0)
    frac = np.maximum(span, 0) / np.maximum(c2, 1)[None, :, None]
    exp = np.ceil(frac * count[None, :, None]).astype(np.int64)
    expect = np.where(ok, np.minimum(exp, count[None, :, None]), expect1)
    return lo, hi, mass, expect


def _fallback(features, g, ranks, miss, lower, higher, chunk_rows) -> None:
    """Exact order statistics by np.partition of the missed columns, group by group."""
    for k in np.flatnonzero(miss.any(axis=(0, 2))):
        cols = np.flatnonzero(miss[:, k].any(axis=0))
        parts = []
        for sl in _arrays.row_chunks(features.shape[0], chunk_rows):
            rows = np.flatnonzero(g[sl] == k)
            if rows.size:
                part = features[sl]
                if _arrays.is_tensor(part):
                    part = part[torch.from_numpy(rows)[:, None], torch.from_numpy(cols)[None, :]]
                else:
                    part = part[np.ix_(rows, cols)]  # only the missed columns' elements
                parts.append(_arrays.to_numpy(part).astype(np.float64))
        v = np.concatenate(parts)
        if np.isnan(v).any():
            raise ValueError(_NAN_MESSAGE)
        for q in range(ranks.shape[0]):
            r = np.unique(ranks[q, k])
            part = np.partition(v, r, axis=0)
            sel = miss[q, k, cols] != 0
            lower[q, k, cols[sel]] = part[ranks[q, k, 0], sel]
            higher[q, k, cols[sel]] = part[ranks[q, k, 1], sel]


def _stats_triton(features, g, G, shift, shape) -> NeuronStats:
    from .kernels import grouped_moments as triton_impl

    x = _arrays.as_tensor(features)
    count, s1, s2, lo, hi = triton_impl.grouped_moments(x, torch.from_numpy(g).to(x.device), G,
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
