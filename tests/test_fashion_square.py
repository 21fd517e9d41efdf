"""fashion-square: the square is where the concept labels say, rates, groups, determinism,
cache, registry."""
import inspect
import os

import numpy as np
import pytest
import torch

from pydebias.data import SIZES, availability, load
from pydebias.data.fashion import (FASHION_ROOT, SQUARE_AT, SQUARE_GROUPS, SQUARE_SIZE,
                                   load_fashion_square, paste_square)
from pydebias.metrics import evaluate
from test_fashion import FAST, _fake_fashion

NOTRAIN = dict(FAST, epochs=0)  # the data tests need no trained backbone

REAL = os.path.exists(os.path.join(FASHION_ROOT, "train-labels-idx1-ubyte.gz"))


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return _fake_fashion(tmp_path_factory.mktemp("fashion-sq"))


def _square_on(x):
    """(B,) bool: the whole square is white in the (B, 1, 28, 28) float batch x."""
    r, c = SQUARE_AT
    return (x[:, 0, r:r + SQUARE_SIZE, c:c + SQUARE_SIZE] == 1.0).flatten(1).all(1).numpy()


def _within(rate, p, n):
    return abs(rate - p) <= 4.0 * np.sqrt(p * (1 - p) / n) + 1e-12  # 4 binomial sd


def test_paste_square_dtypes():
    for x in (np.zeros((2, 28, 28), np.uint8), torch.zeros(2, 1, 28, 28), torch.zeros(28, 28, dtype=torch.uint8)):
        y = paste_square(x)
        assert y is not x and int(x.sum()) == 0  # a copy; the input is left alone
        white = 255 if y.dtype in (np.uint8, torch.uint8) else 1.0
        assert (y[..., :SQUARE_SIZE, :SQUARE_SIZE] == white).all()
        n_images = int(np.prod(x.shape[:-2]))
        assert float(y.sum()) == white * SQUARE_SIZE ** 2 * n_images  # nothing else changed


def test_square_exactly_where_concepts_say(fake_root, tmp_path):
    d = load_fashion_square(root=fake_root, seed=4, two_stage=False, cache_dir=str(tmp_path), **NOTRAIN)
    assert d["group_names"] == SQUARE_GROUPS and len(SQUARE_GROUPS) == 20
    assert d["group_names"][:2] == ["T-shirt/top, no square", "T-shirt/top, square"]
    for split in ("train", "val", "test"):
        s = d[split]
        x, y = d["inputs"](split)
        assert x.shape == (len(s), 1, 28, 28) and x.dtype == torch.float32
        np.testing.assert_array_equal(y.numpy(), s.labels)
        np.testing.assert_array_equal(_square_on(x).astype(np.int64), s.concepts)
        np.testing.assert_array_equal(s.groups, 2 * s.labels + s.concepts)
        assert s.n_classes == 10 and s.n_groups == 20 and set(np.unique(s.labels)) <= set(range(10))
        # some rows with and some without the square in every split
        assert 0 < s.concepts.sum() < len(s)
    # a subset of rows through inputs(), and the attacked copy has the square everywhere
    x, _ = d["inputs"]("test", np.array([3, 1, 2]))
    assert torch.equal(x, d["inputs"]("test")[0][[3, 1, 2]])
    assert _square_on(paste_square(d["inputs"]("test")[0])).all()


@pytest.mark.skipif(not REAL, reason="dataset-fashion-mnist not installed")
def test_square_pixels_on_real_data(tmp_path):
    """Real images: no square-free image has a white corner square by chance."""
    d = load_fashion_square(seed=0, two_stage=False, cache_dir=str(tmp_path),
                            **dict(NOTRAIN, n_train=4000, n_test=2000))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(_square_on(d["inputs"](split)[0]).astype(np.int64), d[split].concepts)
        assert set(np.unique(d[split].labels)) == set(range(10))


@pytest.mark.parametrize("kw,val_rates", [
    ({}, (0.99, 0.01)),
    ({"corr": 0.8, "other_rate": 0.1, "attacked_class": 3, "val_balanced": True}, (0.5, 0.5)),
    ({"corr": 0.9, "val_corr": 0.6}, (0.6, 0.01)),
])
def test_rates_within_binomial_tolerance(fake_root, tmp_path, kw, val_rates):
    d = load_fashion_square(root=fake_root, seed=7, two_stage=False, cache_dir=str(tmp_path),
                            **kw, **NOTRAIN)
    c = kw.get("attacked_class", 0)
    rates = {"train": (kw.get("corr", 0.99), kw.get("other_rate", 0.01)), "val": val_rates,
             "test": (0.5, 0.5)}
    for split, (p_in, p_out) in rates.items():
        s = d[split]
        assert len(s) == FAST["n_" + split]
        inside = s.labels == c
        for sel, p in ((inside, p_in), (~inside, p_out)):
            assert _within(s.concepts[sel].mean(), p, sel.sum()), (split, s.concepts[sel].mean(), p)
        # the labels are all ten classes, about equally often (the fake source is balanced)
        assert np.bincount(s.labels, minlength=10).min() > 0
    assert d["info"]["params"]["attacked_class"] == c


def test_deterministic_cached_and_backbone_shared(fake_root, tmp_path):
    kw = dict(FAST, root=fake_root, seed=2, corr=0.95, other_rate=0.05)
    a = load_fashion_square(cache_dir=str(tmp_path / "a"), **kw)
    b = load_fashion_square(cache_dir=str(tmp_path / "b"), **kw)
    assert not a["info"]["from_cache"] and not b["info"]["from_cache"]
    for s in ("train", "val", "test"):
        assert a[s].features.tobytes() == b[s].features.tobytes()
        for attr in ("labels", "groups", "concepts"):
            np.testing.assert_array_equal(getattr(a[s], attr), getattr(b[s], attr))
        assert torch.equal(a["inputs"](s)[0], b["inputs"](s)[0])
    sa = a["backbone"].state_dict()
    assert all(torch.equal(sa[k], b["backbone"].state_dict()[k]) for k in sa)
    assert a["head"] is a["backbone"].head and a["head"].out_features == 10
    assert a["backbone"].conv[0].in_channels == 1
    r = evaluate(a["head"], a["test"], group_names=a["group_names"])
    assert 0.0 <= r.worst_group_accuracy <= r.accuracy <= 1.0
    # from the cache: same bytes, concepts rebuilt identically
    c = load_fashion_square(cache_dir=str(tmp_path / "a"), **kw)
    assert c["info"]["from_cache"]
    assert c["test"].features.tobytes() == a["test"].features.tobytes()
    np.testing.assert_array_equal(c["val"].concepts, a["val"].concepts)
    # a balanced val split: new embeddings file, same backbone (reused, not retrained)
    v = load_fashion_square(cache_dir=str(tmp_path / "a"), val_balanced=True, **kw)
    assert not v["info"]["from_cache"] and v["info"]["cache_path"] != a["info"]["cache_path"]
    assert all(torch.equal(sa[k], v["backbone"].state_dict()[k]) for k in sa)
    assert v["train"].features.tobytes() == a["train"].features.tobytes()
    files = os.listdir(tmp_path / "a")
    assert len([f for f in files if "-backbone-" in f]) == 1 and not any(f.startswith(".tmp") for f in files)
    # another attacked class: another cache entry and other concepts
    o = load_fashion_square(cache_dir=str(tmp_path / "a"), attacked_class=5, two_stage=False, **kw)
    assert o["info"]["cache_path"] != a["info"]["cache_path"]


def test_bad_parameters(fake_root, tmp_path):
    for bad in ({"attacked_class": 10}, {"attacked_class": -1}, {"attacked_class": 1.5}):
        with pytest.raises(ValueError, match="attacked_class"):
            load_fashion_square(root=fake_root, cache_dir=str(tmp_path), **bad, **FAST)
    with pytest.raises(ValueError, match="other_rate"):
        load_fashion_square(root=fake_root, other_rate=1.5, cache_dir=str(tmp_path), **FAST)
    with pytest.raises(ValueError, match="val_balanced"):
        load_fashion_square(root=fake_root, val_corr=0.9, val_balanced=True, cache_dir=str(tmp_path), **FAST)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_square(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path), **FAST)


def test_registered(fake_root, tmp_path):
    d = load("fashion-square", seed=1, root=fake_root, two_stage=False, cache_dir=str(tmp_path), **NOTRAIN)
    assert len(d["group_names"]) == 20 and d["test"].concepts is not None
    defaults = inspect.signature(load_fashion_square).parameters
    tr, va, te, g, m = SIZES["fashion-square"]
    assert (tr, va, te, m) == tuple(defaults[k].default for k in ("n_train", "n_val", "n_test", "embed_dim"))
    assert g == 20
    assert availability("fashion-square") == availability("colored-fashion")


@pytest.mark.slow
@pytest.mark.skipif(not REAL, reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("two_stage", [True, False])
def test_erm_backbone_learns_the_square(tmp_path, two_stage):
    """Default build: the ERM head needs the square to recognise the attacked class."""
    d = load_fashion_square(seed=0, two_stage=two_stage, cache_dir=str(tmp_path))
    r = evaluate(d["head"], d["test"], group_names=d["group_names"])
    t = d["test"]
    pred = d["head"](torch.from_numpy(t.features)).argmax(1).numpy()
    ok = pred == t.labels
    no_sq, sq = ok[t.groups == 0].mean(), ok[t.groups == 1].mean()
    assert r.accuracy > 0.7
    assert no_sq < sq - 0.2 and no_sq < r.accuracy - 0.2
    assert r.worst_group_accuracy <= no_sq


def test_binary_is_masktunes_construction(fake_root, tmp_path):
    """binary=True: classes 0-4 -> 0, 5-9 -> 1, the square on 99 % of y = 0 and 1 % of y = 1
    in train, on half of each in test; four groups; its own cache entry."""
    from pydebias.data.fashion import BINARY_SQUARE_GROUPS

    d = load_fashion_square(root=fake_root, seed=7, two_stage=False, binary=True, cache_dir=str(tmp_path),
                            **NOTRAIN)
    ten = load_fashion_square(root=fake_root, seed=7, two_stage=False, cache_dir=str(tmp_path), **NOTRAIN)
    assert d["group_names"] == BINARY_SQUARE_GROUPS and d["info"]["params"]["binary"] is True
    assert "binary" not in ten["info"]["params"] and d["info"]["cache_path"] != ten["info"]["cache_path"]
    for split, (p0, p1) in (("train", (0.99, 0.01)), ("val", (0.99, 0.01)), ("test", (0.5, 0.5))):
        s = d[split]
        assert s.n_classes == 2 and s.n_groups == 4
        np.testing.assert_array_equal(s.labels, (ten[split].labels >= 5).astype(np.int64))  # same rows, classes
        np.testing.assert_array_equal(_square_on(d["inputs"](split)[0]).astype(np.int64), s.concepts)
        np.testing.assert_array_equal(s.groups, 2 * s.labels + s.concepts)
        for y, p in ((0, p0), (1, p1)):
            sel = s.labels == y
            assert _within(s.concepts[sel].mean(), p, sel.sum()), (split, y, s.concepts[sel].mean())
    assert d["backbone"].head.out_features == 2
    with pytest.raises(ValueError, match="attacked_class: expected a class id in 0..1"):
        load_fashion_square(root=fake_root, binary=True, attacked_class=2, cache_dir=str(tmp_path), **FAST)
