"""Saliency maps and the masks MaskTune makes from them, batched (one forward and one
backward per batch, no per-sample loop).

- :func:`xgradcam`: XGradCAM (Fu et al., 2020) of the *predicted* class at a conv layer:
  ``alpha_k = sum_ij (A_k^ij / (sum_ij A_k^ij + 1e-7)) dy_c/dA_k^ij``, map
  ``ReLU(sum_k alpha_k A_k)``, min-max scaled per image, resized bilinearly to the input.
- :func:`gradient_x_input`: ``|x * dy_c/dx|`` per input feature, for inputs that are not
  images (our extension; MaskTune's paper masks images only).
- :func:`saliency_threshold` / :func:`saliency_mask`: MaskTune's rule, ``mu + 2 sigma``
  of each map's values above zero; entries above it are masked (``sigmas=inf``: none).
- :func:`grow_mask`: masks grown by a few pixels (our extension: the upsampled map of a
  coarse layer blurs a small salient object's edges below the threshold).
- :func:`default_saliency_layer`: the last conv block of a model.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .models.protocol import find_layer

__all__ = ["xgradcam", "gradient_x_input", "saliency_threshold", "saliency_mask", "grow_mask", "apply_mask",
           "default_saliency_layer", "minmax"]

_AFTER_CONV = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish)


def default_saliency_layer(model: nn.Module) -> str:
    """The last ``nn.Conv2d`` and the normalisation / activation modules registered right
    after it: the name of the last of them (the conv block's output, where Grad-CAM
    variants read their maps)."""
    named = [(n, m) for n, m in model.named_modules() if n]
    convs = [i for i, (_, m) in enumerate(named) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"layer: {type(model).__name__} has no nn.Conv2d; name the layer to take saliency "
                         "from, or use gradient_x_input for inputs that are not images")
    i = convs[-1]
    while i + 1 < len(named) and isinstance(named[i + 1][1], _AFTER_CONV):
        i += 1
    return named[i][0]


def _predicted_class_grad(model: nn.Module, x: torch.Tensor, wrt: Optional[nn.Module], target=None):
    """One forward and one backward in eval mode (the model's mode is restored):
    (activation of ``wrt`` or ``x``, its gradient of the chosen logit, the logits).
    ``target``: (B,) classes, default the predicted ones."""
    store = {}

    def grab(_m, _i, out):
        store["a"] = out
        return None

    handle = wrt.register_forward_hook(grab) if wrt is not None else None
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            xin = x.detach().requires_grad_(wrt is None)
            logits = model(xin)
            a = store["a"] if wrt is not None else xin
            cls = logits.detach().argmax(1) if target is None else torch.as_tensor(target).long()
            # samples are independent in eval mode, so the batch sum's gradient is each
            # sample's own: one backward for the whole batch
            g, = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), a)
    finally:
        model.train(was)
        if handle is not None:
            handle.remove()
    return a.detach(), g, logits.detach()


def minmax(m: torch.Tensor) -> torch.Tensor:
    """Each sample of ``m`` (B, ...) scaled to [0, 1] by its own minimum and maximum."""
    flat = m.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo + 1e-7)).view_as(m)


def xgradcam(model: nn.Module, x: torch.Tensor, layer: Optional[str] = None, target=None,
             size: Optional[Tuple[int, int]] = None, return_logits: bool = False):
    """(B, H, W) XGradCAM maps in [0, 1] of ``model``'s predicted class (or ``target``) at
    ``layer`` (default :func:`default_saliency_layer`) for the images ``x`` (B, C, H, W),
    resized bilinearly to ``size`` (default the input's). ``model`` runs in eval mode and
    returns to its previous mode; nothing it holds changes. ``return_logits`` adds the
    logits (the forward pass is shared)."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"x: expected a (B, C, H, W) image tensor, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    layer = default_saliency_layer(model) if layer is None else layer
    a, g, logits = _predicted_class_grad(model, x, find_layer(model, layer), target)
    if a.dim() != 4:
        raise ValueError(f"layer: XGradCAM needs a (B, C, h, w) map; {layer!r} gives shape {tuple(a.shape)}")
    alpha = (a * g).sum((2, 3)) / (a.sum((2, 3)) + 1e-7)                # (B, C)
    cam = torch.relu(torch.einsum("bc,bchw->bhw", alpha, a))
    cam = nn.functional.interpolate(minmax(cam)[:, None], size=size or tuple(x.shape[-2:]), mode="bilinear",
                                    align_corners=False)[:, 0]
    return (cam, logits) if return_logits else cam


def gradient_x_input(model: nn.Module, x: torch.Tensor, target=None, return_logits: bool = False):
    """``|x * dy_c/dx|`` (same shape as ``x``) of the predicted class (or ``target``),
    min-max scaled per sample: saliency per input feature for rows that are not images
    (our extension of MaskTune)."""
    _, g, logits = _predicted_class_grad(model, x, None, target)
    sal = minmax((x.detach() * g).abs())
    return (sal, logits) if return_logits else sal


def saliency_threshold(maps: torch.Tensor, sigmas: float = 2.0) -> torch.Tensor:
    """(B,) MaskTune's threshold per map: ``mean + sigmas * std`` of its values above zero
    (population std; the paper's ``sigmas`` is 2; a map with no value above zero gets
    +inf: nothing is masked)."""
    flat = maps.flatten(1).double()
    pos = flat > 0
    n = pos.sum(1)
    mean = torch.where(pos, flat, 0).sum(1) / n.clamp_min(1)
    var = torch.where(pos, (flat - mean[:, None]).square(), 0).sum(1) / n.clamp_min(1)
    thr = mean + sigmas * var.sqrt() if sigmas != float("inf") else torch.full_like(mean, float("inf"))
    return torch.where(n > 0, thr, torch.full_like(thr, float("inf"))).to(maps.dtype)


def saliency_mask(maps: torch.Tensor, sigmas: float = 2.0) -> torch.Tensor:
    """Boolean masks, True where a map is above its :func:`saliency_threshold` (what
    MaskTune blanks)."""
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return maps > saliency_threshold(maps, sigmas).view(shape)


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """(B, H, W) boolean masks grown by ``pixels`` in every direction (a square
    dilation: a max-pool of side ``2 * pixels + 1``)."""
    if pixels <= 0:
        return mask
    grown = nn.functional.max_pool2d(mask[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)
    return grown[:, 0] > 0


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill=0.0) -> torch.Tensor:
    """A copy of ``x`` (B, C, H, W) with the pixels of ``mask`` (B, H, W) set to ``fill``
    (a number, or (C,) per channel: e.g. black after normalisation, ``-mean / std``);
    ``mask`` may also have ``x``'s shape (per feature)."""
    m = mask[:, None] if mask.dim() == x.dim() - 1 else mask
    f = torch.as_tensor(fill, dtype=x.dtype)
    if f.dim() == 1:
        f = f.view(1, -1, *([1] * (x.dim() - 2)))
    return torch.where(m, f, x)
