"""Property tests: every kernel against its reference on adversarial values drawn by
hypothesis: per-group offsets up to 1e30, ties, ±inf, NaN, -0.0, one row, empty groups."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pydebias import cluster, grouped_quantiles, mask_sweep, neuron_stats, reference
from pydebias.nn import masked_linear

from conftest import HAVE_TRITON
from reference_numpy import grouped

BACKENDS = ["cpp", "torch"] + (["triton"] if HAVE_TRITON else [])
KINDS = ["normal", "ties", "inf", "negzero"]


def _draw(seed, n, m, G, exp, kind, dtype):
    """Rows of G groups (some possibly empty), each group offset by up to 10**exp."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    offsets = rng.uniform(-1, 1, G) * 10.0 ** exp
    if kind == "ties":
        x = rng.integers(-2, 3, (n, m)).astype(np.float64)
    else:
        x = rng.standard_normal((n, m))
    x = x + offsets[g][:, None]
    if kind == "inf":
        x[rng.random((n, m)) < 0.1] = np.inf
        x[rng.random((n, m)) < 0.1] = -np.inf
    if kind == "negzero":
        x[rng.random((n, m)) < 0.3] = -0.0
        x[rng.random((n, m)) < 0.3] = 0.0
    return x.astype(dtype), g


def _input(x, backend):
    return torch.from_numpy(x) if backend == "triton" else x


common = dict(n=st.integers(1, 150), m=st.integers(1, 5), G=st.integers(1, 4), seed=st.integers(0, 2 ** 16),
              kind=st.sampled_from(KINDS))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(exp=st.integers(0, 30), dtype=st.sampled_from([np.float64, np.float32]), **common)
def test_moments_equal_numpy(backend, n, m, G, seed, kind, exp, dtype):
    if dtype == np.float32 and exp > 30:
        return
    x, g = _draw(seed, n, m, G, exp, kind, dtype)
    s = neuron_stats(_input(x, backend), groups=g, n_groups=G, backend=backend, quantiles=())
    ref = grouped(x, g, G)
    np.testing.assert_array_equal(s.count, ref["count"])
    np.testing.assert_array_equal(s.min, ref["min"])
    np.testing.assert_array_equal(s.max, ref["max"])
    np.testing.assert_allclose(s.mean, ref["mean"], rtol=1e-9, atol=0, equal_nan=True)
    # The yardstick for the variance: numpy on the differences to the group's first row,
    # exact in float64 here (the variance does not change under a shift; numpy on the raw
    # values loses digits to its own rounded mean when |mean| >> std).
    want = ref["var"].copy()
    for k in range(G):
        rows = x[g == k].astype(np.float64)
        if rows.shape[0] >= 2:
            ok = np.isfinite(rows).all(0)
            want[k, ok] = (rows[:, ok] - rows[0, ok]).var(0, ddof=1)
    np.testing.assert_allclose(s.var, want, rtol=1e-9, atol=1e-300, equal_nan=True)
    assert np.array_equal(np.isnan(s.var), np.isnan(ref["var"]))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(exp=st.integers(0, 30), q=st.floats(0, 1), method=st.sampled_from(["lower", "higher"]), **common)
def test_quantiles_equal_numpy(backend, n, m, G, seed, kind, exp, q, method):
    x, g = _draw(seed, n, m, G, exp, kind, np.float32)
    got = grouped_quantiles(_input(x, backend), g, G, (q,), method, backend=backend)[0]
    for k in range(G):
        rows = x[g == k].astype(np.float64)
        if rows.shape[0] == 0:
            assert np.isnan(got[k]).all()
        else:
            want = np.quantile(rows, q, axis=0, method=method)
            np.testing.assert_array_equal(got[k] == 0, want == 0)  # -0.0 and +0.0 count as equal
            np.testing.assert_array_equal(np.where(want == 0, 0, got[k]), np.where(want == 0, 0, want))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 60), m=st.integers(1, 4), G=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_nan_anywhere_is_refused(backend, n, m, G, seed):
    x, g = _draw(seed, n, m, G, 0, "normal", np.float32)
    x[np.random.default_rng(seed).integers(0, n), 0] = np.nan
    with pytest.raises(ValueError, match="^features: "):
        neuron_stats(_input(x, backend), groups=g, n_groups=G, backend=backend, quantiles=())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 80), m=st.integers(1, 6), C=st.integers(1, 4), K=st.integers(1, 3),
       seed=st.integers(0, 2 ** 16), kind=st.sampled_from(["normal", "ties", "negzero"]), exp=st.integers(0, 6))
def test_masked_linear_equals_reference(n, m, C, K, seed, kind, exp):
    rng = np.random.default_rng(seed)
    x, _ = _draw(seed, n, m, 1, exp, kind, np.float32)
    xt = torch.from_numpy(x)
    w = torch.from_numpy(rng.standard_normal((C, m)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal(C).astype(np.float32))
    mask = torch.from_numpy((rng.random((C, m)) < 0.6).astype(np.float32))
    got = masked_linear(xt, w, b, mask)
    want = reference.masked_linear(xt, w, b, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * (1 + float(xt.abs().max()) * m))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 120), m=st.integers(1, 5), C=st.integers(1, 3), K=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16), kind=st.sampled_from(["normal", "ties"]))
def test_mask_sweep_equals_a_loop_of_masked_heads(n, m, C, K, seed, kind):
    rng = np.random.default_rng(seed)
    x, _ = _draw(seed, n, m, 1, 0, kind, np.float32)
    y = rng.integers(0, C, n)
    w = torch.from_numpy(rng.standard_normal((C, m)).astype(np.float32))
    b = torch.zeros(C)
    masks = torch.from_numpy((rng.random((K, m)) < 0.7).astype(np.float32))
    res = mask_sweep(x, y, w, b, masks)
    for k in range(K):
        pred = reference.masked_linear(torch.from_numpy(x), w, b, masks[k]).argmax(1).numpy()
        for c in range(C):
            sel = y == c
            if sel.any():
                assert res.group_correct[k, c] == int((pred[sel] == c).sum())


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 150), m=st.integers(1, 5), C=st.integers(1, 3), seed=st.integers(0, 2 ** 16),
       exp=st.integers(0, 12), kind=st.sampled_from(["normal", "ties"]))
def test_dispersion_cpp_equals_torch(n, m, C, seed, exp, kind):
    x, y = _draw(seed, n, m, C, exp, kind, np.float64)
    a = cluster.dispersion(x, y, C, backend="cpp")
    b = cluster.dispersion(x, y, C, backend="torch")
    np.testing.assert_array_equal(a.nearest, b.nearest) if exp < 6 else None
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12, equal_nan=True)
