"""Timing for the benchmark harness: medians of repeated calls, one clock."""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence

import numpy as np


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1,
                sync: Optional[Callable[[], object]] = None) -> float:
    """Median wall time of ``repeat`` calls after ``warmup`` untimed ones; ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read, so queued GPU work counts."""
    return alternating_medians([fn], repeat, warmup, sync)[0]


def alternating_medians(fns: Sequence[Callable[[], object]], repeat: int = 5, warmup: int = 1,
                        sync: Optional[Callable[[], object]] = None) -> List[float]:
    """Median wall time of each callable, called in turn ``repeat`` times (after
    ``warmup`` untimed calls each) so that drift hits all of them alike."""
    sync = sync or (lambda: None)
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            sync()
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]
