"""A linear head fitted from a float16 memmap larger than the memory one would like to
spend on it: seconds and the peak of the process's anonymous memory (page cache excluded),
sampled every 20 ms while the fit runs."""
from __future__ import annotations

import functools
import os
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np


def _anonymous_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _planted_memmap(path: str, n: int, m: int, seed: int):
    """An (n, m) float16 ``.npy`` of a planted shortcut, written 100,000 rows at a time:
    class y and attribute a agree on 90 % of rows; y shifts 8 neurons by ±0.5, a shifts
    8 others by ±2 (the easier feature). Returns (labels, groups = 2y + a)."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, m))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.9, y, 1 - y)
    for s in range(0, n, 100_000):
        sl = slice(s, min(n, s + 100_000))
        rows = rng.standard_normal((sl.stop - s, m)).astype(np.float32)
        rows[:, :8] += 0.5 * (2 * y[sl, None] - 1)
        rows[:, 8:16] += 2.0 * (2 * a[sl, None] - 1)
        mm[sl] = rows.astype(np.float16)
    mm.flush()
    del mm
    return y.astype(np.int64), (2 * y + a).astype(np.int64)


def _peak_anonymous(fn):
    """(fn's result, seconds, peak anonymous bytes, bytes above the start), memory sampled
    every 20 ms while fn runs."""
    before, peak, done = _anonymous_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _anonymous_bytes())
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t
        done.set()
        watcher.join()
    peak[0] = max(peak[0], _anonymous_bytes())
    return out, seconds, peak[0], peak[0] - before


def bench_head_memmap(n: int = 1_000_000, m: int = 1024, epochs: int = 10, directory: Optional[str] = None,
                      seed: int = 0) -> List[Dict]:
    """Write an (n, m) float16 memmap of planted rows, then ``train_linear_head`` on it for
    ``epochs`` L-BFGS iterations; one row with the fit's seconds and its peak anonymous
    memory above what the process held before. Linux only."""
    from ..nn import train_linear_head

    with tempfile.TemporaryDirectory(dir=directory) as d:
        path = os.path.join(d, "rows.npy")
        y, _ = _planted_memmap(path, n, m, seed)
        fit = functools.partial(train_linear_head, np.load(path, mmap_mode="r"), y, 2, epochs=epochs, seed=seed)
        _, seconds, peak, above = _peak_anonymous(fit)
        file_bytes = n * m * 2
        del fit
    return [{"kernel": "head from a memmap", "impl": f"train_linear_head, {n:,} x {m} float16, {epochs} L-BFGS its",
             "n": n, "seconds": seconds, "file_bytes": file_bytes, "peak_anonymous_bytes": peak,
             "anonymous_above_start_bytes": above,
             "bar": f"{above / 1e6:.0f} MB above the start (the file: {file_bytes / 1e9:.2f} GB)"}]


def bench_methods_memmap(n: int = 2_000_000, m: int = 1024, directory: Optional[str] = None, seed: int = 0,
                         epochs: int = 5, n_eliminate_steps: int = 3, n_update_steps: int = 20,
                         methods=("DFR", "NSF", "AFR")) -> List[Dict]:
    """DFR, NSF and AFR fitted from an (n, m) float16 memmap of planted rows (the
    identification set; the ERM head comes from the first 20,000 rows, outside the
    timing): per method the seconds, the peak anonymous memory above the start (page
    cache and the scratch memmaps excluded: they are file pages) and the worst-group
    accuracy on the same rows. Step counts are cut (``epochs``, ``n_*_steps``) to keep
    the run short: memory does not grow with them. Scratch files go to ``directory``."""
    from ..data import EmbeddingSet
    from ..methods import AFR, DFR, ERM, NSF
    from ..metrics import evaluate

    makers = {"DFR": lambda: DFR(l2_grid=(1e-4, 1e-2), epochs=epochs, seed=seed),
              "NSF": lambda: NSF(n_eliminate_steps=n_eliminate_steps, n_update_steps=n_update_steps, seed=seed),
              "AFR": lambda: AFR(gammas=(0.0, 4.0), epochs=epochs, seed=seed)}
    for name in methods:
        if name not in makers:
            raise ValueError(f"methods: expected names from {sorted(makers)}, got {name!r}")
    out = []
    old = os.environ.get("PYDEBIAS_SCRATCH")
    with tempfile.TemporaryDirectory(dir=directory) as d:
        os.environ["PYDEBIAS_SCRATCH"] = d
        try:
            path = os.path.join(d, "rows.npy")
            y, g = _planted_memmap(path, n, m, seed)
            x = np.load(path, mmap_mode="r")
            val = EmbeddingSet(x, y, g, n_groups=4, name="planted", split="val")
            small = min(n, 20_000)
            train = EmbeddingSet(np.asarray(x[:small]), y[:small], g[:small], n_groups=4)
            head = ERM(epochs=epochs, seed=seed).fit(train)
            for name in methods:
                method = makers[name]()
                fitted, seconds, peak, above = _peak_anonymous(functools.partial(method.fit, train, val, head=head))
                worst = evaluate(fitted, val).worst_group_accuracy
                out.append({"kernel": "method from a memmap", "impl": f"{name}, {n:,} x {m} float16",
                            "n": n, "seconds": seconds, "file_bytes": x.nbytes, "peak_anonymous_bytes": peak,
                            "anonymous_above_start_bytes": above, "worst_group_accuracy": worst,
                            "bar": f"{above / 1e9:.2f} GB above the start (bar 1.5 GB), {seconds:.0f} s, "
                                   f"worst group {worst:.3f}"})
            del x, val
        finally:
            if old is None:
                os.environ.pop("PYDEBIAS_SCRATCH", None)
            else:
                os.environ["PYDEBIAS_SCRATCH"] = old
    return out
