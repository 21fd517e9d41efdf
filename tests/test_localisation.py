"""Diagnostics that read group labels: attribute association and shortcut localisation."""
import numpy as np
import pytest

from pydebias.data import EmbeddingSet, load
from pydebias.tools.localisation import attribute_association, attribute_of_groups, live_neurons, shortcut_localisation


def test_association_is_within_class():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    a = rng.integers(0, 2, 100)
    x = np.stack([a + 0.0,                      # the attribute itself: 1 in each class
                  y + 0.0,                      # the label: constant within a class, 0
                  np.zeros(100),                # dead: 0
                  rng.standard_normal(100)], 1)
    s = attribute_association(x, y, a)
    assert s[0] == pytest.approx(1.0) and s[1] == 0 and s[2] == 0
    r = [abs(np.corrcoef(x[y == c, 3], a[y == c])[0, 1]) for c in (0, 1)]
    assert s[3] == pytest.approx(np.mean(r))
    # a class where the attribute does not vary gives no evidence (contributes 0)
    a2 = np.where(y == 1, 1, a)
    assert attribute_association(x, y, a2)[0] == pytest.approx(0.5)


def test_association_and_groups_reject_bad_input():
    with pytest.raises(ValueError, match="labels, attr"):
        attribute_association(np.zeros((4, 2)), np.zeros(3, int), np.zeros(4))
    s = EmbeddingSet(np.zeros((4, 2), np.float32), np.array([0, 0, 1, 1]), groups=np.array([0, 1, 0, 3]))
    with pytest.raises(ValueError, match="g = 2\\*y \\+ a"):
        attribute_of_groups(s)
    assert attribute_of_groups(EmbeddingSet(np.zeros((4, 2), np.float32), np.array([0, 0, 1, 1]),
                                            groups=np.array([0, 1, 2, 3]))).tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="no group labels"):
        attribute_of_groups(EmbeddingSet(np.zeros((2, 2), np.float32), np.array([0, 1])))


@pytest.fixture(scope="module")
def planted_sets():
    d = load("planted", n_train=6000, n_val=3000, n_test=3000, val_corr=0.5)
    return d


def test_localisation_ranks_the_planted_neurons_first(planted_sets):
    d = planted_sets
    r = shortcut_localisation(d["train"], d["val"], d["test"], ks=[0, 4, 8, 16])
    planted = set(np.asarray(d["spurious_neurons"]).tolist())
    assert set(r["order"][:8]) == planted
    wg = {c["k"]: c["worst_group"] for c in r["curve"]}
    assert wg[8] > wg[0] + 0.3 and wg[4] < wg[0] + 0.05  # half the shortcut left: still used
    assert r["k_gain"] == 8
    # DFR's weights on train without a mask: the minority rows of train repair the worst group too
    assert r["group_balanced"]["worst_group"] > wg[0] + 0.3
    blind = EmbeddingSet(d["train"].features, d["train"].labels)
    assert shortcut_localisation(blind, d["val"], d["test"], ks=[0])["group_balanced"] is None


def test_localisation_validates(planted_sets):
    d = planted_sets
    with pytest.raises(ValueError, match="ks"):
        shortcut_localisation(d["train"], d["val"], d["test"], ks=[0, 65])
    blind = EmbeddingSet(d["test"].features, d["test"].labels)
    with pytest.raises(ValueError, match="test: needs group labels"):
        shortcut_localisation(d["train"], d["val"], blind)
    narrow = EmbeddingSet(d["val"].features[:, :10], d["val"].labels, d["val"].groups)
    with pytest.raises(ValueError, match="rank_set: has 10 features"):
        shortcut_localisation(d["train"], narrow, d["test"])


def test_association_in_blocks_equals_one_pass_and_live_neurons():
    rng = np.random.default_rng(1)
    n = 1000
    y = rng.integers(0, 3, n)
    a = rng.integers(0, 2, n)
    x = np.maximum(rng.standard_normal((n, 6)) + a[:, None] * np.array([2, 0, 1, 0, 0, 0]), 0).astype(np.float32)
    x[:, 5] = 0.0                                   # dead
    x[:, 4] = 7.0                                   # constant, not dead
    want = np.mean([[abs(np.corrcoef(x[y == c, i], a[y == c])[0, 1]) if i < 4 else 0.0 for i in range(6)]
                    for c in range(3)], axis=0)
    for chunk in (1000, 77, 1):
        got = attribute_association(x, y, a, chunk_rows=chunk)
        assert np.allclose(got, want, atol=1e-9)
    assert got[0] > got[2] > got[1] and got[4] == 0 and got[5] == 0
    assert live_neurons(x, chunk_rows=77).tolist() == [0, 1, 2, 3, 4]
