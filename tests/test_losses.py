"""Generalized cross-entropy, self-influence and the contrastive alignment loss against
their formulas, a per-sample loop and a hand computation."""
import math

import pytest
import torch
from torch import nn

from pydebias.losses import contrastive_alignment_loss, gce_loss, self_influence
from pydebias.models import SmallCNN


def test_gce_formula_limits_and_gradient():
    torch.manual_seed(0)
    z = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    p = torch.softmax(z, 1)[torch.arange(6), y]
    torch.testing.assert_close(gce_loss(z, y, 0.7, "none"), (1 - p ** 0.7) / 0.7)
    # q -> 0: cross-entropy; q = 1: 1 - p_y
    torch.testing.assert_close(gce_loss(z, y, 1e-6), nn.functional.cross_entropy(z, y), atol=1e-4, rtol=0)
    torch.testing.assert_close(gce_loss(z, y, 1.0, "none"), 1 - p)
    # its gradient is cross-entropy's weighted by p_y^q, per sample
    g_gce, = torch.autograd.grad(gce_loss(z, y, 0.7, "none").sum(), z)
    g_ce, = torch.autograd.grad(nn.functional.cross_entropy(z, y, reduction="none").sum(), z)
    torch.testing.assert_close(g_gce, g_ce * (p.detach() ** 0.7)[:, None])
    # a sample the model finds impossible (p_y ~ e^-200) stays finite
    far = torch.tensor([[200.0, 0.0]])
    assert math.isfinite(float(gce_loss(far, torch.tensor([1]))))
    with pytest.raises(ValueError, match="q"):
        gce_loss(z, y, 0.0)
    with pytest.raises(ValueError, match="reduction"):
        gce_loss(z, y, 0.7, "sum")


def test_self_influence_equals_a_per_sample_loop():
    torch.manual_seed(1)
    model = SmallCNN(3, in_channels=1).eval()
    x, y = torch.rand(7, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    for params in (None, ["head.weight", "head.bias"]):
        got = self_influence(model, x, y, params=params, batch_size=3)
        want = []
        for i in range(7):
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
            named = dict(model.named_parameters())
            want.append(sum(float(named[n].grad.square().sum()) for n in (params or list(named))))
        torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="params"):
        self_influence(model, x, y, params=["nope"])


def test_contrastive_alignment_by_hand():
    # three anchors in 2-d; domains 0, 0, 1: anchor 0's only negative is anchor 1, anchor 2 has none
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    b = torch.tensor([0, 0, 1])
    tau = 0.5
    c = 1 / math.sqrt(2)
    # cosines: anchor-positive (c, 1, -c); anchor 0 vs 1: 0; anchor 1 vs 0: 0
    l0 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + math.exp(0.0)))
    l1 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0.0)))
    l2 = 0.0  # no negative: the positive alone, -log 1
    got = contrastive_alignment_loss(f, t, b, temperature=tau)
    assert float(got) == pytest.approx((l0 + l1 + l2) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="translated"):
        contrastive_alignment_loss(f, t[:2], b)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_alignment_loss(f, t, b, temperature=0.0)
