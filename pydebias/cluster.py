"""Clustering and clusterness: FAISS k-means, nearest-centroid search, per-class dispersion.

All functions take features as a numpy array, an ``np.memmap`` (larger than RAM is fine)
or a torch tensor (CPU or CUDA), and read them in row chunks; nothing here holds more
than one chunk plus a k-means training sample in memory.

Backends: FAISS does the k-means and the nearest-centroid searches. ``gpu="auto"`` uses
faiss-gpu when it is installed *and* the input is a CUDA tensor; otherwise faiss-cpu
(CUDA chunks are then copied to the host one at a time). The per-class dispersion pass
needs the distance of every sample to *every* class mean (C is small), which is one
pass per chunk: a native C++ kernel on the CPU (bound by reading x), torch's GEMM on
CUDA input.

Determinism: on the CPU every result is a function of the input and ``seed`` for a fixed
number of OpenMP threads (FAISS splits its BLAS work over threads).

k-means training sample (read this before comparing with other libraries):
``faiss.Kmeans`` silently trains on a random subsample of at most
``max_points_per_centroid * k`` points (256 · k by default). Here that choice is explicit:
:func:`kmeans` draws the training rows itself — ``sample_size`` rows if given, else
``min(n, max_points_per_centroid * k)``, ``max_points_per_centroid=None`` meaning all
rows — uniformly without replacement with ``numpy.random.default_rng(seed)``, sorted
(so memmaps are read front to back), and tells FAISS not to subsample again. The rows
used are returned (``KMeansResult.sample_index``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from . import _arrays, backends
from .validation import check_chunk_rows, check_features, check_ids, check_table, count_ids

__all__ = ["KMeansResult", "Dispersion", "kmeans", "nearest_centroid", "class_means", "dispersion"]

_DEFAULT_CHUNK_BYTES = 16 << 20


def _chunk_rows(x, chunk_rows: Optional[int]) -> int:
    if chunk_rows is not None:
        return check_chunk_rows(chunk_rows)
    return _arrays.default_chunk_rows(x.shape[1], 4, _DEFAULT_CHUNK_BYTES)


def _host_f32(chunk) -> np.ndarray:
    """A C-contiguous float32 numpy copy/view of a row chunk (for FAISS)."""
    if _arrays.is_tensor(chunk):
        return chunk.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(chunk, dtype=np.float32)


def _gather_rows(x, rows: np.ndarray) -> np.ndarray:
    """float32 host copy of sorted rows ``rows`` of x, read in chunks (no copy when all
    rows of a C-contiguous float32 numpy array are asked for)."""
    if rows.size == x.shape[0] and isinstance(x, np.ndarray) and x.dtype == np.float32 \
            and x.flags.c_contiguous:
        return x
    out = np.empty((rows.size, x.shape[1]), dtype=np.float32)
    step = _arrays.default_chunk_rows(x.shape[1], 4, _DEFAULT_CHUNK_BYTES)
    for s in range(0, rows.size, step):
        r = rows[s:s + step]
        if _arrays.is_tensor(x):
            out[s:s + r.size] = _host_f32(x[torch.from_numpy(r).to(x.device)])
        else:
            out[s:s + r.size] = x[r]
    return out


def _check_labels(x, labels, n_classes):
    y = check_ids(labels, "labels", x.shape[0], n_classes, "n_classes")
    C = count_ids(y, n_classes, "labels", "n_classes")
    check_table(C, 32 * x.shape[1], _arrays.nbytes(x), "classes", "n_classes" if n_classes is not None else "labels")
    return y, C


# --------------------------------------------------------------------------- k-means
@dataclass
class KMeansResult:
    """Centroids of a global or per-class k-means.

    ``centroids`` is (K, M) float32. For a per-class run the clusters of all classes are
    stacked and ``centroid_class[j]`` names the class of centroid j (a class with
    n_c < k samples gets n_c clusters; a class with none gets none). ``objective`` holds
    FAISS's objective (sum of squared distances on the training sample) per iteration,
    one list per run. ``sample_index`` are the rows k-means was trained on (per-class:
    all classes' rows, concatenated in class order).
    """

    centroids: np.ndarray
    centroid_class: Optional[np.ndarray]
    objective: List[List[float]]
    sample_index: np.ndarray
    n_iter: int
    seed: int
    gpu: bool

    def class_centroids(self, c: int) -> np.ndarray:
        if self.centroid_class is None:
            raise ValueError("class_centroids: this was a global k-means (labels=None)")
        return self.centroids[self.centroid_class == c]


def _train_sample_size(n: int, k: int, sample_size, max_points_per_centroid) -> int:
    if sample_size is not None:
        if sample_size < 1:
            raise ValueError(f"sample_size: expected a positive number of rows, got {sample_size}")
        return min(n, int(sample_size))
    if max_points_per_centroid is None:
        return n
    if max_points_per_centroid < 1:
        raise ValueError(f"max_points_per_centroid: expected >= 1 or None, got {max_points_per_centroid}")
    return min(n, int(max_points_per_centroid) * k)


def _faiss_safe(a: np.ndarray, name: str, row0: int = 0) -> np.ndarray:
    """``a`` (float32) if FAISS can take it: finite, and small enough that squared L2
    distances stay finite in float32 (FAISS throws from inside OpenMP otherwise, which
    aborts the process; nothing can catch that)."""
    if a.size == 0:
        return a
    # two reductions, no temporaries (NaN propagates through both); rows only on failure
    big = max(float(a.max()), -float(a.min()))
    if not np.isfinite(big):
        row = int(np.flatnonzero(~np.isfinite(a).all(1))[0])
        raise ValueError(f"{name}: row {row0 + row} has NaN or inf; drop or impute such rows")
    bound = float(np.sqrt(np.finfo(np.float32).max / (4.0 * a.shape[1])))
    if big > bound:
        raise ValueError(f"{name}: values up to {big:.3g} overflow float32 squared distances in "
                         f"{a.shape[1]} dimensions (limit {bound:.3g}); rescale the features")
    return a


def _faiss_kmeans(sample: np.ndarray, k: int, n_iter: int, seed: int, gpu: bool, init=None):
    faiss = backends.faiss()
    _faiss_safe(sample, "x")
    if init is not None:
        init = _faiss_safe(np.ascontiguousarray(_arrays.to_numpy(init), np.float32), "init")
    n, d = sample.shape
    km = faiss.Kmeans(d, k, niter=n_iter, seed=int(seed) & 0x7FFFFFFF, verbose=False, gpu=gpu,
                      max_points_per_centroid=max(n // max(k, 1) + 1, 1), min_points_per_centroid=1)
    km.train(sample, init_centroids=None if init is None else np.ascontiguousarray(init, np.float32))
    return km.centroids.astype(np.float32, copy=True), [float(v) for v in km.obj]


def kmeans(x, k: int, n_iter: int = 20, seed: int = 0, labels=None, n_classes: Optional[int] = None,
           sample_size: Optional[int] = None, max_points_per_centroid: Optional[int] = 256,
           gpu="auto", init: Optional[np.ndarray] = None) -> KMeansResult:
    """k-means with FAISS (Lloyd iterations, ``n_iter`` of them, no early stop).

    ``labels=None``: one k-means on all rows. With ``labels``: one k-means per class on
    that class's rows (the training sample size then applies per class).
    The training sample is drawn here, seeded and of explicit size (module docstring).
    ``init`` (global run only) gives the starting centroids (k, M); by default FAISS
    picks k distinct random sample rows with ``seed``.
    """
    check_features(x, "x")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if n_iter < 1:
        raise ValueError(f"n_iter: expected >= 1, got {n_iter}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("x: no rows to cluster")
    use_gpu = backends.faiss_on_gpu(x, gpu)
    rng = np.random.default_rng(seed)

    def draw(rows: np.ndarray, kk: int) -> np.ndarray:
        m = _train_sample_size(rows.size, kk, sample_size, max_points_per_centroid)
        return rows if m == rows.size else np.sort(rng.choice(rows, size=m, replace=False))

    if labels is None:
        if k > n:
            raise ValueError(f"k: {k} clusters but only {n} rows")
        idx = draw(np.arange(n), int(k))
        if init is not None and np.shape(init) != (k, x.shape[1]):
            raise ValueError(f"init: expected shape ({k}, {x.shape[1]}), got {np.shape(init)}")
        cents, obj = _faiss_kmeans(_gather_rows(x, idx), int(k), n_iter, seed, use_gpu, init)
        return KMeansResult(cents, None, [obj], idx, n_iter, seed, use_gpu)
    if init is not None:
        raise ValueError("init: only supported for a global k-means (labels=None)")
    y, C = _check_labels(x, labels, n_classes)
    cents, owner, objs, used = [], [], [], []
    for c in range(C):
        rows = np.flatnonzero(y == c)
        if rows.size == 0:
            continue
        kc = min(int(k), rows.size)
        idx = draw(rows, kc)
        cc, obj = _faiss_kmeans(_gather_rows(x, idx), kc, n_iter, seed + c, use_gpu)
        cents.append(cc)
        owner.append(np.full(kc, c, dtype=np.int64))
        objs.append(obj)
        used.append(idx)
    return KMeansResult(np.concatenate(cents), np.concatenate(owner), objs, np.concatenate(used),
                        n_iter, seed, use_gpu)


# --------------------------------------------------------------------------- search
def nearest_centroid(x, centroids, chunk_rows: Optional[int] = None, gpu="auto"):
    """Index of the nearest centroid (L2) of every row and its squared distance.

    Exhaustive FAISS search (``IndexFlatL2``; ``GpuIndexFlatL2`` on CUDA input with
    faiss-gpu), chunk by chunk. Returns ``(index int64 (N,), sq_distance float32 (N,))``.
    Ties go to the lower centroid index.
    """
    check_features(x, "x")
    faiss = backends.faiss()
    cents = np.ascontiguousarray(_arrays.to_numpy(centroids), dtype=np.float32)
    if cents.ndim != 2 or cents.shape[1] != x.shape[1] or cents.shape[0] == 0:
        raise ValueError(f"centroids: expected shape (k >= 1, {x.shape[1]}), got {cents.shape}")
    _faiss_safe(cents, "centroids")
    index = faiss.IndexFlatL2(cents.shape[1])
    if backends.faiss_on_gpu(x, gpu):  # pragma: no cover - needs faiss-gpu
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, x.device.index or 0, index)
    index.add(cents)
    n = x.shape[0]
    out_i = np.empty(n, dtype=np.int64)
    out_d = np.empty(n, dtype=np.float32)
    for sl in _arrays.row_chunks(n, _chunk_rows(x, chunk_rows)):
        d, i = index.search(_faiss_safe(_host_f32(x[sl]), "x", sl.start), 1)
        out_i[sl], out_d[sl] = i[:, 0], d[:, 0]
    return out_i, out_d


# --------------------------------------------------------------------------- dispersion
def _torch_chunk(chunk, dtype) -> torch.Tensor:
    return _arrays.as_tensor(chunk).to(dtype)


def class_means(x, labels, n_classes: Optional[int] = None, chunk_rows: Optional[int] = None,
                backend: str = "auto", process_group=None):
    """Per-class means (C, M) float64 and counts (C,), one chunked pass (fp64 sums).

    A class with no samples gets a row of NaN (callers decide what that means); NaN or
    inf in ``x`` raises ``ValueError``. CPU input goes through the native class-sum
    kernel (``backend="auto"``/``"cpp"``; the same result for any chunking and thread
    count), CUDA input through a one-hot fp64 GEMM in torch. ``process_group``: each rank
    passes its rows (and the same ``n_classes``); sums and counts are summed over the
    ranks by ``all_reduce``, so every rank gets the means of all the rows.
    """
    check_features(x, "x")
    y, C = _check_labels(x, labels, n_classes)
    which = backends.resolve(backend, x)
    counts = np.bincount(y, minlength=C)[:C]
    sums = _class_sums_cpp(x, y, C, chunk_rows) if which == "cpp" else _class_sums_torch(x, y, C, chunk_rows)
    if process_group is not None:
        from .distributed import all_reduce_many

        # one round trip; counts travel as float64 (exact below 2**53)
        sums, counts = all_reduce_many([sums, counts.astype(np.float64)], "sum", process_group)
        counts = counts.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    bad = (counts > 0) & ~np.isfinite(means).all(1)
    if bad.any():
        raise ValueError(f"x: class {int(np.flatnonzero(bad)[0])} has rows with NaN or inf; "
                         "drop or impute such rows")
    return means, counts


def _class_sums_cpp(x, y, C, chunk_rows):
    """(C, M) float64 class sums. The kernel adds every sum in row order, so the result is
    the same for any chunking and thread count."""
    lib = backends.native()
    m = x.shape[1]
    count = np.zeros(C, np.int64)
    s1 = np.zeros((C, m))
    for sl in _arrays.row_chunks(x.shape[0], _chunk_rows(x, chunk_rows)):
        arr, code = _arrays.native_view(_arrays.contiguous_rows(x[sl]))
        lib.class_sums_accumulate(arr, code, y[sl], C, count, s1)
    return s1


def _class_sums_torch(x, y, C, chunk_rows) -> np.ndarray:
    dev = x.device if _arrays.is_tensor(x) else torch.device("cpu")
    sums = torch.zeros(C, x.shape[1], dtype=torch.float64, device=dev)
    yt = torch.from_numpy(y).to(dev)
    eye = torch.eye(C, dtype=torch.float64, device=dev)
    for sl in _arrays.row_chunks(x.shape[0], _chunk_rows(x, chunk_rows)):
        xc = _arrays.as_tensor(x[sl])
        for j in range(0, xc.shape[0], 1024):  # small blocks: the fp64 copy stays in cache
            blk = xc[j:j + 1024].to(device=dev, dtype=torch.float64)
            sums += eye[yt[sl][j:j + 1024]].T @ blk  # one-hot GEMM: exact fp64 class sums
    return sums.cpu().numpy()


@dataclass
class Dispersion:
    """Per-class clusterness of labelled embeddings around their class means.

    With class means ``μ_c`` (L2 geometry), for a sample i of class c:
    ``a_i = ||x_i - μ_c||`` (distance to its own class mean) and
    ``b_i = min_{c' != c} ||x_i - μ_c'||`` (distance to the nearest other class mean).
    Per class c (arrays of length C; NaN where a class has no samples, or where a
    figure needs a second class and there is none):

    * ``count[c]``: samples of class c.
    * ``mean_distance[c]``: mean of ``a_i`` over the class.
    * ``outlier_fraction[c]``: share of the class whose nearest class mean (argmin over
      all C, ties to the lower class id) is not c — the NSF outlier definition.
    * ``intra_inter_ratio[c]``: ``mean_distance[c] / min_{c' != c} ||μ_c - μ_c'||`` —
      spread of the class relative to the gap to its nearest neighbouring class
      (≥ 1 means the class is as wide as the distance to its neighbour).
    * ``silhouette[c]``: mean over the class of ``s_i = (b_i - a_i) / max(a_i, b_i)``
      (0 when both are 0) — the *simplified* (centroid) silhouette: the usual
      silhouette with the mean distances to all members of a cluster replaced by the
      distance to its mean. In [-1, 1]; ``s_i < 0`` exactly when another class mean is
      strictly nearer, so low values mean a dispersed, mixed class.

    ``overall`` holds the same figures over all samples (sample-weighted). ``nearest``
    (N,) is every sample's nearest class mean (outlier ⇔ ``nearest != label``).
    Computation, one pass over x per call: on the CPU the native kernel takes each
    distance as ``Σ_j (x_j - μ_cj)²`` in the input precision (float32 for float32 and
    half input, float64 for float64), relative error about 1e-7. The torch path (CUDA
    input, or ``backend="torch"``) uses the expansion
    ``||x-r||² - 2(x-r)·(μ_c-r) + ||μ_c-r||²`` about ``r`` = the mean of the class means
    (per chunk one thin GEMM ``x·[μ_c - r, r]`` and one row-norm pass, clamped at 0),
    whose absolute error is about ``1e-7·||x||²`` for float32 input. Both accumulate the
    per-class sums in float64; on the CPU they do not depend on the thread count.
    """

    count: np.ndarray
    mean_distance: np.ndarray
    outlier_fraction: np.ndarray
    intra_inter_ratio: np.ndarray
    silhouette: np.ndarray
    overall: Dict[str, float]
    means: np.ndarray
    nearest: np.ndarray = field(repr=False)

    def to_dict(self) -> Dict:
        f = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
        return {"count": self.count.tolist(), "mean_distance": f(self.mean_distance),
                "outlier_fraction": f(self.outlier_fraction),
                "intra_inter_ratio": f(self.intra_inter_ratio), "silhouette": f(self.silhouette),
                "overall": dict(self.overall)}


def dispersion(x, labels, n_classes: Optional[int] = None, means=None,
               chunk_rows: Optional[int] = None, backend: str = "auto", process_group=None) -> Dispersion:
    """Per-class dispersion figures (see :class:`Dispersion`), one chunked pass over x
    (two when ``means`` is not given: the class means are computed first).

    ``backend``: ``"auto"`` runs CPU input through the native kernel
    (``pydebias._C.dispersion_accumulate``: one read of each chunk, distances as
    ``Σ (x - μ_c)²`` in the input precision — float32 for half input —, float64 sums)
    and CUDA input through the torch GEMM expansion; ``"cpp"`` / ``"torch"`` force one.
    Both agree to float32 rounding; exact ties between class means go to the lower class
    id in both. NaN or inf in ``x`` raises ``ValueError`` naming the row.
    ``process_group``: each rank passes its rows (and the same ``n_classes``); the means
    and the per-class sums are over all ranks' rows, ``nearest`` is this rank's rows.
    """
    check_features(x, "x")
    y, C = _check_labels(x, labels, n_classes)
    which = backends.resolve(backend, x)
    if means is None:
        means, _ = class_means(x, y, C, chunk_rows, backend=backend, process_group=process_group)
    means = np.asarray(_arrays.to_numpy(means), dtype=np.float64)
    if means.shape != (C, x.shape[1]):
        raise ValueError(f"means: expected shape ({C}, {x.shape[1]}), got {means.shape}")
    present = np.isfinite(means).all(1)
    if not present.any():
        raise ValueError("labels: no class has samples")
    orphan = np.flatnonzero(~present & (np.bincount(y, minlength=C)[:C] > 0))
    if orphan.size:
        raise ValueError(f"means: class {int(orphan[0])} has samples but its mean is not finite")
    if which == "cpp":
        sa, ss, no, nearest = _dispersion_cpp(x, y, C, means, present, chunk_rows)
    else:  # no Triton kernel: on CUDA, torch's GEMM is the fast path
        sa, ss, no, nearest = _dispersion_torch(x, y, C, means, present, chunk_rows)
    count = np.bincount(y, minlength=C)[:C]
    if process_group is not None:
        from .distributed import all_reduce_many

        count, sa, ss, no = all_reduce_many([count.astype(np.float64), sa, ss, np.asarray(no, np.float64)], "sum",
                                            process_group)  # one round trip; counts exact in float64
        count = count.astype(np.int64)
    return _dispersion_report(count, C, means, present, sa, ss, no, nearest)


def _dispersion_cpp(x, y, C, means, present, chunk_rows):
    lib = backends.native()
    wide = x.dtype in (np.float64, torch.float64)
    cents = np.ascontiguousarray(means[present], dtype=np.float64 if wide else np.float32)
    owner = np.flatnonzero(present).astype(np.int64)  # absent classes have no centroid
    count = np.zeros(C, np.int64)
    n_out = np.zeros(C, np.int64)
    sum_a, sum_s = np.zeros(C), np.zeros(C)
    nearest = np.empty(x.shape[0], dtype=np.int64)
    for sl in _arrays.row_chunks(x.shape[0], _chunk_rows(x, chunk_rows)):
        arr, code = _arrays.native_view(_arrays.contiguous_rows(x[sl]))
        lib.dispersion_accumulate(arr, code, y[sl], C, cents, owner, sl.start, count, sum_a, sum_s,
                                  n_out, nearest[sl])
    return sum_a, sum_s, n_out.astype(np.float64), nearest


def _dispersion_torch(x, y, C, means, present, chunk_rows):
    """The reference: distances from the expansion about the mean of the class means, one
    thin GEMM per chunk on the input's device (see :class:`Dispersion`)."""
    dev = x.device if _arrays.is_tensor(x) else torch.device("cpu")
    cdt = torch.float64 if x.dtype in (np.float64, torch.float64) else torch.float32
    ref = means[present].mean(0)
    mc = np.where(present[:, None], means - ref, 0.0)  # class means about r, (C, M)
    # one thin GEMM per chunk gives x·(μ_c - r) for every c and x·r
    W = torch.from_numpy(np.concatenate([mc, ref[None]])).to(dev, cdt).contiguous()
    # d²_c = q - 2 x·r + ||r||² - 2 (x·(μ_c-r) - r·(μ_c-r)) + ||μ_c-r||²  (q = ||x||²)
    const = torch.from_numpy(2.0 * (mc @ ref) + (mc * mc).sum(1)).to(dev, cdt)  # (C,)
    const = const.masked_fill(torch.from_numpy(~present).to(dev), float("inf"))  # absent: never nearest
    r_sq = float(ref @ ref)
    two_classes = int(present.sum()) > 1
    yt = torch.from_numpy(y).to(dev)
    sum_a = torch.zeros(C, dtype=torch.float64, device=dev)
    sum_s = torch.zeros(C, dtype=torch.float64, device=dev)
    n_out = torch.zeros(C, dtype=torch.float64, device=dev)
    nearest = np.empty(x.shape[0], dtype=np.int64)
    for sl in _arrays.row_chunks(x.shape[0], _chunk_rows(x, chunk_rows)):
        xc = _torch_chunk(x[sl], cdt)
        g = torch.nn.functional.linear(xc, W)  # (rows, C + 1): x·(μ_c - r), x·r
        base = torch.linalg.vector_norm(xc, dim=1).square_().sub_(g[:, C], alpha=2.0).add_(r_sq)
        bad = ~torch.isfinite(base)
        if bad.any():
            row = sl.start + int(bad.nonzero()[0, 0])
            raise ValueError(f"x: row {row} contains NaN or inf (or values too large to square in the "
                             "input precision); drop or impute such rows")
        d = g[:, :C].mul(-2.0).add_(const).add_(base[:, None]).clamp_min_(0).sqrt_()
        yc = yt[sl]
        near = d.argmin(1)
        a = d.gather(1, yc[:, None])[:, 0]
        if two_classes:
            b = d.scatter_(1, yc[:, None], float("inf")).amin(1)
            s = (b - a).div_(torch.maximum(a, b).clamp_min_(1e-30))  # a = b = 0 gives 0
            sum_s.index_add_(0, yc, s.double())
        sum_a.index_add_(0, yc, a.double())
        n_out.index_add_(0, yc, (near != yc).double())
        nearest[sl] = near.cpu().numpy()
    return (*(t.cpu().numpy() for t in (sum_a, sum_s, n_out)), nearest)


def _dispersion_report(count, C, means, present, sa, ss, no, nearest) -> Dispersion:
    nan = np.full(C, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_d = np.where(count > 0, sa / count, np.nan)
        out_f = np.where(count > 0, no / count, np.nan)
        n_present = int(present.sum())
        sil = np.where(count > 0, ss / count, np.nan) if n_present > 1 else nan.copy()
        cd = np.sqrt(((means[:, None, :] - means[None, :, :]) ** 2).sum(-1))
        cd[~present, :] = np.inf
        cd[:, ~present] = np.inf
        np.fill_diagonal(cd, np.inf)
        gap = cd.min(1)
        ratio = np.where(np.isfinite(gap) & (count > 0), mean_d / gap, np.nan)
    tot = count.sum()
    wmean = lambda v: float(np.nansum(v * count) / count[np.isfinite(v)].sum()) \
        if np.isfinite(v).any() else float("nan")  # noqa: E731
    overall = {"count": int(tot), "mean_distance": float(sa.sum() / tot),
               "outlier_fraction": float(no.sum() / tot), "intra_inter_ratio": wmean(ratio),
               "silhouette": wmean(sil)}
    return Dispersion(count, mean_d, out_f, ratio, sil, overall, means, nearest)
