"""pydebias.cluster: FAISS k-means, nearest centroid, per-class dispersion."""
import numpy as np
import pytest
import torch

from pydebias import cluster


def _blobs(n=3000, m=12, C=3, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    centers = rng.standard_normal((C, m)) * 2.0
    x = (centers[y] + spread * rng.standard_normal((n, m))).astype(np.float32)
    return x, y


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
