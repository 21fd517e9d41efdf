"""mask sweep: every backend against a python loop of masked forward passes.

Counts are compared exactly. Two kinds of data keep that fair across GEMM summation
orders: small-integer features and weights (every logit is an exact integer in float32,
so ties are real ties and must go to the first class, as ``torch.argmax``), and random
floats with the rows whose top two masked logits are within 1e-3 removed.
"""
import numpy as np
import pytest
import torch

from conftest import HAVE_TRITON
from pydebias import reference
from pydebias.metrics import GroupReport
from pydebias.sweep import SweepResult, mask_sweep

BACKENDS = ["cpp", "torch"] + (["triton"] if HAVE_TRITON else [])


def int_data(n, m, c, seed=0, lo=-3, hi=4):
    rng = np.random.default_rng(seed)
    x = rng.integers(lo, hi, (n, m)).astype(np.float32)
    w = torch.from_numpy(rng.integers(-2, 3, (c, m)).astype(np.float32))
    b = torch.from_numpy(rng.integers(-2, 3, c).astype(np.float32))
    return x, w, b, rng


def masks_of(kind, k, c, m, rng, p=0.6):
    shape = (k, m) if kind == "input" else (k, c, m)
    return torch.from_numpy((rng.random(shape) < p).astype(np.float32))


def loop_counts(x, y, g, n_groups, w, b, masks):
    """Independent check: predictions of each mask, then numpy bincounts."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    gc, cc = [], []
    for k in range(masks.shape[0]):
        pred = reference.masked_linear(xt, w.double(), None if b is None else b.double(), masks[k].double())
        ok = (pred.argmax(1).numpy() == y).astype(np.int64)
        gc.append(np.bincount(g, weights=ok, minlength=n_groups).astype(np.int64))
        cc.append(np.bincount(y, weights=ok, minlength=w.shape[0]).astype(np.int64))
    return np.stack(gc), np.stack(cc)


def far_from_ties(x, w, b, masks, margin=1e-3):
    """Rows whose top two logits are at least ``margin`` apart under every mask (float64)."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    keep = np.ones(xt.shape[0], dtype=bool)
    if w.shape[0] < 2:
        return keep
    for k in range(masks.shape[0]):
        z = reference.masked_linear(xt, w.double(), b.double(), masks[k].double())
        top = torch.topk(z, 2, dim=1).values
        keep &= (top[:, 0] - top[:, 1]).numpy() >= margin
    return keep


def assert_same(r: SweepResult, gc, cc):
    np.testing.assert_array_equal(r.group_correct, gc)
    np.testing.assert_array_equal(r.class_correct, cc)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["input", "per_class"])
@pytest.mark.parametrize("n,m,c,k,G,chunk", [
    (300, 17, 2, 32, 4, 64), (257, 9, 3, 5, 6, None), (64, 40, 5, 20, 20, 13), (120, 6, 1, 3, 2, 50),
])
def test_integer_data_exact_with_ties(backend, kind, n, m, c, k, G, chunk):
    x, w, b, rng = int_data(n, m, c, seed=n + k)
    y = rng.integers(0, c, n)
    g = rng.integers(0, G, n)
    masks = masks_of(kind, k, c, m, rng)
    r = mask_sweep(x, y, w, b, masks, groups=g, n_groups=G, backend=backend, chunk_rows=chunk)
    assert_same(r, *loop_counts(x, y, g, G, w, b, masks))
    np.testing.assert_array_equal(r.group_count, np.bincount(g, minlength=G))
    np.testing.assert_array_equal(r.class_count, np.bincount(y, minlength=c))


def test_integer_data_has_ties():
    """The integer fixture really exercises tie-breaking (else the test above proves less)."""
    x, w, b, rng = int_data(300, 17, 2, seed=332)
    masks = masks_of("input", 32, 2, 17, rng)
    z = torch.stack([reference.masked_linear(torch.from_numpy(x), w, b, masks[k]) for k in range(32)])
    assert int((z[..., 0] == z[..., 1]).sum()) > 50


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["input", "per_class"])
@pytest.mark.parametrize("c", [2, 4])
def test_random_floats_far_from_ties(backend, kind, c):
    rng = np.random.default_rng(c)
    n, m, k, G = 400, 33, 9, 5
    x = rng.standard_normal((n, m)).astype(np.float32)
    w = torch.from_numpy(rng.standard_normal((c, m)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal(c).astype(np.float32))
    masks = masks_of(kind, k, c, m, rng)
    keep = far_from_ties(x, w, b, masks)
    assert keep.sum() > 300
    x, y, g = x[keep], rng.integers(0, c, n)[keep], rng.integers(0, G, n)[keep]
    r = mask_sweep(x, y, w, b, masks, groups=g, n_groups=G, backend=backend, chunk_rows=37)
    assert_same(r, *loop_counts(x, y, g, G, w, b, masks))


@pytest.mark.parametrize("backend", BACKENDS)
def test_classes_are_the_groups_by_default(backend):
    x, w, b, rng = int_data(150, 8, 3, seed=4)
    y = rng.integers(0, 3, 150)
    masks = masks_of("input", 4, 3, 8, rng)
    r = mask_sweep(x, y, w, b, masks, backend=backend)
    gc, cc = loop_counts(x, y, y, 3, w, b, masks)
    assert_same(r, cc, cc)
    np.testing.assert_array_equal(r.worst_group_accuracy, r.worst_class_accuracy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adversarial_shapes(backend):
    # one row
    x, w, b, rng = int_data(1, 5, 2, seed=8)
    masks = masks_of("input", 3, 2, 5, rng)
    r = mask_sweep(x, np.array([1]), w, b, masks, groups=np.array([2]), n_groups=4, backend=backend)
    assert_same(r, *loop_counts(x, np.array([1]), np.array([2]), 4, w, b, masks))
    assert r.group_count.tolist() == [0, 0, 1, 0]
    assert np.isnan(r.group_accuracy[:, [0, 1, 3]]).all()
    np.testing.assert_array_equal(r.worst_group_accuracy, r.group_accuracy[:, 2])
    # M = 1, K = 1
    x, w, b, rng = int_data(90, 1, 3, seed=9)
    y, g = rng.integers(0, 3, 90), rng.integers(0, 3, 90)
    for masks in (torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 3, 1)):
        r = mask_sweep(x, y, w, b, masks, groups=g, n_groups=3, backend=backend)
        assert_same(r, *loop_counts(x, y, g, 3, w, b, masks))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_and_all_one_masks(backend):
    x, w, b, rng = int_data(200, 12, 3, seed=10)
    y, g = rng.integers(0, 3, 200), rng.integers(0, 4, 200)
    masks = torch.stack([torch.zeros(12), torch.ones(12)])
    r = mask_sweep(x, y, w, b, masks, groups=g, n_groups=4, backend=backend)
    # all zero: every row predicts argmax(b) (first on ties); all one: the plain head
    pred0 = np.full(200, int(np.argmax(b.numpy())))
    pred1 = (torch.from_numpy(x) @ w.T + b).argmax(1).numpy()
    for k, pred in enumerate((pred0, pred1)):
        np.testing.assert_array_equal(r.group_correct[k], np.bincount(g, weights=pred == y, minlength=4))
    tie_b = torch.tensor([1.0, 1.0, 0.0])  # bias tie between classes 0 and 1: class 0 wins
    r = mask_sweep(x, y, w, tie_b, torch.zeros(1, 12), backend=backend)
    assert r.class_correct.tolist() == [[int((y == 0).sum()), 0, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_groups(backend):
    x, w, b, rng = int_data(100, 6, 2, seed=12)
    y = rng.integers(0, 2, 100)
    g = rng.choice([0, 3], 100)  # groups 1, 2 and 4 empty
    masks = masks_of("per_class", 3, 2, 6, rng)
    r = mask_sweep(x, y, w, b, masks, groups=g, n_groups=5, backend=backend)
    assert_same(r, *loop_counts(x, y, g, 5, w, b, masks))
    assert r.group_correct[:, [1, 2, 4]].sum() == 0
    acc = r.group_accuracy
    np.testing.assert_array_equal(r.worst_group_accuracy, np.minimum(acc[:, 0], acc[:, 3]))
    assert not np.isnan(r.worst_group_accuracy).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_half_and_double_features(backend, dtype):
    x, w, b, rng = int_data(180, 10, 3, seed=14)  # small integers are exact in every float type
    y, g = rng.integers(0, 3, 180), rng.integers(0, 4, 180)
    masks = masks_of("input", 6, 3, 10, rng)
    feats = torch.from_numpy(x).to(torch.bfloat16) if dtype == "bfloat16" else x.astype(dtype)
    r = mask_sweep(feats, y, w, b, masks, groups=g, n_groups=4, backend=backend, chunk_rows=50)
    assert_same(r, *loop_counts(x, y, g, 4, w, b, masks))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_memmap_input(backend, dtype, tmp_path):
    x, w, b, rng = int_data(333, 14, 2, seed=15)
    y, g = rng.integers(0, 2, 333), rng.integers(0, 4, 333)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=dtype, shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.load(tmp_path / "x.npy", mmap_mode="r")
    masks = masks_of("input", 8, 2, 14, rng)
    r = mask_sweep(ro, y, w, b, masks, groups=g, n_groups=4, backend=backend, chunk_rows=40)
    assert_same(r, *loop_counts(x, y, g, 4, w, b, masks))


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunking_and_numpy_weights_do_not_change_counts(backend):
    x, w, b, rng = int_data(210, 11, 2, seed=16)
    y, g = rng.integers(0, 2, 210), rng.integers(0, 3, 210)
    masks = masks_of("input", 7, 2, 11, rng).numpy().astype(bool)
    base = mask_sweep(x, y, w, b, masks, groups=g, backend=backend)
    for chunk in (1, 7, 210, 10_000):
        r = mask_sweep(x, y, w.numpy(), b.numpy(), masks, groups=g, backend=backend, chunk_rows=chunk)
        assert_same(r, base.group_correct, base.class_correct)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameters_of_a_trained_head(backend):
    x, _, _, rng = int_data(80, 6, 2, seed=24)
    head = torch.nn.Linear(6, 2)  # weight and bias require grad: the sweep must not care
    y = rng.integers(0, 2, 80)
    masks = masks_of("input", 3, 2, 6, rng)
    r = mask_sweep(x, y, head.weight, head.bias, masks, backend=backend)
    keep = far_from_ties(x, head.weight.detach(), head.bias.detach(), masks)
    r2 = mask_sweep(x[keep], y[keep], head.weight, head.bias, masks, backend=backend)
    gc, cc = loop_counts(x[keep], y[keep], y[keep], 2, head.weight.detach(), head.bias.detach(), masks)
    assert_same(r2, cc, cc)
    assert r.n == 80


def test_no_bias_and_real_valued_masks():
    x, w, _, rng = int_data(120, 9, 3, seed=18)
    y, g = rng.integers(0, 3, 120), rng.integers(0, 2, 120)
    masks = torch.from_numpy(rng.integers(0, 3, (4, 9)).astype(np.float32))  # scale factors 0, 1, 2
    results = [mask_sweep(x, y, w, None, masks, groups=g, backend=be) for be in BACKENDS]
    for r in results:
        assert_same(r, *loop_counts(x, y, g, 2, w, None, masks))


def test_accuracy_helpers_agree_with_group_report():
    x, w, b, rng = int_data(500, 16, 2, seed=20)
    y = rng.integers(0, 2, 500)
    g = 2 * y + rng.integers(0, 2, 500)
    masks = masks_of("input", 6, 2, 16, rng)
    r = mask_sweep(x, y, w, b, masks, groups=g, n_groups=4)
    for k in range(6):
        pred = reference.masked_linear(torch.from_numpy(x), w, b, masks[k]).argmax(1).numpy()
        rep = GroupReport(y, pred, g, 2, 4)
        assert r.accuracy[k] == pytest.approx(rep.accuracy)
        assert r.worst_group_accuracy[k] == pytest.approx(rep.worst_group_accuracy)
        assert r.worst_class_accuracy[k] == pytest.approx(rep.worst_class_accuracy)
        assert r.balanced_accuracy[k] == pytest.approx(rep.balanced_accuracy)
        assert [p["correct"] for p in rep.per_group] == r.group_correct[k].tolist()
    best = r.best()
    assert r.worst_group_accuracy[best] == r.worst_group_accuracy.max()
    assert best == int(np.flatnonzero(r.worst_group_accuracy == r.worst_group_accuracy.max())[0])
    d = r.to_dict()
    assert d["n"] == 500 and len(d["worst_group_accuracy"]) == 6
    assert "SweepResult(masks=6" in repr(r)
    with pytest.raises(ValueError, match="metric"):
        r.best("f1")


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("one_hot_cells", [0, 64])
def test_triton_both_counting_paths(one_hot_cells):
    from pydebias.kernels import mask_sweep as k4

    x, w, b, rng = int_data(150, 12, 3, seed=21)
    y, g = rng.integers(0, 3, 150), rng.integers(0, 4, 150)
    masks = masks_of("per_class", 19, 3, 12, rng)
    counts, nan = k4.mask_sweep(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(y * 4 + g), 12,
                                w, b, masks, per_class=True, one_hot_cells=one_hot_cells)
    assert nan == 0
    gc, cc = loop_counts(x, y, g, 4, w, b, masks)
    by = counts.numpy().reshape(19, 3, 4)
    np.testing.assert_array_equal(by.sum(1), gc)
    np.testing.assert_array_equal(by.sum(2), cc)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_features_raise(backend):
    x, w, b, rng = int_data(60, 5, 2, seed=22)
    x[17, 3] = np.nan
    y = rng.integers(0, 2, 60)
    with pytest.raises(ValueError, match="features: .*NaN"):
        mask_sweep(x, y, w, b, torch.zeros(2, 5), backend=backend)  # NaN * 0 is still NaN


def test_errors_name_the_argument():
    x, w, b, rng = int_data(20, 4, 2, seed=23)
    y, g = rng.integers(0, 2, 20), rng.integers(0, 3, 20)
    masks = torch.ones(2, 4)
    with pytest.raises(ValueError, match=r"labels: ids must lie in \[0, 2\)"):
        mask_sweep(x, y + 1, w, b, masks)
    with pytest.raises(ValueError, match=r"labels: expected shape \(20,\)"):
        mask_sweep(x, y[:5], w, b, masks)
    with pytest.raises(TypeError, match="labels: expected integer ids"):
        mask_sweep(x, y + 0.5, w, b, masks)
    with pytest.raises(ValueError, match=r"groups: ids must lie in \[0, 2\)"):
        mask_sweep(x, y, w, b, masks, groups=g, n_groups=2)
    with pytest.raises(ValueError, match="n_groups: without groups"):
        mask_sweep(x, y, w, b, masks, n_groups=5)
    with pytest.raises(ValueError, match=r"weight: expected shape \(2, 4\)"):
        mask_sweep(x, y, torch.ones(2, 5), b, masks)
    with pytest.raises(ValueError, match=r"masks: expected shape \(K, 4\)"):
        mask_sweep(x, y, w, b, torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"masks: expected"):
        mask_sweep(x, y, w, b, None)
    with pytest.raises(ValueError, match="masks: contains NaN"):
        mask_sweep(x, y, w, b, torch.full((1, 4), float("inf")))
    with pytest.raises(ValueError, match="bias: expected shape"):
        mask_sweep(x, y, w, torch.ones(3), masks)
    with pytest.raises(ValueError, match="features: no rows"):
        mask_sweep(x[:0], y[:0], w, b, masks)
    with pytest.raises(ValueError, match="features: expected shape"):
        mask_sweep(x[0], y, w, b, masks)
    with pytest.raises(ValueError, match="chunk_rows"):
        mask_sweep(x, y, w, b, masks, chunk_rows=0)
    with pytest.raises(ValueError, match="backend"):
        mask_sweep(x, y, w, b, masks, backend="gpu")
