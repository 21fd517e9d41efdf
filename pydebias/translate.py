"""Bias-domain translation (BLADE's generator): a small StarGAN-style conditional
translator ``G(x, d)`` that moves an input into bias domain ``d`` and keeps the rest.

Losses (StarGAN, Choi et al. 2018, written here from the paper's equations):
least-squares adversarial loss on a patch discriminator, domain classification by the
discriminator's second head (real inputs with their domains for D, translations with the
target domain for G), and cycle reconstruction ``|G(G(x, d'), d) - x|_1``.

Images (N, C, H, W) get convolutional networks (two stride-2 stages down, residual
blocks, two up); rows (N, D) get MLPs (our extension, for embedding inputs). The
generator predicts a residual (``x + delta``), so "change nothing" is the easy start and
only what differs between domains has to be learned.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .validation import check_number

__all__ = ["Translator", "fit_translator", "translate"]


def _down_stages(side: int) -> int:
    """Stride-2 stages for the generator: 2 (28 -> 7, 64 -> 16)."""
    return 2 if side >= 8 else 0


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.InstanceNorm2d(c, affine=True), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.InstanceNorm2d(c, affine=True))

    def forward(self, x):
        return x + self.body(x)


class Translator(nn.Module):
    """``G(x, target)``: ``x`` (N, C, H, W) or (N, D), ``target`` (N,) domain ids in
    ``[0, n_domains)``; returns ``x + delta(x, one_hot(target))``."""

    def __init__(self, shape: Tuple[int, ...], n_domains: int, width: int = 32, n_res: int = 2):
        super().__init__()
        self.shape, self.n_domains = tuple(int(s) for s in shape), int(n_domains)
        k = self.n_domains
        if len(self.shape) == 3:
            c, h, _ = self.shape
            layers = [nn.Conv2d(c + k, width, 5, padding=2), nn.InstanceNorm2d(width, affine=True), nn.ReLU()]
            w = width
            for _ in range(_down_stages(h)):
                # 28 -> 14 -> 7 and 64 -> 32 -> 16: odd sides are padded back by output_padding below
                layers += [nn.Conv2d(w, 2 * w, 4, 2, 1), nn.InstanceNorm2d(2 * w, affine=True), nn.ReLU()]
                w *= 2
            layers += [_ResBlock(w) for _ in range(n_res)]
            for _ in range(_down_stages(h)):
                layers += [nn.ConvTranspose2d(w, w // 2, 4, 2, 1), nn.InstanceNorm2d(w // 2, affine=True), nn.ReLU()]
                w //= 2
            layers += [nn.Conv2d(w, c, 5, padding=2)]
        elif len(self.shape) == 1:
            d = self.shape[0]
            hid = max(4 * width, d)
            layers = [nn.Linear(d + k, hid), nn.ReLU(), nn.Linear(hid, hid), nn.ReLU(), nn.Linear(hid, d)]
        else:
            raise ValueError(f"shape: expected (C, H, W) or (D,), got {shape}")
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)  # start as the identity: x + 0
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(target.long(), self.n_domains).to(x.dtype)
        if x.dim() == 4:
            cond = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])
        else:
            cond = onehot
        return x + self.net(torch.cat([x, cond], 1))


class _Critic(nn.Module):
    """Discriminator: a real/fake score per patch (per row for MLPs) and domain logits."""

    def __init__(self, shape: Tuple[int, ...], n_domains: int, width: int = 32):
        super().__init__()
        if len(shape) == 3:
            c, h, _ = shape
            layers, w, side = [], c, h
            for i in range(3 if h >= 32 else 2):
                layers += [nn.Conv2d(w, width * 2 ** i, 4, 2, 1), nn.LeakyReLU(0.2)]
                w, side = width * 2 ** i, side // 2
            self.body = nn.Sequential(*layers)
            self.src = nn.Conv2d(w, 1, 3, padding=1)
            self.cls = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, n_domains))
        else:
            hid = max(4 * width, shape[0])
            self.body = nn.Sequential(nn.Linear(shape[0], hid), nn.LeakyReLU(0.2), nn.Linear(hid, hid),
                                      nn.LeakyReLU(0.2))
            self.src, self.cls = nn.Linear(hid, 1), nn.Linear(hid, n_domains)

    def forward(self, x):
        h = self.body(x)
        return self.src(h), self.cls(h)


def _other_domain(d: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """A target domain different from ``d``, uniform over the other ``k - 1``."""
    return (d + torch.randint(1, k, d.shape, generator=gen)) % k


def fit_translator(x: torch.Tensor, domains, n_domains: Optional[int] = None, steps: int = 2000,
                   batch_size: int = 32, lr: float = 1e-3, lambda_cls: float = 1.0, lambda_rec: float = 10.0,
                   width: int = 32, seed: int = 0, progress: bool = False) -> Tuple[Translator, Dict]:
    """Train a :class:`Translator` on inputs ``x`` with pseudo bias ``domains`` (N,) for
    ``steps`` generator updates (one discriminator update each), Adam with StarGAN's betas
    (0.5, 0.999) at ``lr`` 1e-3 (StarGAN's 2e-4 is for 200,000 steps; with 1,000 it left
    the photos' backgrounds untranslated, docs/methods.md). Returns ``(G, log)``: ``G``
    in eval mode; ``log`` the mean losses per 10 % of the steps, the domain accuracy of D
    on real inputs, seconds."""
    from tqdm import tqdm

    d = torch.as_tensor(np.asarray(domains), dtype=torch.int64)
    if x.dim() not in (2, 4) or len(x) != len(d) or len(x) < 2:
        raise ValueError(f"domains: expected one domain per row of x {tuple(x.shape)} (images or rows, at least "
                         f"2), got {tuple(d.shape)}")
    k = int(n_domains if n_domains is not None else int(d.max()) + 1)
    if k < 2 or int(d.min()) < 0 or int(d.max()) >= k:
        raise ValueError(f"domains: expected ids in [0, {k}) with n_domains >= 2, got {int(d.min())}..{int(d.max())}")
    check_number(steps, "steps", 1, integer=True)
    check_number(batch_size, "batch_size", 2, integer=True)
    check_number(lr, "lr", 0.0, low_open=True)
    if not torch.isfinite(x).all():
        raise ValueError("x: the inputs contain NaN or infinite values; clean them before training a translator")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        g, c = Translator(x.shape[1:], k, width), _Critic(tuple(x.shape[1:]), k, width)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(c.parameters(), lr=lr, betas=(0.5, 0.999))
    mse, ce = nn.functional.mse_loss, nn.functional.cross_entropy
    every = max(1, steps // 10)
    log: Dict = {"step": [], "d_adv": [], "d_cls": [], "g_adv": [], "g_cls": [], "cycle": [], "d_cls_accuracy": []}
    acc = {k2: 0.0 for k2 in log if k2 != "step"}
    t0 = time.perf_counter()
    g.train()
    c.train()
    for step in tqdm(range(1, steps + 1), desc="translator", disable=not progress, leave=False):
        i = torch.randint(0, len(x), (batch_size,), generator=gen)
        xr, dr = x[i].float(), d[i]
        dt = _other_domain(dr, k, gen)
        # discriminator: real -> 1 with its domain, translated -> 0
        fake = g(xr, dt).detach()
        src_r, cls_r = c(xr)
        src_f, _ = c(fake)
        d_adv = mse(src_r, torch.ones_like(src_r)) + mse(src_f, torch.zeros_like(src_f))
        d_cls = ce(cls_r, dr)
        opt_d.zero_grad(set_to_none=True)
        (d_adv + lambda_cls * d_cls).backward()
        opt_d.step()
        # generator: fool D, be classified as the target domain, come back under the cycle
        fake = g(xr, dt)
        src_f, cls_f = c(fake)
        g_adv = mse(src_f, torch.ones_like(src_f))
        g_cls = ce(cls_f, dt)
        cycle = (g(fake, dr) - xr).abs().mean()
        opt_g.zero_grad(set_to_none=True)
        (g_adv + lambda_cls * g_cls + lambda_rec * cycle).backward()
        opt_g.step()
        for name, v in (("d_adv", d_adv), ("d_cls", d_cls), ("g_adv", g_adv), ("g_cls", g_cls), ("cycle", cycle)):
            acc[name] += float(v.detach())
        acc["d_cls_accuracy"] += float((cls_r.detach().argmax(1) == dr).float().mean())
        if step % every == 0 or step == steps:
            n = step - (log["step"][-1] if log["step"] else 0)
            log["step"].append(step)
            for name in acc:
                log[name].append(acc[name] / n)
                acc[name] = 0.0
    log["seconds"] = time.perf_counter() - t0
    log["n_domains"] = k
    return g.eval(), log


def translate(g: Translator, x: torch.Tensor, target, batch_size: int = 512) -> torch.Tensor:
    """``G(x, target)`` in batches without grad; ``target`` an int or (N,) domain ids."""
    t = torch.as_tensor(target, dtype=torch.int64)
    if t.dim() == 0:
        t = t.expand(len(x))
    if t.shape != (len(x),) or int(t.min()) < 0 or int(t.max()) >= g.n_domains:
        raise ValueError(f"target: expected a domain in [0, {g.n_domains}) per row of x, got shape "
                         f"{tuple(t.shape)}")
    was = g.training
    g.eval()
    try:
        with torch.no_grad():
            return torch.cat([g(x[s:s + batch_size].float(), t[s:s + batch_size])
                              for s in range(0, len(x), batch_size)])
    finally:
        g.train(was)
