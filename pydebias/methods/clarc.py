"""Class Artifact Compensation (ClArC) on whole models: RR-ClArC (Dreyer, Pahde et al.,
"From Hope to Safety", 2023), with P-ClArC and A-ClArC (Anders et al., 2022).

All three learn a concept activation vector ``h`` of the artifact at ``layer``
(:mod:`pydebias.concepts`) from concept labels, then

- **RR-ClArC** fine-tunes the ``nn.Linear`` layers after ``layer`` with class-weighted
  cross-entropy + ``lam`` x the right-reason penalty ``mean_b <mean_spatial dy~/dA, h>^2``:
  the output must not change along ``h``;
- **P-ClArC** (no training) moves every activation's ``h`` component to the clean
  samples' mean with a removable forward hook;
- **A-ClArC** fine-tunes the same layers while the hook moves every training sample's
  ``h`` component to the artifact samples' mean (no hook at test time).

Every convolution and normalisation stays frozen in eval mode. Rules, defaults and the
evidence for them: docs/methods.md, RR-ClArC.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..concepts import CAV, CAV_METHODS, POOLINGS, fit_cav, layer_activations
from ..models.protocol import find_layer
from ..nn import MaskedLinear
from ..validation import check_choice, check_number
from .base import ModelMethod, data_loader as _loader, dataset_labels as _labels

__all__ = ["RRClArC", "PClArC", "AClArC", "TARGETS", "AGGREGATIONS", "output_coefficients", "rr_penalty",
           "closed_form_gradient", "closed_form_penalty", "autograd_gradient", "trainable_linears", "SignStream"]

#: the scalar y~ whose gradient the penalty aligns with h: "all_logits_random" (the
#: published default: sum_k s_k z_k with s_k = +-1 drawn per sample and step),
#: "all_logits" (s = 1), "target" (the label's logit), "max" (the top logit),
#: "logprobs" (mean_k log softmax_k)
TARGETS = ("all_logits_random", "all_logits", "target", "max", "logprobs")
#: how <g, h> is turned into the penalty: "l2_mean" (mean square, the published default),
#: "l1" (mean absolute value), "cosine" (mean squared cosine of g and h)
AGGREGATIONS = ("l2_mean", "l1", "cosine")


def output_coefficients(logits: torch.Tensor, labels: torch.Tensor, target: str,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, K) ``s = dy~/dz`` for each target (``logprobs``: ``1/K - softmax(z)``, which
    keeps its graph; the others are constants)."""
    B, K = logits.shape
    if target == "all_logits_random":
        return torch.randint(0, 2, (B, K), generator=generator, dtype=logits.dtype).mul_(2).sub_(1)
    if target == "all_logits":
        return torch.ones_like(logits)
    if target == "target":
        return nn.functional.one_hot(labels.long(), K).to(logits.dtype)
    if target == "max":
        return nn.functional.one_hot(logits.detach().argmax(1), K).to(logits.dtype)
    if target == "logprobs":
        return 1.0 / K - torch.softmax(logits, 1)
    raise ValueError(f"target: expected one of {TARGETS}, got {target!r}")


class SignStream:
    """``all_logits_random``'s +-1 coefficients for consecutive batches, drawn ``chunk``
    rows at a time: one ``randint`` per chunk instead of three small ops per step, and
    the same values as drawing each batch's (B, K) block from ``generator`` in turn."""

    def __init__(self, generator: torch.Generator, k: int, dtype: torch.dtype = torch.float32, chunk: int = 4096):
        self.generator, self.k, self.dtype, self.chunk = generator, k, dtype, chunk
        self.buf, self.at = torch.empty(0, k, dtype=dtype), 0

    def take(self, b: int) -> torch.Tensor:
        if self.at + b > len(self.buf):
            new = torch.randint(0, 2, (max(self.chunk, b), self.k), generator=self.generator, dtype=self.dtype)
            self.buf, self.at = torch.cat([self.buf[self.at:], new.mul_(2).sub_(1)]), 0
        self.at += b
        return self.buf[self.at - b:self.at]


def _y_tilde(logits: torch.Tensor, s: torch.Tensor, target: str) -> torch.Tensor:
    if target == "logprobs":
        return torch.log_softmax(logits, 1).mean(1)
    return (s.detach() * logits).sum(1)


def autograd_gradient(activation: torch.Tensor, logits: torch.Tensor, s: torch.Tensor, target: str) -> torch.Tensor:
    """``mean_spatial dy~/dA`` (B, C) by a second backward through the layers after A
    (``create_graph=True``, so the penalty trains them)."""
    g, = torch.autograd.grad(_y_tilde(logits, s, target).sum(), activation, create_graph=True)
    return g.flatten(2).mean(2) if g.dim() > 2 else g


def closed_form_gradient(head: nn.Linear, s: torch.Tensor, hw: int = 1) -> torch.Tensor:
    """The same when A reaches the linear ``head`` directly (``hw=1``) or through one
    global average pool over ``hw`` positions: ``dy~/dA_{c,i,j} = (s W)_c / HW``,
    constant over positions; no second backward, and no input needed."""
    return (s @ head.weight) / hw


def closed_form_penalty(head: nn.Linear, s: torch.Tensor, h: torch.Tensor, hw: int = 1):
    """The ``l2_mean`` penalty of the closed-form gradient and its gradient w.r.t. the
    head's weight, by hand, for constant coefficients ``s`` (every target but
    ``logprobs``): with ``v = W h`` and ``u = s v / HW`` the penalty is ``mean_b u_b^2``
    and its gradient the rank-one ``outer(coef, h)``, ``coef = 2 s^T u / (B HW)``. Three
    matrix-vector products and no autograd graph, so a step costs about what a plain
    fine-tuning step costs. Returns ``(value, coef)``."""
    u = s.detach() @ (head.weight.detach() @ h.to(head.weight.dtype))
    if hw != 1:
        u = u / hw
    return torch.dot(u, u).div_(len(u)), (s.t() @ u).mul_(2.0 / (len(u) * hw))


def rr_penalty(grad: torch.Tensor, h: torch.Tensor, aggregation: str = "l2_mean") -> torch.Tensor:
    """Right-reason penalty of (B, C) gradients against the unit CAV ``h``."""
    return _aggregate(grad @ h.to(grad.dtype), aggregation, grad)


def _aggregate(proj: torch.Tensor, aggregation: str, grad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The penalty from the (B,) projections <g, h> (``"cosine"`` also needs ``grad``)."""
    if aggregation == "l2_mean":
        return proj.square().mean()
    if aggregation == "l1":
        return proj.abs().mean()
    if aggregation == "cosine":
        return (proj / grad.norm(dim=1).clamp_min(1e-12)).square().mean()
    raise ValueError(f"aggregation: expected one of {AGGREGATIONS}, got {aggregation!r}")


def trainable_linears(model: nn.Module, layer: str) -> List[nn.Linear]:
    """The ``nn.Linear`` modules registered after ``layer`` (and outside it): what ClArC
    fine-tunes."""
    names = [n for n, _ in model.named_modules()]
    find_layer(model, layer)
    after = names[names.index(layer) + 1:]
    mods = dict(model.named_modules())
    out = [mods[n] for n in after if not n.startswith(layer + ".") and isinstance(mods[n], nn.Linear)]
    if not out:
        raise ValueError(f"layer: no nn.Linear module comes after {layer!r} in {type(model).__name__}; ClArC "
                         "fine-tunes those, so pick an earlier layer")
    return out


def _default_layer(model: nn.Module, layer: Optional[str]) -> str:
    if layer is not None:
        return layer
    name = getattr(model, "embedding_layer", "")
    if not name:
        raise ValueError(f"layer: {type(model).__name__} does not follow pydebias.models.EncoderHead; name the "
                         "layer to take the concept from, e.g. layer='features.8'")
    return name


def _positions(model: nn.Module, layer: str, train) -> int:
    """How many positions ``layer``'s output has per channel (1 for a vector), from one sample."""
    shape = []
    handle = find_layer(model, layer).register_forward_hook(lambda _m, _i, out: shape.append(out.shape))
    try:
        with torch.no_grad():
            model(torch.as_tensor(train[0][0]).unsqueeze(0))
    finally:
        handle.remove()
    return int(np.prod(shape[0][2:])) if len(shape[0]) > 2 else 1


class _ClArC(ModelMethod):
    """Shared by the three: the CAV, the hook and the fine-tuning loop."""

    def _check(self):
        check_choice(self.cav, "cav", CAV_METHODS)
        check_choice(self.pooling, "pooling", POOLINGS)
        check_number(self.batch_size, "batch_size", 1, integer=True)
        check_number(self.seed, "seed", integer=True)
        if self.attacked_class is not None:
            check_number(self.attacked_class, "attacked_class", 0, integer=True)

    def _check_training(self):
        self._check_fine_tuning()
        check_number(self.clip, "clip", 0.0, low_open=True)

    def _prepare(self, model: nn.Module, train, concepts, label: str, head_inputs: bool = False):
        """Checks, the copy of ``model`` that ``fit`` changes (eval mode), the layer and the
        CAV (``cav_``) every ClArC starts from; with ``head_inputs`` also the layer's
        mean-pooled outputs (what a head after a global average pool reads), from the same
        pass over ``train``."""
        self._check()
        model = copy.deepcopy(self._check_model(model))
        train = self._check_dataset(train)
        if concepts is None:
            raise ValueError(f"concepts: {label} needs the artifact's presence per training sample; pass "
                             "fit(model, train, concepts=flags)")
        c = np.asarray(concepts)
        if c.shape != (len(train),):
            raise ValueError(f"concepts: expected one artifact flag per training sample ({len(train)}), got shape "
                             f"{c.shape}")
        layer = _default_layer(model, self.layer)
        model.eval()
        batches = (b[0] for b in _loader(train, max(self.batch_size, 256), False, 0))
        a, *mean, logits = layer_activations(model, layer, batches, pooling=(self.pooling,) + ("mean",) * head_inputs,
                                             return_outputs=True)
        # CAV: the rows the model gets right, of ``attacked_class`` (the authors' choice) or of
        # every class centred within its class (ours: an artifact frequent in one class must
        # not give that class's direction)
        y = _labels(train, self.batch_size)
        keep = logits.argmax(1) == y
        if self.attacked_class is not None:
            keep &= y == int(self.attacked_class)
        keep = keep.numpy()
        self.cav_ = fit_cav(a[keep], c[keep], method=self.cav, layer=layer, pooling=self.pooling,
                            within=None if self.attacked_class is not None else y.numpy()[keep])
        self.cav_samples_ = int(keep.sum())
        return model, train, layer, (mean[0] if head_inputs else None)

    def _shift_hook(self, cav: CAV, to: float) -> Callable:
        """A forward hook moving each sample's ``<h, pooled A>`` to ``to`` at every position."""
        h = cav.direction

        def hook(_m, _i, out):
            hh = h.to(out.dtype).reshape(1, -1, *([1] * (out.dim() - 2)))
            shift = (to - cav.project(out)) / float(h @ h)
            return out + shift.reshape(-1, *([1] * (out.dim() - 1))) * hh

        return hook

    @staticmethod
    def _add_hook(cav: CAV, delta: float) -> Callable:
        """A forward hook adding ``delta`` to every sample's ``<h, pool A>`` (``delta h /
        <h, h>`` at every position, which moves a max- or mean-pooled projection by
        ``delta``)."""
        h = cav.direction

        def hook(_m, _i, out):
            return out + (delta / float(h @ h)) * h.to(out.dtype).reshape(1, -1, *([1] * (out.dim() - 2)))

        return hook

    def _fine_tune(self, model: nn.Module, layer: str, train, penalty: Optional[Callable], progress: bool,
                   activation_hook: Optional[Callable] = None, grad_at_layer: bool = False,
                   head_inputs: Optional[torch.Tensor] = None) -> Dict:
        """Fine-tune the linears after ``layer`` (everything else frozen, eval mode) with
        class-weighted cross-entropy (+ ``lam`` x the penalty: ``penalty(A, logits, y)`` gives
        ``(value, None)`` for autograd, or ``(value, add_grad)`` where ``add_grad(lam)`` adds
        the penalty's gradient after the backward pass); the layer's output
        A is detached (nothing before it trains) and needs a gradient only for autograd's
        penalty (``grad_at_layer``). ``head_inputs`` (N, D): the head's inputs, computed
        once, when only the head trains (the frozen network then runs once, not per epoch).
        Returns the losses per epoch."""
        from tqdm import tqdm

        params = [p for m in trainable_linears(model, layer) for p in m.parameters()]
        keep = {id(p) for p in params}
        was = [(p, p.requires_grad) for p in model.parameters()]  # restored on return
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        model.eval()
        y_all = _labels(train, self.batch_size)
        counts = torch.bincount(y_all).double()
        weight = torch.where(counts > 0, counts.max() / counts.clamp_min(1), torch.zeros_like(counts)).float()
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9)
        else:
            opt = torch.optim.Adam(params, lr=self.lr)
        store = {}

        def capture(_m, _i, out):
            a = out.detach().requires_grad_(grad_at_layer)  # nothing before the layer trains
            if activation_hook is not None:
                a = activation_hook(_m, _i, a)
            store["a"] = a
            return a

        if head_inputs is None:
            handle = find_layer(model, layer).register_forward_hook(capture)
            data, forward = train, model
        else:
            handle, data = None, torch.utils.data.TensorDataset(head_inputs, y_all)

            def forward(e):
                store["a"] = e
                return model.head(e)
        torch.manual_seed(self.seed)
        losses = []
        try:
            for epoch in tqdm(range(self.epochs), desc=type(self).__name__, disable=not progress):
                tot = {"ce": 0.0, "rr": 0.0, "n": 0}
                t0 = time.perf_counter()
                for x, yb, *_ in _loader(data, self.batch_size, True, self.seed + epoch):
                    yb = torch.as_tensor(yb).long()
                    logits = forward(x)
                    ce = nn.functional.cross_entropy(logits, yb, weight=weight[:logits.shape[1]])
                    loss = ce
                    if penalty is not None:
                        rr, add_grad = penalty(store["a"], logits, yb)
                        if add_grad is None:
                            loss = torch.add(ce, rr, alpha=self.lam)
                        tot["rr"] += float(rr.detach()) * len(yb)
                    opt.zero_grad()
                    loss.backward()
                    if penalty is not None and add_grad is not None:  # the penalty's gradient, by hand
                        add_grad(self.lam)
                    torch.nn.utils.clip_grad_norm_(params, self.clip)
                    opt.step()
                    tot["ce"] += float(ce.detach()) * len(yb)
                    tot["n"] += len(yb)
                losses.append({"epoch": epoch, "cross_entropy": tot["ce"] / tot["n"],
                               "penalty": tot["rr"] / tot["n"] if penalty is not None else None,
                               "seconds": time.perf_counter() - t0})
        finally:
            if handle is not None:
                handle.remove()
        for p, flag in was:
            p.requires_grad_(flag)
        model.eval()
        return {"losses": losses, "n_trainable": sum(p.numel() for p in params)}


_COMMON_DOC = """
    ``layer``: the module name to take the concept from (default: the model's
    ``embedding_layer``); ``cav``: ``"signal"`` (default), or one of the classifiers'
    weights for comparison: ``"ridge"``, ``"logistic"``, ``"svm"``, ``"lasso"``;
    ``pooling``: ``"max"`` (the authors') or ``"mean"`` (what a following global average
    pool sees; use it when ``layer`` feeds one); ``attacked_class``: the class whose
    correctly predicted training rows give the CAV (default: those of every class, each
    class centred, so that an artifact frequent in one class does not give its direction).
    ``fit(model, train, concepts=...)``: ``train`` a ``Dataset`` of ``(x, y)``,
    ``concepts`` a boolean (N,) array of the artifact's presence per training sample.
"""


#: the λ candidates of ``RRClArC(lam="auto")`` (the authors sweep 0.05 ... 1e8 without a choice)
LAMS = (1.0, 10.0, 100.0, 1000.0)
#: how ``lam="auto"`` scores a candidate on held-out rows (:meth:`RRClArC.select_lam`)
LAM_SCORES = ("toggle", "groups")


class RRClArC(_ClArC):
    __doc__ = """Right-Reason ClArC: fine-tune the ``nn.Linear`` layers after ``layer`` with
    class-weighted cross-entropy + ``lam`` x ``rr_penalty`` so that the output's gradient
    at ``layer`` is orthogonal to the artifact's CAV.
    """ + _COMMON_DOC + """
    ``target`` / ``aggregation``: :data:`TARGETS` / :data:`AGGREGATIONS`.
    ``closed_form``: ``"auto"`` uses the closed-form gradient where ``layer`` is the
    model's ``embedding_layer`` or ``pooled_layer`` (no second backward), else autograd;
    ``True`` demands it, ``False`` forces autograd. Optimiser: ``"sgd"`` (momentum 0.9) or
    ``"adam"``, ``lr``, ``batch_size``, ``epochs``, gradient-norm clipping ``clip``.
    ``lam="auto"``: picked from the concept labels (:meth:`select_lam`): each of ``lams``
    is fitted on the training rows less a held-out share ``holdout`` (stratified by class
    and concept) and scored on the held-out rows by ``lam_score`` (:data:`LAM_SCORES`).
    """

    def __init__(self, layer: Optional[str] = None, lam=100.0, lams: Sequence[float] = LAMS, holdout: float = 0.2,
                 lam_score: str = "toggle", cav: str = "signal", pooling: str = "max",
                 target: str = "all_logits_random", aggregation: str = "l2_mean", closed_form="auto",
                 attacked_class: Optional[int] = None, optimizer: str = "sgd", lr: float = 1e-4,
                 batch_size: int = 64, epochs: int = 10, clip: float = 100.0, seed: int = 0):
        self.layer, self.lam, self.cav, self.pooling = layer, lam, cav, pooling
        self.lams, self.holdout, self.lam_score = lams, holdout, lam_score
        self.target, self.aggregation, self.closed_form = target, aggregation, closed_form
        self.attacked_class, self.optimizer, self.lr = attacked_class, optimizer, lr
        self.batch_size, self.epochs, self.clip, self.seed = batch_size, epochs, clip, seed

    def _check(self):
        super()._check()
        if self.lam == "auto":
            if isinstance(self.lams, str) or not len(self.lams):
                raise ValueError(f"lams: expected a sequence of candidate λ values, got {self.lams!r}")
            for v in self.lams:
                check_number(v, "lams", 0.0)
            check_number(self.holdout, "holdout", 0.0, 1.0, low_open=True, high_open=True)
            check_choice(self.lam_score, "lam_score", LAM_SCORES)
        else:
            check_number(self.lam, "lam", 0.0)
        check_choice(self.target, "target", TARGETS)
        check_choice(self.aggregation, "aggregation", AGGREGATIONS)
        self._check_training()
        if self.closed_form not in ("auto", True, False):
            raise ValueError(f"closed_form: expected 'auto', True or False, got {self.closed_form!r}")

    def uses_closed_form(self, model: nn.Module, layer: str) -> bool:
        """Whether ``fit`` takes the closed-form gradient for ``model`` at ``layer``."""
        ok = (isinstance(getattr(model, "head", None), nn.Linear)
              and layer in {getattr(model, "embedding_layer", ""), getattr(model, "pooled_layer", "")} - {""})
        if self.closed_form is True and not ok:
            raise ValueError(f"closed_form: True needs layer to be the model's embedding_layer or pooled_layer "
                             f"(it feeds the linear head directly or through a global average pool); got {layer!r}")
        return ok and self.closed_form != False  # noqa: E712 ("auto" or True)

    def select_lam(self, model: nn.Module, train, concepts, progress: bool = False) -> Dict:
        """Pick λ from ``lams`` with the concept labels: hold out ``holdout`` of each
        (class, concept) stratum of ``train`` (seeded), fit on the rest with each λ and
        score each fit on the held-out rows by ``lam_score``:

        - ``"toggle"``: the worse of two class-balanced accuracies on the held-out rows,
          as they are and with the artifact toggled in latent space (at ``layer``, the
          CAV's ``effect`` along ``h`` added to the rows without it and taken from the
          rows with it): every held-out row also plays the group it is not in, so the
          rare (class, concept) pairs are scored on many rows, not on a few;
        - ``"groups"``: the worst held-out (class, concept) accuracy (strata with fewer
          than 5 held-out rows are not scored).

        The best wins, ties going to the smaller λ. Returns ``{"lam", "candidates":
        [{lam, score, ...}], "n_held_out"}``."""
        from .base import model_outputs

        self._check()
        train = self._check_dataset(train)
        c = np.asarray(concepts).astype(bool)
        y = _labels(train, self.batch_size).numpy()
        if c.shape != y.shape:
            raise ValueError(f"concepts: expected one artifact flag per training sample ({len(y)}), got shape "
                             f"{c.shape}")
        strata = 2 * y + c
        rng = np.random.default_rng(self.seed)
        held = np.zeros(len(y), dtype=bool)
        for s_ in np.unique(strata):
            rows = np.flatnonzero(strata == s_)
            held[rng.choice(rows, int(round(self.holdout * rows.size)), replace=False)] = True
        fit_rows, held_rows = np.flatnonzero(~held), np.flatnonzero(held)
        xh, yh = zip(*(train[int(i)][:2] for i in held_rows))
        xh, yh = torch.stack([torch.as_tensor(v) for v in xh]), torch.as_tensor(np.asarray(yh)).long()
        sh = strata[held_rows]
        scored = [s_ for s_ in np.unique(sh) if (sh == s_).sum() >= 5]
        classes = np.unique(yh.numpy())

        def balanced(pred):
            ok = (pred == yh).numpy()
            return float(np.mean([ok[yh.numpy() == k].mean() for k in classes]))

        cands = []
        for lam in sorted(float(v) for v in self.lams):
            m = RRClArC(**{**self.get_params(), "lam": lam})
            fitted = m.fit(model, torch.utils.data.Subset(train, fit_rows), concepts=c[fit_rows], progress=progress)
            pred = model_outputs(fitted, xh).argmax(1)
            ok = (pred == yh).numpy()
            per = {int(s_): float(ok[sh == s_].mean()) for s_ in scored}
            row = {"lam": lam, "worst_stratum": min(per.values()) if per else float("nan"), "per_stratum": per}
            toggled = torch.empty_like(yh)
            layer = find_layer(fitted, m.report_["layer"])
            for flag, sign in ((False, 1.0), (True, -1.0)):  # add the artifact / take it away
                rows = torch.from_numpy(c[held_rows] == flag)
                handle = layer.register_forward_hook(self._add_hook(m.cav_, sign * m.cav_.effect))
                try:
                    toggled[rows] = model_outputs(fitted, xh[rows]).argmax(1)
                finally:
                    handle.remove()
            row["as_is"] = balanced(pred)
            row["toggled"] = balanced(toggled)
            row["score"] = min(row["as_is"], row["toggled"]) if self.lam_score == "toggle" else row["worst_stratum"]
            cands.append(row)
        best = max(cands, key=lambda r: (r["score"], -r["lam"]))  # ties: the smaller λ
        return {"lam": best["lam"], "lam_score": self.lam_score, "candidates": cands, "n_held_out": int(held.sum())}

    def fit(self, model: nn.Module, train, concepts=None, progress: bool = False) -> nn.Module:
        self._check()
        if self.lam == "auto":
            if concepts is None:
                raise ValueError("concepts: lam='auto' picks λ with the concept labels; pass fit(model, train, "
                                 "concepts=flags)")
            picked = self.select_lam(model, train, concepts, progress)
            final = RRClArC(**{**self.get_params(), "lam": picked["lam"]})
            out = final.fit(model, train, concepts=concepts, progress=progress)
            self.__dict__.update({k: v for k, v in final.__dict__.items() if k.endswith("_")})
            self.report_ = {**final.report_, "lam_auto": picked}
            return out
        layer = _default_layer(self._check_model(model), self.layer)
        closed = self.uses_closed_form(model, layer)
        # closed form: only the head trains and its gradient needs no input, so the head's
        # inputs come from the CAV's pass over train and the network never runs again
        model, train, layer, head_inputs = self._prepare(model, train, concepts, "RR-ClArC", head_inputs=closed)
        h = self.cav_.direction.to(model.head.weight.dtype) if closed else self.cav_.direction
        hw = _positions(model, layer, train) if closed else 1
        gen = torch.Generator().manual_seed(self.seed)
        signs = SignStream(gen, model.head.out_features, model.head.weight.dtype) \
            if self.target == "all_logits_random" and isinstance(getattr(model, "head", None), nn.Linear) else None

        def penalty(a, logits, y):
            if signs is not None and logits.shape[1] == signs.k and logits.dtype == signs.dtype:
                s = signs.take(len(y))
            else:
                s = output_coefficients(logits, y, self.target, gen)
            if closed and self.aggregation == "l2_mean" and self.target != "logprobs":  # no graph at all
                value, coef = closed_form_penalty(model.head, s, h, hw)
                return value, lambda lam: model.head.weight.grad.addr_(coef, h, alpha=lam)
            if closed and self.aggregation != "cosine":  # <g, h> = s (W h) / HW: (B,), no (B, D) gradient
                proj = s @ (model.head.weight @ h)
                return _aggregate(proj if hw == 1 else proj / hw, self.aggregation), None
            g = closed_form_gradient(model.head, s, hw) if closed else autograd_gradient(a, logits, s, self.target)
            return rr_penalty(g, h, self.aggregation), None

        # lam=0 is plain fine-tuning of the same layers on the same path (the bench's baseline)
        run = self._fine_tune(model, layer, train, penalty if self.lam > 0 else None, progress,
                              grad_at_layer=not closed and self.lam > 0, head_inputs=head_inputs)
        self.model_ = model
        self.report_ = {"method": "RR-ClArC", "layer": layer, "lam": float(self.lam), "closed_form": closed,
                        "cav": self.cav_.summary(), "cav_samples": self.cav_samples_, **run}
        return model


class PClArC(_ClArC):
    __doc__ = """Projective ClArC: no training. The returned model carries a forward hook
    on ``layer`` that moves every sample's CAV component to the clean samples' mean,
    ``A' = A + ((z_clean - <h, pool A>) / <h, h>) h`` at every position;
    ``hook_.remove()`` takes it off.
    """ + _COMMON_DOC

    def __init__(self, layer: Optional[str] = None, cav: str = "signal", pooling: str = "max",
                 attacked_class: Optional[int] = None, batch_size: int = 256, seed: int = 0):
        self.layer, self.cav, self.pooling, self.attacked_class = layer, cav, pooling, attacked_class
        self.batch_size, self.seed = batch_size, seed

    def fit(self, model: nn.Module, train, concepts=None, progress: bool = False) -> nn.Module:
        model, train, layer, _ = self._prepare(model, train, concepts, "P-ClArC")
        self.hook_ = find_layer(model, layer).register_forward_hook(self._shift_hook(self.cav_, self.cav_.z_clean))
        self.model_, self.layer_ = model, layer
        self.report_ = {"method": "P-ClArC", "layer": layer, "cav": self.cav_.summary(),
                        "cav_samples": self.cav_samples_}
        return model

    def fold(self) -> nn.Module:
        """A copy of the corrected model without the hook, its projection folded into the
        linear head: ``v' = (I - h h^T / <h, h>) v + z_clean h / <h, h>`` is affine in the
        embedding ``v``, so ``W v' + b`` is one ``nn.Linear`` (plain layers for export, no
        inference cost). Exact when the hook sits at the embedding layer, or at the pooled
        layer with ``pooling="mean"`` (the head then reads the mean the shift moved); a
        max-pooled shift depends on the argmax position and keeps its hook."""
        if not hasattr(self, "model_"):
            raise RuntimeError("PClArC: call fit(model, train, concepts) first")
        m = self.model_
        at_embedding = self.layer_ == getattr(m, "embedding_layer", "")
        at_pool = self.layer_ == getattr(m, "pooled_layer", "") and self.pooling == "mean"
        if not isinstance(getattr(m, "head", None), (nn.Linear, MaskedLinear)) or not (at_embedding or at_pool):
            raise ValueError(f"fold: the projection folds into the head only at the embedding layer, or at the "
                             f"pooled layer with pooling='mean'; this fit has layer={self.layer_!r}, "
                             f"pooling={self.pooling!r}. Keep the hook (hook_), or fit at one of those")
        out = copy.deepcopy(m)
        find_layer(out, self.layer_)._forward_hooks.pop(self.hook_.id, None)
        if isinstance(out.head, MaskedLinear):  # the mask acts on W: fold it before the projection
            out.head = out.head.fold()
        if out.head.bias is None:  # the shift adds a constant: the folded head needs a bias
            head = nn.Linear(out.head.in_features, out.head.out_features).to(out.head.weight.dtype)
            with torch.no_grad():
                head.weight.copy_(out.head.weight)
                head.bias.zero_()
            out.head = head
        h = self.cav_.direction.to(torch.float64)
        hh = float(h @ h)
        with torch.no_grad():
            w, b = out.head.weight.to(torch.float64), out.head.bias
            proj = torch.eye(len(h), dtype=torch.float64) - torch.outer(h, h) / hh
            out.head.weight.copy_((w @ proj).to(out.head.weight.dtype))
            b.add_((self.cav_.z_clean / hh * (w @ h)).to(b.dtype))
        return out.eval()


class AClArC(_ClArC):
    __doc__ = """Augmentative ClArC: fine-tune the ``nn.Linear`` layers after ``layer`` with
    class-weighted cross-entropy while a hook moves every training sample's CAV component
    to the artifact samples' mean (the artifact added in latent space, so the model must
    stop using it); no hook at test time.
    """ + _COMMON_DOC

    def __init__(self, layer: Optional[str] = None, cav: str = "signal", pooling: str = "max",
                 attacked_class: Optional[int] = None, optimizer: str = "sgd", lr: float = 1e-4,
                 batch_size: int = 64, epochs: int = 10, clip: float = 100.0, seed: int = 0):
        self.layer, self.cav, self.pooling, self.attacked_class = layer, cav, pooling, attacked_class
        self.optimizer, self.lr, self.batch_size, self.epochs, self.clip, self.seed = \
            optimizer, lr, batch_size, epochs, clip, seed

    def _check(self):
        super()._check()
        self._check_training()

    def fit(self, model: nn.Module, train, concepts=None, progress: bool = False) -> nn.Module:
        model, train, layer, _ = self._prepare(model, train, concepts, "A-ClArC")
        run = self._fine_tune(model, layer, train, None, progress,
                              activation_hook=self._shift_hook(self.cav_, self.cav_.z_concept))
        self.model_ = model
        self.report_ = {"method": "A-ClArC", "layer": layer, "cav": self.cav_.summary(),
                        "cav_samples": self.cav_samples_, **run}
        return model
