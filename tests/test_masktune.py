"""MaskTune: XGradCAM against hand-derived maps, the mu + 2 sigma threshold, the
selective-classification rule, and the method end to end on a planted square."""
import numpy as np
import pytest
import torch
from torch import nn

from pydebias.methods import MaskTune
from pydebias.metrics import ensemble_confidence, selective_curve, selective_thresholds
from pydebias.models import EfficientNetLite0, SmallCNN
from pydebias.saliency import (apply_mask, default_saliency_layer, gradient_x_input, grow_mask, saliency_mask,
                               saliency_threshold, xgradcam)
from test_clarc import _square_data


class _GapNet(nn.Module):
    """1x1 conv to two channels (weights 1 and 2), ReLU, global average pool, linear."""

    def __init__(self, w):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.head.weight.copy_(torch.tensor(w))

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def test_xgradcam_hand_derived_gap():
    # A = (x, 2x) for x > 0; logits = W mean(A); class 1 wins (W row 0 sums to a negative):
    # dy_1/dA_k = W[1, k] / HW, so alpha_k = W[1, k] / 4 and cam = ReLU(0.125 x + 0.0625 * 2x) = x / 4,
    # min-max scaled: (x - min) / (max - min)
    net = _GapNet([[1.0, -1.0], [0.5, 0.25]])
    x = torch.tensor([[[[0.2, 0.6], [1.0, 0.4]]]])
    cam, logits = xgradcam(net, x, "act", return_logits=True)
    assert int(logits.argmax(1)) == 1
    expect = (x[0, 0] - 0.2) / 0.8
    torch.testing.assert_close(cam[0], expect, atol=1e-6, rtol=0)


def test_xgradcam_matches_per_position_formula():
    """A flatten head (the gradient differs per position): XGradCAM against the formula
    evaluated with loops, one image at a time, for a batch of images."""
    torch.manual_seed(0)
    conv, head = nn.Conv2d(1, 3, 3, padding=1), nn.Linear(3 * 5 * 5, 4)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head).eval()
    x = torch.randn(6, 1, 5, 5)
    cam = xgradcam(net, x, "1", size=(5, 5))
    for b in range(6):
        a = torch.relu(conv(x[b:b + 1]))[0].detach().numpy()
        c = int(net(x[b:b + 1]).argmax())
        w = head.weight[c].detach().view(3, 5, 5).numpy()  # dy_c / dA_k^ij
        m = np.zeros((5, 5))
        for k in range(3):
            alpha = sum(a[k, i, j] / (a[k].sum() + 1e-7) * w[k, i, j] for i in range(5) for j in range(5))
            m += alpha * a[k]
        m = np.maximum(m, 0)
        m = (m - m.min()) / (m.max() - m.min() + 1e-7)
        np.testing.assert_allclose(cam[b].numpy(), m, atol=1e-5)


def test_xgradcam_batched_equals_one_by_one_and_resizes():
    model = SmallCNN(2, in_channels=1).eval()
    x = torch.rand(5, 1, 28, 28)
    batch = xgradcam(model, x)
    one = torch.cat([xgradcam(model, x[i:i + 1]) for i in range(5)])
    assert batch.shape == (5, 28, 28)
    torch.testing.assert_close(batch, one, atol=1e-5, rtol=0)
    assert float(batch.min()) >= 0 and float(batch.max()) <= 1 + 1e-6
    model.train()
    xgradcam(model, x)
    assert model.training  # mode restored


def test_default_saliency_layer():
    assert default_saliency_layer(SmallCNN(2)) == "conv.4"           # the ReLU after the last conv
    assert default_saliency_layer(EfficientNetLite0(2)) == "top.2"   # the top conv block's ReLU6
    with pytest.raises(ValueError, match="layer: .*no nn.Conv2d"):
        default_saliency_layer(nn.Sequential(nn.Linear(3, 2)))


def test_threshold_on_constructed_heatmap():
    # values above zero: nine 1s and one 10: mean 1.9, population std 2.7 -> threshold 7.3
    m = torch.zeros(1, 4, 5)
    m.view(-1)[:9] = 1.0
    m.view(-1)[9] = 10.0
    torch.testing.assert_close(saliency_threshold(m), torch.tensor([7.3]), atol=1e-6, rtol=0)
    mask = saliency_mask(m)
    assert mask.sum() == 1 and bool(mask.view(-1)[9])
    # other multiples of sigma: mean + 1 std = 4.6; infinitely many: nothing masked (the control)
    torch.testing.assert_close(saliency_threshold(m, 1.0), torch.tensor([4.6]), atol=1e-6, rtol=0)
    assert int(saliency_mask(m, 1.0).sum()) == 1 and not saliency_mask(m, float("inf")).any()
    # zeros do not enter; a map without positive values masks nothing
    assert not saliency_mask(torch.zeros(2, 3, 3)).any()
    # per image: the second map's threshold does not depend on the first
    two = torch.stack([m[0], 3 * m[0]])
    torch.testing.assert_close(saliency_threshold(two), torch.tensor([7.3, 21.9]), atol=1e-5, rtol=0)


def test_grow_and_apply_mask():
    m = torch.zeros(1, 7, 7, dtype=torch.bool)
    m[0, 0, 0] = m[0, 4, 4] = True
    g = grow_mask(m, 2)
    expect = torch.zeros(7, 7, dtype=torch.bool)
    expect[:3, :3] = True
    expect[2:7, 2:7] = True
    assert torch.equal(g[0], expect)
    assert torch.equal(grow_mask(m, 0), m)
    x = torch.ones(1, 3, 7, 7)
    out = apply_mask(x, g, fill=[-1.0, -2.0, -3.0])
    assert torch.equal(out[0, :, 0, 0], torch.tensor([-1.0, -2.0, -3.0])) and float(out[0, 0, 6, 0]) == 1.0
    assert float(x.sum()) == 3 * 49  # a copy


def test_selective_threshold_by_hand():
    conf = np.linspace(1.0, 0.05, 20)  # already sorted, highest first
    cov = (0.8, 0.85, 0.9, 0.95, 1.0)
    thr = selective_thresholds(conf[::-1].copy(), cov)  # order of the input does not matter
    np.testing.assert_allclose(thr, [conf[15], conf[16], conf[17], conf[18], conf[19]])
    ok = np.ones(20, dtype=bool)
    ok[-3:] = False  # the three least confident are wrong
    cur = selective_curve(conf, ok, thr, cov)
    assert [c["accepted"] for c in cur] == [0.8, 0.85, 0.9, 0.95, 1.0]
    assert [c["error"] for c in cur] == [0.0, 0.0, pytest.approx(1 / 18), pytest.approx(2 / 19), pytest.approx(0.15)]
    with pytest.raises(ValueError, match="coverages"):
        selective_thresholds(conf, (0.0, 0.5))
    with pytest.raises(ValueError, match="correct"):
        selective_curve(conf, ok[:3], thr, cov)


def test_ensemble_confidence_formula():
    za, zb = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    pa, pb = np.exp([2.0, 0.0, -1.0]), np.exp([0.0, 1.0, 0.0])
    q = (pa / pa.sum()) * (pb / pb.sum())
    p = np.exp(q) / np.exp(q).sum()
    conf, pred = ensemble_confidence(za, zb)
    assert float(conf) == pytest.approx(p.max()) and int(pred) == int(p.argmax())


def test_gradient_x_input_on_a_linear_model():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 3.0]]))
    x = torch.tensor([[1.0, 1.0, 2.0, 0.1]])  # logits (0, 0.3): class 1 -> |x * w_1| = (0, 0, 0, 0.3)
    sal = gradient_x_input(lin, x)
    torch.testing.assert_close(sal, torch.tensor([[0.0, 0.0, 0.0, 1.0]]), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def shortcut_cnn():
    """A SmallCNN trained on the square data: it leans on the square."""
    train, c = _square_data(512, seed=1)
    torch.manual_seed(0)
    model = SmallCNN(2, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = train.tensors
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), train, c


def test_masktune_masks_the_square_and_fine_tunes(shortcut_cnn):
    model, train, c = shortcut_cnn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    val, _ = _square_data(200, seed=2)
    mt = MaskTune(dilate=3, seed=3)
    tuned = mt.fit(model, train, val)
    for k, v in model.state_dict().items():  # the model given is untouched
        assert torch.equal(v, before[k])
    assert tuned is mt.model_ and tuned is not model
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    on = torch.from_numpy(c)
    square = mt.masks_[on][:, :4, :4].flatten(1)
    assert float(square.all(1).float().mean()) > 0.8  # the square is masked whole on most square images
    assert float(mt.masks_[~on][:, :4, :4].float().mean()) < 0.05  # and rarely there on the others
    paper = MaskTune(dilate=0).masks(model, train.tensors[0])  # the paper's rule: a part of it, inside the grown mask
    assert 0.1 < float(paper[on][:, :4, :4].float().mean()) < float(square.float().mean())
    assert not (paper & ~mt.masks_).any()
    control = MaskTune(sigmas=float("inf"), seed=3)  # the same fine-tuning on unmasked images
    control.fit(model, train)
    assert not control.masks_.any() and control.report_["masked_fraction_mean"] == 0.0
    np.testing.assert_allclose(mt.report_["masked_fraction"], mt.masks_.flatten(1).float().mean(1).numpy())
    assert mt.report_["layer"] == "conv.4" and len(mt.report_["losses"]) == 1
    # on val, each coverage accepts that share of the rows
    assert [round(r["accepted"], 3) for r in mt.report_["selective_val"]] == [0.8, 0.85, 0.9, 0.95, 1.0]
    assert len(mt.selective_curve(val)) == 5
    # same seed, same model
    again = MaskTune(dilate=3, seed=3).fit(model, train)
    for k, v in tuned.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_masktune_frozen_iterations_rows(shortcut_cnn):
    model, train, _ = shortcut_cnn
    mt = MaskTune(frozen=("conv",), iterations=2, accumulative=True, seed=0)
    tuned = mt.fit(model, train)
    assert torch.equal(tuned.conv[0].weight, model.conv[0].weight)
    assert not torch.equal(tuned.fc[0].weight, model.fc[0].weight)
    assert [l["iteration"] for l in mt.report_["losses"]] == [0, 1]
    # rows (not images): gradient x input per feature; the label's feature is the salient one
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(mlp(x), y).backward()
        opt.step()
    on_rows = MaskTune(batch_size=64)
    assert isinstance(on_rows.fit(mlp, torch.utils.data.TensorDataset(x, y)), nn.Sequential)
    assert on_rows.masks_.shape == (300, 40) and on_rows.report_["saliency"] == "gradient_x_input"
    assert float(on_rows.masks_[:, 0].float().mean()) > 0.5 > 0.1 > float(on_rows.masks_[:, 1:].float().mean())


def test_masktune_bad_input(shortcut_cnn):
    model, train, _ = shortcut_cnn
    with pytest.raises(ValueError, match="dilate"):
        MaskTune(dilate=-1).fit(model, train)
    with pytest.raises(ValueError, match="sigmas"):
        MaskTune(sigmas=float("nan")).fit(model, train)
    with pytest.raises(ValueError, match=r"fill: expected .* one per channel of the images \(1\)"):
        MaskTune(fill=[0.0, 0.0, 0.0]).fit(model, train)
    with pytest.raises(TypeError, match="frozen"):
        MaskTune(frozen="conv").fit(model, train)
    with pytest.raises(ValueError, match="layer"):
        MaskTune(layer="nope").fit(model, train)
    with pytest.raises(ValueError, match="coverages"):
        MaskTune(coverages=(1.5,)).fit(model, train)
    with pytest.raises(ValueError, match="train"):
        MaskTune().fit(model, torch.utils.data.TensorDataset(torch.zeros(4, 28, 28), torch.zeros(4).long()))
    bad = train.tensors[0].clone()
    bad[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="train: the inputs contain NaN"):
        MaskTune().fit(model, torch.utils.data.TensorDataset(bad, train.tensors[1]))
    with pytest.raises(RuntimeError, match="val"):
        MaskTune().selective_curve(train)
    with pytest.raises(TypeError, match="model"):
        MaskTune().fit("not a model", train)


def _study_row(name, wg, square=False):
    from pydebias.metrics import COVERAGES
    from pydebias.tools.masktune_study import CASE_METHODS, MASKTUNE_METHODS, PAPER

    sel = [{"coverage": c, "threshold": 0.5, "accepted": c, "error": 0.1 * c} for c in COVERAGES]
    row = {"benchmark": name, "backbone": "CNN", "seed": 0,
           "ERM": {"worst_group": wg, "mean": 0.8, "selective": sel}}
    for label, _, _ in MASKTUNE_METHODS + CASE_METHODS.get(name, ()):
        row[label] = {"worst_group": wg + 0.1, "mean": 0.85, "selective": sel, "masked_fraction": 0.05,
                      "seconds": 2.0, **({"square_covered": 0.9, "square_fully_covered": 0.8} if square else {})}
    img = torch.rand(2, 1, 8, 8)
    row["_examples"] = {"images": img, "saliency": torch.rand(2, 8, 8),
                        "masks": {PAPER: torch.rand(2, 8, 8) > 0.8, "MaskTune": torch.rand(2, 8, 8) > 0.5}}
    return row


def test_masktune_study_tables_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    from pydebias.tools.masktune_study import masktune_figures, masktune_markdown

    rows = [_study_row("fashion-square", 0.3, square=True),
            {**_study_row("fashion-square", 0.5, square=True), "seed": 1},
            _study_row("colored-fashion", 0.2), {"benchmark": "fashion-on-photos", "backbone": "x", "skipped": "no"}]
    md = masktune_markdown(rows, [0, 1])
    line = next(l for l in md.splitlines() if l.startswith("| fashion-square | CNN | ERM |"))
    assert "40.0 (30.0–50.0)" in line and "80.0" in line  # mean (range) over the two seeds
    assert "| colored-fashion | CNN | MaskTune, dilate=0, layer=conv.1" not in md  # a fashion-square-only entry
    assert "| fashion-square | CNN | MaskTune, dilate=0, layer=conv.1 (28 x 28) |" in md
    assert "fashion-on-photos" not in md.split("\n\n", 1)[1]  # skipped: no line
    paths = masktune_figures(rows, str(tmp_path))
    assert {p.rsplit("/", 1)[1] for p in paths} == {"masktune_coverage.png", "masktune_masks_fashion-square.png",
                                                    "masktune_masks_colored-fashion.png"}
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in paths)


def test_masktune_study_runs_both_pretrained_image_builtins_alike():
    from pydebias.tools import masktune_study as ms
    from pydebias.tools.report import PRETRAINED_IMAGE_BENCHMARKS

    assert {c[0] for c in ms.MASKTUNE_CASES} >= set(PRETRAINED_IMAGE_BENCHMARKS)
    d = {"info": {"params": {"finetune_from": 11, "batch_size": 64}}}
    for name in PRETRAINED_IMAGE_BENCHMARKS:  # fine-tune only the blocks ERM trained, no sweep
        kw = ms._case_params(name, d)
        assert kw["frozen"] == ["stem"] + [f"blocks.{i}" for i in range(11)] and kw["batch_size"] == 64
        assert name in ms.NO_SWEEP and name in ms.CASE_METHODS
    assert ms._case_params("colored-fashion", d) == {}
    # a case-only entry that several cases share is one line per case, not one per case that has it
    rows = [{**_study_row(name, 0.6), "backbone": "EN"} for name in PRETRAINED_IMAGE_BENCHMARKS]
    md = ms.masktune_markdown(rows, [0])
    for name in PRETRAINED_IMAGE_BENCHMARKS:
        assert md.count(f"| {name} | EN | MaskTune, layer=blocks.10 (4 x 4) |") == 1
