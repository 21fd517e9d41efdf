"""EmbeddingSet validation and the planted generator."""
import numpy as np
import pytest
import torch

from pydebias import EmbeddingSet
from pydebias.data import planted


def test_accepts_numpy_torch_and_memmap(tmp_path):
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    y = np.arange(20) % 2
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    for feats in (x, torch.from_numpy(x), mm, torch.from_numpy(x).to(torch.bfloat16)):
        s = EmbeddingSet(feats, y)
        assert len(s) == 20 and s.n_classes == 2 and s.n_features == 3
    assert EmbeddingSet(mm, y).features is mm  # no copy


@pytest.mark.parametrize("bad,kind,match", [
    (dict(features=np.zeros(5, np.float32)), ValueError, "features: expected shape"),
    (dict(features=np.zeros((5, 2), np.int64)), TypeError, "features: dtype"),
    (dict(labels=np.zeros(4, int)), ValueError, "labels: expected shape"),
    (dict(labels=np.full(5, -1)), ValueError, "labels: ids must be non-negative"),
    (dict(labels=np.zeros(5, np.float32)), TypeError, "labels: expected integer"),
    (dict(groups=np.zeros(3, int)), ValueError, "groups: expected shape"),
    (dict(concepts=np.full(5, 2)), ValueError, "concepts"),
])
def test_bad_input_names_the_argument(bad, kind, match):
    args = dict(features=np.zeros((5, 2), np.float32), labels=np.zeros(5, int))
    args.update(bad)
    with pytest.raises(kind, match=match):
        EmbeddingSet(**args)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features_rejected(value):
    x = np.zeros((5, 2), np.float32)
    x[3, 1] = value
    with pytest.raises(ValueError, match="features: rows 0..4 contain NaN or inf"):
        EmbeddingSet(x, np.zeros(5, int))
    assert len(EmbeddingSet(x, np.zeros(5, int), check_finite=False)) == 5


def test_n_classes_smaller_than_labels_is_an_error():
    with pytest.raises(ValueError, match="n_classes"):
        EmbeddingSet(np.zeros((3, 1), np.float32), np.array([0, 1, 2]), n_classes=2)


def test_holdout_is_stratified_and_seeded():
    s = planted(n_train=1000, n_val=10, n_test=10, seed=0)["train"]
    a, b = s.split_holdout(0.25, seed=3)
    a2, b2 = s.split_holdout(0.25, seed=3)
    assert len(a) + len(b) == 1000 and np.array_equal(b.labels, b2.labels)
    for c in range(2):
        assert abs((b.labels == c).sum() - 0.25 * (s.labels == c).sum()) <= 1


def test_planted_correlation_and_determinism():
    d = planted(n_train=20000, n_val=4000, n_test=4000, corr=0.9, seed=1)
    tr = d["train"]
    y, a = tr.labels, tr.groups % 2
    agree = (y == a).mean()
    assert abs(agree - 0.9) < 4 * np.sqrt(0.9 * 0.1 / 20000)
    te = d["test"]
    assert abs((te.labels == te.groups % 2).mean() - 0.5) < 4 * np.sqrt(0.25 / 4000)
    again = planted(n_train=20000, n_val=4000, n_test=4000, corr=0.9, seed=1)["train"]
    assert again.fingerprint() == tr.fingerprint()
    assert planted(n_train=20000, n_val=4000, n_test=4000, corr=0.9, seed=2)["train"].fingerprint() != tr.fingerprint()
    assert (tr.features >= 0).all()  # post-ReLU-like
