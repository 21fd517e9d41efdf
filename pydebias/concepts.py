"""Concept activation vectors (CAVs): the direction of a layer's activations that goes
with a concept (an artifact such as a pasted square), learned from concept labels.

``layer_activations`` reads a layer's output through a forward hook (spatially pooled
for conv maps); ``fit_cav`` turns activations and concept labels into a unit direction.
The ``"signal"`` (pattern) CAV, ``cov(a, t) / var(t)``, is RR-ClArC's default: it
estimates the direction the concept *adds* to the activations, where a classifier's
weight vector (``"ridge"``, ``"logistic"``, ``"svm"``, ``"lasso"``) estimates the
direction that best *separates* it and can diverge from it under correlated noise.
Evidence: docs/methods.md, RR-ClArC.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable

import numpy as np
import torch
from torch import nn

from .models.protocol import find_layer

__all__ = ["CAV", "CAV_METHODS", "POOLINGS", "pool", "layer_activations", "fit_cav", "tcav"]

CAV_METHODS = ("signal", "ridge", "logistic", "svm", "lasso")
#: how a (N, C, H, W) map becomes one (N, C) vector: "max" (the authors' default for
#: CAVs and ClArC's projections), "mean" (what a following global average pool sees)
POOLINGS = ("max", "mean")


def pool(a: torch.Tensor, pooling: str = "max") -> torch.Tensor:
    """(N, C, ...) activations -> (N, C): ``pooling`` over every axis after the second
    (identity on (N, C))."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
    if a.dim() <= 2:
        return a
    flat = a.flatten(2)
    return flat.amax(2) if pooling == "max" else flat.mean(2)


@torch.no_grad()
def layer_activations(model: nn.Module, layer: str, batches: Iterable, pooling="max", return_outputs: bool = False):
    """(N, C) pooled outputs of ``model``'s ``layer`` for the inputs of ``batches`` (an
    iterable of input tensors or of ``(x, ...)`` tuples), in order, in one pass; ``model``
    runs in eval mode and is returned to its previous mode. ``pooling`` may be a tuple of
    :data:`POOLINGS` (one tensor each); ``return_outputs`` adds the model's outputs last."""
    module = find_layer(model, layer)
    poolings = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    acts, outs = [[] for _ in poolings], []

    def keep(_m, _inp, output):
        for got, how in zip(acts, poolings):
            got.append(pool(output.detach(), how).float())

    handle = module.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            outs.append(model(b[0] if isinstance(b, (tuple, list)) else b))
    finally:
        handle.remove()
        model.train(was_training)
    if not outs:
        raise ValueError("batches: no input batch was given")
    res = [torch.cat(a) for a in acts] + ([torch.cat(outs)] if return_outputs else [])
    return res[0] if len(res) == 1 else tuple(res)


@dataclass
class CAV:
    """A unit concept direction ``h`` of ``layer`` (under ``pooling``) and the mean
    projection ``<h, pooled a>`` of the samples with (``z_concept``) and without
    (``z_clean``) the concept: what P- and A-ClArC move activations to. ``effect``: what
    the concept adds to the projection (the regression slope of ``<h, a>`` on the concept
    label, within each ``within`` id when the CAV was fitted with one, so a class that
    carries the concept more often does not inflate it)."""

    direction: torch.Tensor
    layer: str
    pooling: str
    method: str
    z_clean: float
    z_concept: float
    n_concept: int
    n_clean: int
    effect: float = float("nan")

    def project(self, a: torch.Tensor) -> torch.Tensor:
        """``<h, pooled a>`` per sample."""
        return pool(a, self.pooling) @ self.direction.to(a.dtype)

    def cosine(self, other) -> float:
        """Cosine between this direction and ``other`` (a CAV or a vector)."""
        v = other.direction if isinstance(other, CAV) else torch.as_tensor(other, dtype=torch.float32)
        v = v.flatten().to(self.direction.dtype)
        if v.shape != self.direction.shape:
            raise ValueError(f"other: expected a vector of {self.direction.numel()} values, got {v.numel()}")
        return float(v @ self.direction / v.norm().clamp_min(1e-30))

    def summary(self) -> Dict:
        d = asdict(self)
        d.pop("direction")
        return d


def _balanced_sign_targets(t: torch.Tensor):
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    w = torch.where(t, 1.0 / n_pos, 1.0 / n_neg).double()
    return torch.where(t, 1.0, -1.0).double(), w / w.mean()


def _ridge(a: torch.Tensor, t: torch.Tensor, l2: float) -> torch.Tensor:
    """Class-balanced ridge regression of the +-1 concept labels, no intercept."""
    y, w = _balanced_sign_targets(t)
    a = a.double()
    gram = (a * w[:, None]).T @ a / len(a)
    return torch.linalg.solve(gram + l2 * torch.eye(a.shape[1], dtype=a.dtype), (a * w[:, None]).T @ y / len(a))


def _linear_classifier(a: torch.Tensor, t: torch.Tensor, l2: float, loss: str, iters: int = 200) -> torch.Tensor:
    """Class-balanced L2-penalised linear classifier without intercept (L-BFGS):
    ``"logistic"`` (log loss) or ``"svm"`` (squared hinge, smooth, as a linear SVM's
    default loss)."""
    y, w = _balanced_sign_targets(t)
    a = a.double()
    scale = a.std(0).clamp_min(1e-12)  # conditioning only; the direction is mapped back
    x = a / scale
    v = torch.zeros(a.shape[1], dtype=a.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([v], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        margin = y * (x @ v)
        per = nn.functional.softplus(-margin) if loss == "logistic" else nn.functional.relu(1 - margin).square()
        total = (w * per).mean() + l2 * (v * v).sum()
        total.backward()
        return total

    opt.step(closure)
    return v.detach() / scale


def _lasso(a: torch.Tensor, t: torch.Tensor, l1: float, iters: int = 2000, tol: float = 1e-10) -> torch.Tensor:
    """Class-balanced lasso of the +-1 concept labels, no intercept:
    ``min 1/(2N) sum_i w_i (y_i - <a_i, b>)^2 + l1 |b|_1`` by FISTA on the (C, C) Gram
    matrix (one pass over the rows, then C x C work per iteration)."""
    y, w = _balanced_sign_targets(t)
    a = a.double()
    gram = (a * w[:, None]).T @ a / len(a)
    rhs = (a * w[:, None]).T @ y / len(a)
    step = 1.0 / float(torch.linalg.eigvalsh(gram)[-1].clamp_min(1e-12))
    b = z = torch.zeros(a.shape[1], dtype=a.dtype)
    k = 1.0
    for _ in range(iters):
        g = z - step * (gram @ z - rhs)
        new = g.sign() * (g.abs() - step * l1).clamp_min(0)  # soft threshold: the L1 prox
        k_new = (1 + (1 + 4 * k * k) ** 0.5) / 2
        z = new + ((k - 1) / k_new) * (new - b)
        done = float((new - b).abs().max()) <= tol * max(1.0, float(new.abs().max()))
        b, k = new, k_new
        if done:
            break
    return b


def fit_cav(activations, concepts, method: str = "signal", l2: float = 1e-3, layer: str = "",
            pooling: str = "max", within=None, l1: float = 1e-3) -> CAV:
    """The unit CAV of ``activations`` (N, C) for boolean ``concepts`` (N,).

    ``"signal"``: ``w = cov(a, t) / var(t)`` (the pattern the concept adds; no
    regularisation); ``"ridge"`` / ``"logistic"`` / ``"svm"`` (squared hinge) /
    ``"lasso"``: the weight vector of a class-balanced linear model of the concept
    without intercept, penalty ``l2`` (``l1`` for the lasso). ``within`` (N,) ids,
    e.g. the class labels: ``a`` and ``t`` are centred within each id first, so that a
    concept that is more frequent in one class does not give that class's direction.
    ``layer`` and ``pooling`` are recorded on the result (how the activations were taken).
    """
    if method not in CAV_METHODS:
        raise ValueError(f"method: expected one of {CAV_METHODS}, got {method!r}")
    a = torch.as_tensor(np.asarray(activations) if not isinstance(activations, torch.Tensor) else activations)
    if a.dim() != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"activations: expected a non-empty (N, C) array, got shape {tuple(a.shape)}")
    a = a.double()
    if not torch.isfinite(a).all():
        raise ValueError("activations: contain NaN or inf; check the layer's outputs")
    t = torch.as_tensor(np.asarray(concepts))
    if t.shape != (a.shape[0],):
        raise ValueError(f"concepts: expected {a.shape[0]} labels (one per activation row), got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError("concepts: expected booleans or 0 / 1 values")
        t = t.bool()
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos < 2 or n_neg < 2:
        raise ValueError(f"concepts: need at least 2 samples with and 2 without the concept, got {n_pos} and "
                         f"{n_neg}; label more samples")
    tf = t.double()
    if within is None:
        ac, tc = a - a.mean(0), tf - tf.mean()
    else:
        ids = torch.as_tensor(np.asarray(within)).long()
        if ids.shape != t.shape or (ids < 0).any():
            raise ValueError(f"within: expected {len(t)} non-negative ids (e.g. class labels), got shape "
                             f"{tuple(ids.shape)}")
        n = torch.bincount(ids).double().clamp_min(1)
        ac = a - (torch.zeros(len(n), a.shape[1], dtype=a.dtype).index_add_(0, ids, a) / n[:, None])[ids]
        tc = tf - (torch.zeros(len(n), dtype=a.dtype).index_add_(0, ids, tf) / n)[ids]
        if float((tc * tc).sum()) == 0:
            raise ValueError("concepts: no id of `within` has samples both with and without the concept; "
                             "label some of both in one class")
    if method == "signal":
        w = (ac * tc[:, None]).sum(0) / (tc * tc).sum()
    else:
        x = ac if within is not None else a
        w = (_ridge(x, t, l2) if method == "ridge" else _lasso(x, t, l1) if method == "lasso"
             else _linear_classifier(x, t, l2, method))
    norm = w.norm()
    if not torch.isfinite(norm) or norm == 0:
        if method == "lasso":
            raise ValueError(f"l1: the lasso zeroed every weight at l1={l1}; lower l1")
        raise ValueError("activations: the concept does not change them (the CAV is zero); pick another layer")
    h = (w / norm).float()
    z = a.float() @ h
    effect = float((ac @ h.double() * tc).sum() / (tc * tc).sum())
    return CAV(direction=h, layer=layer, pooling=pooling, method=method, z_clean=float(z[~t].mean()),
               z_concept=float(z[t].mean()), n_concept=n_pos, n_clean=n_neg, effect=effect)


def tcav(model: nn.Module, cav: CAV, x: torch.Tensor, target: int, batch_size: int = 256) -> Dict[str, float]:
    """TCAV of class ``target`` along ``cav`` on inputs ``x``: the directional derivatives
    ``<mean_spatial d z_target / dA, h>`` at ``cav.layer``; ``quotient`` is the fraction
    that is positive (0.5: the concept does not push the class either way), ``sensitivity``
    their mean absolute value (0: the output does not move along h)."""
    module = find_layer(model, cav.layer)
    store = {}

    def grab(_m, _i, out):
        a = out.detach().requires_grad_(True)
        store["a"] = a
        return a

    handle = module.register_forward_hook(grab)
    was_training = model.training
    model.eval()
    derivs = []
    try:
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size])
            if not 0 <= int(target) < logits.shape[1]:
                raise ValueError(f"target: expected a class index in 0..{logits.shape[1] - 1}, got {target}")
            g, = torch.autograd.grad(logits[:, int(target)].sum(), store["a"])
            g = g.flatten(2).mean(2) if g.dim() > 2 else g
            derivs.append(g @ cav.direction.to(g.dtype))
    finally:
        handle.remove()
        model.train(was_training)
    d = torch.cat(derivs)
    return {"quotient": float((d > 0).double().mean()), "sensitivity": float(d.abs().mean()), "n": int(d.numel())}
