"""grouped moments: every backend against a float64 numpy reference."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pydebias import NeuronStats, neuron_stats
from reference_numpy import grouped
from conftest import HAVE_TRITON

BACKENDS = ["cpp", "torch"] + (["triton"] if HAVE_TRITON else [])
# float64 accumulation of float32 data: relative error ~1e-12 of the values' scale
RTOL, ATOL = 1e-9, 1e-9


def assert_matches(s: NeuronStats, x, g, G):
    ref = grouped(x, g, G)
    np.testing.assert_array_equal(s._count, ref["count"])
    for k in ("mean", "var", "min", "max"):
        got = s.var.reshape(G, -1) if k == "var" else getattr(s, "_" + k)
        np.testing.assert_allclose(got, ref[k], rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=k)


def rand(n, m, seed=0, scale=3.0, offset=50.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, m)) * scale + offset).astype(np.float32), rng


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m,G", [(997, 37, 4), (1, 5, 3), (50, 1, 2), (300, 130, 5), (64, 16, 20), (2000, 45, 3)])
def test_random_matches_numpy(backend, n, m, G):
    x, rng = rand(n, m, seed=n + m)
    g = rng.integers(0, G, n)
    assert_matches(neuron_stats(x, groups=g, n_groups=G, backend=backend), x, g, G)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_single_row_groups(backend):
    x, rng = rand(40, 9, seed=1)
    g = np.zeros(40, dtype=np.int64)
    g[7] = 2  # group 1 empty, group 2 one row, group 3 empty
    s = neuron_stats(x, groups=g, n_groups=4, backend=backend)
    assert s.count.tolist() == [39, 0, 1, 0]
    assert np.isnan(s.mean[1]).all() and np.isnan(s.var[2]).all()
    np.testing.assert_array_equal(s.mean[2], x[7].astype(np.float64))
    assert_matches(s, x, g, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinities_follow_numpy(backend):
    x, rng = rand(200, 6, seed=2)
    x[3, 0] = np.inf
    x[4, 1] = -np.inf
    x[5, 2], x[9, 2] = np.inf, -np.inf  # both signs in one column
    x[0, 4] = np.inf  # first row: the shift must stay finite
    g = np.zeros(200, dtype=np.int64)
    s = neuron_stats(x, groups=g, n_groups=1, backend=backend)
    assert s.mean[0, 0] == np.inf and s.mean[0, 1] == -np.inf and np.isnan(s.mean[0, 2])
    assert s.max[0, 0] == np.inf and s.min[0, 1] == -np.inf
    assert_matches(s, x, g, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_is_rejected_by_name(backend):
    x, rng = rand(100, 4, seed=3)
    x[10, 2] = np.nan
    with pytest.raises(ValueError, match="features: contains NaN"):
        neuron_stats(x, groups=np.zeros(100, dtype=np.int64), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_next_to_both_infinities_is_still_found(backend):
    x, rng = rand(100, 4, seed=4)
    x[1, 0], x[2, 0], x[3, 0] = np.inf, -np.inf, np.nan
    with pytest.raises(ValueError, match="NaN"):
        neuron_stats(x, groups=np.zeros(100, dtype=np.int64), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(backend, dtype):
    x32, rng = rand(513, 33, seed=5, offset=2.0)
    x = torch.from_numpy(x32).to(dtype)
    g = rng.integers(0, 4, 513)
    s = neuron_stats(x, groups=g, n_groups=4, backend=backend)
    exact = x.to(torch.float64).numpy()  # the values the kernel saw, widened exactly
    assert_matches(s, exact, g, 4)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_numpy_float16_and_memmap_chunks(backend, tmp_path):
    x32, rng = rand(1000, 24, seed=6)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=x32.shape)
    mm[:] = x32
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    g = rng.integers(0, 3, 1000)
    s = neuron_stats(ro, groups=g, n_groups=3, backend=backend, chunk_rows=97)
    assert_matches(s, np.asarray(ro), g, 3)


def test_class_by_correctness_layout():
    x, rng = rand(500, 8, seed=7)
    y = rng.integers(0, 3, 500)
    ok = rng.random(500) < 0.6
    s = neuron_stats(x, y, correct=ok)
    assert s.count.shape == (3, 2) and s.mean.shape == (3, 2, 8)
    for c in range(3):
        for k in (0, 1):
            rows = x[(y == c) & (ok == bool(k))].astype(np.float64)
            assert s.count[c, k] == rows.shape[0]
            np.testing.assert_allclose(s.mean[c, k], rows.mean(0), rtol=1e-12)


def test_large_group_count_takes_the_column_split_path():
    # G * M * 32 bytes > 8 MiB forces the column-split branch of the C++ kernel
    x, rng = rand(3000, 300, seed=8)
    g = rng.integers(0, 1000, 3000)
    assert_matches(neuron_stats(x, groups=g, n_groups=1000, backend="cpp"), x, g, 1000)


def test_bad_arguments_are_named():
    x, rng = rand(10, 3)
    with pytest.raises(ValueError, match="groups: ids must lie in"):
        neuron_stats(x, groups=np.array([0] * 9 + [5]), n_groups=4)
    with pytest.raises(ValueError, match="labels: expected shape"):
        neuron_stats(x, np.zeros(9, dtype=int))
    with pytest.raises(TypeError, match="features: dtype"):
        neuron_stats(x.astype(np.int32), np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="backend"):
        neuron_stats(x, np.zeros(10, dtype=int), backend="gpu")
    with pytest.raises(ValueError, match="correct: expected"):
        neuron_stats(x, np.zeros(10, dtype=int), correct=np.full(10, 3))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 120), m=st.integers(1, 9), G=st.integers(1, 5), cut=st.floats(0.0, 1.0),
       seed=st.integers(0, 2 ** 16))
def test_merge_of_halves_equals_whole(n, m, G, cut, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, m)) * rng.uniform(0.1, 100) + rng.uniform(-1e3, 1e3)).astype(np.float32)
    g = rng.integers(0, G, n)
    k = int(cut * n)
    whole = neuron_stats(x, groups=g, n_groups=G)
    merged = neuron_stats(x[:k], groups=g[:k], n_groups=G).merge(neuron_stats(x[k:], groups=g[k:], n_groups=G))
    assert merged.equals(whole, rtol=1e-9, atol=1e-6)


def test_dict_round_trip_is_exact():
    x, rng = rand(200, 5, seed=9)
    x[0, 0] = np.inf
    s = neuron_stats(x, rng.integers(0, 2, 200), correct=rng.random(200) < 0.5)
    import json
    back = NeuronStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.equals(s) and back.group_shape == (2, 2)


def test_cpp_equals_reference_on_planted_data():
    from pydebias.data import planted
    d = planted(n_train=3000, n_val=10, n_test=10, seed=3)
    tr = d["train"]
    a = neuron_stats(tr.features, groups=tr.groups, backend="cpp")
    b = neuron_stats(tr.features, groups=tr.groups, backend="torch")
    assert a.equals(b, rtol=1e-10, atol=1e-10)
