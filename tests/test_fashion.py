"""colored-fashion and fashion-on-textures: idx reader, group proportions, determinism,
cache, missing source."""
import gzip
import os

import numpy as np
import pytest
import torch

from pydebias.data import cache
from pydebias.data.fashion import (FASHION_ROOT, load_colored_fashion, load_fashion_mnist,
                                   load_fashion_on_textures, read_idx)
from pydebias.metrics import evaluate

# tiny training budget: these tests check the data and the plumbing, not accuracy
FAST = dict(n_train=1200, n_val=600, n_test=600, n_pretrain=400, pretrain_epochs=1, epochs=1,
            batch_size=200)


def _write_idx(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


def _fake_fashion(root, n_train=3000, n_test=1000, seed=0):
    """Random 28x28 images with labels 0-9 in the official file layout."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        imgs = rng.integers(0, 256, size=(n, 28, 28)) * (rng.random((n, 28, 28)) < 0.3)
        imgs[np.arange(n), labels, labels] = 255  # a class-dependent pixel, so there is something to learn
        _write_idx(os.path.join(root, f"{stem}-images-idx3-ubyte.gz"), imgs)
        _write_idx(os.path.join(root, f"{stem}-labels-idx1-ubyte.gz"), labels)
    return str(root)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return _fake_fashion(tmp_path_factory.mktemp("fashion"))


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = str(tmp_path / "a-idx3-ubyte.gz")
    _write_idx(p, a)
    b = read_idx(p)
    assert b.dtype == np.uint8 and b.shape == (2, 3, 4)
    np.testing.assert_array_equal(a, b)
    with open(tmp_path / "bad", "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(str(tmp_path / "bad"))


def test_missing_source_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_colored_fashion(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c"), **FAST)
    os.makedirs(tmp_path / "partial")
    _write_idx(str(tmp_path / "partial" / "train-images-idx3-ubyte.gz"), np.zeros((2, 28, 28)))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path / "partial"))


def _agree(s):
    """Fraction of rows whose tint equals the label (g = 2y + tint)."""
    return float(np.mean(s.groups % 2 == s.labels))


@pytest.mark.parametrize("corr,val_kw,val_p", [(0.95, {}, 0.95), (0.8, {"val_balanced": True}, 0.5),
                                                (0.9, {"val_corr": 0.7}, 0.7)])
def test_group_counts_follow_correlation(fake_root, tmp_path, corr, val_kw, val_p):
    d = load_colored_fashion(root=fake_root, seed=3, corr=corr, cache_dir=str(tmp_path), **val_kw, **FAST)
    for split, p in (("train", corr), ("val", val_p), ("test", 0.5)):
        s = d[split]
        n = len(s)
        assert n == FAST["n_" + split] and s.n_groups == 4
        tol = 4.0 * np.sqrt(p * (1 - p) / n)  # 4 binomial standard deviations
        assert abs(_agree(s) - p) <= tol, (split, _agree(s), p, tol)
        # classes 0-4 vs 5-9 are balanced in the source, so each label holds about half
        assert abs(s.labels.mean() - 0.5) <= 4.0 * np.sqrt(0.25 / n)
        assert s.features.dtype == np.float32 and s.features.shape == (n, 64)
        assert (s.features >= 0).all()  # post-ReLU
    assert d["group_names"] == ["y=0,red", "y=0,green", "y=1,red", "y=1,green"]


def test_group_counts_on_real_data(tmp_path):
    if not os.path.exists(os.path.join(FASHION_ROOT, "train-labels-idx1-ubyte.gz")):
        pytest.skip("dataset-fashion-mnist not installed")
    d = load_colored_fashion(seed=0, cache_dir=str(tmp_path), **FAST)
    for split, p in (("train", 0.95), ("val", 0.95), ("test", 0.5)):
        n = len(d[split])
        assert abs(_agree(d[split]) - p) <= 4.0 * np.sqrt(p * (1 - p) / n)


def test_deterministic_and_cached(fake_root, tmp_path):
    a = load_colored_fashion(root=fake_root, seed=1, cache_dir=str(tmp_path / "a"), **FAST)
    b = load_colored_fashion(root=fake_root, seed=1, cache_dir=str(tmp_path / "b"), **FAST)
    assert not a["info"]["from_cache"] and not b["info"]["from_cache"]
    for s in ("train", "val", "test"):
        assert a[s].features.tobytes() == b[s].features.tobytes()
        np.testing.assert_array_equal(a[s].labels, b[s].labels)
        np.testing.assert_array_equal(a[s].groups, b[s].groups)
    sa, sb = a["backbone"].state_dict(), b["backbone"].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # second load from the same cache dir: read back, same bytes, same model
    c = load_colored_fashion(root=fake_root, seed=1, cache_dir=str(tmp_path / "a"), **FAST)
    assert c["info"]["from_cache"]
    assert c["test"].features.tobytes() == a["test"].features.tobytes()
    assert all(torch.equal(c["backbone"].state_dict()[k], sa[k]) for k in sa)
    # no temp files left behind
    assert [f for f in os.listdir(tmp_path / "a") if f.startswith(".tmp")] == []


def test_head_is_the_backbone_head(fake_root, tmp_path):
    d = load_colored_fashion(root=fake_root, seed=0, two_stage=False, cache_dir=str(tmp_path), **FAST)
    assert isinstance(d["head"], torch.nn.Linear) and d["head"] is d["backbone"].head
    assert d["head"].in_features == 64 and d["head"].out_features == 2
    r = evaluate(d["head"], d["test"], group_names=d["group_names"])
    assert 0.0 <= r.worst_group_accuracy <= r.accuracy <= 1.0


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYDEBIAS_CACHE", str(tmp_path / "env"))
    assert cache.cache_root() == str(tmp_path / "env")
    assert cache.cache_root(str(tmp_path / "x")) == str(tmp_path / "x")
    monkeypatch.delenv("PYDEBIAS_CACHE")
    assert cache.cache_root().endswith(os.path.join(".cache", "pydebias"))
    k = cache.cache_key("colored-fashion", {"corr": 0.95}, 0)
    assert k == cache.cache_key("colored-fashion", {"corr": 0.95}, 0)
    assert k != cache.cache_key("colored-fashion", {"corr": 0.9}, 0)
    assert k != cache.cache_key("colored-fashion", {"corr": 0.95}, 1)


def test_bad_parameters(fake_root, tmp_path):
    with pytest.raises(ValueError, match="val_balanced"):
        load_colored_fashion(root=fake_root, val_corr=0.9, val_balanced=True, cache_dir=str(tmp_path), **FAST)
    with pytest.raises(ValueError, match="corr"):
        load_colored_fashion(root=fake_root, corr=1.5, cache_dir=str(tmp_path), **FAST)
    with pytest.raises(ValueError, match="exceeds"):
        load_colored_fashion(root=fake_root, cache_dir=str(tmp_path),
                             **{**FAST, "n_train": 10 ** 6})


@pytest.mark.slow
def test_erm_backbone_learns_the_shortcut(tmp_path):
    """Default build on the real data: the ERM head fails on the tint-conflicting groups."""
    if not os.path.exists(os.path.join(FASHION_ROOT, "train-labels-idx1-ubyte.gz")):
        pytest.skip("dataset-fashion-mnist not installed")
    d = load_colored_fashion(seed=0, cache_dir=str(tmp_path))
    r = evaluate(d["head"], d["test"], group_names=d["group_names"])
    assert r.accuracy > 0.65
    assert r.worst_group_accuracy < r.accuracy - 0.2


# -- fashion-on-textures ------------------------------------------------------------
def test_textures_groups_and_determinism(fake_root, tmp_path):
    pytest.importorskip("skimage")
    kw = dict(FAST, n_train=1000, n_val=400, n_test=400)  # fake data: 1800 tops/footwear in train
    a = load_fashion_on_textures(root=fake_root, seed=5, corr=0.9, cache_dir=str(tmp_path / "a"), **kw)
    b = load_fashion_on_textures(root=fake_root, seed=5, corr=0.9, cache_dir=str(tmp_path / "b"), **kw)
    assert a["group_names"] == ["tops,grass", "tops,brick", "footwear,grass", "footwear,brick"]
    for split, p in (("train", 0.9), ("val", 0.9), ("test", 0.5)):
        s = a[split]
        assert len(s) == kw["n_" + split] and s.n_groups == 4
        assert abs(_agree(s) - p) <= 4.0 * np.sqrt(p * (1 - p) / len(s))
        assert a[split].features.tobytes() == b[split].features.tobytes()
        np.testing.assert_array_equal(a[split].groups, b[split].groups)
    assert a["backbone"].conv[0].in_channels == 1
    assert a["info"]["cache_path"] != load_colored_fashion(
        root=fake_root, seed=5, corr=0.9, cache_dir=str(tmp_path / "a"), **kw)["info"]["cache_path"]


def test_textures_use_only_tops_and_footwear(fake_root, tmp_path):
    pytest.importorskip("skimage")
    with pytest.raises(ValueError, match="usable"):  # 6 of 10 fake classes: 1800 usable
        load_fashion_on_textures(root=fake_root, cache_dir=str(tmp_path), **dict(FAST, n_train=1700))


@pytest.mark.slow
def test_textures_erm_backbone_learns_the_shortcut(tmp_path):
    pytest.importorskip("skimage")
    if not os.path.exists(os.path.join(FASHION_ROOT, "train-labels-idx1-ubyte.gz")):
        pytest.skip("dataset-fashion-mnist not installed")
    d = load_fashion_on_textures(seed=0, cache_dir=str(tmp_path))
    r = evaluate(d["head"], d["test"], group_names=d["group_names"])
    assert r.accuracy > 0.65
    assert r.worst_group_accuracy < r.accuracy - 0.1
