"""NSF — "Let Samples Speak" (CVPR 2025): identify, neutralize, eliminate, update.

Post hoc and annotation-free: reads the features and class labels of ``val`` (the
identification split), never group labels.

1. **Identify.** Class means; a sample whose nearest class mean (L2) is not its label's
   is an *outlier*, else an *inlier* (per-class dispersion in ``report_["dispersion"]``).
2. **Neutralize.** Per class a target ``u_c`` = the midpoint of its inlier and outlier
   means (its inlier mean without outliers; its mean over all samples, with a warning,
   without inliers). ``k_clusters > 1``: mean of per-class FAISS k-means centroids (an
   extension).
3. **Eliminate.** ``T(f) = (f + s) ⊙ β − s`` minimising ``mean ||T(f) − u_y||₂ + α·mean(β)``,
   full-batch AdamW streamed over row chunks, ``n_eliminate_steps`` steps.
4. **Update.** A fresh head on ``T(f)`` trained on the rescued outliers (G1; every
   outlier with ``keep_unrescued=True``) and the inliers (G2) with ``CE_mean(G1) +
   CE_mean(G2)``, ``n_update_steps`` AdamW steps; an empty group falls back to plain
   training on the other (noted in ``report_``). ``keep_unrescued="auto"`` (default)
   fits both G1s and keeps the one the holdout's label-free score prefers.

The returned head folds ``T`` (and the z-scoring of ``standardize``) in: inference is one
``nn.Linear`` on the raw embeddings. A do-no-harm guard (:mod:`pydebias.methods.guard`)
compares it with the ERM head on a held-out part of ``val``. Choices where the paper
leaves room (the z-scores, the choice of G1, the guard) and their evidence: docs/methods.md, "NSF".
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .. import _arrays, cluster
from ..distributed import describe
from ..metrics import predict
from ..validation import check_chunk_rows, check_fraction, check_number
from .base import EmbeddingMethod, copy_head
from .baselines import erm_head
from .guard import guard_check, selection_score

__all__ = ["NSF", "fold_affine", "fold_transform", "keeps_unrescued"]

#: the update step keeps a group's transformed float32 rows in memory up to this size and
#: reads larger ones in chunks at every step (a memmap's outliers can exceed memory)
UPDATE_CACHE_BYTES = 256 << 20


def keeps_unrescued(score_true: float, score_false: float, margin: float) -> bool:
    """``keep_unrescued="auto"``'s rule: keep every outlier in G1 only when that head's
    holdout score beats the paper's (``False``) by more than ``margin``. Shared with the
    study that replays the rule at other margins on recorded scores."""
    return bool(score_true > score_false + margin)


def fold_affine(head: nn.Linear, scale: torch.Tensor, offset: torch.Tensor) -> nn.Linear:
    """``head ∘ (f ↦ f ⊙ scale + offset)`` as one ``nn.Linear``: ``W' = W·diag(scale)``,
    ``b' = b + W·offset`` (computed in float64, stored as head's dtype)."""
    W = head.weight.detach().double()
    b = head.bias.detach().double() if head.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64,
                                                                              device=W.device)
    sc, off = scale.detach().double().to(W.device), offset.detach().double().to(W.device)
    out = nn.Linear(W.shape[1], W.shape[0]).to(device=W.device, dtype=head.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(W * sc)
        out.bias.copy_(b + W @ off)
    return out


def fold_transform(head: nn.Linear, beta: torch.Tensor, shift: torch.Tensor) -> nn.Linear:
    """``head ∘ T`` with ``T(f) = (f + s) ⊙ β − s`` as one ``nn.Linear``:
    ``W' = W·diag(β)``, ``b' = b + W(β ⊙ s − s)``."""
    be, s = beta.detach().double(), shift.detach().double()
    return fold_affine(head, be, be * s - s)


class NSF(EmbeddingMethod):
    """NSF (Let Samples Speak) on a linear head; see the module docstring for the steps.
    Reads ``val`` and the ERM ``head`` (trained on ``train`` when not given), which the
    do-no-harm guard compares against.

    Parameters
    ----------
    alpha : weight of ``mean(β)`` in the elimination loss (paper: 10).
    n_eliminate_steps, n_update_steps : N1 / N2 (default: the authors' Waterbirds 10 / 500).
    lr : AdamW learning rate of both stages (weight decay 0; paper: 1e-3).
    k_clusters : 1 = the paper's inlier/outlier target; > 1 = per-class FAISS k-means
        target (an extension, not in the paper).
    seed : seeds the holdout split, head initialisation, sampling and k-means.
    holdout : fraction of ``val`` held out (class-stratified) for the do-no-harm check;
        0 disables it (the paper fits on all of the set).
    guard, guard_tolerance : the holdout's check (:func:`pydebias.methods.guard.guard_check`;
        ``guard_tolerance`` caps the balanced-accuracy drop) always runs and warns;
        ``guard=True`` returns (a copy of) the ERM head when it calls the NSF head harmful.
        Off by default (its record: docs/methods.md).
    kmeans_iter : Lloyd iterations of the k-means extension.
    standardize : run all four steps on per-neuron z-scores of the fit rows (mean and
        standard deviation of the rows NSF is fitted on; a constant neuron keeps scale 1),
        folded into the returned head. Default on, a choice made by measurement
        (docs/methods.md); ``False`` is the authors' raw-feature setting.
    keep_unrescued : ``True`` puts every outlier in G1, also those the elimination step
        leaves nearer another class's target, which the paper drops (``False``). ``"auto"``
        (default, a choice made by measurement: docs/methods.md, "NSF") fits both and keeps
        ``True`` only when its label-free holdout score (pseudo-group balanced accuracy +
        balanced accuracy) beats ``False``'s by more than ``keep_margin``; without a
        holdout (``holdout=0``) it is the paper's ``False``.
    keep_margin : how much higher ``True``'s score must be for ``"auto"`` to keep it
        (default 0: the higher score wins, a choice made by measurement).
        ``candidate_heads_`` holds the folded head of each ``keep_unrescued`` value fitted
        ({False, True} with "auto"), the returned one among them.
    chunk_rows : rows per chunk for the streaming passes (default: ~16 MB of float32).
    process_group : a ``torch.distributed`` group whose ranks each pass their own ``val``
        rows (``holdout=0``, ``k_clusters=1``): z-scores, class means, targets, both
        stages' losses and gradients and the update's resampling cover all ranks' rows
        (``all_reduce``), so every rank returns the head one process would fit on the
        ranks' rows concatenated in rank order (within float tolerance).
    """

    def __init__(self, alpha: float = 10.0, n_eliminate_steps: int = 10, n_update_steps: int = 500,
                 lr: float = 1e-3, k_clusters: int = 1, seed: int = 0, holdout: float = 0.25,
                 guard: bool = False, guard_tolerance: float = 0.25, kmeans_iter: int = 20,
                 standardize: bool = True, keep_unrescued: Union[bool, str] = "auto",
                 keep_margin: float = 0.0, chunk_rows: Optional[int] = None, process_group=None):
        self.alpha, self.n_eliminate_steps, self.n_update_steps = alpha, n_eliminate_steps, n_update_steps
        self.lr, self.k_clusters, self.seed, self.holdout = lr, k_clusters, seed, holdout
        self.guard, self.guard_tolerance = guard, guard_tolerance
        self.kmeans_iter, self.chunk_rows, self.standardize = kmeans_iter, chunk_rows, standardize
        self.keep_unrescued, self.keep_margin = keep_unrescued, keep_margin
        self.process_group = process_group

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        check_number(self.alpha, "alpha", 0.0)
        for name in ("n_eliminate_steps", "n_update_steps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name}: expected a non-negative integer, got {v!r}")
        check_number(self.lr, "lr", 0.0, low_open=True)
        if not isinstance(self.k_clusters, (int, np.integer)) or self.k_clusters < 1:
            raise ValueError(f"k_clusters: expected an integer >= 1, got {self.k_clusters!r}")
        check_fraction(self.holdout, "holdout")
        check_number(self.guard_tolerance, "guard_tolerance", 0.0)
        check_number(self.kmeans_iter, "kmeans_iter", 1, integer=True)
        check_chunk_rows(self.chunk_rows)
        if not (isinstance(self.keep_unrescued, (bool, np.bool_)) or self.keep_unrescued == "auto"):
            raise ValueError(f"keep_unrescued: expected True, False or 'auto', got {self.keep_unrescued!r}")
        check_number(self.keep_margin, "keep_margin", 0.0)
        if self.process_group is not None:
            from ..distributed import check_group

            check_group(self.process_group)
            if self.holdout > 0 or self.k_clusters > 1:
                raise ValueError("process_group: NSF across processes fits on every rank's val rows without a "
                                 f"holdout or k-means targets; pass holdout=0 and k_clusters=1 (got holdout="
                                 f"{self.holdout}, k_clusters={self.k_clusters})")

    def _sum(self, a):
        """``a`` summed over the process group's ranks (as is without one)."""
        if self.process_group is None:
            return np.asarray(a)
        from ..distributed import global_sum

        return global_sum(a, self.process_group)

    # ------------------------------------------------------------------ helpers
    def _rows(self, x, idx: np.ndarray, device) -> torch.Tensor:
        """float32 rows ``idx`` (sorted for streaming reads) of x on ``device``."""
        if _arrays.is_tensor(x):
            return x[torch.from_numpy(idx).to(x.device)].to(device=device, dtype=torch.float32)
        return torch.from_numpy(np.asarray(x[idx], dtype=np.float32)).to(device)

    def _zscores(self, x, device):
        """float32 z-scores of ``x`` (streamed twice: moments, then the copy; in memory,
        or for a large ``np.memmap`` in a scratch memmap) and the per-neuron center and scale."""
        from .. import stats

        st = stats.neuron_stats(x, groups=np.zeros(x.shape[0], dtype=np.int64), n_groups=1, quantiles=(),
                                chunk_rows=self.chunk_rows, process_group=self.process_group)
        center = torch.from_numpy(st.mean[0]).to(device, torch.float64)
        sd = np.sqrt(st.m2[0] / int(st.count[0]))  # population sd; N >= 1 here
        scale = torch.from_numpy(np.where(sd > 1e-12, sd, 1.0)).to(device, torch.float64)
        if isinstance(x, np.memmap):
            out = _arrays.empty_like_source(x, x.shape, np.float32)
            view = torch.from_numpy(out) if out.size else torch.empty(x.shape)
        else:
            view = torch.empty(x.shape, dtype=torch.float32, device=device)
            out = view if _arrays.is_tensor(x) else view.numpy()
        rows = _arrays.default_chunk_rows(x.shape[1], 4, 16 << 20) if self.chunk_rows is None else self.chunk_rows
        for sl in _arrays.row_chunks(x.shape[0], rows):
            f = _arrays.as_tensor(x[sl]).to(device=device, dtype=torch.float64)
            view[sl] = ((f - center) / scale).to(torch.float32)
        return out, center.float(), scale.float()

    def transform(self, features) -> torch.Tensor:
        """The learned element-wise map of fitted NSF on raw ``features``: z-scores (when
        ``standardize``) then ``T``; ``transformed_head_(transform(f)) == head_(f)``."""
        if not hasattr(self, "beta_"):
            raise RuntimeError("NSF: call fit() before transform()")
        f = _arrays.as_tensor(features).to(torch.float32)
        if self.center_ is not None:
            f = (f - self.center_.to(f.device)) / self.scale_.to(f.device)
        return (f + self.shift_.to(f.device)) * self.beta_.to(f.device) - self.shift_.to(f.device)

    # ------------------------------------------------------------------ fit
    def fit(self, train, val=None, *, head: Optional[nn.Linear] = None) -> nn.Linear:
        """Run NSF on ``val`` (features + class labels); returns the folded head.

        ``head`` (the ERM head) is used only by the do-no-harm check and as its fallback.
        """
        self._check_params()
        id_set = self._need_val(val, "NSF", process_group=self.process_group)
        C, M = id_set.n_classes, id_set.n_features
        pg = self.process_group
        if pg is not None:  # a rank's rows may lack a class
            from ..distributed import global_max, sum_grads

            C = global_max(C, pg)
        notes: List[str] = []
        hold = None
        if self.holdout > 0:
            head = erm_head(train, head, M, C, self.seed)
            fit_set, hold = id_set.split_holdout(self.holdout, seed=self.seed)
            if len(fit_set) == 0 or len(hold) == 0:
                raise ValueError(f"holdout: {self.holdout} leaves an empty part of a {len(id_set)}-row set; "
                                 "lower it or pass holdout=0")
        else:
            fit_set = id_set
            notes.append("holdout=0: do-no-harm check off (NSF fitted on all of val)")
        x, y = fit_set.features, fit_set.labels
        device = x.device if _arrays.is_tensor(x) else torch.device("cpu")
        N = len(fit_set)  # this rank's rows
        N_all = int(self._sum(N))  # every rank's
        center = scale = None
        if self.standardize:
            x, center, scale = self._zscores(x, device)
        gen = torch.Generator().manual_seed(int(self.seed))

        # 1. identify
        disp = cluster.dispersion(x, y, C, chunk_rows=self.chunk_rows, process_group=pg)
        outlier = disp.nearest != y
        present = disp.count > 0

        # 2. neutralize
        split_means, split_counts = cluster.class_means(x, y + C * outlier, 2 * C, self.chunk_rows,
                                                        process_group=pg)
        mu_in, mu_out = split_means[:C], split_means[C:]
        n_in, n_out = split_counts[:C], split_counts[C:]
        targets = np.zeros((C, M), dtype=np.float64)
        no_inlier = [int(c) for c in range(C) if present[c] and n_in[c] == 0]
        for c in np.flatnonzero(present):
            if n_in[c] == 0:
                targets[c] = disp.means[c]
            elif n_out[c] == 0:
                targets[c] = mu_in[c]
            else:
                targets[c] = 0.5 * (mu_in[c] + mu_out[c])
        if no_inlier:
            msg = (f"NSF: class(es) {no_inlier} have no inlier (every sample is nearer another class "
                   "mean); their neutral target is the class mean over all their samples")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            notes.append(msg)
        target_kind = "inlier/outlier midpoint (paper)"
        if self.k_clusters > 1:
            km = cluster.kmeans(x, int(self.k_clusters), n_iter=self.kmeans_iter, seed=self.seed, labels=y,
                                n_classes=C)
            for c in np.flatnonzero(present):
                targets[c] = km.class_centroids(int(c)).astype(np.float64).mean(0)
            target_kind = f"mean of {self.k_clusters} per-class k-means cluster means (extension)"
        U = torch.from_numpy(targets).to(device, torch.float32)

        # 3. eliminate
        beta = torch.ones(M, device=device, requires_grad=True)
        shift = torch.zeros(M, device=device, requires_grad=True)
        opt = torch.optim.AdamW([beta, shift], lr=self.lr, weight_decay=0.0)
        yt = torch.from_numpy(y).to(device)
        rows = _arrays.default_chunk_rows(M, 4, 16 << 20) if self.chunk_rows is None else self.chunk_rows
        elim_loss: List[float] = []
        for _ in range(self.n_eliminate_steps):
            opt.zero_grad()
            total = 0.0
            for sl in _arrays.row_chunks(N, rows):
                f = _arrays.as_tensor(x[sl]).to(device=device, dtype=torch.float32)
                d = torch.linalg.vector_norm((f + shift) * beta - shift - U[yt[sl]], dim=1)
                part = d.sum() / N_all
                part.backward()
                total += float(part.detach())
            if pg is not None:
                total = sum_grads([beta, shift], total, pg)
            reg = self.alpha * beta.mean()
            reg.backward()
            elim_loss.append(total + float(reg.detach()))
            opt.step()
        beta_, shift_ = beta.detach(), shift.detach()

        def T(f):
            return (f + shift_) * beta_ - shift_

        # 4. update: who is rescued
        out_idx = np.flatnonzero(outlier)
        rescued = np.zeros(out_idx.size, dtype=bool)
        tgt_ids = np.flatnonzero(present)
        for s in range(0, out_idx.size, rows):
            part = out_idx[s:s + rows]
            tf = T(self._rows(x, part, device))
            near, _ = cluster.nearest_centroid(tf, targets[tgt_ids].astype(np.float32), gpu="auto")
            rescued[s:s + part.size] = tgt_ids[near] == y[part]
        g2 = np.flatnonzero(~outlier)

        def update(keep: bool):
            """A fresh head on T(f) trained on G1 (rescued outliers; every outlier with ``keep``)
            and G2 (inliers): (head, losses, update mode, G1 and G2 sizes, messages)."""
            # keep: every outlier joins G1 (the paper drops those still nearer another target)
            g1 = out_idx if keep else out_idx[rescued]
            msgs: List[Tuple[str, str]] = []  # (warning, note), given for the head returned only
            n1, n2 = (int(v) for v in self._sum([g1.size, g2.size]))
            learnt = self._sum(np.bincount(y[g1], minlength=C)[:C] + np.bincount(y[g2], minlength=C)[:C]) > 0

            unlearnt = [int(c) for c in np.flatnonzero(present & ~learnt)]
            if unlearnt and (n1 or n2):
                msg = (f"NSF: class(es) {unlearnt} have no sample in G1 (rescued) or G2 (inliers): "
                       "the updated head never sees them")
                msgs.append((msg, msg))
            lin = nn.Linear(M, C).to(device)
            bound = 1.0 / np.sqrt(M)
            with torch.no_grad():  # nn.Linear's default init, drawn from our seeded generator
                lin.weight.copy_((torch.rand(C, M, generator=gen) * 2 - 1) * bound)
                lin.bias.copy_((torch.rand(C, generator=gen) * 2 - 1) * bound)
            hopt = torch.optim.AdamW(lin.parameters(), lr=self.lr, weight_decay=0.0)
            ce = nn.functional.cross_entropy

            def cached(idx):
                """T(rows idx) and their labels, held while they fit UPDATE_CACHE_BYTES."""
                if idx.size * M * 4 > UPDATE_CACHE_BYTES:
                    return None
                return T(self._rows(x, idx, device)), yt[torch.from_numpy(idx).to(device)]

            def mean_ce_backward(idx, held, n_rows) -> float:
                """Backward of CE over rows ``idx`` (``held``: their cached rows) summed and
                divided by ``n_rows`` (the group's rows on all ranks: a mean over the union),
                read in row chunks so that a group larger than the cache costs one chunk."""
                if held is not None and idx.size == n_rows:
                    loss = ce(lin(held[0]), held[1])
                    loss.backward()
                    return float(loss.detach())
                total = 0.0
                for s in range(0, idx.size, rows):
                    part = idx[s:s + rows]
                    f, yy = (held[0][s:s + rows], held[1][s:s + rows]) if held is not None else \
                        (T(self._rows(x, part, device)), yt[torch.from_numpy(part).to(device)])
                    pl = ce(lin(f), yy, reduction="sum") / n_rows
                    pl.backward()
                    total += float(pl.detach())
                return total

            def step_done(loss: float) -> None:
                if pg is not None:  # the union's gradient and loss on every rank
                    loss = sum_grads(lin.parameters(), loss, pg)
                hopt.step()
                upd_loss.append(loss)

            def first_row(part: np.ndarray) -> int:
                """The global number of this rank's first row of ``part`` (ranks in order)."""
                if pg is None:
                    return 0
                import torch.distributed as dist

                from ..distributed import all_reduce

                sizes = np.zeros(dist.get_world_size(pg), np.int64)
                sizes[dist.get_rank(pg)] = part.size
                return int(all_reduce(sizes, "sum", pg)[:dist.get_rank(pg)].sum())

            def resample(large, start: int, n_large: int, n_pick: int) -> np.ndarray:
                """Sorted rows of this rank among ``n_pick`` draws with replacement from the
                ``n_large`` rows of the larger group on all ranks (this rank's numbered from
                ``start``): every rank draws the same global indices with the shared generator."""
                draws = torch.randint(0, n_large, (n_pick,), generator=gen).numpy()
                mine = draws[(draws >= start) & (draws < start + large.size)] - start
                return np.sort(large[mine])

            upd_loss: List[float] = []
            if n1 and n2:
                mode = "balanced: CE_mean(G1) + CE_mean(G2), smaller group whole, larger resampled"
                (small, n_small), (large, n_large) = ((g1, n1), (g2, n2)) if n1 <= n2 else ((g2, n2), (g1, n1))
                held_small, start = cached(small), first_row(large)
                for _ in range(self.n_update_steps):
                    pick = resample(large, start, n_large, n_small)
                    hopt.zero_grad()
                    step_done(mean_ce_backward(small, held_small, n_small)
                              + mean_ce_backward(pick, cached(pick), n_small))
            else:
                if n2:
                    only, n_only = g2, n2
                    mode = "G2 only: no outlier was rescued (G1 empty); plain training on the inliers"
                elif n1:
                    only, n_only = g1, n1
                    mode = "G1 only: no inlier (G2 empty); plain training on the rescued outliers"
                else:
                    only, n_only = np.arange(N), N_all
                    mode = "all rows: G1 and G2 both empty; plain training on every sample"
                msgs.append((f"NSF: {mode}", mode))  # (warning, note)
                held_only = cached(only)
                for _ in range(self.n_update_steps):
                    hopt.zero_grad()
                    step_done(mean_ce_backward(only, held_only, n_only))
            return lin, upd_loss, mode, n1, n2, msgs

        # keep_unrescued="auto" fits both updates from the same draws (each is the head that
        # value alone gives) and keeps True only when its holdout score beats False's by more than keep_margin
        gen_state = gen.get_state()
        fits = {}
        if self.keep_unrescued != "auto":
            candidates = (bool(self.keep_unrescued),)
        elif hold is not None:
            candidates = (False, True)
        else:
            candidates = (False,)
            notes.append("keep_unrescued='auto' without a holdout (holdout=0): the paper's False")
        for keep in candidates:
            gen.set_state(gen_state)
            fits[keep] = update(keep)

        def fold(lin):
            folded = fold_transform(lin, beta_, shift_)
            if self.standardize:  # the head read z = (f - center) / scale
                inv = 1.0 / scale.double()
                folded = fold_affine(folded, inv, -center.double() * inv)
            return folded

        keep_choice = None
        self.candidate_heads_ = {k: fold(f[0]) for k, f in fits.items()}
        if len(fits) == 2:
            right = predict(head, hold.features) == hold.labels
            scores = {k: selection_score(h, hold, right) for k, h in self.candidate_heads_.items()}
            keep = keeps_unrescued(scores[True], scores[False], self.keep_margin)
            keep_choice = {"chosen": keep, "scores": {str(k): float(v) for k, v in scores.items()},
                           "margin": float(self.keep_margin)}
        else:
            keep = next(iter(fits))
        lin, upd_loss, mode, n1, n2, msgs = fits[keep]
        for msg, note in msgs:
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            notes.append(note)
        n_out_all, n_rescued = (int(v) for v in self._sum([out_idx.size, rescued.sum()]))
        dropped = n_out_all - n1
        if not all(np.isfinite(elim_loss)) or not all(np.isfinite(upd_loss)):
            raise FloatingPointError("NSF: a loss became NaN/inf; check the features' scale or lower lr")

        self.beta_, self.shift_ = beta_.cpu(), shift_.cpu()
        self.targets_ = targets
        self.outlier_ = outlier  # over the rows NSF was fitted on (id_set minus the holdout; this rank's)
        self.transformed_head_ = lin  # the fresh head on T(f), before folding
        folded = self.candidate_heads_[keep]
        self.center_ = center.cpu() if center is not None else None
        self.scale_ = scale.cpu() if scale is not None else None
        self.debiased_head_ = self.head_ = folded

        counts = {"n_fit": N_all, "outliers": n_out_all, "rescued": n_rescued, "g1": n1, "dropped": dropped,
                  "inliers": n2,
                  "outliers_per_class": self._sum(np.bincount(y[out_idx], minlength=C)[:C]).astype(int).tolist(),
                  "rescued_per_class":
                      self._sum(np.bincount(y[out_idx[rescued]], minlength=C)[:C]).astype(int).tolist()}
        self.report_ = {
            "method": "NSF", "params": {**self.get_params(), "process_group": describe(pg)},
            "dispersion": disp.to_dict(), "counts": counts,
            "targets": target_kind, "no_inlier_classes": no_inlier, "eliminate_loss": elim_loss,
            "update_loss": upd_loss, "update_mode": mode,
            "beta": {"min": float(beta_.min()), "mean": float(beta_.mean()), "max": float(beta_.max())},
            "shift_norm": float(shift_.norm()), "guard": None, "returned": "nsf", "notes": notes,
            "keep_unrescued": keep_choice,
        }

        # do no harm
        if hold is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                g = guard_check(self.debiased_head_, head, hold, float(self.guard_tolerance), "NSF")
            notes.extend(str(w.message) for w in caught)
            for w in caught:
                warnings.warn(w.message, RuntimeWarning, stacklevel=2)
            g["kept_erm_head"] = bool(self.guard and g["harmful"])
            self.report_["guard"] = g
            if g["kept_erm_head"]:
                self.head_ = copy_head(head)
                self.report_["returned"] = "erm"
        return self.head_
