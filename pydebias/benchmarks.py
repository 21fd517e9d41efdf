"""Kernel benchmarks as ratios measured in one run (``pydebias bench``).

Every kernel time is divided by the time of one sequential read of the same input
(numpy ``X.sum(0)``) and by the numpy / torch baselines, all timed in the same process
seconds apart, so the ratios hold on a shared, noisy machine where bare times do not.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List

import numpy as np
import torch

from . import backends
from .stats import neuron_stats


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def numpy_grouped_moments(x: np.ndarray, g: np.ndarray, G: int):
    """What a user would write: a boolean-mask copy per group, then numpy reductions."""
    out = []
    for k in range(G):
        rows = x[g == k]
        out.append((rows.shape[0], rows.mean(0, dtype=np.float64), rows.var(0, dtype=np.float64, ddof=1),
                    rows.min(0), rows.max(0)))
    return out


def torch_grouped_moments(x: torch.Tensor, g: torch.Tensor, G: int):
    out = []
    for k in range(G):
        rows = x[g == k].double()
        out.append((rows.shape[0], rows.mean(0), rows.var(0), rows.amin(0), rows.amax(0)))
    return out


def bench_k1(n: int = 500_000, m: int = 512, G: int = 4, repeat: int = 5, seed: int = 0,
             baselines: bool = True) -> List[Dict]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m), dtype=np.float32)
    g = rng.integers(0, G, n)
    xt, gt = torch.from_numpy(x), torch.from_numpy(g)
    rows = []
    # Interleave one read with each candidate so the ratio comes from the same moment.
    def measure(name, fn, rep):
        t_read = median_time(lambda: x.sum(0), repeat=rep)
        t = median_time(fn, repeat=rep)
        t_read = min(t_read, median_time(lambda: x.sum(0), repeat=rep))
        rows.append({"kernel": "K1 grouped moments", "impl": name, "n": n, "m": m, "groups": G,
                     "seconds": t, "one_read_seconds": t_read, "x_one_read": t / t_read})
    if backends.native() is not None:
        measure("cpp (pydebias._C)", lambda: neuron_stats(x, groups=g, n_groups=G, backend="cpp"), repeat)
    measure("torch reference", lambda: neuron_stats(xt, groups=gt, n_groups=G, backend="torch"), max(1, repeat // 2))
    if baselines:
        measure("numpy baseline", lambda: numpy_grouped_moments(x, g, G), max(1, repeat // 2))
        measure("torch baseline", lambda: torch_grouped_moments(xt, gt, G), max(1, repeat // 2))
    base = {r["impl"]: r["seconds"] for r in rows}
    for r in rows:
        if "numpy baseline" in base:
            r["speedup_vs_numpy"] = base["numpy baseline"] / r["seconds"]
        if "torch baseline" in base:
            r["speedup_vs_torch"] = base["torch baseline"] / r["seconds"]
    return rows


def format_table(rows: List[Dict]) -> str:
    head = f"{'kernel':<22}{'implementation':<22}{'x one read':>11}{'vs numpy':>10}{'vs torch':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        f = lambda k: f"{r[k]:.1f}x" if k in r else "-"  # noqa: E731
        lines.append(f"{r['kernel']:<22}{r['impl']:<22}{r['x_one_read']:>10.2f}x{f('speedup_vs_numpy'):>10}"
                     f"{f('speedup_vs_torch'):>10}")
    return "\n".join(lines)


def run(quick: bool = False) -> List[Dict]:
    if quick:
        return bench_k1(n=50_000, m=128, repeat=3)
    return bench_k1()
