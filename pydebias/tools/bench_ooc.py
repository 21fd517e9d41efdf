"""A linear head fitted from a float16 memmap larger than the memory one would like to
spend on it: seconds and the peak of the process's anonymous memory (page cache excluded),
sampled every 20 ms while the fit runs."""
from __future__ import annotations

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


def bench_head_memmap(n: int = 1_000_000, m: int = 1024, epochs: int = 10, directory: Optional[str] = None,
                      seed: int = 0) -> List[Dict]:
    """Write an (n, m) float16 memmap of random rows (labels from the first column), then
    ``train_linear_head`` on it for ``epochs`` L-BFGS iterations; one row with the fit's
    seconds and its peak anonymous memory above what the process held before. Linux only."""
    from ..nn import train_linear_head

    with tempfile.TemporaryDirectory(dir=directory) as d:
        path = os.path.join(d, "rows.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, m))
        rng = np.random.default_rng(seed)
        for s in range(0, n, 100_000):
            mm[s:s + 100_000] = rng.standard_normal((min(100_000, n - s), m)).astype(np.float16)
        mm.flush()
        del mm
        x = np.load(path, mmap_mode="r")
        y = (np.asarray(x[:, 0], dtype=np.float32) > 0).astype(np.int64)
        before, peak, done = _anonymous_bytes(), [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _anonymous_bytes())
                time.sleep(0.02)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        t = time.perf_counter()
        train_linear_head(x, y, 2, epochs=epochs, seed=seed)
        seconds = time.perf_counter() - t
        done.set()
        watcher.join()
        file_bytes = x.nbytes
        del x
    above = peak[0] - before
    return [{"kernel": "head from a memmap", "impl": f"train_linear_head, {n:,} x {m} float16, {epochs} L-BFGS its",
             "n": n, "seconds": seconds, "file_bytes": file_bytes, "peak_anonymous_bytes": peak[0],
             "anonymous_above_start_bytes": above,
             "bar": f"{above / 1e6:.0f} MB above the start (the file: {file_bytes / 1e9:.2f} GB)"}]
