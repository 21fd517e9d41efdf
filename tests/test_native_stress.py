"""Many threads on the C++ kernels: every kernel run with 16 OpenMP threads (on any core
count) against one thread, in subprocesses.
Counts, minima, maxima, exact quantiles, nearest classes and predictions must be equal
bit for bit; float64 sums within rounding. Run under ASan/UBSan by test_sanitizers.py."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import NATIVE_PREAMBLE

WORK = """
import numpy as np, torch, pydebias
from pydebias import cluster
from pydebias.metrics import predict
rng = np.random.default_rng(0)
x = rng.standard_normal((20000, 48)).astype(np.float32)
x[:, 3] = np.round(x[:, 3])          # ties
x[5, 7], x[9, 8] = np.inf, -np.inf   # infinities
y = rng.integers(0, 3, 20000)
g = rng.integers(0, 7, 20000)
torch.set_num_threads({threads})  # torch caps OpenMP at the core count when it loads; one runtime
assert pydebias.backends.native().num_threads() == {threads}
out = {{}}
s = pydebias.neuron_stats(x, groups=g, n_groups=7, quantiles=(0.1, 0.5, 0.9))          # fused pass
t = pydebias.neuron_stats(x.astype(np.float16), y, correct=y == 0, quantiles=(0.5,))  # 16-bit rows
u = pydebias.neuron_stats(x[:, :40].astype(np.float64), groups=g, n_groups=7, chunk_rows=3001)  # chunked
for name, st in (("s", s), ("t", t), ("u", u)):
    out[name + "_count"], out[name + "_min"], out[name + "_max"] = st.count, st.min, st.max
    out[name + "_mean"], out[name + "_var"], out[name + "_median"] = st.mean, st.var, st.median
q = np.isfinite(x).all(1)
d = cluster.dispersion(x[q], y[q], 3)
out["nearest"], out["disp_means"] = d.nearest, d.means
torch.manual_seed(1)
head = torch.nn.Linear(48, 3)
out["pred16"] = predict(head, np.nan_to_num(x, posinf=0, neginf=0).astype(np.float16))
np.savez({path!r}, **out)
"""
EXACT = ("count", "min", "max", "median", "nearest", "pred16")


def _run(threads: int, path: str):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    code = NATIVE_PREAMBLE + WORK.format(threads=threads, path=path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return np.load(path)


@pytest.mark.slow
def test_sixteen_threads_equal_one(tmp_path):
    one = _run(1, str(tmp_path / "one.npz"))
    many = _run(16, str(tmp_path / "many.npz"))
    assert set(one.files) == set(many.files)
    for k in one.files:
        if k.endswith(EXACT):
            np.testing.assert_array_equal(many[k], one[k], err_msg=k)
        else:
            np.testing.assert_allclose(many[k], one[k], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=k)
