"""the quantile sketch streaming quantile sketch: rank error within the stated bound, and merge."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pydebias.sketch import DEFAULT_K, QuantileSketch, sketch_quantiles


def rank_error(col: np.ndarray, v: float, q: float) -> int:
    """How far rank floor((n-1) q) lies outside the ranks that value v holds in col."""
    n = col.size
    r = int(np.floor((n - 1) * q))
    below, upto = int((col < v).sum()), int((col <= v).sum()) - 1
    return max(0, below - r, r - upto)


def check(sk: QuantileSketch, x: np.ndarray, g: np.ndarray, levels, bound_frac=None):
    bound = sk.rank_error_bound().reshape(-1)
    for q in levels:
        est = sk.quantile(q).reshape(sk.n_groups, -1)
        for k in range(sk.n_groups):
            rows = x[g == k]
            if rows.shape[0] == 0:
                assert np.isnan(est[k]).all()
                continue
            for c in range(x.shape[1]):
                assert est[k, c] in rows[:, c], "answers are data values"
                err = rank_error(rows[:, c], est[k, c], q)
                assert err <= bound[k], (q, k, c, err, bound[k])
            if bound_frac is not None:
                assert bound[k] <= bound_frac * rows.shape[0]


def adversarial(kind: str, n: int, m: int, rng) -> np.ndarray:
    if kind == "cauchy":  # heavy tails
        x = rng.standard_cauchy((n, m))
    elif kind == "pareto":
        x = rng.pareto(0.5, (n, m)) * np.where(rng.random((n, m)) < 0.5, -1, 1)
    elif kind == "mass":  # point masses
        x = np.where(rng.random((n, m)) < 0.6, 0.0, rng.standard_normal((n, m)))
    elif kind == "ties":
        x = rng.integers(0, 3, (n, m)).astype(np.float64)
    elif kind == "inf":
        x = rng.standard_normal((n, m))
        x[rng.random((n, m)) < 0.3] = np.inf
        x[rng.random((n, m)) < 0.3] = -np.inf
    elif kind == "sorted":  # an ordering that hurts naive compactors
        x = np.sort(rng.standard_normal((n, m)), axis=0)
    else:  # alternating extremes
        x = np.where(np.arange(n)[:, None] % 2 == 0, np.arange(n)[:, None], -np.arange(n)[:, None]) * np.ones(m)
    return x.astype(np.float32)


KINDS = ["cauchy", "pareto", "mass", "ties", "inf", "sorted", "zigzag"]


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(KINDS), n=st.integers(1, 3000), m=st.integers(1, 4), G=st.integers(1, 3),
       k=st.sampled_from([8, 32, 128]), seed=st.integers(0, 2 ** 16))
def test_rank_error_within_tracked_bound(kind, n, m, G, k, seed):
    rng = np.random.default_rng(seed)
    x = adversarial(kind, n, m, rng)
    g = rng.integers(0, G, n)
    sk = QuantileSketch(m, G, k=k).update(x, g, chunk_rows=97)
    check(sk, x, g, (0.0, 0.01, 0.25, 0.5, 0.9, 1.0))
    # the a-priori bound L n / k of the module docstring
    for b, cnt in zip(sk.rank_error_bound(), sk.count):
        if cnt > k:
            assert b <= (np.floor(np.log2(cnt / k)) + 1) * cnt / k


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(KINDS), n=st.integers(2, 3000), parts=st.integers(2, 5),
       k=st.sampled_from([8, 32, 128]), seed=st.integers(0, 2 ** 16))
def test_merge_of_parts_is_within_bound_of_the_whole(kind, n, parts, k, seed):
    rng = np.random.default_rng(seed)
    x = adversarial(kind, n, 2, rng)
    g = rng.integers(0, 2, n)
    cuts = np.sort(rng.integers(0, n, parts - 1))
    pieces = np.split(np.arange(n), cuts)
    merged = QuantileSketch(2, 2, k=k)
    for idx in pieces:
        merged = merged + QuantileSketch(2, 2, k=k).update(x[idx], g[idx])
    whole = QuantileSketch(2, 2, k=k).update(x, g)
    assert merged.count.tolist() == whole.count.tolist()
    check(merged, x, g, (0.0, 0.3, 0.5, 1.0))
    # merged and whole answer ranks within the sum of their bounds of each other
    for k_ in range(2):
        rows = x[g == k_]
        if rows.shape[0] == 0:
            continue
        for c in range(2):
            a, b = merged.quantile(0.5)[k_, c], whole.quantile(0.5)[k_, c]
            ra, rb = (rows[:, c] < a).sum(), (rows[:, c] < b).sum()
            ua, ub = (rows[:, c] <= a).sum(), (rows[:, c] <= b).sum()
            gap = max(0, ra - ub, rb - ua)
            assert gap <= merged.rank_error_bound()[k_] + whole.rank_error_bound()[k_]


@pytest.mark.parametrize("kind", KINDS)
def test_default_k_bound_is_half_a_percent(kind):
    rng = np.random.default_rng(1)
    n = 60000
    x = adversarial(kind, n, 2, rng)
    g = rng.integers(0, 2, n)
    a = QuantileSketch(2, 2).update(x[: n // 3], g[: n // 3])
    b = QuantileSketch(2, 2).update(x[n // 3:], g[n // 3:])
    for sk in (QuantileSketch(2, 2).update(x, g), a + b):
        assert sk.k == DEFAULT_K
        check(sk, x, g, (0.0, 0.05, 0.5, 0.95, 1.0), bound_frac=0.005)


def test_exact_below_capacity_and_inputs():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((500, 3)).astype(np.float32)).to(torch.bfloat16)
    sk = QuantileSketch(3, k=1024).update(x)
    assert sk.rank_error_bound().tolist() == [0]
    ref = np.quantile(x.double().numpy(), 0.5, axis=0, method="lower")
    np.testing.assert_array_equal(sk.median[0], ref)
    q = sketch_quantiles(x.double().numpy(), quantiles=(0.5, 0.9), k=1024)
    assert q.shape == (2, 1, 3)
    np.testing.assert_array_equal(q[0, 0], ref)


def test_errors_are_named():
    x = np.zeros((10, 3), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="features: contains NaN"):
        QuantileSketch(3).update(x)
    with pytest.raises(ValueError, match="features: expected 3 columns"):
        QuantileSketch(3).update(np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="groups: ids must lie"):
        QuantileSketch(3, 2).update(np.zeros((4, 3), dtype=np.float32), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="k: expected"):
        QuantileSketch(3, k=7)
    with pytest.raises(ValueError, match="other: sketches differ"):
        QuantileSketch(3, k=8) + QuantileSketch(3, k=16)
    with pytest.raises(ValueError, match="q: expected"):
        QuantileSketch(3).quantile(2.0)
