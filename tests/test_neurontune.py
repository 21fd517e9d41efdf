"""NeuronTune: δ, masks, folding, identification on planted, the guard."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pydebias import EmbeddingSet, evaluate
from pydebias.data import planted
from pydebias.methods import ERM, ClassBalanced, NeuronTune
from pydebias.methods.guard import guard_check
from pydebias.methods.neurontune import neuron_deltas, spurious_masks
from pydebias.metrics import predict


@pytest.fixture(scope="module")
def bench():
    d = planted(seed=0)  # the default sizes: 20,000 / 5,000 / 5,000
    return d, ERM().fit(d["train"])


def numpy_deltas(x, y, ok, C):
    out = np.full((C, x.shape[1]), np.nan)
    for c in range(C):
        a, b = x[(y == c) & ~ok], x[(y == c) & ok]
        if len(a) and len(b):
            out[c] = np.quantile(a.astype(np.float64), 0.5, axis=0, method="lower") - \
                np.quantile(b.astype(np.float64), 0.5, axis=0, method="lower")
    return out


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_delta_equals_numpy(bench, backend):
    d, erm = bench
    v = d["val"]
    ok = predict(erm, v.features) == v.labels
    delta, counts = neuron_deltas(v.features, v.labels, ok, 2, backend=backend)
    np.testing.assert_array_equal(delta, numpy_deltas(v.features, v.labels, ok, 2))
    assert counts.tolist() == [[int(((v.labels == c) & (ok == k)).sum()) for k in (0, 1)] for c in range(2)]


def test_delta_on_float16_memmap_streams_and_equals_numpy(tmp_path):
    """A float16 memmap goes through the chunked grouped quantiles pass (no moments pass, no copy):
    δ equals numpy's medians of the widened values."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6000, 19)).astype(np.float16)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    y = rng.integers(0, 3, 6000)
    ok = rng.random(6000) < 0.7
    delta, counts = neuron_deltas(mm, y, ok, 3, backend="cpp")
    np.testing.assert_array_equal(delta, numpy_deltas(x.astype(np.float32), y, ok, 3))
    assert counts.sum() == 6000 and counts.shape == (3, 2)


def test_class_without_errors_is_skipped_not_nan():
    rng = np.random.default_rng(0)
    x = rng.random((60, 4)).astype(np.float32)
    y = np.repeat([0, 1, 2], 20)
    ok = np.ones(60, bool)
    ok[20:25] = False  # only class 1 has misclassified samples
    delta, _ = neuron_deltas(x, y, ok, 3)
    assert np.isnan(delta[0]).all() and np.isnan(delta[2]).all() and not np.isnan(delta[1]).any()
    keep = spurious_masks(delta, 0.0, "intersection")
    np.testing.assert_array_equal(keep, (delta[1] <= 0).astype(np.float32))


def test_mask_modes():
    delta = np.array([[0.5, -1.0, 0.2, 0.0], [0.3, 0.4, -0.1, 0.0]])
    assert spurious_masks(delta, 0.0, "intersection").tolist() == [0, 1, 1, 1]
    assert spurious_masks(delta, 0.0, "union").tolist() == [0, 0, 0, 1]
    assert spurious_masks(delta, 0.25, "union").tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(spurious_masks(delta, 0.0, "per_class"), [[0, 1, 0, 1], [0, 0, 1, 1]])
    with pytest.raises(ValueError, match="mask_mode"):
        spurious_masks(delta, 0.0, "all")


@pytest.fixture(scope="module")
def fitted(bench):
    """NeuronTune with its defaults, fitted once on ``bench`` (identification on val,
    retraining on train)."""
    d, erm = bench
    m = NeuronTune()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(d["train"], d["val"], head=erm)
    return m


def test_recovers_planted_neurons_at_default_setting(bench, fitted):
    d, m = bench[0], fitted
    found, truth = set(m.spurious_neurons().tolist()), set(d["spurious_neurons"].tolist())
    precision = len(found & truth) / max(1, len(found))
    recall = len(found & truth) / len(truth)
    print(f"\nNeuronTune on planted: precision {precision:.2f}, recall {recall:.2f}, found {sorted(found)}")
    assert precision >= 0.9 and recall >= 0.9


def test_folded_head_equals_head_on_masked_input(bench):
    d, erm = bench
    m = NeuronTune(guard=False)
    head = m.fit(d["train"], d["val"], head=erm)
    x = d["test"].tensor()
    keep = torch.from_numpy(m.mask_)
    with torch.no_grad():
        assert torch.allclose(head(x), head(x * keep), atol=1e-5)
        assert torch.all(head.weight[:, keep == 0] == 0)


def test_masks_lift_worst_group_over_plain_class_balanced_retraining():
    d = planted(n_train=12000, n_val=4000, n_test=4000, val_corr=0.5, seed=1)
    erm = ERM().fit(d["train"])
    nt = evaluate(NeuronTune().fit(d["train"], d["val"], head=erm), d["test"]).worst_group_accuracy
    cb = evaluate(ClassBalanced().fit(d["train"]), d["test"]).worst_group_accuracy
    base = evaluate(erm, d["test"]).worst_group_accuracy
    assert nt > cb + 0.2 and nt > base + 0.2


def test_group_labels_are_never_read(bench):
    d, erm = bench
    v = d["val"]
    blind = EmbeddingSet(v.features, v.labels)
    a = NeuronTune(retrain_on="val", guard=False).fit(d["train"], v, head=erm)
    b = NeuronTune(retrain_on="val", guard=False).fit(d["train"], blind, head=erm)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_report_records_what_it_did(bench):
    d, erm = bench
    m = NeuronTune(retrain_on="val")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(d["train"], d["val"], head=erm)
    r = m.report_
    assert r["method"] == "NeuronTune" and r["retrain_on"] == "val" and r["sfit"] > 0
    assert len(r["rounds"][0]["delta"]) == 2 and "guard" in r
    assert r["rounds"][0]["n_spurious_per_class"] == [len(m.spurious_neurons())] * 2


def test_bad_arguments():
    d = planted(n_train=100, n_val=100, n_test=10, seed=0)
    erm = ERM().fit(d["train"])
    with pytest.raises(TypeError, match="head"):
        NeuronTune().fit(d["train"], d["val"], head="erm")
    with pytest.raises(ValueError, match="head: takes"):
        NeuronTune().fit(d["train"], d["val"], head=nn.Linear(3, 2))
    with pytest.raises(ValueError, match="mask_mode"):
        NeuronTune(mask_mode="both").fit(d["train"], d["val"], head=erm)
    with pytest.raises(ValueError, match="retrain_on"):
        NeuronTune(retrain_on="test").fit(d["train"], d["val"], head=erm)
    with pytest.raises(ValueError, match="val"):
        NeuronTune().fit(d["train"], head=erm)


def test_guard_fires_on_a_harmful_head_and_not_on_a_good_one(bench):
    d, erm = bench
    hold = d["val"].subset(np.arange(2000))
    scrambled = nn.Linear(erm.in_features, 2)
    torch.manual_seed(0)
    with torch.no_grad():  # a head that ignores the data: predictions unrelated to labels
        scrambled.weight.normal_(0, 0.01)
        scrambled.bias.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = guard_check(scrambled, erm, hold, tolerance=0.25, method="test")
        good = guard_check(NeuronTune(guard=False).fit(d["train"], d["val"], head=erm), erm, hold,
                           tolerance=0.25, method="test")
    assert bad["harmful"] and not good["harmful"]
    assert good["pseudo_group_gain"] > 0.1


def test_guard_keeps_erm_head_when_told():
    rng = np.random.default_rng(0)
    # no shortcut at all: every neuron is core, ERM is already right; masking can only hurt
    n = 3000
    y = rng.integers(0, 2, n)
    x = (rng.standard_normal((n, 8)) + 1.5 * y[:, None]).astype(np.float32)
    s = EmbeddingSet(np.maximum(x, 0), y)
    erm = ERM().fit(s)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        m = NeuronTune(retrain_on="val", lam=-1.0, guard=True)  # λ below every δ: zeroes all neurons, a harmful head
        head = m.fit(None, s, head=erm)
    assert m.report_["guard"]["harmful"] and m.report_["guard"]["kept_erm_head"]
    assert torch.equal(head.weight, erm.weight) and head is not erm  # a copy: the result never aliases erm


def test_candidate_thresholds_select_top_k():
    from pydebias.methods.neurontune import candidate_lams

    delta = np.array([[0.9, -1.0, 0.3, 0.0, 0.5], [0.1, 0.7, -0.2, np.nan, 0.05]])
    # max over classes: [0.9, 0.7, 0.3, 0.0, 0.5] -> positives sorted 0.9, 0.7, 0.5, 0.3
    lams = candidate_lams(delta)
    assert lams == [0.7, 0.5, 0.0, float("inf")]
    sizes = [int((spurious_masks(delta, lam, "union") == 0).sum()) for lam in lams]
    assert sizes == [1, 2, 4, 0]  # top 1, top 2, every positive neuron, none


def test_auto_lambda_records_its_selection(bench, fitted):
    (d, erm), m = bench, fitted
    sel = m.report_["rounds"][0]["selection"]
    chosen = m.report_["rounds"][0]["lam"]
    best = max(sel, key=lambda r: r["score"])
    assert chosen == best["lam"] and best["n_zeroed"] == len(d["spurious_neurons"])
    with pytest.raises(ValueError, match="holdout"):
        NeuronTune(holdout=0).fit(d["train"], d["val"], head=erm)


def test_fit_reads_a_memmap_identification_set_in_place(bench, tmp_path, monkeypatch):
    """A memmap identification set: only the holdout is copied out (capped at
    holdout_max_rows), and the fit equals the fit on the same rows in memory."""
    d, erm = bench
    v = d["val"]
    path = tmp_path / "val.npy"
    np.save(path, v.features)
    mm = EmbeddingSet(np.load(path, mmap_mode="r"), v.labels, n_classes=v.n_classes)
    taken = []
    subset = EmbeddingSet.subset

    def spy(self, index, split=None):
        out = subset(self, index, split)
        if isinstance(self.features, np.memmap):
            taken.append(len(out))
        return out
    monkeypatch.setattr(EmbeddingSet, "subset", spy)
    kw = dict(holdout_max_rows=600, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ma = NeuronTune(**kw)
        a = ma.fit(d["train"], mm, head=erm)
        mb = NeuronTune(**kw)
        b = mb.fit(d["train"], EmbeddingSet(np.array(v.features), v.labels, n_classes=v.n_classes), head=erm)
    assert len(taken) == 1 and taken[0] <= 600  # the holdout only; 20 % of 5,000 would be 1,000
    assert ma.report_["n_identification"] == len(v) - taken[0]
    np.testing.assert_array_equal(ma.delta_, mb.delta_)
    np.testing.assert_array_equal(ma.mask_, mb.mask_)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="holdout_max_rows"):
        NeuronTune(holdout_max_rows=0).fit(d["train"], mm, head=erm)


def test_delta_rows_mask_equals_the_subset():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 6)).astype(np.float32)
    y = rng.integers(0, 2, 500)
    ok = rng.random(500) < 0.6
    keep = rng.random(500) < 0.7
    d1, c1 = neuron_deltas(x, y, ok, 2, rows=keep)
    d2, c2 = neuron_deltas(x[keep], y[keep], ok[keep], 2)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(c1, c2)
    with pytest.raises(ValueError, match="rows: expected a boolean mask"):
        neuron_deltas(x, y, ok, 2, rows=np.arange(500))
