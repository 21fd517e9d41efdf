"""clustering benchmark: FAISS k-means vs scikit-learn, dispersion vs one read of X.

Ratios measured in one run (see :mod:`pydebias.tools.bench_kernels`), default X = 1,000,000 × 256
float32 (the issue's size):

* k-means: :func:`pydebias.cluster.kmeans` (FAISS) vs ``sklearn.cluster.KMeans`` on the
  **same points** (FAISS's own subsampling is switched off: ``max_points_per_centroid=None``),
  the **same initial centroids** (k random rows, passed to both), ``n_init=1``, ``tol=0``,
  Lloyd, ``n_iter`` iterations each (scikit-learn's actual ``n_iter_`` is recorded: it
  stops early only on exact convergence). Bar: FAISS ≥ 1.5× faster. Beside it, for
  reference only: plain ``faiss.Kmeans`` on all rows (the wrapper's overhead) and
  ``faiss.Kmeans`` out of the box, which trains on a 256·k-row subsample — not a
  comparison at equal points.
* dispersion: :func:`pydebias.cluster.dispersion` given the class means (one pass, native
  kernel), including the class-means pass (two passes), and the torch reference, each
  divided by one numpy ``X.sum(0)``. Bar: the one-pass figure ≤ 2× one read.
* at scale (:func:`bench_clustering_scale`, ``pydebias bench --large``, not part of the default
  run): the streaming pipeline on float32 memmaps of 10⁵-10⁷ rows, optionally cold
  (file evicted from the page cache before each pass), with peak resident memory.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import cluster
from .timing import median_time


def _time(fn, repeat: int) -> float:
    return median_time(fn, repeat=repeat, warmup=0)


def bench_clustering(sizes: Sequence[int] = (1_000_000,), m: int = 256, k: int = 16, n_iter: int = 20,
                     n_classes: int = 2, repeat: int = 3, seed: int = 0, sklearn: bool = True,
                     threads: Sequence[int] = (1,)) -> List[Dict]:
    """clustering rows for each ``n`` in ``sizes`` (X is ``n × m`` float32 standard normal) and each
    thread count in ``threads`` (torch, FAISS and scikit-learn all limited to it, so the
    comparison is at equal threads; on a shared, oversubscribed machine OpenMP spin-waits
    make multi-threaded timings meaningless, hence the default of 1)."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    rows: List[Dict] = []
    old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            faiss.omp_set_num_threads(nt)
            with threadpool_limits(nt):
                new = _bench_clustering_one(sizes, m, k, n_iter, n_classes, repeat, seed, sklearn)
            for r in new:
                r["threads"] = nt
            rows += new
    finally:
        torch.set_num_threads(old_torch)
        faiss.omp_set_num_threads(old_faiss)
    return rows


def _bench_clustering_one(sizes, m, k, n_iter, n_classes, repeat, seed, sklearn) -> List[Dict]:
    import faiss

    rows: List[Dict] = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, m), dtype=np.float32)
        y = rng.integers(0, n_classes, n)
        init = x[np.sort(rng.choice(n, size=k, replace=False))].copy()
        x.sum(0)  # touch once
        shape = f"{n}x{m}, k={k}, {n_iter} iterations"

        # -- k-means, equal points, init and iterations
        t_read = _time(lambda: x.sum(0), repeat)
        held = {}

        def ours():
            held["f"] = cluster.kmeans(x, k, n_iter=n_iter, init=init, max_points_per_centroid=None)

        def plain():  # what pydebias.cluster.kmeans wraps, called directly: its overhead
            km = faiss.Kmeans(m, k, niter=n_iter, seed=seed, max_points_per_centroid=n // k + 1,
                              min_points_per_centroid=1)
            km.train(x, init_centroids=init)

        def subsampled():  # faiss.Kmeans out of the box: trains on 256·k random rows only
            faiss.Kmeans(m, k, niter=n_iter, seed=seed).train(x, init_centroids=init)

        cluster.kmeans(x[:4096], k, n_iter=2)  # FAISS's and OpenBLAS's one-off set-up, untimed
        t_faiss = _time(ours, max(1, repeat - 1))
        row = {"kernel": "k-means", "impl": "faiss (pydebias.cluster.kmeans)", "n": n, "m": m, "k": k,
               "n_iter": n_iter, "seconds": t_faiss, "one_read_seconds": t_read, "x_one_read": t_faiss / t_read,
               "faiss_objective": held["f"].objective[0][-1],
               "comparison": "all rows (no FAISS subsample), same initial centroids, n_iter Lloyd iterations"}
        rows.append(row)
        t_plain = _time(plain, 1)
        rows.append({"kernel": "k-means", "impl": "plain faiss.Kmeans, all rows", "n": n, "m": m, "k": k,
                     "n_iter": n_iter, "seconds": t_plain, "one_read_seconds": t_read,
                     "x_one_read": t_plain / t_read, "pydebias_overhead": t_faiss / t_plain})
        t_sub = _time(subsampled, 1)
        rows.append({"kernel": "k-means", "impl": f"faiss default ({256 * k}-row subsample)", "n": n, "m": m,
                     "k": k, "n_iter": n_iter, "seconds": t_sub, "one_read_seconds": t_read,
                     "x_one_read": t_sub / t_read, "comparison": "not equal points: trains on 256·k rows"})
        if sklearn:
            from sklearn.cluster import KMeans

            def sk():
                held["km"] = KMeans(n_clusters=k, init=init, n_init=1, max_iter=n_iter, tol=0.0,
                                    algorithm="lloyd", random_state=seed).fit(x)
            t_sk = _time(sk, max(1, repeat - 1))
            rows.append({"kernel": "k-means", "impl": "scikit-learn KMeans (lloyd)", "n": n, "m": m, "k": k,
                         "n_iter": int(held["km"].n_iter_), "seconds": t_sk, "one_read_seconds": t_read,
                         "x_one_read": t_sk / t_read, "sklearn_inertia": float(held["km"].inertia_),
                         "speedup_vs_sklearn": 1.0})
            for r in rows[-4:-1]:
                r["speedup_vs_sklearn"] = t_sk / r["seconds"]
            row["bar"] = (f"{t_sk / t_faiss:.2f}x sklearn at equal points ({shape}; bar >= 1.5x); "
                          f"{t_faiss / t_plain:.2f}x plain faiss")

        # -- dispersion vs one read
        means, _ = cluster.class_means(x, y, n_classes)
        t_read = _time(lambda: x.sum(0), repeat)
        t_disp = _time(lambda: cluster.dispersion(x, y, n_classes, means=means), repeat)
        t_both = _time(lambda: cluster.dispersion(x, y, n_classes), repeat)
        t_torch = _time(lambda: cluster.dispersion(x, y, n_classes, means=means, backend="torch"), repeat)
        t_read = min(t_read, _time(lambda: x.sum(0), repeat))
        base = {"kernel": "dispersion", "n": n, "m": m, "classes": n_classes, "one_read_seconds": t_read}
        rows.append({**base, "impl": "cpp one pass (means given)", "seconds": t_disp, "x_one_read": t_disp / t_read,
                     "speedup_vs_torch": t_torch / t_disp,
                     "bar": f"{t_disp / t_read:.2f}x one read ({n}x{m}; bar <= 2x)"})
        rows.append({**base, "impl": "cpp two passes (+ means)", "seconds": t_both, "x_one_read": t_both / t_read})
        rows.append({**base, "impl": "torch reference one pass", "seconds": t_torch, "x_one_read": t_torch / t_read,
                     "speedup_vs_torch": 1.0})
        x = None  # free this size before the next
    return rows


# --------------------------------------------------------------------------- at scale
class _PeakMemory:
    """Peak resident memory of this process, sampled from /proc/self/status every 10 ms in a
    thread (Linux): VmRSS (all resident pages, file pages of a memmap included) and RssAnon
    (what the process owns: a copy of the memmap would show here)."""

    def __init__(self):
        import threading

        self.peak = {"VmRSS": 0, "RssAnon": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(line.split()[1]) * 1024)
        except OSError:  # not Linux: no figures
            pass

    def _run(self):
        while not self._stop.wait(0.01):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def _memory_limit() -> Optional[int]:
    """The memory limit of this process's cgroup (v2 memory.max or v1 limit_in_bytes), if any."""
    import os

    try:
        with open("/proc/self/cgroup") as f:
            lines = [ln.strip().split(":", 2) for ln in f]
    except OSError:
        return None
    for _, ctrl, rel in lines:
        for path in ([f"/sys/fs/cgroup/memory{rel}/memory.limit_in_bytes"] if ctrl == "memory" else
                     [f"/sys/fs/cgroup{rel}/memory.max", f"/sys/fs/cgroup/unified{rel}/memory.max"]
                     if ctrl == "" else []):
            if os.path.exists(path):
                with open(path) as f:
                    v = f.read().strip()
                if v != "max" and int(v) < (1 << 60):
                    return int(v)
    return None


def _drop_file_cache(x) -> None:
    """Evict this file's clean pages from the page cache (only this file's), so the next
    pass reads it from disk as it would when the file is larger than memory."""
    import os

    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(x.filename, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_clustering_scale(sizes: Sequence[int] = (100_000, 1_000_000, 10_000_000), m: int = 256, k: int = 16,
                   n_iter: int = 20, full_kmeans_iter: int = 3, cold: bool = False,
                   directory: Optional[str] = None, keep_files: bool = False, threads: int = 1,
                   seed: int = 0) -> List[Dict]:
    """The clustering pipeline on float32 memmaps of ``n × m`` rows, streamed (not the default
    ``pydebias bench``: it writes files of ``4·n·m`` bytes, 10 GB at 10⁷ × 256).

    For each n, on a ``planted`` memmap (2 classes) against one chunked read of the same
    file: k-means on a ``256·k``-row sample (``n_iter`` iterations), nearest-centroid
    assignment of every row, class means, the dispersion pass; and FAISS k-means on
    *all* rows for ``full_kmeans_iter`` iterations (FAISS reads the memmap in place). Each
    row of the result gives seconds, the ratio to one read, seconds per million rows, the
    peak resident memory (``VmRSS``, file pages included, and ``RssAnon``) and the cgroup
    memory limit the process ran under, if any. ``cold=True`` evicts the file from the
    page cache before every pass (``posix_fadvise``, this file only): each pass then reads
    from disk, as when the file is larger than memory. To show that no pass needs the
    file in memory, run it under a memory limit smaller than the file (README,
    "Performance"). Files go to ``directory`` (default: a temporary one) and are
    deleted unless ``keep_files``; an existing file with the same parameters is reused.
    """
    import os
    import shutil
    import tempfile

    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    from ..data import planted_memmap

    tmp = directory is None
    directory = tempfile.mkdtemp(prefix="pydebias-clustering-") if tmp else directory
    rows: List[Dict] = []
    old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        with threadpool_limits(threads):
            for n in sizes:
                path = os.path.join(directory, f"clustering-{n}x{m}.npy")
                d = planted_memmap(path, n, m, dtype=np.float32, seed=seed)
                rows += _clustering_pipeline(d["set"].features, d["set"].labels, k, n_iter, full_kmeans_iter, cold,
                                     seed, threads)
                del d
                if not keep_files:
                    for f in (path, path + ".json", path + ".labels.npy"):
                        if os.path.exists(f):
                            os.remove(f)
    finally:
        torch.set_num_threads(old_torch)
        faiss.omp_set_num_threads(old_faiss)
        if tmp and not keep_files:
            shutil.rmtree(directory, ignore_errors=True)
    return rows


def _clustering_pipeline(x, y, k, n_iter, full_iter, cold, seed, threads) -> List[Dict]:
    import time

    n, m = x.shape
    step = max(1, (64 << 20) // (m * 4))

    def one_read():
        acc = np.zeros(m, dtype=np.float64)
        for i in range(0, n, step):
            acc += x[i:i + step].sum(0)
        return acc

    state: Dict = {}
    steps = [
        ("one read", one_read),
        (f"kmeans {256 * k}-row sample", lambda: state.__setitem__(
            "km", cluster.kmeans(x, k, n_iter=n_iter, seed=seed))),
        ("assign nearest centroid", lambda: cluster.nearest_centroid(x, state["km"].centroids)),
        ("class means", lambda: state.__setitem__("means", cluster.class_means(x, y, 2)[0])),
        ("dispersion, means given", lambda: cluster.dispersion(x, y, 2, means=state["means"])),
    ]
    if full_iter:
        steps.append((f"kmeans all rows, {full_iter} it", lambda: cluster.kmeans(
            x, k, n_iter=full_iter, seed=seed, max_points_per_centroid=None)))
    steps.append(("one read", one_read))  # again: the faster of the two is the unit
    times: Dict[str, float] = {}
    with _PeakMemory() as mem:
        if not cold:
            one_read()  # map the pages once: the first pass over a fresh mapping pays page faults
        for name, fn in steps:
            if cold:
                _drop_file_cache(x)
            t = time.perf_counter()
            fn()
            times[name] = min(times.get(name, np.inf), time.perf_counter() - t)
    limit = _memory_limit()
    t_read = times["one read"]
    out = []
    for name, t in times.items():
        out.append({"kernel": "clustering at scale", "impl": name, "n": n, "m": m, "k": k, "threads": threads,
                    "cold": cold, "file_bytes": n * m * 4, "seconds": t, "one_read_seconds": t_read,
                    "x_one_read": t / t_read, "seconds_per_million_rows": t / n * 1e6,
                    "peak_vmrss_bytes": mem.peak["VmRSS"], "peak_rss_anon_bytes": mem.peak["RssAnon"],
                    "memory_limit_bytes": limit})
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    sizes = [int(s) for s in sys.argv[1:]] or [1_000_000]
    for r in bench_clustering(sizes, threads=(1, 2)):
        print(json.dumps(r))
