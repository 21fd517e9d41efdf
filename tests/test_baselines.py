"""Last-layer trainer, ERM and DFR on the planted benchmark."""
import numpy as np
import pytest
import torch

from pydebias import evaluate
from pydebias.data import planted
from pydebias.methods import DFR, ERM
from pydebias.nn import balance_weights, train_linear_head


def test_balance_weights_equalise_totals():
    ids = np.array([0, 0, 0, 1, 2, 2])
    w = balance_weights(ids, 4)
    totals = np.bincount(ids, weights=w, minlength=4)
    assert np.allclose(totals[:3], totals[0]) and totals[3] == 0 and np.isclose(w.mean(), 1.0)


def test_folded_standardisation_and_mask_are_exact():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 6)) * 5 + 3).astype(np.float32)
    y = (x[:, 0] + x[:, 2] > 6).astype(int)
    mask = np.array([1, 1, 0, 1, 1, 1], dtype=np.float32)
    head = train_linear_head(x, y, 2, feature_mask=mask, epochs=50)
    assert torch.all(head.weight[:, 2] == 0)
    # the head takes raw features: changing a masked neuron changes nothing
    x2 = x.copy()
    x2[:, 2] += 100
    with torch.no_grad():
        assert torch.equal(head(torch.from_numpy(x)), head(torch.from_numpy(x2)))


def test_erm_leans_on_the_shortcut_and_dfr_fixes_it():
    d = planted(n_train=6000, n_val=3000, n_test=3000, seed=0)
    erm = ERM().fit(d["train"])
    r_erm = evaluate(erm, d["test"])
    dfr = DFR().fit(d["train"], d["val"])
    r_dfr = evaluate(dfr, d["test"])
    assert r_erm.worst_group_accuracy < r_erm.accuracy - 0.15
    assert r_dfr.worst_group_accuracy > r_erm.worst_group_accuracy + 0.15
    assert DFR().fit(d["train"], d["val"]).weight.allclose(dfr.weight)  # seeded, deterministic


def test_adam_path_reaches_the_lbfgs_solution():
    d = planted(n_train=3000, n_val=10, n_test=2000, seed=1)
    adam = evaluate(ERM(optimizer="adam", epochs=10).fit(d["train"]), d["train"]).accuracy
    lbfgs = evaluate(ERM().fit(d["train"]), d["train"]).accuracy
    assert adam > 0.9 and abs(adam - lbfgs) < 0.02


def test_afr_picks_gamma_label_free_and_a_balanced_val_does_not_flip_it():
    """gamma='auto': on planted with a val biased like train the reweighting is kept
    (gamma > 0, worst group above ERM); with a group-balanced val a fixed gamma=4
    over-corrects (the paper's set is biased like train) and the choice falls to 0."""
    import warnings

    from pydebias.data import planted
    from pydebias.methods import AFR, ERM
    from pydebias.metrics import evaluate

    for val_corr, fixed_flips in ((None, False), (0.5, True)):
        d = planted(n_train=8000, n_val=3000, n_test=3000, seed=0, **({} if val_corr is None else {"val_corr": val_corr}))
        erm = ERM().fit(d["train"])
        base = evaluate(erm, d["test"]).worst_group_accuracy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auto = AFR()
            head = auto.fit(d["train"], d["val"], head=erm)
            four = AFR(gamma=4.0).fit(d["train"], d["val"], head=erm)
        wga = evaluate(head, d["test"]).worst_group_accuracy
        assert [c["gamma"] for c in auto.report_["selection"]] == [0.0, 1.0, 2.0, 4.0, 8.0]
        scored = [c for c in auto.report_["selection"] if c["score"] is not None]
        assert auto.report_["gamma"] == auto.gamma_ == max(scored, key=lambda c: c["score"])["gamma"]
        assert wga > base + 0.05
        if fixed_flips:
            assert auto.gamma_ == 0.0 and evaluate(four, d["test"]).worst_group_accuracy < base
        else:
            assert auto.gamma_ > 0.0


def test_afr_auto_skips_a_gamma_whose_weights_rest_on_a_few_rows():
    """A confident ERM head: at large gamma a few rows carry nearly all the weight. Those
    gammas are not fitted under ``min_ess`` (their Kish effective sample size is recorded),
    the sizes fall as gamma grows, the smallest gamma is always scored, and the head is
    the one a fixed gamma gives; ``min_ess=0`` scores every candidate."""
    import warnings

    import torch

    from pydebias.data import planted
    from pydebias.methods import AFR, ERM

    d = planted(n_train=3000, n_val=1500, n_test=500, seed=1)
    erm = ERM().fit(d["train"])
    with torch.no_grad():  # a sharper copy of the same boundary: p(y | x) near 1 on most rows
        sharp = torch.nn.Linear(erm.in_features, erm.out_features)
        sharp.weight.copy_(erm.weight * 20), sharp.bias.copy_(erm.bias * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        floor = AFR(min_ess=0.3)
        head = floor.fit(d["train"], d["val"], head=sharp)
        every = AFR(min_ess=0.0)
        every.fit(d["train"], d["val"], head=sharp)
        fixed = AFR(gamma=floor.gamma_).fit(d["train"], d["val"], head=sharp)
    sel = floor.report_["selection"]
    ess = [c["ess"] for c in sel]
    assert all(a > b for a, b in zip(ess, ess[1:])) and ess[-1] < 0.3 <= ess[0]
    assert [c["score"] is None for c in sel] == [e < 0.3 for e in ess]
    assert all(c["score"] is not None for c in every.report_["selection"])
    for a, b in zip(sel, every.report_["selection"]):  # the same fits where both score
        assert a["score"] is None or a["score"] == b["score"]
    assert floor.gamma_ in [c["gamma"] for c in sel if c["score"] is not None]
    assert torch.equal(head.weight, fixed.weight) and torch.equal(head.bias, fixed.bias)
    strict = AFR(min_ess=1.0)  # no gamma passes: the one with the largest ESS (gamma 0) is still fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strict.fit(d["train"], d["val"], head=sharp)
    assert [c["score"] is not None for c in strict.report_["selection"]] == [True, False, False, False, False]
    assert strict.gamma_ == 0.0


def test_afr_l2_pulls_the_head_towards_erms():
    """A larger ``l2`` leaves AFR's weights closer to the ERM head's it starts from (the bias
    is not pulled: a very large ``l2`` leaves a reweighted bias on ERM's weights)."""
    from pydebias.data import planted
    from pydebias.methods import AFR, ERM
    from pydebias.metrics import predict

    d = planted(n_train=3000, n_val=1500, n_test=1000, seed=0)
    erm = ERM().fit(d["train"])
    dist, agree = [], []
    for l2 in (1e-3, 1e-1, 1e3):
        h = AFR(gamma=4.0, l2=l2).fit(d["train"], d["val"], head=erm)
        dist.append(float((h.weight - erm.weight).norm() / erm.weight.norm()))
        agree.append(float((predict(h, d["test"].features) == predict(erm, d["test"].features)).mean()))
    assert dist[0] > dist[1] > dist[2] and dist[2] < 0.01
    assert agree[0] < agree[1] < agree[2]


@pytest.mark.parametrize("kw, match", [({"gamma": "best"}, "gamma"), ({"gammas": ()}, "gammas"),
                                       ({"gammas": (1.0, -2.0)}, "gammas"), ({"holdout": 0.0}, "holdout"),
                                       ({"min_ess": 1.5}, "min_ess"), ({"min_ess": float("nan")}, "min_ess")])
def test_afr_auto_parameters_are_checked(kw, match):
    from pydebias.data import planted
    from pydebias.methods import AFR

    d = planted(n_train=300, n_val=200, n_test=100, seed=0)
    with pytest.raises(ValueError, match=match):
        AFR(**kw).fit(d["train"], d["val"])


def test_jtt_balanced_weighs_each_class_error_cell_the_same_and_lifts_the_worst_group():
    from pydebias.methods import JTT
    from pydebias.metrics import predict

    d = planted(n_train=6000, n_val=3000, n_test=3000, seed=0)
    tr = d["train"]
    m = JTT(seed=0)
    head = m.fit(tr)
    # the identification head JTT trains (same arguments) marks the same errors
    first = train_linear_head(tr.features, tr.labels, tr.n_classes, l2=m.id_l2, epochs=m.id_epochs, seed=0)
    wrong = predict(first, tr.features) != tr.labels
    assert m.report_["n_errors"] == int(wrong.sum()) > 0
    for c, ratio in enumerate(m.report_["error_weight_per_class"]):
        in_c = tr.labels == c
        # equal cell totals: an error weighs (correct rows of c) / (errors of c) times a correct row
        assert ratio == pytest.approx((in_c & ~wrong).sum() / (in_c & wrong).sum(), rel=1e-6)
    erm = evaluate(ERM().fit(tr), d["test"]).worst_group_accuracy
    assert evaluate(head, d["test"]).worst_group_accuracy > erm + 0.3
    # a number is the paper's fixed rule: every error weighs that many correct rows
    m20 = JTT(up_weight=20.0, seed=0)
    m20.fit(tr)
    assert m20.report_["error_weight_per_class"] == [20.0] * tr.n_classes


def test_jtt_up_weight_word_is_checked():
    from pydebias.methods import JTT

    d = planted(n_train=300, n_val=100, n_test=100, seed=0)
    with pytest.raises(ValueError, match="up_weight.*'balanced'"):
        JTT(up_weight="auto").fit(d["train"])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_memmap_head_is_trained_in_chunks_like_the_array(tmp_path, monkeypatch, dtype, optimizer):
    import pydebias._arrays as arrays

    rng = np.random.default_rng(0)
    n, m = 3000, 24
    x = (rng.standard_normal((n, m)) + 3.0).astype(dtype)
    y = (x[:, 0] + 0.5 * x[:, 1] > 4.5).astype(np.int64)
    w = rng.random(n) + 0.5
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=dtype, shape=(n, m))
    mm[:] = x
    mm.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    kw = dict(sample_weight=w, l2=1e-3, optimizer=optimizer, epochs=30, seed=0, feature_mask=(np.arange(m) != 5))
    ref = train_linear_head(x, y, 2, **kw)
    monkeypatch.setattr(arrays, "default_chunk_rows", lambda *a, **k: 700)  # several chunks, one short
    got = train_linear_head(mm, y, 2, **kw)
    assert torch.all(got.weight[:, 5] == 0)
    # L-BFGS's line searches amplify float32 summation-order differences in proportion to the
    # weights' scale (max |w| 3.8 here; 1.2e-3 apart on an AVX2 machine); dropping the short
    # last chunk or counting one chunk twice moves them by 1.1e-2 and 1.9e-2
    atol = 1e-3 * float(ref.weight.abs().max()) if optimizer == "lbfgs" else 2e-3
    torch.testing.assert_close(got.weight, ref.weight, rtol=1e-2, atol=atol)
    torch.testing.assert_close(got.bias, ref.bias, rtol=1e-2, atol=atol)


def test_out_of_core_bench_reports_memory(tmp_path):
    from pydebias.tools.bench_ooc import bench_head_memmap

    row, = bench_head_memmap(n=4000, m=32, epochs=2, directory=str(tmp_path))
    assert row["file_bytes"] == 4000 * 32 * 2 and row["seconds"] > 0 and row["peak_anonymous_bytes"] > 0
    assert list(tmp_path.iterdir()) == []  # the memmap is removed
