"""Float64 numpy statistics per group, the independent yardstick for the kernels."""
import numpy as np


def grouped(x, g, G):
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[1]
    out = {k: np.full((G, m), np.nan) for k in ("mean", "var", "min", "max")}
    count = np.zeros(G, dtype=np.int64)
    for k in range(G):
        rows = x[g == k]
        count[k] = rows.shape[0]
        if rows.shape[0] == 0:
            continue
        with np.errstate(invalid="ignore"):
            out["mean"][k] = rows.mean(0)
            out["min"][k] = rows.min(0)
            out["max"][k] = rows.max(0)
            if rows.shape[0] >= 2:
                out["var"][k] = rows.var(0, ddof=1)
    out["count"] = count
    return out


def gaussian_blobs(n, m, C, seed=0, spread=1.0):
    """float32 rows around C random centres (scale 2) with per-row noise ``spread``;
    labels drawn uniformly: test data for clustering and NSF."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    centers = rng.standard_normal((C, m)) * 2.0
    x = (centers[y] + spread * rng.standard_normal((n, m))).astype(np.float32)
    return x, y
