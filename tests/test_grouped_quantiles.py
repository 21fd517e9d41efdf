"""exact grouped quantiles: every backend bit for bit against np.quantile(method=lower/higher)."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pydebias import NeuronStats, neuron_stats
from pydebias import stats as stats_mod
from pydebias.stats import grouped_quantiles
from conftest import HAVE_TRITON

BACKENDS = ["cpp", "torch"] + (["triton"] if HAVE_TRITON else [])
LEVELS = (0.5, 0.0, 1.0, 0.1, 0.37, 0.99)


def numpy_quantiles(x, g, G, levels, method):
    """np.quantile per group on the values widened to float64; NaN for empty groups."""
    x = x.to(torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    out = np.full((len(levels), G, x.shape[1]), np.nan)
    for k in range(G):
        rows = x[g == k]
        if rows.shape[0]:
            out[:, k] = np.quantile(rows, levels, axis=0, method=method)
    return out


def assert_exact(x, g, G, backend, levels=LEVELS):
    for method in ("lower", "higher"):
        got = grouped_quantiles(x, g, G, quantiles=levels, method=method, backend=backend)
        ref = numpy_quantiles(x, g, G, levels, method)
        assert got.shape == ref.shape
        np.testing.assert_array_equal(got, ref, err_msg=f"{backend} {method}")


def small(backend, n, m):
    """The Triton interpreter is slow: keep its inputs small."""
    return (min(n, 300), min(m, 12)) if backend == "triton" else (n, m)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m,G", [(997, 37, 4), (1, 5, 3), (50, 1, 2), (20000, 24, 3)])
def test_random_matches_numpy(backend, n, m, G):
    n, m = small(backend, n, m)
    rng = np.random.default_rng(n + m)
    x = (rng.standard_normal((n, m)) * 3 + 1).astype(np.float32)
    assert_exact(x, rng.integers(0, G, n), G, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_point_masses_and_infinities(backend):
    n, m = small(backend, 6000, 10)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, m)).astype(np.float32)
    x[:, 0] = np.maximum(x[:, 0], 0)  # ReLU: a point mass at 0 near the median
    x[:, 1] = np.round(x[:, 1] * 2)  # a few integers, heavy ties
    x[:, 2] = 7.0  # constant column
    x[::3, 3] = np.inf
    x[::2, 4] = -np.inf
    x[::2, 5], x[1::2, 5] = np.inf, -np.inf  # only infinities
    x[:, 6] = np.where(rng.random(n) < 0.49, 0.0, x[:, 6])  # mass just below the median
    x[:, 7] = np.where(rng.random(n) < 0.51, 1.0, x[:, 7])  # mass over the median
    g = rng.integers(0, 3, n)
    assert_exact(x, g, 3, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_row_groups(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    g = np.zeros(40, dtype=np.int64)
    g[7] = 2  # groups 1 and 3 empty, group 2 a single row
    got = grouped_quantiles(x, g, 4, quantiles=(0.5, 0.9), backend=backend)
    assert np.isnan(got[:, 1]).all() and np.isnan(got[:, 3]).all()
    np.testing.assert_array_equal(got[0, 2], x[7].astype(np.float64))
    assert_exact(x, g, 4, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(backend, dtype):
    n, m = small(backend, 3000, 20)
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((n, m)).astype(np.float32)).to(dtype)
    assert_exact(x, rng.integers(0, 4, n), 4, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_is_rejected_by_name(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    x[150, 3] = np.nan  # outside the C++ sample's rows
    with pytest.raises(ValueError, match="features: contains NaN"):
        grouped_quantiles(x, np.zeros(200, dtype=np.int64), 1, backend=backend)


def test_cpp_nan_found_in_large_input():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30000, 8)).astype(np.float32)
    x[12345, 6] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        grouped_quantiles(x, rng.integers(0, 2, 30000), 2, backend="cpp")


@pytest.mark.parametrize("z", [0.0, 1.0])
def test_cpp_fallback_when_brackets_miss(monkeypatch, z):
    """Brackets of width ~0 miss often: the exact fallback must take over, bit for bit."""
    monkeypatch.setattr(stats_mod, "QUANTILE_BRACKET_Z", z)
    monkeypatch.setattr(stats_mod, "QUANTILE_SAMPLE_ROWS", 64)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((20000, 9)).astype(np.float32)
    x[:, 0] = np.sort(x[:, 0])  # sorted column: a strided sample is no help
    x[:, 1] = np.maximum(x[:, 1], 0)
    assert_exact(x, rng.integers(0, 3, 20000), 3, "cpp")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bf16"])
def test_cpp_two_stage_brackets(monkeypatch, dtype):
    """Small samples force the second (refining) stage on small data, with its strided
    in-place sample; ties, point masses and infinities must still come out exact."""
    monkeypatch.setattr(stats_mod, "QUANTILE_SAMPLE_ROWS", 64)
    monkeypatch.setattr(stats_mod, "QUANTILE_REFINE", 4)
    calls = []
    orig = stats_mod._refine_brackets
    monkeypatch.setattr(stats_mod, "_refine_brackets", lambda *a: calls.append(1) or orig(*a))
    rng = np.random.default_rng(13)
    n = 12000
    x = rng.standard_normal((n, 8)).astype(np.float32)
    x[:, 0] = np.maximum(x[:, 0], 0)
    x[:, 1] = np.round(x[:, 1] * 2)
    x[rng.random(n) < 0.49, 2] = 0.0
    x[::5, 3] = np.inf
    g = rng.integers(0, 3, n)
    g[:40] = 3  # a small group, taken whole
    data = torch.from_numpy(x).to(torch.bfloat16) if dtype == "bf16" else x.astype(dtype)
    assert_exact(data, g, 4, "cpp")
    assert calls


def _count_fallbacks(monkeypatch) -> list:
    """A list that grows by one each time the exact (np.partition) fallback runs."""
    calls = []
    orig = stats_mod._fallback
    monkeypatch.setattr(stats_mod, "_fallback", lambda *a: calls.append(1) or orig(*a))
    return calls


def _equal_groups(n, G):
    """Group ids of n rows in G equal runs, and each group's (rows, half its size)."""
    g = np.repeat(np.arange(G), n // G)
    return g, [(rows, rows.size // 2) for rows in (np.flatnonzero(g == k) for k in range(G))]


@pytest.mark.parametrize("fused", [False, True])
def test_cpp_median_pair_straddles_point_mass(monkeypatch, fused):
    """Even groups whose two middle ranks are a copy of a point mass (counted, not kept)
    and a kept value, on either side of it: phase 3 resolves one target from the counts
    and selects the other among the kept values."""
    monkeypatch.setattr(stats_mod, "QUANTILE_SAMPLE_ROWS", 64)
    monkeypatch.setattr(stats_mod, "QUANTILE_REFINE", 4)
    fallbacks = _count_fallbacks(monkeypatch)  # the exact fallback would hide a wrong select
    rng = np.random.default_rng(17)
    n, G = 24000, 2
    g, parts = _equal_groups(n, G)
    x = np.empty((n, 3), dtype=np.float32)
    for rows, half in parts:
        pos = rng.random(half).astype(np.float32) + 0.5
        x[rows, 0] = rng.permutation(np.concatenate([np.zeros(half, np.float32), pos]))  # mass, then kept
        x[rows, 1] = rng.permutation(np.concatenate([-pos, np.zeros(half, np.float32)]))  # kept, then mass
        x[rows, 2] = rng.standard_normal(rows.size)
    if fused:
        st = neuron_stats(x, groups=g, n_groups=G, backend="cpp")
        got = {m: st.quantile(0.5, m) for m in ("lower", "higher")}
    else:
        got = {m: grouped_quantiles(x, g, G, method=m, backend="cpp")[0] for m in ("lower", "higher")}
    for m in ("lower", "higher"):
        np.testing.assert_array_equal(got[m], numpy_quantiles(x, g, G, (0.5,), m)[0])
    assert not fallbacks
    assert (got["lower"][:, 0] == 0).all() and (got["higher"][:, 0] > 0).all()
    assert (got["lower"][:, 1] < 0).all() and (got["higher"][:, 1] == 0).all()


def test_cpp_median_pair_far_apart(monkeypatch):
    """Two clusters far apart with equal halves: the two middle ranks lie at opposite
    ends of the bracket, in different bins of the select's one histogram."""
    fallbacks = _count_fallbacks(monkeypatch)
    rng = np.random.default_rng(19)
    n, G = 30000, 3
    g, parts = _equal_groups(n, G)
    x = np.empty((n, 4), dtype=np.float32)
    for rows, half in parts:
        for c, gap in enumerate((1e3, 1e30, 1.0, 1e-30)):
            lo = -gap + rng.standard_normal(half) * gap * 1e-3
            hi = gap + rng.standard_normal(half) * gap * 1e-3
            x[rows, c] = rng.permutation(np.concatenate([lo, hi]))
    for m in ("lower", "higher"):
        got = grouped_quantiles(x, g, G, method=m, backend="cpp")
        np.testing.assert_array_equal(got, numpy_quantiles(x, g, G, (0.5,), m))
    lower = grouped_quantiles(x, g, G, method="lower", backend="cpp")
    higher = grouped_quantiles(x, g, G, method="higher", backend="cpp")
    assert (lower < 0).all() and (higher > 0).all()
    assert not fallbacks


def test_cpp_memmap_chunks(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5000, 16)).astype(np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    g = rng.integers(0, 3, 5000)
    for method in ("lower", "higher"):
        got = grouped_quantiles(ro, g, 3, quantiles=LEVELS, method=method, backend="cpp", chunk_rows=333)
        np.testing.assert_array_equal(got, numpy_quantiles(x, g, 3, LEVELS, method))


def test_midpoint_matches_numpy_on_finite_data():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1001, 7)).astype(np.float32)
    g = rng.integers(0, 2, 1001)
    got = grouped_quantiles(x, g, 2, quantiles=(0.5, 0.25, 0.8), method="midpoint")
    np.testing.assert_array_equal(got, numpy_quantiles(x, g, 2, (0.5, 0.25, 0.8), "midpoint"))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 400), m=st.integers(1, 6), G=st.integers(1, 4), seed=st.integers(0, 2 ** 16),
       q=st.floats(0.0, 1.0), kind=st.sampled_from(["normal", "ints", "cauchy", "inf"]))
def test_cpp_property_matches_numpy(n, m, G, seed, q, kind):
    rng = np.random.default_rng(seed)
    if kind == "ints":
        x = rng.integers(-3, 4, (n, m)).astype(np.float32)
    elif kind == "cauchy":
        x = rng.standard_cauchy((n, m)).astype(np.float32)
    else:
        x = rng.standard_normal((n, m)).astype(np.float32)
    if kind == "inf":
        x[rng.random((n, m)) < 0.2] = np.inf
        x[rng.random((n, m)) < 0.2] = -np.inf
    assert_exact(x, rng.integers(0, G, n), G, "cpp", levels=(q, 0.5))


# -- through neuron_stats / NeuronStats ------------------------------------------------
def test_neuron_stats_median_and_quantile():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((800, 5)).astype(np.float32)
    y = rng.integers(0, 3, 800)
    ok = rng.random(800) < 0.6
    s = neuron_stats(x, y, correct=ok, quantiles=(0.5, 0.9))
    assert s.median.shape == (3, 2, 5) and s.quantile_levels == (0.5, 0.9)
    for c in range(3):
        for k in range(2):
            rows = x[(y == c) & (ok == bool(k))].astype(np.float64)
            np.testing.assert_array_equal(s.median[c, k], np.quantile(rows, 0.5, axis=0, method="lower"))
            np.testing.assert_array_equal(s.quantile(0.9, "higher")[c, k],
                                          np.quantile(rows, 0.9, axis=0, method="higher"))
    hi = neuron_stats(x, y, correct=ok, quantile_method="higher")
    np.testing.assert_array_equal(hi.median, s.quantile(0.5, "higher"))


def test_quantiles_off_and_errors_are_named():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((100, 3)).astype(np.float32)
    s = neuron_stats(x, groups=np.zeros(100, dtype=np.int64), quantiles=())
    with pytest.raises(ValueError, match="q: quantile 0.5 was not computed"):
        s.median
    with pytest.raises(ValueError, match="quantiles: levels must lie in"):
        neuron_stats(x, groups=np.zeros(100, dtype=np.int64), quantiles=(1.5,))
    with pytest.raises(ValueError, match="quantile_method"):
        neuron_stats(x, groups=np.zeros(100, dtype=np.int64), quantile_method="linear")


def test_merge_drops_exact_quantiles_and_dict_round_trip():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    x[0, 0] = np.inf
    g = rng.integers(0, 2, 300)
    s = neuron_stats(x, groups=g, quantiles=(0.5, 0.1))
    back = NeuronStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.equals(s) and back.quantile_levels == (0.1, 0.5)
    np.testing.assert_array_equal(back.median, s.median)
    merged = neuron_stats(x[:100], groups=g[:100]).merge(neuron_stats(x[100:], groups=g[100:]))
    assert merged.quantile_levels == ()
    with pytest.raises(ValueError, match="merge"):
        merged.median


@pytest.mark.parametrize("backend", BACKENDS)
def test_neuron_stats_backends_agree(backend):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((257, 9)).astype(np.float32)
    g = rng.integers(0, 3, 257)
    ref = neuron_stats(x, groups=g, backend="torch", quantiles=(0.5, 0.2))
    got = neuron_stats(x, groups=g, backend=backend, quantiles=(0.5, 0.2))
    for q in (0.5, 0.2):
        for method in ("lower", "higher", "midpoint"):
            np.testing.assert_array_equal(got.quantile(q, method), ref.quantile(q, method))


def _lib():
    from pydebias import backends
    lib = backends.native()
    if lib is None:
        pytest.skip("native extension not built")
    return lib


def _as_16bit(a: np.ndarray, kernel: str) -> np.ndarray:
    """float16 values, or bfloat16 bit patterns (the upper half of float32: exact for
    values that fit, as every value here does), with a's shape and strides."""
    bf16 = kernel.startswith("bfloat16")
    out = np.empty((a.shape[0], a.strides[0] // a.itemsize), dtype=np.uint16 if bf16 else np.float16)
    out = out[:, :a.shape[1]]
    out[:] = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) if bf16 else a
    return out


@pytest.mark.parametrize("kernel", ["avx512", "avx2", "float64", "float16", "bfloat16", "float16-widened",
                                    "bfloat16-avx2", "bfloat16-widened", "float16-avx2"])
def test_cpp_collect_counters_against_numpy(monkeypatch, kernel):
    """Phase 2 called directly in two chunks (one a strided view): the counts below lo and
    at the point mass, the derived count not above hi, and the multiset of kept values
    (NaN included) per cell, against numpy -- with bounds and masses that sit on data
    values, infinite bounds, an empty bracket, and a region too small (overflow).
    16-bit rows are counted from the raw rows with AVX-512 and with AVX2 (converted in
    registers), and widened to float blocks first with PYDEBIAS_NO_DIRECT16=1."""
    if kernel.endswith("avx2"):
        monkeypatch.setenv("PYDEBIAS_NO_AVX512", "1")
    if kernel.endswith("widened"):
        monkeypatch.setenv("PYDEBIAS_NO_DIRECT16", "1")
    half = kernel.startswith(("float16", "bfloat16"))
    lib = _lib()
    rng = np.random.default_rng(23)
    n, m, G = 9001, 19, 3  # several 64+-row blocks and pieces, a ragged last block
    base = np.round(rng.standard_normal((2 * n, m)) * 4) / 4  # ties everywhere
    base[::97, 3] = np.inf
    base[::89, 4] = -np.inf
    base[::1000, 5] = np.nan
    dt = np.float64 if kernel == "float64" else np.float32
    x = base.astype(dt)
    g = rng.integers(0, G, 2 * n)
    lo = np.full((1, G, m), -0.5); hi = np.full((1, G, m), 0.75); mass = np.full((1, G, m), np.nan)
    mass[0, :, 0] = 0.25  # a point mass inside the bracket: counted, not kept
    mass[0, 1, 1] = -0.5  # a mass on the lower bound
    lo[0, :, 3] = -np.inf; hi[0, :, 3] = np.inf; mass[0, :, 3] = np.inf  # everything, +inf a mass
    lo[0, :, 4] = hi[0, :, 4] = -np.inf  # bracket and mass at -inf: nothing below
    mass[0, :, 4] = -np.inf
    lo[0, 2, 6] = hi[0, 2, 6] = mass[0, 2, 6] = 0.0  # lo == hi == mass
    code = 1 if kernel == "float64" else 2 if kernel.startswith("float16") else 3 if half else 0
    strided = np.empty((n, m + 5), dtype=dt)[:, :m]  # rows read in place, stride > m
    strided[:] = x[n:]
    chunks = [(x[:n], g[:n]), (strided, g[n:])]
    if half:
        chunks = [(_as_16bit(a, kernel), gs) for a, gs in chunks]
    cap = np.full(G * m, 2 * n, dtype=np.int64)
    cap[1 * m + 7] = 3  # one region far too small: it must overflow, not corrupt others
    off = np.zeros(G * m + 1, dtype=np.int64); np.cumsum(cap, out=off[1:])
    keep = np.empty(int(off[-1]), dtype=dt)
    fill = np.zeros(G * m, dtype=np.int64)
    cnt = np.zeros((3, 1, G, m), dtype=np.int64)
    for arr, gs in chunks:
        lib.quantile_collect(arr, code, np.ascontiguousarray(gs), G, lo, hi, mass, cnt, keep, off, fill)
    v64 = x.astype(np.float64)
    for k in range(G):
        rows = v64[g == k]
        for c in range(m):
            i = k * m + c
            v, l, h, w = rows[:, c], lo[0, k, c], hi[0, k, c], mass[0, k, c]
            with np.errstate(invalid="ignore"):
                below, at, upto = (v < l).sum(), (v == w).sum(), (~(v > h)).sum()
                kept = np.sort(v[~(v < l) & ~(v > h) & ~(v == w)])
            assert cnt[0, 0, k, c] == below and cnt[2, 0, k, c] == at, (k, c)
            if i == 1 * m + 7:
                assert fill[i] == -1 and cnt[1, 0, k, c] == -1
                continue
            assert fill[i] == kept.size and cnt[1, 0, k, c] == upto, (k, c)
            got = np.sort(keep[off[i]:off[i] + fill[i]].astype(np.float64))
            np.testing.assert_array_equal(got, kept)
    assert cnt[0, 0, :, 4].sum() == 0 and cnt[2, 0, :, 4].sum() == (v64[:, 4] == -np.inf).sum() > 0
    assert fill[np.arange(G) * m + 5].sum() >= np.isnan(v64[:, 5]).sum() > 0  # NaN always kept
    # The derived count needs lo <= hi and the mass inside: other brackets are refused
    # where the group has rows, accepted for a group without any (an empty group's).
    for bad_lo, bad_hi, bad_mass in ((1.0, 0.0, np.nan), (0.0, 1.0, 2.0), (np.nan, 1.0, np.nan)):
        l2, h2, w2 = lo.copy(), hi.copy(), mass.copy()
        l2[0, 1, 2], h2[0, 1, 2], w2[0, 1, 2] = bad_lo, bad_hi, bad_mass
        fill[:] = 0
        with pytest.raises(ValueError, match="lo <= hi"):
            lib.quantile_collect(chunks[0][0], code, np.ascontiguousarray(g[:n]), G, l2, h2, w2, cnt, keep, off, fill)
        g0 = np.zeros(n, dtype=np.int64)  # group 1 has no rows now
        lib.quantile_collect(chunks[0][0], code, g0, G, l2, h2, w2, cnt, keep, off, fill)


@pytest.mark.parametrize("kernel", ["avx512", "avx2"])
def test_cpp_fused_pass_many_blocks_exact(monkeypatch, kernel):
    """The fused moments + quantiles pass over many blocks and pieces (with next-block prefetches
    issued from each batch) under both SIMD kernels: exact medians, and the moments of
    the moments-only pass (counts, min, max bit for bit). With AVX-512 the moments of
    four-row batches are taken inside the grouped quantiles column loop: 45 columns leave a last step
    of 13 lanes, so both masked halves of it are exercised, with infinities and -0.0."""
    if kernel == "avx2":
        monkeypatch.setenv("PYDEBIAS_NO_AVX512", "1")
    rng = np.random.default_rng(29)
    n, m, G = 70001, 45, 5
    x = rng.standard_normal((n, m)).astype(np.float32)
    x[:, 0] = np.maximum(x[:, 0], 0)
    x[:, 1] = np.round(x[:, 1])
    x[rng.integers(0, n, 50), 44] = -0.0
    x[rng.integers(0, n, 5), 42] = np.inf  # in the masked upper half of the last step
    x[rng.integers(0, n, 5), 33] = -np.inf
    g = rng.integers(0, G, n)
    g[g == 4] = 3
    g[-1] = 4  # a one-row group
    st = neuron_stats(x, groups=g, n_groups=G + 1, backend="cpp")  # group 5 empty
    ref = numpy_quantiles(x, g, G + 1, (0.5,), "lower")[0]
    np.testing.assert_array_equal(st.median, ref)
    mom = neuron_stats(x, groups=g, n_groups=G + 1, backend="cpp", quantiles=())
    for a in ("count", "min", "max"):  # order-free: exact; sums differ in rounding only
        np.testing.assert_array_equal(getattr(st, a), getattr(mom, a))
    for a in ("mean", "m2"):
        np.testing.assert_allclose(getattr(st, a), getattr(mom, a), rtol=1e-9, atol=1e-12)


def test_region_margin_covers_sampling_error():
    """Regions sized from a sample's estimate grow by five standard errors, never beyond
    the group, and not at all where the group was sampled whole."""
    count = np.array([125000, 500, 0, 2000])
    sampled = np.array([1024, 500, 0, 1024])
    expect = np.array([[[16344, 125000, 0], [10, 500, 0], [0, 0, 0], [2000, 7, 1000]]])
    got = stats_mod._with_margin(expect, count, sampled)
    assert got.dtype == np.int64 and got.shape == expect.shape
    assert (got >= expect).all() and (got <= count[None, :, None]).all()
    np.testing.assert_array_equal(got[0, 1], expect[0, 1])  # taken whole: exact already
    f = 16344 / 125000
    assert got[0, 0, 0] >= 125000 * (f + 4.9 * np.sqrt(f * (1 - f) / 1024)) > 21527 * 0.8
    assert got[0, 0, 1] == 125000 and got[0, 3, 0] == 2000


def test_cpp_sample_scratch_reused_across_dtypes():
    """The first-stage sample is copied into a reused buffer: calls in a row with other
    dtypes, widths and tensors must not see each other's rows."""
    rng = np.random.default_rng(31)
    for dtype, m in ((np.float32, 7), (np.float16, 13), ("bf16", 5), (np.float64, 9), (np.float32, 3)):
        x = rng.standard_normal((30000, m)).astype(np.float32)
        x[:, 0] = np.maximum(x[:, 0], 0)
        g = rng.integers(0, 3, 30000)
        data = torch.from_numpy(x).to(torch.bfloat16) if dtype == "bf16" else x.astype(dtype)
        assert_exact(data, g, 3, "cpp", levels=(0.5, 0.1))


def test_cpp_small_group_taken_whole_beside_a_sampled_one(monkeypatch):
    """A group small enough to be read whole in the second bracketing stage (its rows off
    the stride are gathered separately) next to a large, sampled one: both exact."""
    seen = []
    orig = stats_mod._sample_rows
    monkeypatch.setattr(stats_mod, "_sample_rows", lambda f, i, slot="sample": seen.append(slot) or orig(f, i, slot))
    rng = np.random.default_rng(23)
    n = 400_000
    g = np.where(rng.random(n) < 0.01, 1, 0)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    for m in ("lower", "higher"):
        got = grouped_quantiles(x, g, 2, method=m, backend="cpp")[0]
        np.testing.assert_array_equal(got, numpy_quantiles(x, g, 2, (0.5,), m)[0])
    assert "extra" in seen
