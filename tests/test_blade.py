"""BLADE and its translator: the translator starts as the identity and learns a domain
shift, pseudo domains recover a planted bias attribute consistently across classes, the
refinement weights follow self-influence, and with refinement and alignment switched off
BLADE is exactly a cross-entropy fine-tune."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from pydebias.methods import BLADE
from pydebias.methods.base import train_epochs
from pydebias.methods.blade import pseudo_domains, reset_trainable
from pydebias.models import SmallCNN
from pydebias.translate import Translator, fit_translator, translate


def tinted_bars(n, corr, seed, side=12):
    """Class = a gray vertical (0) or horizontal (1) bar; bias = a red (0) or green (1)
    background, equal to the class with probability ``corr``: the easier feature."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < corr, y, 1 - y)
    x = np.zeros((n, 3, side, side), dtype=np.float32)
    pos = rng.integers(2, side - 2, n)
    for i in range(n):
        if y[i] == 0:
            x[i, :, :, pos[i]] = 1.0
        else:
            x[i, :, pos[i], :] = 1.0
    tint = np.array([[0.6, 0.1, 0.0], [0.1, 0.6, 0.0]], dtype=np.float32)[a]
    x = np.maximum(x, tint[:, :, None, None]) + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y), a


def trained_cnn(x, y, seed=0):
    torch.manual_seed(seed)
    m = SmallCNN(2, 3, (8, 16), 16, image_size=x.shape[-1])
    train_epochs(m, torch.utils.data.TensorDataset(x, y),
                 lambda mm, b: (nn.functional.cross_entropy(mm(b[0]), b[1]), mm(b[0])), 2, "adam", 3e-3, 64)
    return m


@pytest.fixture(scope="module")
def bars():
    return tinted_bars(1200, 0.95, 0)


def test_translator_starts_as_identity_and_checks_targets():
    g = Translator((3, 12, 12), 2, width=8)
    x = torch.randn(5, 3, 12, 12)
    assert torch.equal(translate(g, x, 1), x)
    assert torch.equal(Translator((7,), 3)(x[:, 0, 0, :7], torch.tensor([0, 1, 2, 0, 1])), x[:, 0, 0, :7])
    with pytest.raises(ValueError, match="target"):
        translate(g, x, 2)
    with pytest.raises(ValueError, match="shape"):
        Translator((3, 12), 2)


def test_translator_learns_the_domain_shift_on_rows():
    # domain 0: feature 0 around -2, domain 1: around +2; feature 1 carries the content
    rng = np.random.default_rng(0)
    d = rng.integers(0, 2, 2000)
    x = np.stack([4.0 * d - 2.0 + 0.3 * rng.standard_normal(2000), rng.standard_normal(2000)], 1)
    x = torch.tensor(x, dtype=torch.float32)
    g, log = fit_translator(x, d, steps=600, batch_size=64, lr=1e-3, width=16, seed=0)
    xt = translate(g, x, 1 - torch.from_numpy(d))
    moved = xt[:, 0].numpy()
    # translated rows sit on the other domain's side, and the content coordinate follows the input
    assert (np.sign(moved) == np.where(d == 0, 1, -1)).mean() > 0.9
    assert np.corrcoef(xt[:, 1].numpy(), x[:, 1].numpy())[0, 1] > 0.9
    assert log["step"][-1] == 600 and log["d_cls_accuracy"][-1] > 0.9
    # seeded: the same run twice gives the same generator
    g2, _ = fit_translator(x[:200], d[:200], steps=5, seed=3)
    g3, _ = fit_translator(x[:200], d[:200], steps=5, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(g2.state_dict().values(), g3.state_dict().values()))


def test_translator_bad_input():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="domains"):
        fit_translator(x, np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="domains"):
        fit_translator(x, np.zeros(10, dtype=int))  # one domain
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_translator(x, np.arange(10) % 2)


def test_pseudo_domains_recover_a_planted_attribute_in_every_class():
    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < 0.85, y % 2, 1 - y % 2)  # imbalanced within each class
    bias = np.array([[6.0, 0, 0, 0], [0, 6.0, 0, 0]])[a]
    cls = np.eye(4)[y] * 2.0
    f = bias + cls + 0.5 * rng.standard_normal((n, 4))
    dom = pseudo_domains(f, y, 2, seed=0)
    # one global relabelling maps domains onto the attribute, the same in every class
    agree = max((dom == a).mean(), (dom != a).mean())
    assert agree > 0.97
    flip = (dom != a).mean() > 0.5
    for c in range(3):
        assert ((dom[y == c] != a[y == c]).mean() > 0.5) == flip


def test_reset_trainable_keeps_frozen_modules():
    torch.manual_seed(0)
    m = SmallCNN(2, 3, (4, 8), 8, image_size=12)
    before = copy.deepcopy(m.state_dict())
    torch.manual_seed(1)
    reset_trainable(m, frozen=("conv",))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("conv."))
    assert not any(torch.equal(before[k], after[k]) for k in before if not k.startswith("conv."))


@pytest.fixture(scope="module")
def fitted(bars):
    x, y, a = bars
    erm = trained_cnn(x, y)
    m = BLADE(translator_steps=60, translator_width=8, epochs=1, batch_size=32, seed=0)
    tuned = m.fit(erm, torch.utils.data.TensorDataset(x, y))
    return erm, m, tuned


def test_blade_fit_records_and_leaves_the_model(bars, fitted):
    x, y, a = bars
    erm, m, tuned = fitted
    ref = trained_cnn(x, y)
    assert tuned is not erm and all(torch.equal(p, q) for p, q in zip(erm.parameters(), ref.parameters()))
    # the bias-amplified model splits every class by tint: pseudo domains follow the attribute
    agree = max((m.domains_ == a).mean(), (m.domains_ != a).mean())
    assert agree > 0.9, agree
    assert m.targets_.shape == (len(y),) and (m.targets_ != m.domains_).all()
    # alpha is the rank of self-influence, from alpha_min to 1
    order = np.argsort(m.self_influence_, kind="stable")
    assert np.all(np.diff(m.alpha_[order]) >= 0) and m.alpha_.min() == 0.0 and m.alpha_.max() == 1.0
    # bias-conflicting samples are harder for the bias-amplified model: higher alpha
    conflict = a != y.numpy()
    assert m.alpha_[conflict].mean() > m.alpha_[~conflict].mean() + 0.2
    rep = m.report_
    assert np.array(rep["domain_sizes"]).sum() == len(y) and len(rep["losses"]) == 1
    assert set(rep["seconds"]) == {"bias_model_and_domains", "translator", "self_influence", "fine_tune"}


def test_blade_is_seeded(bars, fitted):
    x, y, _ = bars
    erm, m, tuned = fitted
    again = BLADE(**{**m.get_params(), "translator": m.translator_}).fit(erm, torch.utils.data.TensorDataset(x, y))
    assert all(torch.equal(p, q) for p, q in zip(tuned.parameters(), again.parameters()))


def test_blade_without_refinement_and_alignment_is_a_plain_fine_tune(bars, fitted):
    x, y, _ = bars
    erm, m, _ = fitted
    got = BLADE(translator=m.translator_, alpha_min=1.0, lam=0.0, epochs=1, batch_size=64,
                seed=0).fit(erm, torch.utils.data.TensorDataset(x, y))
    want = copy.deepcopy(erm)
    data = torch.utils.data.TensorDataset(x, y, x, y)  # same length: the same shuffled batches
    with torch.random.fork_rng(devices=[]):
        train_epochs(want, data, lambda mm, b: (nn.functional.cross_entropy(mm(b[0]), b[1]), mm(b[0])), 1, "adam",
                     1e-3, 64, seed=0)
    for p, q in zip(got.parameters(), want.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_blade_known_domains_and_bad_arguments(bars, fitted):
    x, y, a = bars
    erm, m, _ = fitted
    train = torch.utils.data.TensorDataset(x, y)
    oracle = BLADE(translator=m.translator_, epochs=1, batch_size=64)
    oracle.fit(erm, train, domains=a)
    assert np.array_equal(oracle.domains_, a)
    with pytest.raises(ValueError, match="domains"):
        BLADE(translator=m.translator_).fit(erm, train, domains=a[:-1])
    with pytest.raises(ValueError, match="n_domains"):
        BLADE(n_domains=1).fit(erm, train)
    with pytest.raises(ValueError, match="bias_init"):
        BLADE(bias_init="scratch").fit(erm, train)
    with pytest.raises(ValueError, match="translator"):
        BLADE(translator=Translator((3, 8, 8), 2)).fit(erm, train)
    with pytest.raises(TypeError, match="embed"):
        BLADE().fit(nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 2)), train)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        BLADE().fit(erm, torch.utils.data.TensorDataset(bad, y))


def test_blade_on_feature_rows_uses_the_mlp_translator():
    # rows: feature 0 the shortcut (= label 95 % of the time, large), feature 1 the core (= label, small);
    # the domains are given (pseudo domains have their own test): this checks the rows path end to end
    from pydebias.models import TabularMLP

    rng = np.random.default_rng(2)
    n = 1500
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.95, y, 1 - y)
    x = np.stack([4.0 * a - 2.0, 0.5 * y, rng.standard_normal(n)], 1) + 0.2 * rng.standard_normal((n, 3))
    x, yt = torch.tensor(x, dtype=torch.float32), torch.from_numpy(y)
    torch.manual_seed(0)
    mlp = TabularMLP(3, 2, 32, 16)
    m = BLADE(translator_steps=600, translator_width=16, epochs=1, batch_size=64, seed=0)
    out = m.fit(mlp, torch.utils.data.TensorDataset(x, yt), domains=a)
    assert out(x).shape == (n, 2) and m.translator_.shape == (3,)
    # translations put the shortcut feature on the target domain's side
    moved = translate(m.translator_, x, m.targets_)[:, 0].numpy()
    assert (np.sign(moved) == np.where(m.targets_ == 1, 1.0, -1.0)).mean() > 0.9


def test_study_helpers_tables_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    from pydebias.methods.blade import domain_agreement
    from pydebias.tools.blade_study import BLADE_VARIANTS, blade_figures, blade_markdown, colour_probe

    # agreement under the best relabelling: domains flipped against the truth agree fully
    truth = np.array([0, 0, 1, 1, 0, 1])
    got = domain_agreement(1 - truth, truth, np.array([0, 1, 2, 3, 0, 3]))
    assert got["overall"] == 1.0 and got["per_group"] == [1.0, 1.0, 1.0, 1.0]
    assert domain_agreement(np.array([0, 1, 0, 1, 0, 1]), truth) == {"overall": 4 / 6}
    # the colour probe tells red from green images and follows a recolouring
    red, green = torch.zeros(4, 3, 5, 5), torch.zeros(4, 3, 5, 5)
    red[:, 0], green[:, 1] = 1.0, 1.0
    probe = colour_probe(torch.cat([red, green]), np.array([0] * 4 + [1] * 4))
    assert list(probe(torch.cat([green[:2], red[:1]]))) == [1, 1, 0]

    def row(seed, wg):
        r = {"benchmark": "colored-fashion", "backbone": "CNN", "seed": seed,
             "ERM": {"worst_group": wg, "mean": 0.8},
             "BLADE": {"worst_group": wg + 0.3, "mean": 0.85, "seconds": 10.0,
                       "domain_agreement": {"overall": 0.98, "per_group": [1.0, 1.0, 0.4, 1.0]},
                       "translated_to_target": 1.0, "colour_probe_real": 1.0, "alpha_per_group": [0.5, 1.0, 0.8, 0.4],
                       "bias_model": {"worst_group": 0.0, "mean": 0.7}}}
        for label, _ in BLADE_VARIANTS:
            r[label] = {"worst_group": wg + 0.1, "mean": 0.82}
        r["_examples"] = {"images": torch.rand(2, 3, 8, 8), "translated": torch.rand(2, 3, 8, 8), "labels": ["a", "b"]}
        return r

    rows = [row(0, 0.3), row(1, 0.5), {"benchmark": "fashion-on-photos", "backbone": "x", "skipped": "no"}]
    md = blade_markdown(rows, [0, 1])
    line = next(l for l in md.splitlines() if l.startswith("| colored-fashion | CNN | 40.0"))
    assert "| 40.0 (30.0–50.0) / 80.0 | 70.0 (60.0–80.0) / 85.0 |" in line
    assert "| colored-fashion | 98.0 | 100 / 100 / 40 / 100 | 100.0 (100.0) |" in md
    assert "fashion-on-photos" not in md.split("| --- |", 1)[1]
    paths = blade_figures(rows, str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["blade_translations_colored-fashion.png"]
    assert open(paths[0], "rb").read(4) == b"\x89PNG"


def test_blade_study_fine_tunes_both_pretrained_image_builtins_alike():
    from pydebias.tools import blade_study as bs
    from pydebias.tools.report import PRETRAINED_IMAGE_BENCHMARKS

    assert {c[0] for c in bs.BLADE_CASES} >= set(PRETRAINED_IMAGE_BENCHMARKS)
    d = {"info": {"params": {"finetune_from": 11, "batch_size": 64}}}
    for name in PRETRAINED_IMAGE_BENCHMARKS:
        kw = bs._case_params(name, d)
        assert kw["frozen"] == ["stem"] + [f"blocks.{i}" for i in range(11)]
        assert kw["batch_size"] == 64 and kw["translator_width"] == 16
    assert bs._case_params("colored-fashion", d) == {}


@pytest.mark.filterwarnings("ignore:BLADE")  # 20 translator steps: its outputs stay in their domain
def test_study_caches_the_translator(bars, monkeypatch, tmp_path):
    from pydebias.tools.blade_study import _fit_cached

    monkeypatch.setenv("PYDEBIAS_CACHE", str(tmp_path))
    x, y, _ = bars
    erm = trained_cnn(x, y)
    train = torch.utils.data.TensorDataset(x, y)
    first = BLADE(translator_steps=20, translator_width=8, epochs=1, batch_size=32)
    a, log_a = _fit_cached("bars", "abc", first, erm, train, False)
    assert len(list(tmp_path.iterdir())) == 1 and first.report_["translator"] is not None
    second = BLADE(translator_steps=20, translator_width=8, epochs=1, batch_size=32)
    b, log_b = _fit_cached("bars", "abc", second, erm, train, False)
    assert second.report_["translator"] is None and second.translator is None  # from the cache, parameter restored
    assert log_b == log_a
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # another parameter, another translator
    _fit_cached("bars", "abc", BLADE(translator_steps=21, translator_width=8, epochs=1, batch_size=32), erm, train,
                False)
    assert len(list(tmp_path.iterdir())) == 2
