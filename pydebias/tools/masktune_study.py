"""`pydebias report --masktune`: ERM and MaskTune on the built-ins whose shortcut MaskTune
was made for (a small pasted square, a tint, a photographed background): worst-group and
mean accuracy, selective classification, how much of each image the masks cover (and, on
fashion-square, how much of the square). Whole-model method: every fit runs the network."""
from __future__ import annotations

import hashlib
import time
from typing import Dict, List, Sequence

import numpy as np
import torch

from .report import PRETRAINED_IMAGE, PRETRAINED_IMAGE_BENCHMARKS

#: (benchmark, backbone label, loader parameters)
MASKTUNE_CASES = (("fashion-square", "two-stage CNN", {"binary": True}),
                  ("colored-fashion", "two-stage CNN", {}),
                  *((name, PRETRAINED_IMAGE, {}) for name in PRETRAINED_IMAGE_BENCHMARKS))
#: (label, MaskTune parameters, part of the sweep): no masks, the paper's masks (dilate=0), masks grown by
#: 1-5 pixels (ours; the default, 3, was chosen on seeds 0-1 of the two CNN cases). The sweep's
#: other entries are skipped on the EfficientNet built-ins (a fit takes minutes here)
PAPER = "MaskTune, dilate=0 (paper)"
#: the control: the same epoch of fine-tuning on the unmasked images
CONTROL = "fine-tune, no masks (control)"
MASKTUNE_METHODS = ((CONTROL, {"sigmas": float("inf")}, False), (PAPER, {"dilate": 0}, False),
                    *((f"MaskTune, dilate={k}", {"dilate": k}, True) for k in (1, 2)),
                    ("MaskTune", {}, False),
                    *((f"MaskTune, dilate={k}", {"dilate": k}, True) for k in (4, 5)))
#: the cases that run only the entries outside the sweep
NO_SWEEP = PRETRAINED_IMAGE_BENCHMARKS
#: entries only some cases run, on the saliency map's resolution: the paper's masks from the
#: CNN's first conv block (28 x 28, not 14 x 14); EfficientNet-Lite0's last conv block is
#: 2 x 2 at 64 px, so the 4 x 4 map of the last block its ERM did not train is measured too
CASE_METHODS = {"fashion-square": (("MaskTune, dilate=0, layer=conv.1 (28 x 28)", {"dilate": 0, "layer": "conv.1"},
                                    False),),
                **{name: (("MaskTune, layer=blocks.10 (4 x 4)", {"layer": "blocks.10"}, False),)
                   for name in PRETRAINED_IMAGE_BENCHMARKS}}
#: training images drawn per case for the grid of masked examples
N_EXAMPLES = 4


def _case_params(name: str, d: Dict) -> Dict:
    """What MaskTune needs to fine-tune like the case's ERM did: fashion CNNs, Adam 1e-3,
    batch 128, every layer; the EfficientNet built-ins, batch 64, only the blocks ERM trained,
    and masked pixels black in the normalised input."""
    if name not in PRETRAINED_IMAGE_BENCHMARKS:
        return {}
    from ..models.efficientnet import IMAGENET_MEAN, IMAGENET_STD

    upto = d["info"]["params"]["finetune_from"]
    black = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    return {"batch_size": d["info"]["params"]["batch_size"], "fill": black,
            "frozen": ["stem"] + [f"blocks.{i}" for i in range(upto)]}


def _figures(logits: torch.Tensor, y: torch.Tensor, groups: np.ndarray) -> Dict:
    from ..metrics import GroupReport

    r = GroupReport(y.numpy(), logits.argmax(1).numpy(), groups, logits.shape[1])
    return {"mean": r.accuracy, "worst_group": r.worst_group_accuracy,
            "per_group": [g["accuracy"] for g in r.per_group if g["accuracy"] is not None]}


def _erm_selective(model, xv, yv, xt, yt):
    """ERM alone (maximum softmax probability), thresholds on val, error on test."""
    from ..methods.base import model_outputs
    from ..metrics import selective_curve, selective_thresholds

    pv, pt = torch.softmax(model_outputs(model, xv), 1), torch.softmax(model_outputs(model, xt), 1)
    thr = selective_thresholds(pv.max(1).values.numpy())
    return selective_curve(pt.max(1).values.numpy(), (pt.argmax(1) == yt).numpy(), thr)


def masktune_study(settings: Sequence, seed: int = 0, progress: bool = True) -> List[Dict]:
    """One row per case of :data:`MASKTUNE_CASES` whose benchmark is among ``settings``:
    ERM's and each :data:`MASKTUNE_METHODS` entry's test figures, selective curves
    (thresholds on val), masked fractions, fit seconds; ``_examples`` (not written to
    JSON) holds a few training images with their saliency and masks for the grid."""
    from ..data.fashion import SQUARE_AT, SQUARE_SIZE
    from ..methods import MaskTune
    from ..methods.base import model_outputs
    from ..results import data_hash
    from .report import loaded_cases

    rows = []
    for (name, bb, params), d in loaded_cases(MASKTUNE_CASES, settings, seed, rows, "MaskTune", progress):
        erm = d["backbone"].eval()
        xtr, ytr = d["inputs"]("train")
        xv, yv = d["inputs"]("val")
        xt, yt = d["inputs"]("test")
        gt = d["test"].groups
        train = torch.utils.data.TensorDataset(xtr, ytr)
        val = torch.utils.data.TensorDataset(xv, yv)
        digest = hashlib.sha256(xtr.numpy().tobytes() + ytr.numpy().tobytes()).hexdigest()[:16]
        row = {"benchmark": name, "backbone": bb, "params": params, "seed": seed,
               "data_hash": data_hash(d), "train_hash": digest,
               "ERM": {**_figures(model_outputs(erm, xt), yt, gt), "selective": _erm_selective(erm, xv, yv, xt, yt)}}
        square = d["train"].concepts is not None
        pick = np.random.default_rng(seed).choice(len(ytr), N_EXAMPLES, replace=False)
        if square:  # show images with the square
            on = np.flatnonzero(d["train"].concepts == 1)
            pick = np.random.default_rng(seed).choice(on, N_EXAMPLES, replace=False)
        for label, kw, sweep in MASKTUNE_METHODS + CASE_METHODS.get(name, ()):
            if sweep and name in NO_SWEEP:
                continue
            m = MaskTune(seed=seed, **{**_case_params(name, d), **kw})
            t = time.perf_counter()
            tuned = m.fit(erm, train, val, progress=progress)
            secs = time.perf_counter() - t
            rep = {**_figures(model_outputs(tuned, xt), yt, gt), "selective": m.selective_curve(
                       torch.utils.data.TensorDataset(xt, yt)),
                   "masked_fraction": m.report_["masked_fraction_mean"], "seconds": secs,
                   "saliency_seconds": m.report_["saliency_seconds"], "layer": m.report_["layer"],
                   "losses": m.report_["losses"]}
            if square:
                r, c = SQUARE_AT
                on = torch.from_numpy(d["train"].concepts == 1)
                sq = m.masks_[on][:, r:r + SQUARE_SIZE, c:c + SQUARE_SIZE].flatten(1)
                rep["square_covered"] = float(sq.float().mean())
                rep["square_fully_covered"] = float(sq.all(1).float().mean())
            row[label] = rep
            if "_examples" not in row:
                row["_examples"] = {"images": xtr[pick], "saliency": m.saliency(erm, xtr[pick]),
                                    "masks": {}}
            row["_examples"]["masks"][label] = m.masks_[pick]
        rows.append(row)
    return rows


def _mean(rs, label, key):
    vals = [r[label].get(key) for r in rs if r[label].get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _fmt(v, scale=100.0, digits=1):
    return "–" if v is None else f"{scale * v:.{digits}f}"


def masktune_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    """Worst-group / mean accuracy, selective error at 90 % coverage, masked fractions per
    case and method: mean over seeds, with the range of the worst group."""
    from .report import by_case, seeds_label

    labels = ["ERM"] + [m[0] for m in MASKTUNE_METHODS]
    labels += list(dict.fromkeys(m[0] for ms in CASE_METHODS.values() for m in ms))
    out = ["MaskTune on the built-ins, " + seeds_label(seeds) + ": test accuracy, %, worst group (range over "
           "seeds) and mean; selective error, %, of the accepted test rows at 90 % and 100 % coverage "
           "(thresholds on val; ERM: maximum softmax, MaskTune: its two-model rule); share of each training "
           "image masked; on fashion-square, share of the square's pixels masked and of square images whose "
           "square is masked whole. fashion-square: the binary construction (classes 0-4 vs 5-9, square on "
           "99 % of class 0 and 1 % of class 1).", "",
           "| benchmark | backbone | method | worst group | mean | sel. error @90 | @100 | masked | square masked "
           "| square whole | fit s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (name, bb), rs in by_case(rows).items():
        for label in labels:
            if any(label not in r for r in rs):
                continue
            wg = [r[label]["worst_group"] for r in rs]
            rng = f" ({100 * min(wg):.1f}–{100 * max(wg):.1f})" if len(rs) > 1 else ""
            sel = {c: float(np.mean([next(s["error"] for s in r[label]["selective"] if s["coverage"] == c)
                                     for r in rs])) for c in (0.9, 1.0)}
            cells = [f"{100 * np.mean(wg):.1f}{rng}", _fmt(_mean(rs, label, "mean")), _fmt(sel[0.9]),
                     _fmt(sel[1.0]), _fmt(_mean(rs, label, "masked_fraction")),
                     _fmt(_mean(rs, label, "square_covered")), _fmt(_mean(rs, label, "square_fully_covered")),
                     _fmt(_mean(rs, label, "seconds"), 1.0, 0)]
            out.append(f"| {name} | {bb} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def masktune_figures(rows: List[Dict], out: str) -> List[str]:
    """``masktune_coverage.png`` (selective error against coverage, ERM and MaskTune, per
    case; first seed) and ``masktune_masks.png`` (training images, ERM's XGradCAM map, the
    paper's mask and the default one, grown by 3 pixels)."""
    import os

    from ..saliency import apply_mask
    from .plots import _pyplot, have_matplotlib, save_png, save_saliency_grid

    if not have_matplotlib():
        return []
    done = [r for r in rows if "skipped" not in r]
    first = {}
    for r in done:
        first.setdefault(r["benchmark"], r)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 3.2), squeeze=False)
    for ax, r in zip(axes[0], first.values()):
        for label, style in (("ERM", "o-"), (CONTROL, "x:"), (PAPER, "s-"), ("MaskTune", "^--")):
            cur = r[label]["selective"]
            ax.plot([100 * s["coverage"] for s in cur], [100 * (s["error"] or 0) for s in cur], style, label=label)
        ax.set_title(f"{r['benchmark']} (seed {r['seed']})", fontsize=9)
        ax.set_xlabel("coverage, %")
        ax.set_ylabel("error on accepted test rows, %")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [save_png(fig, os.path.join(out, "masktune_coverage.png"))]
    ex = [r for r in first.values() if "_examples" in r]
    if ex:
        # one grid per case, stacked: the images differ in size and channels across cases
        imgs, cols = [], None
        for r in ex:
            e = r["_examples"]
            m0, m2 = e["masks"][PAPER], e["masks"]["MaskTune"]
            path = os.path.join(out, f"masktune_masks_{r['benchmark']}.png")
            cols = ["image", "XGradCAM", "mask (paper)", "masked (paper)", "mask, dilate=3"]
            save_saliency_grid(path, e["images"], [e["saliency"], m0, apply_mask(e["images"], m0, e["images"].min()),
                                                   m2], titles=cols,
                               row_labels=[r["benchmark"]] * len(e["images"]))
            imgs.append(path)
        paths += imgs
    return paths
