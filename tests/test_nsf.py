"""NSF (Let Samples Speak): folding, identification, the four steps, the do-no-harm guard."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pydebias import EmbeddingSet, evaluate
from pydebias.data import planted
from pydebias.methods import ERM, NSF
from pydebias.methods.nsf import fold_transform
from reference_numpy import gaussian_blobs


def _overlapping(n=1200, m=10, C=3, seed=0, spread=2.0):
    return gaussian_blobs(n, m, C, seed, spread)


def test_fold_transform_is_exact():
    torch.manual_seed(0)
    head = nn.Linear(32, 5)
    beta = torch.rand(32) * 2 - 0.5
    shift = torch.randn(32) * 3
    f = torch.randn(400, 32) * 4 + 1
    folded = fold_transform(head, beta, shift)
    with torch.no_grad():
        want = head((f + shift) * beta - shift)
        got = folded(f)
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("standardize", [True, False])
def test_fitted_head_folds_the_learned_transform_exactly(standardize):
    x, y = _overlapping()
    x = x * np.linspace(0.1, 5, x.shape[1], dtype=np.float32) + 3  # neurons of unequal scale
    m = NSF(n_eliminate_steps=200, n_update_steps=50, holdout=0, standardize=standardize)
    head = m.fit(None, EmbeddingSet(x, y))
    assert (m.beta_ - 1).abs().max() > 0.05  # the transform is not the identity
    f = torch.from_numpy(x)
    z = (f.double() - torch.from_numpy(x.astype(np.float64).mean(0))) / torch.from_numpy(x.astype(np.float64).std(0))
    z = z.float() if standardize else f
    with torch.no_grad():
        want = m.transformed_head_((z + m.shift_) * m.beta_ - m.shift_)
        assert (head(f) - want).abs().max() < 1e-4 * want.abs().max()
        assert (m.transformed_head_(m.transform(f)) - want).abs().max() < 1e-4 * want.abs().max()
    assert isinstance(head, nn.Linear) and head.in_features == 10 and head.out_features == 3


@pytest.mark.parametrize("standardize", [True, False])
def test_outliers_and_targets_match_numpy(standardize):
    x, y = _overlapping()
    m = NSF(n_eliminate_steps=1, n_update_steps=1, holdout=0, standardize=standardize)
    m.fit(None, EmbeddingSet(x, y))
    xd = x.astype(np.float64)
    if standardize:  # every step runs on z-scores; targets_ are in those units
        xd = (xd - xd.mean(0)) / xd.std(0)
    mu = np.stack([xd[y == c].mean(0) for c in range(3)])
    near = ((xd[:, None] - mu[None]) ** 2).sum(-1).argmin(1)
    outlier = near != y
    assert outlier.any() and (~outlier).any()
    np.testing.assert_array_equal(m.outlier_, outlier)
    for c in range(3):
        u = 0.5 * (xd[(y == c) & ~outlier].mean(0) + xd[(y == c) & outlier].mean(0))
        np.testing.assert_allclose(m.targets_[c], u, rtol=1e-9 if not standardize else 1e-5,
                                   atol=1e-9 if not standardize else 1e-5)
    cnt = m.report_["counts"]
    assert cnt["outliers"] == outlier.sum() and cnt["inliers"] == (~outlier).sum()
    assert cnt["rescued"] + cnt["dropped"] == cnt["outliers"]
    assert cnt["outliers_per_class"] == np.bincount(y[outlier], minlength=3).tolist()
    np.testing.assert_allclose(m.report_["dispersion"]["outlier_fraction"],
                               [outlier[y == c].mean() for c in range(3)])


def test_keep_unrescued_puts_every_outlier_in_g1_and_changes_only_the_update():
    x, y = _overlapping()
    s = EmbeddingSet(x, y)
    paper, keep = (NSF(n_update_steps=50, holdout=0, keep_unrescued=k) for k in (False, True))
    h_paper, h_keep = paper.fit(None, s), keep.fit(None, s)
    cp, ck = paper.report_["counts"], keep.report_["counts"]
    assert cp["dropped"] > 0 and cp["g1"] == cp["rescued"] == cp["outliers"] - cp["dropped"]
    assert ck["dropped"] == 0 and ck["g1"] == ck["outliers"] == cp["outliers"]
    assert ck["rescued"] == cp["rescued"]  # identification and elimination are the same
    np.testing.assert_array_equal(paper.outlier_, keep.outlier_)
    assert torch.equal(paper.beta_, keep.beta_)
    assert not torch.allclose(h_paper.weight, h_keep.weight)
    with pytest.raises(ValueError, match="keep_unrescued"):
        NSF(keep_unrescued=1).fit(None, s)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_keep_unrescued_learns_the_outliers_the_paper_drops():
    # planted, balanced identification split: the paper drops the outliers still nearer the
    # other class's target (the shortcut's minority rows); keeping them lifts the worst group
    d = planted(n_train=6000, n_val=3000, n_test=3000, seed=0, val_corr=0.5)
    erm = ERM().fit(d["train"])
    wga = {}
    for keep in (False, True):
        m = NSF(keep_unrescued=keep)
        wga[keep] = evaluate(m.fit(d["train"], d["val"], head=erm), d["test"]).worst_group_accuracy
        assert (m.report_["counts"]["dropped"] > 100) != keep
    assert wga[True] > wga[False] + 0.1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_keep_unrescued_auto_returns_the_fit_its_holdout_score_picks():
    """"auto" fits both updates from the same draws: its head is exactly the head of the
    value it picks, and it picks True only when True's label-free holdout score beats
    False's by more than keep_margin (a margin of 2 can never be beaten: the paper's head)."""
    from pydebias.methods.guard import selection_score
    from pydebias.metrics import predict

    d = planted(n_train=4000, n_val=2000, n_test=500, seed=0, val_corr=0.5)
    erm = ERM().fit(d["train"])
    heads = {}
    for keep in (False, True):
        m = NSF(keep_unrescued=keep, n_update_steps=200)
        heads[keep] = m.fit(d["train"], d["val"], head=erm)
    _, hold = d["val"].split_holdout(0.25, seed=0)
    right = predict(erm, hold.features) == hold.labels
    scores = {k: selection_score(h, hold, right) for k, h in heads.items()}
    for margin in (0.0, 2.0):
        auto = NSF(keep_unrescued="auto", keep_margin=margin, n_update_steps=200)
        head = auto.fit(d["train"], d["val"], head=erm)
        choice = auto.report_["keep_unrescued"]
        picked = bool(scores[True] > scores[False] + margin)
        assert choice["chosen"] == picked and choice["margin"] == margin
        np.testing.assert_allclose([choice["scores"]["False"], choice["scores"]["True"]],
                                   [scores[False], scores[True]], rtol=1e-6)
        assert torch.equal(head.weight, heads[picked].weight) and torch.equal(head.bias, heads[picked].bias)
        assert (auto.report_["counts"]["dropped"] == 0) == picked
    assert scores[True] > scores[False]  # planted, balanced split: keeping the minority's rows scores higher
    assert NSF().keep_unrescued == "auto"  # the default
    # no holdout to choose on: the paper's drop, said in the notes
    a, p = NSF(holdout=0, n_update_steps=50), NSF(holdout=0, keep_unrescued=False, n_update_steps=50)
    assert torch.equal(a.fit(None, d["val"]).weight, p.fit(None, d["val"]).weight)
    assert a.report_["keep_unrescued"] is None and any("without a holdout" in n for n in a.report_["notes"])
    for bad, match in (({"keep_unrescued": "yes"}, "keep_unrescued: expected True, False or 'auto'"),
                       ({"keep_unrescued": "auto", "keep_margin": -1.0}, "keep_margin")):
        with pytest.raises(ValueError, match=match):
            NSF(**bad).fit(d["train"], d["val"], head=erm)


def test_report_records_losses_per_step_and_the_loss_decreases():
    x, y = _overlapping()
    m = NSF(n_eliminate_steps=30, n_update_steps=40, holdout=0)
    m.fit(None, EmbeddingSet(x, y))
    r = m.report_
    assert len(r["eliminate_loss"]) == 30 and len(r["update_loss"]) == 40
    assert r["eliminate_loss"][-1] < r["eliminate_loss"][0]
    assert np.isfinite(r["eliminate_loss"]).all() and np.isfinite(r["update_loss"]).all()
    assert r["guard"] is None and any("holdout=0" in n for n in r["notes"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_deterministic_with_a_seed_and_group_labels_unread():
    d = planted(n_train=2000, n_val=1500, n_test=500, seed=1)
    erm = ERM().fit(d["train"])
    val = d["val"]
    a, b, c = (NSF(seed=5, guard=False) for _ in range(3))
    a.fit(d["train"], val, head=erm)
    b.fit(d["train"], val, head=erm)
    c.fit(d["train"], EmbeddingSet(val.features, val.labels, n_classes=2), head=erm)  # no group labels
    for other in (b, c):
        assert torch.equal(a.debiased_head_.weight, other.debiased_head_.weight)
        assert torch.equal(a.debiased_head_.bias, other.debiased_head_.bias)
        assert a.report_["update_loss"] == other.report_["update_loss"]
    g = NSF(seed=5)
    returned = g.fit(d["train"], val, head=erm)
    assert returned is not erm  # a result never aliases an input, the guard's copy included
    want = erm if g.report_["returned"] == "erm" else g.debiased_head_
    assert torch.equal(returned.weight, want.weight) and torch.equal(returned.bias, want.bias)
    assert torch.equal(g.debiased_head_.weight, a.debiased_head_.weight)  # the guard changes nothing upstream
    d6 = NSF(seed=6, guard=False)
    d6.fit(d["train"], val, head=erm)
    assert not torch.equal(d6.debiased_head_.weight, a.debiased_head_.weight)
    k = NSF(seed=5, k_clusters=3, guard=False)
    k.fit(d["train"], val, head=erm)
    assert "extension" in k.report_["targets"]


def test_class_without_inlier_gets_a_target_and_a_warning():
    # class 2 sits at +-10 on axis 0 (mean 0); classes 0 / 1 have their means near +-9,
    # so every class-2 sample is nearer another class mean: no inlier
    rng = np.random.default_rng(0)
    n = 200
    x0 = rng.normal([9, 0], 0.3, (n, 2))
    x1 = rng.normal([-9, 0], 0.3, (n, 2))
    x2 = np.concatenate([rng.normal([10, 0], 0.3, (n // 2, 2)), rng.normal([-10, 0], 0.3, (n // 2, 2))])
    x = np.concatenate([x0, x1, x2]).astype(np.float32)
    y = np.repeat([0, 1, 2], n)
    m = NSF(n_eliminate_steps=5, n_update_steps=20, holdout=0)
    with pytest.warns(RuntimeWarning) as rec:
        head = m.fit(None, EmbeddingSet(x, y))
    msgs = " | ".join(str(w.message) for w in rec)
    assert "no inlier" in msgs and "never sees them" in msgs
    assert m.report_["no_inlier_classes"] == [2]
    xd = x.astype(np.float64)  # targets_ are in the z-score units NSF works in
    np.testing.assert_allclose(m.targets_[2], (x2.astype(np.float64).mean(0) - xd.mean(0)) / xd.std(0), atol=1e-5)
    assert torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()


def test_no_outlier_means_plain_training_on_inliers_without_nan():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 300)
    x = (np.where(y[:, None] == 1, 5.0, -5.0) + rng.standard_normal((600, 4))).astype(np.float32)
    m = NSF(n_eliminate_steps=5, n_update_steps=30, holdout=0)
    with pytest.warns(RuntimeWarning, match="G1 empty"):
        head = m.fit(None, EmbeddingSet(x, y))
    assert m.report_["counts"]["outliers"] == 0 and "G2 only" in m.report_["update_mode"]
    assert np.isfinite(m.report_["update_loss"]).all() and torch.isfinite(head.weight).all()
    assert evaluate(head, EmbeddingSet(x, y)).accuracy == 1.0


def test_bad_arguments_are_named():
    x, y = _overlapping(n=100)
    s = EmbeddingSet(x, y)
    with pytest.raises(ValueError, match="alpha"):
        NSF(alpha=-1).fit(s, s)
    with pytest.raises(ValueError, match="holdout"):
        NSF(holdout=1.0).fit(s, s)
    with pytest.raises(ValueError, match="k_clusters"):
        NSF(k_clusters=0).fit(s, s)
    with pytest.raises(ValueError, match="head"):
        NSF().fit(s, s, head=nn.Linear(3, 3))
    with pytest.raises(TypeError, match="val"):
        NSF().fit(s, x)
    with pytest.raises(ValueError, match="val"):
        NSF().fit(s)
    with pytest.raises(TypeError, match="train"):
        NSF().fit(None, s)  # no head given: ERM must be trained on train


@pytest.fixture(scope="module")
def planted_runs():
    """NSF (the paper's update, ``keep_unrescued=False``) on planted with a balanced, a biased
    and a shortcut-free identification split: the cases the guard is judged on."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, kw in [("balanced_val", dict(val_corr=0.5)), ("biased_val", {}),
                         ("no_shortcut", dict(corr=0.5))]:
            d = planted(n_train=6000, n_val=3000, n_test=3000, seed=0, **kw)
            erm = ERM().fit(d["train"])
            m = NSF(guard=True, keep_unrescued=False)
            head = m.fit(d["train"], d["val"], head=erm)
            out[name] = dict(erm=erm, head=head, m=m, wga_erm=evaluate(erm, d["test"]).worst_group_accuracy,
                             wga_nsf=evaluate(m.debiased_head_, d["test"]).worst_group_accuracy)
    return out


def test_planted_nsf_helps_and_the_guard_is_silent(planted_runs):
    # balanced identification split: NSF lifts test worst-group accuracy, the guard keeps it
    r = planted_runs["balanced_val"]
    assert r["wga_nsf"] > r["wga_erm"] + 0.08
    g = r["m"].report_["guard"]
    assert not g["kept_erm_head"] and r["m"].report_["returned"] == "nsf" and r["head"] is r["m"].debiased_head_
    assert g["pseudo_group_gain"] > max(0.02, g["balanced_accuracy_drop"])


def test_planted_guard_fires_where_nsf_harms(planted_runs):
    # no shortcut to remove: NSF lowers worst-group accuracy, the guard returns ERM
    r = planted_runs["no_shortcut"]
    assert r["wga_nsf"] < r["wga_erm"] - 0.2
    g = r["m"].report_["guard"]
    assert g["kept_erm_head"] and r["m"].report_["returned"] == "erm"
    assert r["head"] is not r["erm"] and torch.equal(r["head"].weight, r["erm"].weight)  # a copy, not the input
    assert g["pseudo_group_gain"] < g["balanced_accuracy_drop"]


def test_by_default_the_check_warns_and_the_nsf_head_is_returned():
    # guard off (the default): the same shortcut-free case is flagged and warned about,
    # the warning points at a balanced identification split, and the NSF head comes back
    d = planted(n_train=6000, n_val=3000, n_test=3000, seed=0, corr=0.5)
    erm = ERM().fit(d["train"])
    m = NSF(keep_unrescued=False)
    with pytest.warns(RuntimeWarning, match="group-balanced"):
        head = m.fit(d["train"], d["val"], head=erm)
    assert m.report_["guard"]["harmful"] and not m.report_["guard"]["kept_erm_head"]
    assert head is m.debiased_head_ and m.report_["returned"] == "nsf"


def test_planted_biased_split_keeps_the_real_gain(planted_runs):
    # a biased identification split: label-free accuracy falls (the shortcut paid there),
    # but the gain on the samples ERM gets wrong is larger, so the NSF head is kept
    r = planted_runs["biased_val"]
    assert r["wga_nsf"] > r["wga_erm"] + 0.3
    g = r["m"].report_["guard"]
    assert g["balanced_accuracy_drop"] > 0 and not g["kept_erm_head"] and r["head"] is r["m"].debiased_head_
    assert g["erm"]["pseudo_group_balanced_accuracy"] == pytest.approx(0.5)
    c = r["m"].report_["counts"]
    assert 0 < c["rescued"] <= c["outliers"] < c["inliers"]
