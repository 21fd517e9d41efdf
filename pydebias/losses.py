"""Losses and per-sample scores for model-level debiasing (BLADE's pieces,
:class:`pydebias.methods.BLADE`).

- :func:`gce_loss`: generalized cross-entropy (Zhang & Sabuncu, 2018),
  ``(1 - p_y^q) / q``: its gradient is cross-entropy's weighted by ``p_y^q``, so easy
  (shortcut-aligned) samples dominate and a model trained with it amplifies the bias.
- :func:`self_influence`: per-sample ``||d loss / d theta||^2`` (TracIn's self-influence),
  vectorised with ``torch.func`` (no per-sample loop).
- :func:`contrastive_alignment_loss`: InfoNCE with one positive per anchor (its
  bias-translated counterpart) and, as negatives, the other samples of its bias domain.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["gce_loss", "self_influence", "contrastive_alignment_loss"]


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7, reduction: str = "mean") -> torch.Tensor:
    """Generalized cross-entropy ``(1 - p_y^q) / q`` of (B, K) logits; ``q`` in (0, 1]
    (q -> 0 gives cross-entropy, q = 1 the mean absolute error of p_y)."""
    if not 0.0 < float(q) <= 1.0:
        raise ValueError(f"q: expected a number in (0, 1], got {q!r}")
    logp = torch.log_softmax(logits, 1).gather(1, labels.long()[:, None])[:, 0]
    loss = -torch.expm1(q * logp) / q  # 1 - p_y^q = -expm1(q log p_y): exact for small q and tiny p_y
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


def self_influence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Optional[Sequence[str]] = None,
                   loss=nn.functional.cross_entropy, batch_size: int = 256) -> torch.Tensor:
    """(N,) squared norm of each sample's loss gradient over ``params`` (parameter names;
    default all that require a gradient), in eval mode, ``batch_size`` samples per
    vectorised call. High self-influence marks samples the model finds hard to fit
    (bias-conflicting ones, for a biased model)."""
    from torch.func import functional_call, grad, vmap

    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    missing = [n for n in names if n not in named]
    if missing or not names:
        raise ValueError(f"params: expected names of {type(model).__name__}'s parameters, got "
                         f"{missing or 'none'}; they are {list(named)[:8]}...")
    chosen = {n: named[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in named.items() if n not in chosen}
    buffers = dict(model.named_buffers())

    def one(p, xi, yi):
        out = functional_call(model, ({**fixed, **p}, buffers), (xi[None],))
        return loss(out, yi[None])

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))
    was = model.training
    model.eval()
    try:
        scores = []
        for s in range(0, len(x), batch_size):
            g = per_sample(chosen, x[s:s + batch_size], y[s:s + batch_size].long())
            scores.append(sum(v.flatten(1).square().sum(1) for v in g.values()))
    finally:
        model.train(was)
    return torch.cat(scores)


def contrastive_alignment_loss(features: torch.Tensor, translated: torch.Tensor, domains: torch.Tensor,
                               temperature: float = 0.1) -> torch.Tensor:
    """Mean over anchors i of ``-log(e^{s(i, t_i)} / (e^{s(i, t_i)} + sum_{j != i, b_j = b_i}
    e^{s(i, j)}))``, ``s`` the cosine similarity over ``temperature``: each sample is
    pulled towards its bias-translated counterpart ``translated[i]`` and pushed from the
    other samples of its bias domain ``domains[i]`` (B,)."""
    if features.shape != translated.shape or features.dim() != 2:
        raise ValueError(f"translated: expected the shape of features (B, D) {tuple(features.shape)}, got "
                         f"{tuple(translated.shape)}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    f = nn.functional.normalize(features, dim=1)
    t = nn.functional.normalize(translated, dim=1)
    pos = (f * t).sum(1) / temperature                                   # (B,)
    sim = f @ f.t() / temperature                                        # (B, B)
    same = (domains[:, None] == domains[None, :]) & ~torch.eye(len(f), dtype=torch.bool, device=f.device)
    neg = torch.where(same, sim, torch.full_like(sim, float("-inf")))
    # log(e^pos + sum_neg e^sim) with one logsumexp over [pos, negatives]
    denom = torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1)
    return (denom - pos).mean()
