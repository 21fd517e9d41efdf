"""BLADE (Bias-Linked Adaptive DEbiasing, arXiv 2510.04174): no bias labels. Translate
every training input into another bias domain with a generator, mix each input with its
translation by how bias-aligned it looks, and fine-tune with cross-entropy plus a
contrastive term that pulls an input towards its translation and away from the inputs
of its own bias domain.

The abstract fixes only that outline; every step below is our choice (docs/methods.md,
BLADE): bias domains from a bias-amplified copy of the model (generalized
cross-entropy) clustered per class with FAISS k-means and matched across classes; a
StarGAN-style translator (:mod:`pydebias.translate`); susceptibility from the
self-influence of each sample under the bias-amplified model; the mixing weight its rank.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..losses import contrastive_alignment_loss, gce_loss, self_influence
from ..translate import Translator, fit_translator, translate
from ..validation import check_choice, check_number
from .base import ModelMethod, dataset_tensors, model_outputs, train_epochs

__all__ = ["BLADE", "pseudo_domains", "domain_agreement", "reset_trainable"]


def _check_protocol(model: nn.Module) -> None:
    if not callable(getattr(model, "embed", None)) or not isinstance(getattr(model, "head", None), nn.Module):
        raise TypeError(f"model: BLADE aligns embeddings; expected a model with embed(x) and a head module "
                        f"(pydebias.models.EncoderHead), got {type(model).__name__}")


def pseudo_domains(features, labels, k: int = 2, seed: int = 0) -> np.ndarray:
    """(N,) bias-domain ids in ``[0, k)`` without bias labels: k-means (FAISS) per class
    on ``features`` (a bias-amplified model's embeddings) scaled to unit length (raw
    embeddings found the bias far less often, docs/methods.md), each class's clusters
    then matched to the clusters of a k-means over all rows (the order closest in summed
    centroid distance), so that domain ``j`` means the same thing in every class."""
    from ..cluster import kmeans

    f = np.asarray(features, dtype=np.float32)
    f = np.ascontiguousarray(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12))
    y = np.asarray(labels, dtype=np.int64)
    glob = kmeans(f, k, seed=seed).centroids
    per = kmeans(f, k, seed=seed, labels=y)
    out = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        cents = per.class_centroids(int(c))
        near = (f[rows] @ cents.T - 0.5 * (cents ** 2).sum(1)).argmax(1)  # nearest: |f|^2 is the same for all
        cost = ((cents[:, None, :] - glob[None]) ** 2).sum(2)         # (k_c, k)
        if len(cents) <= 7:
            best = min(itertools.permutations(range(k), len(cents)),
                       key=lambda p: sum(cost[i, j] for i, j in enumerate(p)))
        else:  # greedy for many domains (k! permutations)
            best, free = [], set(range(k))
            for i in range(len(cents)):
                j = min(free, key=lambda j: cost[i, j])
                best.append(j)
                free.discard(j)
        out[rows] = np.asarray(best)[near]
    return out


def domain_agreement(domains, truth, groups=None) -> Dict:
    """Purity of pseudo domains where the bias attribute is known: the share of rows whose
    domain names their true attribute ``truth`` (N,) under the best relabelling of
    domains (one for all classes), overall and per group of ``groups`` (N,) if given."""
    domains, truth = np.asarray(domains, dtype=np.int64), np.asarray(truth, dtype=np.int64)
    if domains.shape != truth.shape:
        raise ValueError(f"truth: expected one attribute per row of domains {domains.shape}, got {truth.shape}")
    k = int(max(domains.max(), truth.max())) + 1
    if k > 8:
        raise ValueError(f"domains: the best relabelling is searched over all k! orders, for k <= 8; got k = {k}")
    best = max(itertools.permutations(range(k)), key=lambda p: (np.asarray(p)[domains] == truth).mean())
    hit = np.asarray(best)[domains] == truth
    out = {"overall": float(hit.mean())}
    if groups is not None:
        groups = np.asarray(groups)
        out["per_group"] = [float(hit[groups == g].mean()) if (groups == g).any() else None
                            for g in range(int(groups.max()) + 1)]
    return out


def reset_trainable(model: nn.Module, frozen: Sequence[str] = ()) -> nn.Module:
    """``model`` with the parameters of every module outside ``frozen`` drawn afresh
    (each module's own ``reset_parameters``, from the torch RNG), in place."""
    from ..models.protocol import find_layer

    fixed = {id(m) for n in frozen for m in find_layer(model, n).modules()}
    for m in model.modules():
        if id(m) not in fixed and m is not model and callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    return model


class BLADE(ModelMethod):
    """BLADE: ``fit(model, train, domains=None)`` returns the debiased model.

    ``model`` follows :class:`pydebias.models.EncoderHead` (``embed`` and ``head``).
    Steps (all ours where the abstract is silent; docs/methods.md, BLADE):

    1. a copy of ``model``, its trainable part re-initialised (``bias_init="reset"``; or
       ``"copy"``: as given), trained ``bias_epochs`` with generalized cross-entropy
       (``q``), learns the shortcut first and little else; its embeddings, clustered per
       class, give ``n_domains`` pseudo bias domains (:func:`pseudo_domains`; ``domains=`` in
       ``fit`` gives them instead, e.g. known bias labels for an oracle run);
    2. a :class:`pydebias.translate.Translator` learns to move inputs across domains
       (``translator_steps``, ``translator_width``, ``translator_lr``; or pass a trained
       one as ``translator``); each input gets a translation into another domain;
    3. each sample's self-influence under the bias-amplified model (head parameters)
       ranks how bias-conflicting it is; ``alpha`` = ``alpha_min`` + (1 - ``alpha_min``)
       x its rank in [0, 1], and the input trained on is
       ``alpha * x + (1 - alpha) * G(x, b')``: bias-aligned inputs take most of their
       translation, bias-conflicting ones stay as they are;
    4. the model is fine-tuned ``epochs`` on those inputs with cross-entropy plus ``lam``
       times :func:`pydebias.losses.contrastive_alignment_loss` (``temperature``): the
       translation is the positive, the batch's samples of the same pseudo domain the
       negatives.

    ``optimizer`` ("adam" or "sgd"), ``lr``, ``batch_size``: both fine-tunings;
    ``frozen``: module names kept fixed in eval mode.

    Learned: ``model_``, ``bias_model_``, ``translator_``, ``domains_`` (N,),
    ``targets_`` (the domain each input was translated into), ``self_influence_``,
    ``alpha_``, ``report_`` (domain sizes per class, translator losses, alpha quantiles,
    losses per epoch, seconds per step).
    """

    def __init__(self, n_domains: int = 2, q: float = 0.7, bias_epochs: int = 1, bias_init: str = "reset",
                 translator_steps: int = 1000, translator_width: int = 32, translator_lr: float = 1e-3,
                 translator: Optional[Translator] = None, alpha_min: float = 0.0,
                 lam: float = 1.0, temperature: float = 0.1, epochs: int = 2, optimizer: str = "adam",
                 lr: float = 1e-3, batch_size: int = 128, frozen: Sequence[str] = (), seed: int = 0):
        self.n_domains, self.q, self.bias_epochs, self.bias_init = n_domains, q, bias_epochs, bias_init
        self.translator_steps, self.translator_width, self.translator = translator_steps, translator_width, translator
        self.translator_lr = translator_lr
        self.alpha_min, self.lam, self.temperature = alpha_min, lam, temperature
        self.epochs, self.optimizer, self.lr, self.batch_size = epochs, optimizer, lr, batch_size
        self.frozen, self.seed = frozen, seed

    def _check(self):
        check_number(self.n_domains, "n_domains", 2, integer=True)
        check_number(self.q, "q", 0.0, 1.0, low_open=True)
        check_number(self.bias_epochs, "bias_epochs", 1, integer=True)
        check_choice(self.bias_init, "bias_init", ("reset", "copy"))
        check_number(self.translator_steps, "translator_steps", 1, integer=True)
        check_number(self.translator_width, "translator_width", 1, integer=True)
        check_number(self.translator_lr, "translator_lr", 0.0, low_open=True)
        if self.translator is not None and not isinstance(self.translator, Translator):
            raise TypeError(f"translator: expected a pydebias.translate.Translator (from fit_translator) or None, "
                            f"got {type(self.translator).__name__}")
        check_number(self.alpha_min, "alpha_min", 0.0, 1.0)
        check_number(self.lam, "lam", 0.0)
        check_number(self.temperature, "temperature", 0.0, low_open=True)
        self._check_fine_tuning(min_batch=2)

    def fit(self, model: nn.Module, train, domains=None, progress: bool = False) -> nn.Module:
        self._check()
        self._check_model(model)
        _check_protocol(model)
        train = self._check_dataset(train)
        x, y = dataset_tensors(train)
        if not torch.isfinite(x).all():
            raise ValueError("train: the inputs contain NaN or infinite values; clean or drop those rows first")
        k = int(self.n_domains)
        if domains is not None:
            domains = np.asarray(domains)
            if domains.shape != (len(y),) or domains.dtype.kind not in "iu" or domains.min() < 0 \
                    or domains.max() >= k:
                raise ValueError(f"domains: expected ({len(y)},) integers in [0, {k}) (n_domains={k}), got "
                                 f"shape {domains.shape}, dtype {domains.dtype}")
        if self.translator is not None and (self.translator.shape != tuple(x.shape[1:])
                                            or self.translator.n_domains != k):
            raise ValueError(f"translator: made for inputs {self.translator.shape} and "
                             f"{self.translator.n_domains} domains, but train has {tuple(x.shape[1:])} and "
                             f"n_domains={k}")
        seconds: Dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            # 1. bias-amplified copy and pseudo domains
            t0 = time.perf_counter()
            biased = copy.deepcopy(model)
            if self.bias_init == "reset":
                reset_trainable(biased, self.frozen)

            def gce(m, batch):
                out = m(batch[0])
                return gce_loss(out, batch[1], self.q), out

            bias_log = train_epochs(biased, torch.utils.data.TensorDataset(x, y), gce, self.bias_epochs,
                                    self.optimizer, self.lr, self.batch_size, self.frozen, self.seed + 500,
                                    progress, "BLADE bias model", "gce")
            if domains is None:
                domains = pseudo_domains(model_outputs(biased, x, fn=biased.embed).numpy(), y.numpy(), k, self.seed)
            seconds["bias_model_and_domains"] = time.perf_counter() - t0
            # 2. translator and translations
            t0 = time.perf_counter()
            if self.translator is None:
                g, tlog = fit_translator(x, domains, k, self.translator_steps, lr=self.translator_lr,
                                         width=self.translator_width, seed=self.seed, progress=progress)
                if tlog["g_cls"][-1] > math.log(k):
                    warnings.warn(f"BLADE: the translator's outputs are still classified in their source domain "
                                  f"(domain loss {tlog['g_cls'][-1]:.2f} > log {k} at the last step): "
                                  f"the refined inputs will mostly be blurred copies; raise translator_steps or "
                                  f"translator_lr", RuntimeWarning, stacklevel=2)
            else:
                g, tlog = self.translator, None
            gen = torch.Generator().manual_seed(self.seed + 1)
            d = torch.from_numpy(domains.astype(np.int64))
            targets = (d + torch.randint(1, k, d.shape, generator=gen)) % k
            xt = translate(g, x, targets)
            seconds["translator"] = time.perf_counter() - t0
            # 3. susceptibility: self-influence of each sample under the bias-amplified model
            t0 = time.perf_counter()
            head = [n for n, _ in biased.named_parameters() if n.startswith("head.")]
            si = self_influence(biased, x, y, params=head)
            rank = torch.empty(len(si), dtype=torch.float64)
            rank[si.argsort()] = torch.arange(len(si), dtype=torch.float64) / max(len(si) - 1, 1)
            alpha = self.alpha_min + (1.0 - self.alpha_min) * rank
            a = alpha.to(x.dtype).view(-1, *[1] * (x.dim() - 1))
            x_ref = a * x + (1 - a) * xt
            seconds["self_influence"] = time.perf_counter() - t0
            # 4. fine-tune: cross-entropy on the refined inputs + contrastive alignment
            t0 = time.perf_counter()
            tuned = copy.deepcopy(model)
            lam, tau = float(self.lam), float(self.temperature)

            def loss_fn(m, batch):
                xr, yb, xtr, db = batch
                f = m.embed(torch.cat([xr, xtr]))
                fr, ft = f[:len(xr)], f[len(xr):]
                out = m.head(fr)
                loss = nn.functional.cross_entropy(out, yb)
                if lam > 0:
                    loss = loss + lam * contrastive_alignment_loss(fr, ft, db, tau)
                return loss, out

            data = torch.utils.data.TensorDataset(x_ref, y, xt, d)
            losses = train_epochs(tuned, data, loss_fn, self.epochs, self.optimizer, self.lr, self.batch_size,
                                  self.frozen, self.seed, progress, "BLADE", "loss")
            seconds["fine_tune"] = time.perf_counter() - t0
        self.model_, self.bias_model_, self.translator_ = tuned, biased.eval(), g
        self.domains_, self.targets_ = domains, targets.numpy()
        self.self_influence_, self.alpha_ = si.numpy(), alpha.numpy()
        classes = int(y.max()) + 1
        sizes = np.zeros((classes, k), dtype=np.int64)
        np.add.at(sizes, (y.numpy(), domains), 1)
        self.report_ = {"method": "BLADE", "domain_sizes": sizes.tolist(), "bias_model": bias_log,
                        "translator": tlog, "alpha_quantiles": {str(p): float(np.quantile(self.alpha_, p))
                                                                for p in (0.1, 0.25, 0.5, 0.75, 0.9)},
                        "losses": losses, "seconds": seconds}
        return tuned
