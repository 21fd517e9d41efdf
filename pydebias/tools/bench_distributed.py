"""Distributed exact medians against one rank's local pass, measured in one run: every
rank times ``neuron_stats`` on its own rows alone and then across the process group
(gloo on loopback), alternately, the ranks held together by barriers."""
from __future__ import annotations

import time
from typing import Dict, List

import numpy as np


def _worker(rank: int, world: int, n: int, m: int, repeat: int, seed: int) -> Dict:
    import torch.distributed as dist

    from ..stats import neuron_stats

    rng = np.random.default_rng(seed + rank)
    x = rng.standard_normal((n, m), dtype=np.float32)
    x += rng.standard_normal(m, dtype=np.float32)  # per-neuron offsets
    y = rng.integers(0, 10, n)
    ok = rng.random(n) < 0.8
    times = {"local": [], "distributed": []}
    for _ in range(repeat):
        for kind in ("local", "distributed"):
            dist.barrier()
            t = time.perf_counter()
            neuron_stats(x, y, ok, process_group=dist.group.WORLD if kind == "distributed" else None)
            times[kind].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_distributed_medians(world: int = 4, n: int = 500_000, m: int = 512, repeat: int = 3,
                              seed: int = 0) -> List[Dict]:
    """One row: the slowest rank's median seconds for grouped moments + exact medians
    (class x correctness, 10 classes) over all ``world x n`` rows, against its local pass
    over its own ``n`` rows; bar: <= 1.5x."""
    from ..distributed import run_local

    per_rank = run_local(_worker, world, n, m, repeat, seed)
    local = max(r["local"] for r in per_rank)
    distributed = max(r["distributed"] for r in per_rank)
    ratio = distributed / local
    return [{"kernel": "distributed stats", "impl": f"exact medians, {world} gloo ranks x {n:,} x {m}",
             "n": n * world, "seconds": distributed, "local_seconds": local, "x_local_pass": ratio,
             "per_rank": per_rank, "bar": f"{ratio:.2f}x one rank's local pass (bar <= 1.5x)"}]
