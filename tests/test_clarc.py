"""RR-ClArC, P-ClArC, A-ClArC and concept activation vectors."""
import numpy as np
import pytest
import torch
from torch import nn

from pydebias.concepts import fit_cav, layer_activations, pool
from pydebias.methods import AClArC, PClArC, RRClArC
from pydebias.methods.clarc import (TARGETS, SignStream, autograd_gradient, closed_form_gradient,
                                    closed_form_penalty, output_coefficients, rr_penalty)
from pydebias.models import EfficientNetLite0, EncoderHead, SmallCNN


def _square_data(n=256, seed=0, in_channels=1, core=0.5):
    """Random 28 x 28 images, two classes; a bright 4 x 4 square on most of class 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, in_channels, 28, 28, generator=g) * 0.5
    y = torch.arange(n) % 2
    x[y == 1, :, 8:20, 8:20] += core  # the core feature: a brighter centre
    c = (torch.rand(n, generator=g) < torch.where(y == 0, 0.9, 0.1)).numpy()
    x[torch.from_numpy(c), :, :4, :4] = 1.0
    return torch.utils.data.TensorDataset(x, y), c


def _capture(model, layer, x, closed_form_ready=True):
    """(A with grad, logits) of ``model`` at ``layer`` for ``x``."""
    store = {}

    def hook(_m, _i, out):
        a = out.detach().requires_grad_(True)
        store["a"] = a
        return a

    h = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        h.remove()
    return store["a"], logits


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("which", ["smallcnn-embedding", "efficientnet-pooled", "efficientnet-embedding"])
def test_closed_form_gradient_equals_autograd(target, which):
    torch.manual_seed(0)
    if which == "smallcnn-embedding":
        model, layer, x = SmallCNN(n_classes=3, in_channels=1), "fc", torch.rand(6, 1, 28, 28)
    else:
        model, layer = EfficientNetLite0(n_classes=4), ("top" if which == "efficientnet-pooled" else "pool")
        x = torch.randn(3, 3, 64, 64)
    model.eval()
    a, logits = _capture(model, layer, x)
    s = output_coefficients(logits, torch.arange(len(x)) % logits.shape[1], target, torch.Generator().manual_seed(1))
    auto = autograd_gradient(a, logits, s, target)
    closed = closed_form_gradient(model.head, s, int(np.prod(a.shape[2:])) if a.dim() > 2 else 1)
    assert auto.shape == closed.shape == (len(x), a.shape[1])
    torch.testing.assert_close(closed, auto, rtol=1e-4, atol=1e-7)
    h = torch.nn.functional.normalize(torch.randn(a.shape[1]), dim=0)
    for agg in ("l2_mean", "l1", "cosine"):
        torch.testing.assert_close(rr_penalty(closed, h, agg), rr_penalty(auto, h, agg), rtol=1e-4, atol=1e-9)
    # and the penalty trains the head: its gradient w.r.t. the head weights agrees too
    gw_auto, = torch.autograd.grad(rr_penalty(auto, h), model.head.weight, retain_graph=True)
    gw_closed, = torch.autograd.grad(rr_penalty(closed, h), model.head.weight)
    torch.testing.assert_close(gw_closed, gw_auto, rtol=1e-3, atol=1e-9)
    if target != "logprobs":  # constant coefficients: value and weight gradient by hand, no graph
        hw = int(np.prod(a.shape[2:])) if a.dim() > 2 else 1
        value, coef = closed_form_penalty(model.head, s, h, hw)
        assert not value.requires_grad and not coef.requires_grad
        torch.testing.assert_close(value, rr_penalty(auto, h).detach(), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(torch.outer(coef, h), gw_auto, rtol=1e-3, atol=1e-9)


def test_sign_stream_gives_the_per_batch_draws():
    sizes = [64] * 70 + [13, 200, 1]  # crosses chunk boundaries, one batch larger than a chunk
    a = SignStream(torch.Generator().manual_seed(5), 7, chunk=128)
    g = torch.Generator().manual_seed(5)
    for b in sizes:
        want = output_coefficients(torch.zeros(b, 7), None, "all_logits_random", g)
        assert torch.equal(a.take(b), want)


def test_cav_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    n, d = 4000, 64
    true = rng.standard_normal(d)
    true /= np.linalg.norm(true)
    # a strong noise source along u, half aligned with the concept's pattern (a distractor)
    v = rng.standard_normal(d)
    v -= (v @ true) * true
    u = (true + v / np.linalg.norm(v)) / np.sqrt(2)
    t = rng.random(n) < 0.3
    a = rng.standard_normal((n, d)) + np.outer(rng.standard_normal(n) * 3, u) + np.outer(t, true) * 1.5
    cav = fit_cav(a.astype(np.float32), t)
    assert cav.cosine(true) >= 0.9
    assert cav.z_concept - cav.z_clean == pytest.approx(1.5, abs=0.2)
    assert cav.effect == pytest.approx(1.5 * cav.cosine(true), abs=0.15)
    # filter vs pattern: a classifier's weights turn away from the distractor, the pattern
    # does not (why "signal" is the default)
    for method in ("ridge", "logistic", "svm", "lasso"):
        assert fit_cav(a, t, method=method).cosine(true) < cav.cosine(true) - 0.1
    # a direction orthogonal to the pattern is far below
    assert abs(cav.cosine(v)) < 0.3


@pytest.mark.parametrize("method", ["ridge", "logistic", "svm", "lasso"])
def test_classifier_cavs_separate_the_concept(method):
    rng = np.random.default_rng(1)
    t = rng.random(600) < 0.5
    a = rng.standard_normal((600, 8))
    a[:, 2] += 3 * t
    cav = fit_cav(a, t, method=method)
    assert abs(float(cav.direction.norm()) - 1) < 1e-6 and int(cav.direction.abs().argmax()) == 2
    assert cav.z_concept > cav.z_clean


def test_cav_effect_is_the_concept_shift_within_classes():
    # the concept adds 2 along e0; class 1 sits 5 further along e0 and carries the concept
    # 90 % of the time (class 0: 10 %): the raw means mix the class in, the effect does not
    rng = np.random.default_rng(2)
    n = 4000
    y = np.arange(n) % 2
    t = rng.random(n) < np.where(y == 1, 0.9, 0.1)
    a = rng.standard_normal((n, 6)) * 0.3
    a[:, 0] += 2.0 * t + 5.0 * y
    cav = fit_cav(a, t, within=y)
    assert cav.cosine(np.eye(6)[0]) > 0.99
    assert cav.effect == pytest.approx(2.0, abs=0.05)
    assert cav.z_concept - cav.z_clean > 5.0  # the class difference rides along


def test_lasso_cav_matches_scikit_learn_and_is_sparse():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(3)
    t = rng.random(500) < 0.3
    a = rng.standard_normal((500, 12))
    a[:, [1, 4]] += np.outer(t, [2.0, -1.0])
    w = np.where(t, 1 / t.sum(), 1 / (~t).sum())
    ref = linear_model.Lasso(alpha=0.05, fit_intercept=False, tol=1e-12, max_iter=100_000)
    ref.fit(a, np.where(t, 1.0, -1.0), sample_weight=w / w.mean())
    cav = fit_cav(a, t, method="lasso", l1=0.05)
    np.testing.assert_allclose(cav.direction.numpy(), ref.coef_ / np.linalg.norm(ref.coef_), atol=1e-5)
    assert set(np.flatnonzero(cav.direction.numpy())) <= {1, 4} | set(np.flatnonzero(ref.coef_))
    assert (cav.direction.numpy() == 0).sum() >= 6
    with pytest.raises(ValueError, match="l1"):
        fit_cav(a, t, method="lasso", l1=100.0)


@pytest.mark.parametrize("layer, pooling", [("conv.4", "max"), ("conv.4", "mean"), ("fc", "max")])
def test_pclarc_moves_the_cav_component_to_the_clean_mean_exactly(layer, pooling):
    torch.manual_seed(0)
    train, c = _square_data(128)
    model = SmallCNN(n_classes=2, in_channels=1).eval()
    m = PClArC(layer=layer, pooling=pooling)
    fixed = m.fit(model, train, concepts=c)
    x = train.tensors[0][:32]
    before = dict(model.named_modules())[layer]
    outs = {}
    hb = before.register_forward_hook(lambda _m, _i, o: outs.__setitem__("A", o.detach()))
    model(x)
    hb.remove()
    ha = dict(fixed.named_modules())[layer].register_forward_hook(lambda _m, _i, o: outs.__setitem__("A2", o.detach()))
    fixed(x)
    ha.remove()
    h = m.cav_.direction
    proj = pool(outs["A2"], pooling) @ h
    torch.testing.assert_close(proj, torch.full_like(proj, m.cav_.z_clean), rtol=0, atol=1e-4)
    # only the h component moved: the change is a multiple of h at every position
    delta = (outs["A2"] - outs["A"]).flatten(2) if outs["A"].dim() > 2 else (outs["A2"] - outs["A"])[..., None]
    resid = delta - (h[None, :, None] * torch.einsum("bcp,c->bp", delta, h)[:, None, :])
    assert float(resid.abs().max()) < 1e-4
    # removable: without the hook the copy is the original model again
    m.hook_.remove()
    torch.testing.assert_close(fixed(x), model(x))


def _erm_on_square(n=512, core=0.5):
    """A SmallCNN trained by ERM on :func:`_square_data` (with a faint ``core`` feature it
    leans on the square)."""
    torch.manual_seed(0)
    train, c = _square_data(n, core=core)
    model = SmallCNN(n_classes=2, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = train.tensors
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), train, c


def test_rrclarc_makes_the_output_insensitive_to_the_cav_and_leaves_the_input_model_alone():
    model, train, c = _erm_on_square()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rr = RRClArC(lam=100.0, optimizer="adam", lr=1e-2, epochs=5, batch_size=64, seed=0)
    fixed = rr.fit(model, train, concepts=c)
    assert rr.report_["closed_form"] and rr.report_["layer"] == "fc"
    h = rr.cav_.direction
    # |W h| per class: the head's sensitivity along the CAV (the closed-form penalty's target)
    with torch.no_grad():
        before = float((model.head.weight @ h).abs().max())
        after = float((fixed.head.weight @ h).abs().max())
    assert after < 0.2 * before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # the same run with lam=0 leaves the sensitivity where it was (within training noise)
    plain = RRClArC(lam=0.0, optimizer="adam", lr=1e-2, epochs=5, batch_size=64, seed=0).fit(model, train, concepts=c)
    with torch.no_grad():
        plain_after = float((plain.head.weight @ h).abs().max())
    assert plain_after > 0.5 * before
    # and only the layers after the CAV layer changed
    assert torch.equal(fixed.fc[0].weight, model.fc[0].weight) and torch.equal(fixed.conv[0].weight, model.conv[0].weight)


@pytest.mark.parametrize("target", ["all_logits_random", "target", "logprobs"])
def test_rrclarc_autograd_path_matches_the_closed_form_run(target):
    torch.manual_seed(0)
    train, c = _square_data(128)
    model = SmallCNN(n_classes=2, in_channels=1).eval()
    kw = dict(lam=10.0, target=target, optimizer="adam", lr=1e-2, epochs=2, batch_size=32, seed=3)
    a = RRClArC(closed_form="auto", **kw)
    b = RRClArC(closed_form=False, **kw)
    ma, mb = a.fit(model, train, concepts=c), b.fit(model, train, concepts=c)
    assert a.report_["closed_form"] and not b.report_["closed_form"]
    torch.testing.assert_close(ma.head.weight, mb.head.weight, rtol=1e-3, atol=1e-5)


def test_aclarc_trains_and_leaves_no_hook():
    torch.manual_seed(0)
    train, c = _square_data(128)
    model = SmallCNN(n_classes=2, in_channels=1).eval()
    m = AClArC(optimizer="adam", lr=1e-2, epochs=2, batch_size=32)
    fixed = m.fit(model, train, concepts=c)
    assert not torch.equal(fixed.head.weight, model.head.weight)
    assert all(not mod._forward_hooks for mod in fixed.modules())
    assert len(m.report_["losses"]) == 2


@pytest.mark.parametrize("kw, call, match", [
    ({"layer": "nope"}, {}, "layer"),
    ({}, {"concepts": None}, "concepts"),
    ({}, {"concepts": np.zeros(3, bool)}, "concepts"),
    ({"cav": "pca"}, {}, "cav"),
    ({"pooling": "sum"}, {}, "pooling"),
    ({"target": "allrand"}, {}, "target"),
    ({"lam": -1.0}, {}, "lam"),
    ({"layer": "conv.4", "closed_form": True}, {}, "closed_form"),
    ({"layer": "head"}, {}, "layer"),
])
def test_bad_arguments_name_themselves(kw, call, match):
    train, c = _square_data(64)
    model = SmallCNN(n_classes=2, in_channels=1).eval()
    with pytest.raises(ValueError, match=match):
        RRClArC(epochs=1, **kw).fit(model, train, **{"concepts": c, **call})


def test_concepts_of_one_kind_only_are_refused():
    train, c = _square_data(64)
    model = SmallCNN(n_classes=2, in_channels=1).eval()
    with pytest.raises(ValueError, match="concepts: need at least 2"):
        PClArC().fit(model, train, concepts=np.zeros(64, bool))


def test_layer_activations_pool_in_order():
    torch.manual_seed(0)
    model = SmallCNN(n_classes=2, in_channels=1).eval()
    x = torch.rand(10, 1, 28, 28)
    a = layer_activations(model, "conv.4", [x[:4], x[4:]], pooling="mean")
    with torch.no_grad():
        ref = model.conv[:5](x).mean((2, 3))
    torch.testing.assert_close(a, ref)


def test_tcav_reads_the_head_along_the_cav():
    """At the embedding the derivative of logit c along h is exactly <W_c, h>: the
    quotient is 1 or 0 and the sensitivity |<W_c, h>|; RR-ClArC drives it to ~0."""
    from pydebias.concepts import tcav

    torch.manual_seed(0)
    train, c = _square_data(128)
    model = SmallCNN(n_classes=2, in_channels=1).eval()
    m = PClArC()
    m.fit(model, train, concepts=c)
    cav = m.cav_
    x = train.tensors[0][:40]
    for k in range(2):
        with torch.no_grad():
            expect = float(model.head.weight[k] @ cav.direction)
        t = tcav(model, cav, x, k)
        assert t["n"] == 40 and t["quotient"] == (1.0 if expect > 0 else 0.0)
        assert t["sensitivity"] == pytest.approx(abs(expect), rel=1e-5)
    with pytest.raises(ValueError, match="target"):
        tcav(model, cav, x, 5)


def test_study_figures_split_clean_attacked_and_groups():
    from pydebias.tools.clarc_study import figures

    class Lookup(nn.Module):  # predicts the first pixel's value as the class
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 2).float()

    x = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    y = torch.tensor([0, 1, 0, 0])
    concepts = np.array([0, 0, 1, 1])
    groups = np.array([0, 2, 1, 1])
    xa = torch.ones(4, 1)  # "attacked": every input says class 1
    f = figures(Lookup(), x, y, xa, concepts, groups)
    assert f == {"clean": 1.0, "attacked": 0.25, "worst_group": 0.5, "mean": 0.75}


class _GapNet(EncoderHead):
    """conv -> global average pool -> head without a bias: the pooled-layer case."""

    embedding_layer, pooled_layer = "pool", "conv"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 2, bias=False)  # the fold adds the bias the shift needs

    def embed(self, x):
        return self.pool(self.conv(x))


@pytest.mark.parametrize("layer, pooling", [("fc", "max"), ("fc", "mean"), ("conv", "mean")])
def test_pclarc_folds_into_the_head(layer, pooling):
    """At the embedding, or at a GAP'd layer with mean pooling, the hook is affine in the
    head's input: the folded model (no hook, one plain Linear) gives the same outputs."""
    torch.manual_seed(0)
    train, c = _square_data(128)
    model = (_GapNet() if layer == "conv" else SmallCNN(n_classes=2, in_channels=1)).eval()
    m = PClArC(layer=layer, pooling=pooling)
    hooked = m.fit(model, train, concepts=c)
    folded = m.fold()
    x = train.tensors[0][:16]
    with torch.no_grad():
        want, got = hooked(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not dict(folded.named_modules())[layer]._forward_hooks  # plain layers: nothing hooked
    assert dict(hooked.named_modules())[layer]._forward_hooks       # the fitted model keeps its hook
    with torch.no_grad():
        assert not torch.allclose(folded(x), model(x), atol=1e-3)  # and it is not the uncorrected model


def test_pclarc_fold_refuses_a_max_pooled_conv_map():
    train, c = _square_data(64)
    m = PClArC(layer="conv.4", pooling="max")
    m.fit(SmallCNN(n_classes=2, in_channels=1).eval(), train, concepts=c)
    with pytest.raises(ValueError, match="pooling='mean'"):
        m.fold()
    with pytest.raises(RuntimeError, match="fit"):
        PClArC().fold()


@pytest.mark.parametrize("lam_score", ["toggle", "groups"])
def test_rrclarc_lam_auto_picks_by_held_out_rows(lam_score):
    model, train, c = _erm_on_square(core=0.03)
    m = RRClArC(lam="auto", lams=(0.0, 100.0), lam_score=lam_score, optimizer="adam", lr=1e-2, epochs=5)
    fitted = m.fit(model, train, concepts=c)
    auto = m.report_["lam_auto"]
    cands = {r["lam"]: r for r in auto["candidates"]}
    assert set(cands) == {0.0, 100.0} and auto["n_held_out"] == pytest.approx(0.2 * 512, abs=4)
    # the pick is the candidate with the best score, ties to the smaller λ
    best = max(cands.values(), key=lambda r: (r["score"], -r["lam"]))
    assert auto["lam"] == best["lam"] == m.report_["lam"] and auto["lam_score"] == lam_score
    for r in cands.values():
        assert r["worst_stratum"] == min(r["per_stratum"].values()) and set(r["per_stratum"]) <= {0, 1, 2, 3}
        assert r["score"] == (min(r["as_is"], r["toggled"]) if lam_score == "toggle" else r["worst_stratum"])
    # toggling the square in latent space costs the unpenalised fit (it reads the square)
    # more than the penalised one
    drop = {lam: r["as_is"] - r["toggled"] for lam, r in cands.items()}
    assert drop[0.0] > 0.1 and drop[100.0] < drop[0.0] / 2
    # the returned model is the refit on all of train with that λ
    again = RRClArC(lam=auto["lam"], optimizer="adam", lr=1e-2, epochs=5).fit(model, train, concepts=c)
    x = train.tensors[0][:32]
    torch.testing.assert_close(fitted(x), again(x))
    with pytest.raises(ValueError, match="concepts"):
        RRClArC(lam="auto").fit(model, train)
    with pytest.raises(ValueError, match="holdout"):
        RRClArC(lam="auto", holdout=1.0).fit(model, train, concepts=c)
    with pytest.raises(ValueError, match="lams"):
        RRClArC(lam="auto", lams=()).fit(model, train, concepts=c)
    with pytest.raises(ValueError, match="lam_score"):
        RRClArC(lam="auto", lam_score="best").fit(model, train, concepts=c)


def test_study_table_shows_the_cav_cosine_and_the_picked_lams():
    from pydebias.tools.clarc_study import clarc_markdown

    def fig(wg, **kw):
        return {"clean": 0.8, "attacked": 0.7, "worst_group": wg, "mean": 0.8, "seconds": 1.0, **kw}

    rows = [{"benchmark": "fashion-square", "backbone": "cnn", "seed": s, "ERM": fig(0.1),
             "RR-ClArC, lam=auto": fig(0.4 + s / 10, cav_cosine=1.0, lam_auto={"lam": lam}),
             "RR-ClArC, cav=svm": fig(0.2, cav_cosine=0.25)} for s, lam in ((0, 1000.0), (1, 10.0))]
    md = clarc_markdown(rows, [0, 1])
    assert "| CAV cos |" in md
    assert "| fashion-square | cnn | RR-ClArC, lam=auto (picked λ = 1000 / 10) | 80.0 | 70.0 | 45.0 (40–50) |" in md
    assert "| fashion-square | cnn | RR-ClArC, cav=svm | 80.0 | 70.0 | 20.0 (20–20) | – | – | 0.25 | 1 |" in md
    assert "| fashion-square | cnn | ERM | 80.0 | 70.0 | 10.0 (10–10) | – | – | – | 1 |" in md
    # one seed: no range; a background concept: no clean or attacked figure
    bg = [{"benchmark": "fashion-on-photos-strong", "backbone": "effnet", "seed": 0,
           "ERM": {**fig(0.6), "clean": None, "attacked": None}}]
    assert "| fashion-on-photos-strong | effnet | ERM | – | – | 60.0 | – | – | – | 1 |" in clarc_markdown(bg, [0])


def test_study_takes_the_background_as_the_concept_where_there_is_no_artifact():
    """fashion-on-photos-strong has no artifact flags: the concept is the photo behind the
    object (groups = 2*y + a), and with nothing to paste only worst-group figures remain."""
    from pydebias.data import EmbeddingSet
    from pydebias.tools.clarc_study import CLARC_CASES, concept_labels, figures

    y, a = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])
    s = EmbeddingSet(np.zeros((5, 2), np.float32), y, groups=2 * y + a, n_classes=2, n_groups=4)
    np.testing.assert_array_equal(concept_labels(s), a)
    flagged = EmbeddingSet(np.zeros((5, 2), np.float32), y, groups=2 * y + a, concepts=1 - a)
    np.testing.assert_array_equal(concept_labels(flagged), 1 - a)  # artifact flags win
    assert ("fashion-on-photos-strong", "EfficientNet-Lite0 (ImageNet)", {}, 1) in CLARC_CASES

    class First(nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 2).float()

    x, yt = torch.tensor([[0.0], [1.0], [1.0], [0.0]]), torch.tensor([0, 1, 0, 0])
    f = figures(First(), x, yt, None, np.array([0, 0, 1, 1]), np.array([0, 3, 1, 1]))
    assert f == {"clean": None, "attacked": None, "worst_group": 0.5, "mean": 0.75}
