"""MaskTune's masking (XGradCAM of the predicted class, the mu + 2 sigma threshold, the
masked copy) as a ratio to one training step's forward + backward pass of the same batch,
measured in one run, on the two backbones the built-ins use."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from .timing import median_time


def bench_masking(repeat: int = 5, seed: int = 0, quick: bool = False) -> List[Dict]:
    """Images/s of ``MaskTune.masks`` + ``apply_mask`` and of a forward + cross-entropy
    backward (every parameter's gradient, what a training step costs) on the same batch;
    random weights and images (speed does not depend on them)."""
    from ..methods import MaskTune
    from ..models import SmallCNN
    from ..models.efficientnet import EfficientNetLite0
    from ..saliency import apply_mask

    torch.manual_seed(seed)
    cases = [("SmallCNN, 28 x 28", SmallCNN(2, in_channels=1), (256, 1, 28, 28))]
    if not quick:
        cases.append(("EfficientNet-Lite0, 64 x 64", EfficientNetLite0(2), (64, 3, 64, 64)))
    rows = []
    for name, model, shape in cases:
        model.eval()
        x = torch.rand(*shape)
        y = torch.randint(0, 2, (shape[0],))
        mt = MaskTune(batch_size=shape[0])

        def step():
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()

        def mask():
            return apply_mask(x, mt.masks(model, x))

        t_step = median_time(step, repeat)
        t_mask = median_time(mask, repeat)
        for impl, t, bar in (("forward + backward (training step)", t_step, ""),
                             ("MaskTune masks + masked copy", t_mask, " (bar <= 1.5x)")):
            rows.append({"kernel": "MaskTune masking", "impl": f"{impl}, {name}", "n": shape[0], "seconds": t,
                         "images_per_s": shape[0] / t, "x_forward_backward": t / t_step,
                         "bar": f"{t / t_step:.2f}x a forward + backward{bar}"})
    return rows
