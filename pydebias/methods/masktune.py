"""MaskTune (Asgari, Khani et al., NeurIPS 2022): no supervision. Mask what the trained
model looks at (XGradCAM of the predicted class at the last conv block, ``mu + 2 sigma``
threshold), fine-tune the model for one epoch on the masked copies (they replace the
training set), so it has to find other features; optionally combine the original and
the fine-tuned model for selective classification.

Differences from the authors' code, all ours (docs/methods.md, MaskTune): the masks and
the fine-tune both start from the model given (the authors take masks from the best
validation checkpoint and fine-tune the last one); the optimiser starts fresh (theirs
continues ERM's state); modules named in ``frozen`` stay fixed in eval mode.
"""
from __future__ import annotations

import copy
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..metrics import COVERAGES, ensemble_confidence, selective_curve, selective_thresholds
from ..models.protocol import find_layer
from ..saliency import apply_mask, default_saliency_layer, gradient_x_input, grow_mask, saliency_mask, xgradcam
from ..validation import check_number
from .base import ModelMethod, dataset_tensors, model_outputs, train_epochs

__all__ = ["MaskTune"]


class MaskTune(ModelMethod):
    """MaskTune: ``fit(model, train, val=None)`` returns the fine-tuned model.

    ``layer``: the conv layer XGradCAM reads (default: the last conv block,
    :func:`pydebias.saliency.default_saliency_layer`); inputs that are not images (2-d
    rows) are masked by gradient x input per feature instead (our extension).
    ``dilate``: grow each image's mask by this many pixels (our extension; 0 is the
    paper's rule; the default, 3, is docs/methods.md's measured choice). ``sigmas``: the
    threshold is ``mean + sigmas * std`` of the map's positive values (the paper: 2;
    ``float("inf")`` masks nothing: the same fine-tuning without masks, a control).
    ``epochs``: fine-tuning epochs per iteration (the paper: 1); ``iterations``: mask
    and fine-tune again from the fine-tuned model (up to 3, as the authors' code), with
    ``accumulative`` masks (each iteration's mask joins the previous ones) or fresh ones.
    Optimiser ``"adam"`` or ``"sgd"`` (momentum 0.9), ``lr`` (use the one the model was
    trained with), ``batch_size``. ``fill``: the value masked pixels get (a number, or one
    per channel: black after normalisation is ``-mean / std``). ``frozen``: names of
    modules kept fixed, in eval mode (e.g. the bottom of a pretrained backbone that ERM
    did not train either). ``val``: sets the selective-classification thresholds
    (:data:`pydebias.metrics.COVERAGES`).

    Learned: ``model_``, ``erm_`` (a copy of the model given, for the ensemble),
    ``masks_`` (bool, per training image and pixel, or per row and feature),
    ``thresholds_`` (with ``val``), ``report_`` (layer, masked fraction per image,
    losses, seconds, the selective curve on ``val``).
    """

    def __init__(self, layer: Optional[str] = None, dilate: int = 3, sigmas: float = 2.0, epochs: int = 1,
                 iterations: int = 1,
                 accumulative: bool = False, optimizer: str = "adam", lr: float = 1e-3, batch_size: int = 128,
                 fill=0.0, frozen: Sequence[str] = (), coverages: Sequence[float] = COVERAGES, seed: int = 0):
        self.layer, self.dilate, self.sigmas = layer, dilate, sigmas
        self.epochs, self.iterations, self.accumulative = epochs, iterations, accumulative
        self.optimizer, self.lr, self.batch_size, self.fill = optimizer, lr, batch_size, fill
        self.frozen, self.coverages, self.seed = frozen, coverages, seed

    def _check(self):
        check_number(self.dilate, "dilate", 0, integer=True)
        check_number(self.sigmas, "sigmas", 0.0, finite=False)
        check_number(self.iterations, "iterations", 1, integer=True)
        self._check_fine_tuning()
        selective_thresholds([1.0], self.coverages)  # names `coverages` when they are bad

    # -- saliency and masks ------------------------------------------------------
    def saliency(self, model: nn.Module, x: torch.Tensor, batch_size: Optional[int] = None,
                 progress: bool = False) -> torch.Tensor:
        """Saliency of ``model``'s predicted class for every row of ``x``, batched: (N, H, W)
        XGradCAM maps for images, ``|x * grad|`` of ``x``'s shape for rows."""
        from tqdm import tqdm

        bs = int(batch_size or max(self.batch_size, 256))
        image = x.dim() == 4
        layer = (self.layer or default_saliency_layer(model)) if image else None
        out = []
        for s in tqdm(range(0, len(x), bs), desc="saliency", disable=not progress, leave=False):
            xb = x[s:s + bs]
            out.append(xgradcam(model, xb, layer) if image else gradient_x_input(model, xb))
        return torch.cat(out)

    def masks(self, model: nn.Module, x: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """What MaskTune blanks: True where the saliency is above ``mu + 2 sigma`` of the
        image's (row's) values above zero, grown by ``dilate`` pixels."""
        m = saliency_mask(self.saliency(model, x, progress=progress), float(self.sigmas))
        return grow_mask(m, int(self.dilate)) if m.dim() == 3 else m

    # -- fine-tuning -------------------------------------------------------------
    def _fine_tune(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, iteration: int,
                   progress: bool) -> List[Dict]:
        def loss_fn(m, batch):
            out = m(batch[0])
            return nn.functional.cross_entropy(out, batch[1]), out

        log = train_epochs(model, torch.utils.data.TensorDataset(x, y), loss_fn, self.epochs, self.optimizer,
                           self.lr, self.batch_size, self.frozen, self.seed + 1000 * iteration, progress,
                           "MaskTune", "cross_entropy")
        return [{"iteration": iteration, **e} for e in log]

    def fit(self, model: nn.Module, train, val=None, progress: bool = False) -> nn.Module:
        self._check()
        self._check_model(model)
        train = self._check_dataset(train)
        if val is not None:
            val = self._check_dataset(val, "val")
        x, y = dataset_tensors(train)
        if x.dim() not in (2, 4):
            raise ValueError(f"train: MaskTune masks images (N, C, H, W) or feature rows (N, D); got inputs of "
                             f"shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("train: the inputs contain NaN or infinite values; saliency maps of such inputs are "
                             "NaN and mask nothing. Clean or drop those rows first")
        fill = torch.as_tensor(self.fill, dtype=torch.float64)
        if fill.dim() > 1 or (fill.dim() == 1 and (x.dim() != 4 or fill.numel() != x.shape[1])) \
                or not torch.isfinite(fill).all():
            raise ValueError(f"fill: expected a finite number, or one per channel of the images "
                             f"({x.shape[1] if x.dim() == 4 else 'none: rows'}), got {self.fill!r}")
        if x.dim() == 4 and self.layer is not None:
            find_layer(model, self.layer)
        layer = (self.layer or default_saliency_layer(model)) if x.dim() == 4 else None
        erm = copy.deepcopy(model).eval()
        tuned = copy.deepcopy(model)
        masks, losses, sal_seconds = None, [], 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for it in range(self.iterations):
                t0 = time.perf_counter()
                new = self.masks(erm if it == 0 else tuned, x, progress)
                sal_seconds += time.perf_counter() - t0
                masks = new if masks is None or not self.accumulative else masks | new
                losses += self._fine_tune(tuned, apply_mask(x, masks, self.fill), y, it, progress)
        self.erm_, self.model_, self.masks_ = erm, tuned, masks
        frac = masks.flatten(1).float().mean(1).numpy()
        self.report_ = {"method": "MaskTune", "layer": layer,
                        "saliency": "xgradcam" if layer is not None else "gradient_x_input",
                        "masked_fraction": frac, "masked_fraction_mean": float(frac.mean()),
                        "losses": losses, "saliency_seconds": sal_seconds,
                        "n_trainable": sum(p.numel() for n, p in tuned.named_parameters()
                                           if not any(n.startswith(f + ".") for f in self.frozen))}
        if val is not None:
            xv, yv = dataset_tensors(val)
            conf, pred = self.confidence(xv)
            self.thresholds_ = selective_thresholds(conf.numpy(), self.coverages)
            self.report_["selective_val"] = selective_curve(conf.numpy(), (pred == yv).numpy(), self.thresholds_,
                                                            self.coverages)
        return tuned

    # -- selective classification ------------------------------------------------
    def confidence(self, x: torch.Tensor, batch_size: int = 512):
        """``(confidence, prediction)`` of the ERM and fine-tuned models combined,
        ``softmax(softmax(z_ERM) * softmax(z_MaskTune))`` (MaskTune's selective rule)."""
        if not hasattr(self, "model_"):
            raise RuntimeError("MaskTune: call fit(model, train, val) first")
        return ensemble_confidence(model_outputs(self.erm_, x, batch_size), model_outputs(self.model_, x, batch_size))

    def selective_curve(self, data) -> List[Dict]:
        """Error on the accepted rows of ``data`` (a dataset of ``(x, y)``) at each coverage
        of ``coverages``, with the thresholds set on ``val`` by ``fit``."""
        if not hasattr(self, "thresholds_"):
            raise RuntimeError("MaskTune: the thresholds come from val; call fit(model, train, val=...) first")
        x, y = dataset_tensors(self._check_dataset(data, "data"))
        conf, pred = self.confidence(x)
        return selective_curve(conf.numpy(), (pred == y).numpy(), self.thresholds_, self.coverages)
