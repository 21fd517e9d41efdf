"""pydebias.cluster: FAISS k-means, nearest centroid, per-class dispersion."""
import numpy as np
import pytest
import torch

from pydebias import cluster
from reference_numpy import gaussian_blobs


def _blobs(n=3000, m=12, C=3, seed=0, spread=1.0):
    return gaussian_blobs(n, m, C, seed, spread)


def _numpy_dispersion(x, y, C):
    x = x.astype(np.float64)
    means = np.stack([x[y == c].mean(0) for c in range(C)])
    d = np.sqrt(((x[:, None, :] - means[None]) ** 2).sum(-1))  # (N, C)
    own = d[np.arange(len(y)), y]
    other = d.copy()
    other[np.arange(len(y)), y] = np.inf
    b = other.min(1)
    s = (b - own) / np.maximum(own, b)
    near = d.argmin(1)
    cd = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    np.fill_diagonal(cd, np.inf)
    out = {"mean_distance": [], "outlier_fraction": [], "intra_inter_ratio": [], "silhouette": []}
    for c in range(C):
        k = y == c
        out["mean_distance"].append(own[k].mean())
        out["outlier_fraction"].append((near[k] != c).mean())
        out["intra_inter_ratio"].append(own[k].mean() / cd[c].min())
        out["silhouette"].append(s[k].mean())
    return {k: np.array(v) for k, v in out.items()}, near, means


def test_dispersion_matches_numpy():
    x, y = _blobs(n=1500, m=8, C=3, spread=2.5)  # overlapping: outliers exist
    ref, near, means = _numpy_dispersion(x, y, 3)
    d = cluster.dispersion(x, y, 3, chunk_rows=256)
    for k, v in ref.items():
        np.testing.assert_allclose(getattr(d, k), v, rtol=1e-5, atol=1e-6, err_msg=k)
    assert (ref["outlier_fraction"] > 0).all()
    np.testing.assert_array_equal(d.nearest, near)
    np.testing.assert_allclose(d.means, means, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(d.count, np.bincount(y, minlength=3))
    assert d.overall["outlier_fraction"] == pytest.approx((near != y).mean())
    assert d.overall["mean_distance"] == pytest.approx(
        np.sqrt(((x - means[y]) ** 2).sum(1)).mean(), rel=1e-5)


def test_dispersion_absent_class_is_nan_not_zero():
    x, y = _blobs(n=600, m=5, C=2)
    d = cluster.dispersion(x, y, n_classes=3)
    assert d.count[2] == 0
    assert np.isnan(d.mean_distance[2]) and np.isnan(d.silhouette[2]) and np.isnan(d.outlier_fraction[2])
    assert np.isfinite(d.mean_distance[:2]).all() and np.isfinite(d.intra_inter_ratio[:2]).all()
    assert d.to_dict()["mean_distance"][2] is None
    assert set(np.unique(d.nearest)) <= {0, 1}  # an absent class is never the nearest


def test_class_means_and_nearest_centroid_match_numpy():
    x, y = _blobs()
    means, counts = cluster.class_means(x, y, 3, chunk_rows=100)
    np.testing.assert_allclose(means, np.stack([x[y == c].astype(np.float64).mean(0) for c in range(3)]),
                               rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(1)
    cents = rng.standard_normal((7, x.shape[1])).astype(np.float32)
    idx, d2 = cluster.nearest_centroid(x, cents, chunk_rows=333)
    ref = ((x[:, None, :].astype(np.float64) - cents[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx, ref.argmin(1))
    np.testing.assert_allclose(d2, ref.min(1), rtol=1e-4, atol=1e-4)


def test_kmeans_is_deterministic_and_sample_size_is_explicit():
    x, y = _blobs(n=5000, m=16, C=4)
    a = cluster.kmeans(x, 8, n_iter=10, seed=3)
    b = cluster.kmeans(x, 8, n_iter=10, seed=3)
    c = cluster.kmeans(x, 8, n_iter=10, seed=4)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)
    assert a.sample_index.size == min(5000, 256 * 8)  # FAISS's default, made explicit
    assert len(a.objective[0]) == 10
    assert cluster.kmeans(x, 8, n_iter=2, sample_size=1000).sample_index.size == 1000
    full = cluster.kmeans(x, 8, n_iter=2, max_points_per_centroid=None)
    np.testing.assert_array_equal(full.sample_index, np.arange(5000))
    # per class: k clusters per class, owners recorded, deterministic
    p = cluster.kmeans(x, 3, n_iter=5, labels=y, seed=0)
    q = cluster.kmeans(x, 3, n_iter=5, labels=y, seed=0)
    np.testing.assert_array_equal(p.centroids, q.centroids)
    np.testing.assert_array_equal(p.centroid_class, np.repeat(np.arange(4), 3))
    assert p.class_centroids(2).shape == (3, 16)
    # a class with fewer rows than k gets as many clusters as rows
    y2 = y.copy()
    y2[:] = 0
    y2[:2] = 1
    r = cluster.kmeans(x, 4, n_iter=3, labels=y2)
    assert r.class_centroids(1).shape[0] == 2


def test_kmeans_init_is_used_and_objective_decreases():
    x, _ = _blobs(n=4000, m=10, C=5, spread=0.3)
    init = x[:5].copy()
    r = cluster.kmeans(x, 5, n_iter=15, init=init, max_points_per_centroid=None)
    obj = np.array(r.objective[0])
    assert (np.diff(obj) <= 1e-3 * obj[0]).all()


def test_memmap_and_torch_equal_in_memory(tmp_path):
    x, y = _blobs(n=4000, m=24, C=3, spread=2.0)
    path = tmp_path / "x.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    for other in (mm, torch.from_numpy(x)):
        d0 = cluster.dispersion(x, y, 3, chunk_rows=500)
        d1 = cluster.dispersion(other, y, 3, chunk_rows=500)
        assert d0.to_dict() == d1.to_dict()
        np.testing.assert_array_equal(d0.nearest, d1.nearest)
        np.testing.assert_array_equal(cluster.kmeans(x, 6, seed=1).centroids,
                                      cluster.kmeans(other, 6, seed=1).centroids)
        np.testing.assert_array_equal(cluster.kmeans(x, 2, labels=y, seed=1).centroids,
                                      cluster.kmeans(other, 2, labels=y, seed=1).centroids)
        i0, _ = cluster.nearest_centroid(x, d0.means, chunk_rows=700)
        i1, _ = cluster.nearest_centroid(other, d0.means, chunk_rows=700)
        np.testing.assert_array_equal(i0, i1)
    # chunking changes only the order of float64 sums
    d2 = cluster.dispersion(mm, y, 3, chunk_rows=123)
    np.testing.assert_allclose(d2.mean_distance, cluster.dispersion(x, y, 3).mean_distance, rtol=1e-12)


def test_half_precision_input():
    x, y = _blobs(n=1000, m=8)
    d16 = cluster.dispersion(x.astype(np.float16), y)
    d32 = cluster.dispersion(x.astype(np.float16).astype(np.float32), y)
    np.testing.assert_allclose(d16.mean_distance, d32.mean_distance, rtol=1e-6)
    cluster.kmeans(torch.from_numpy(x).bfloat16(), 4, n_iter=2)


def test_bad_input_is_named():
    x, y = _blobs(n=100, m=4)
    with pytest.raises(ValueError, match="labels"):
        cluster.dispersion(x, y[:-1])
    with pytest.raises(ValueError, match="k:"):
        cluster.kmeans(x, 0)
    with pytest.raises(ValueError, match="k:"):
        cluster.kmeans(x[:3], 5)
    with pytest.raises(ValueError, match="centroids"):
        cluster.nearest_centroid(x, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="sample_size"):
        cluster.kmeans(x, 2, sample_size=0)


# ----------------------------------------------------------------- native dispersion kernel
BACKENDS = ["cpp", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dispersion_backends_match_numpy(backend):
    x, y = _blobs(n=2000, m=37, C=4, spread=6.0, seed=3)  # m not a multiple of the lane width
    ref, near, means = _numpy_dispersion(x, y, 4)
    d = cluster.dispersion(x, y, 4, chunk_rows=300, backend=backend)
    for k, v in ref.items():
        np.testing.assert_allclose(getattr(d, k), v, rtol=2e-6, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(d.nearest, near)
    assert (ref["outlier_fraction"] > 0).all()


def test_dispersion_cpp_agrees_with_torch_reference():
    x, y = _blobs(n=3000, m=64, C=3, spread=2.0, seed=5)
    a = cluster.dispersion(x, y, 3, backend="cpp")
    b = cluster.dispersion(x, y, 3, backend="torch")
    for k in ("mean_distance", "outlier_fraction", "intra_inter_ratio", "silhouette"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(a.nearest, b.nearest)


def test_dispersion_float64_is_tight():
    x, y = _blobs(n=800, m=9, C=3, spread=2.0)
    x = x.astype(np.float64) + 1e-3 * np.random.default_rng(2).standard_normal(x.shape)
    ref, near, _ = _numpy_dispersion(x, y, 3)
    d = cluster.dispersion(x, y, 3)
    for k, v in ref.items():
        np.testing.assert_allclose(getattr(d, k), v, rtol=1e-12, atol=1e-13, err_msg=k)
    np.testing.assert_array_equal(d.nearest, near)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dispersion_one_row(backend):
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    d = cluster.dispersion(x, np.array([0]), backend=backend)  # one class: its mean is the row
    assert d.count.tolist() == [1] and d.mean_distance[0] == 0.0 and d.outlier_fraction[0] == 0.0
    assert np.isnan(d.silhouette[0]) and np.isnan(d.intra_inter_ratio[0])  # no second class
    # with two given means: a = 5 (to the origin), b = 1, nearest is the other class
    means = np.array([[0.0, 0.0], [3.0, 3.0]])
    d = cluster.dispersion(x, np.array([0]), 2, means=means, backend=backend)
    assert d.mean_distance[0] == pytest.approx(5.0, rel=1e-6)
    assert d.outlier_fraction[0] == 1.0 and d.nearest.tolist() == [1]
    assert d.silhouette[0] == pytest.approx((1.0 - 5.0) / 5.0, rel=1e-6)
    assert d.count.tolist() == [1, 0] and np.isnan(d.mean_distance[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_dispersion_empty_class_is_never_nearest(backend):
    x, y = _blobs(n=500, m=6, C=3, seed=4)
    y = np.where(y == 1, 0, y)  # class 1 empty, between two present ones
    d = cluster.dispersion(x, y, 3, backend=backend)
    assert d.count[1] == 0 and np.isnan(d.mean_distance[1]) and np.isnan(d.outlier_fraction[1])
    assert 1 not in set(d.nearest.tolist())
    ref, near, _ = _numpy_dispersion(x, np.where(y == 2, 1, y), 2)  # same data, classes renumbered
    np.testing.assert_allclose(d.mean_distance[[0, 2]], ref["mean_distance"], rtol=2e-6)
    np.testing.assert_allclose(d.silhouette[[0, 2]], ref["silhouette"], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dispersion_ties_go_to_the_lower_class(backend):
    # the origin is exactly as far from (1, 0) as from (-1, 0): nearest is class 0 for both
    # labels, so the class-1 row is an outlier, and its silhouette is 0 (a = b)
    x = np.zeros((2, 2), dtype=np.float32)
    y = np.array([0, 1])
    means = np.array([[1.0, 0.0], [-1.0, 0.0]])
    d = cluster.dispersion(x, y, 2, means=means, backend=backend)
    assert d.nearest.tolist() == [0, 0]
    assert d.outlier_fraction.tolist() == [0.0, 1.0]
    assert d.silhouette.tolist() == [0.0, 0.0]
    # identical means: every row ties, all go to class 0
    x, y = _blobs(n=300, m=5, C=2)
    same = np.tile(x.astype(np.float64).mean(0), (2, 1))
    d = cluster.dispersion(x, y, 2, means=same, backend=backend)
    assert (d.nearest == 0).all()
    assert d.outlier_fraction.tolist() == [0.0, 1.0] and np.all(d.silhouette == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_dispersion_rejects_nan_naming_x_and_the_row(backend, bad):
    x, y = _blobs(n=50, m=4)
    means, _ = cluster.class_means(x, y, 3)
    x[17, 2] = bad
    with pytest.raises(ValueError, match=r"x: row 17 "):
        cluster.dispersion(x, y, 3, means=means, chunk_rows=5, backend=backend)
    with pytest.raises(ValueError, match=r"x: class"):
        cluster.class_means(x, y, 3, backend=backend)


def test_dispersion_mean_not_finite_for_a_class_with_samples():
    x, y = _blobs(n=60, m=4, C=2)
    means = np.array([[0.0] * 4, [np.nan] * 4])
    with pytest.raises(ValueError, match="means: class 1"):
        cluster.dispersion(x, y, 2, means=means)


def test_dispersion_half_input_is_the_widened_float32():
    x, y = _blobs(n=1200, m=20, C=3, spread=2.0)
    h = x.astype(np.float16)
    assert cluster.dispersion(h, y, 3).to_dict() == cluster.dispersion(h.astype(np.float32), y, 3).to_dict()
    b = torch.from_numpy(x).bfloat16()
    db, df = cluster.dispersion(b, y, 3), cluster.dispersion(b.float(), y, 3)
    assert db.to_dict() == df.to_dict()
    np.testing.assert_array_equal(db.nearest, df.nearest)


def test_dispersion_and_class_means_do_not_depend_on_threads():
    from threadpoolctl import threadpool_limits

    x, y = _blobs(n=20000, m=130, C=3, spread=2.0)
    d2, m2 = cluster.dispersion(x, y, 3), cluster.class_means(x, y, 3)[0]
    with threadpool_limits(1):
        d1, m1 = cluster.dispersion(x, y, 3), cluster.class_means(x, y, 3)[0]
    assert d1.to_dict() == d2.to_dict()
    np.testing.assert_array_equal(m1, m2)
    # class sums add rows in row order whatever the chunking
    np.testing.assert_array_equal(cluster.class_means(x, y, 3, chunk_rows=777)[0], m2)


def test_dispersion_kernel_several_centroids_per_class():
    # per-class k-means centroids: a = nearest own centroid, b = nearest other-class one
    from pydebias import _C

    x, y = _blobs(n=900, m=19, C=2, spread=2.0)
    rng = np.random.default_rng(7)
    cents = rng.standard_normal((5, 19)).astype(np.float32)
    owner = np.array([1, 0, 1, 1, 0])
    count, n_out = np.zeros(2, np.int64), np.zeros(2, np.int64)
    sum_a, sum_s = np.zeros(2), np.zeros(2)
    near = np.empty(900, np.int64)
    _C.dispersion_accumulate(x[:400], 0, y[:400], 2, cents, owner, 0, count, sum_a, sum_s, n_out, near[:400])
    _C.dispersion_accumulate(x[400:], 0, y[400:], 2, cents, owner, 400, count, sum_a, sum_s, n_out, near[400:])
    d = np.sqrt(((x[:, None].astype(np.float64) - cents[None]) ** 2).sum(-1))
    own = np.where(owner[None] == y[:, None], d, np.inf).min(1)
    oth = np.where(owner[None] != y[:, None], d, np.inf).min(1)
    np.testing.assert_array_equal(count, np.bincount(y, minlength=2))
    np.testing.assert_allclose(sum_a, np.bincount(y, own, 2), rtol=1e-6)
    np.testing.assert_allclose(sum_s, np.bincount(y, (oth - own) / np.maximum(own, oth), 2), rtol=1e-5)
    np.testing.assert_array_equal(near, owner[d.argmin(1)])
    np.testing.assert_array_equal(n_out, np.bincount(y, owner[d.argmin(1)] != y, 2))
    with pytest.raises(ValueError, match="labels: row 3 "):
        bad = y.copy()
        bad[3] = 2
        _C.dispersion_accumulate(x, 0, bad, 2, cents, owner, 0, count, sum_a, sum_s, n_out, None)
    with pytest.raises(ValueError, match="centroids: centroid 2"):
        c2 = cents.copy()
        c2[2, 0] = np.nan
        _C.dispersion_accumulate(x, 0, y, 2, c2, owner, 0, count, sum_a, sum_s, n_out, None)
    with pytest.raises(ValueError, match="no centroid"):
        _C.dispersion_accumulate(x, 0, y, 2, cents, np.zeros(5, np.int64), 0, count, sum_a, sum_s, n_out, None)


def test_bench_clustering_scale_streams_and_cleans_up(tmp_path):
    import json
    import os

    from pydebias.tools.bench_cluster import bench_clustering_scale
    from pydebias.tools.cli import main

    rows = bench_clustering_scale((3000,), m=64, k=4, n_iter=2, full_kmeans_iter=1, cold=True, directory=str(tmp_path))
    assert [r["impl"] for r in rows] == ["one read", "kmeans 1024-row sample", "assign nearest centroid",
                                         "class means", "dispersion, means given", "kmeans all rows, 1 it"]
    assert all(r["n"] == 3000 and r["cold"] and r["seconds"] > 0 for r in rows)
    assert rows[0]["x_one_read"] == 1.0
    assert os.listdir(tmp_path) == []  # the memmap and its labels are deleted
    if os.path.exists("/proc/self/status"):
        assert rows[0]["peak_rss_anon_bytes"] > 0
    out = tmp_path / "large.json"
    assert main(["bench", "--large", "--rows", "2000", "--dir", str(tmp_path), "--json", str(out)]) == 0
    assert {r["kernel"] for r in json.load(open(out))["rows"]} == {"clustering at scale"}
