"""`pydebias report --blade`: ERM and BLADE on colored-fashion (a tint, small CNN) and the
fashion-on-photos built-ins (a photographed background, ImageNet EfficientNet-Lite0):
worst-group and mean accuracy; how well the pseudo bias domains match the true attribute;
whether the translations carry the target domain's colour; the refinement weights per group; a
control (the same fine-tuning epochs without BLADE) and two ablations that reuse the
fit's translator. Whole-model method: every fit runs the network."""
from __future__ import annotations

import hashlib
import time
from typing import Dict, List, Sequence

import numpy as np
import torch

from .report import PRETRAINED_IMAGE, PRETRAINED_IMAGE_BENCHMARKS

#: (benchmark, backbone label, loader parameters)
BLADE_CASES = (("colored-fashion", "two-stage CNN", {}),
               *((name, PRETRAINED_IMAGE, {}) for name in PRETRAINED_IMAGE_BENCHMARKS))
#: the control: BLADE with refinement (alpha = 1) and alignment (lam = 0) off is a plain
#: cross-entropy fine-tune of the same epochs (tests/test_blade.py checks the equality)
CONTROL = "fine-tune, no BLADE (control)"
#: (label, BLADE parameters): runs after the default fit, with its translator
BLADE_VARIANTS = ((CONTROL, {"alpha_min": 1.0, "lam": 0.0}),
                  ("BLADE, no alignment (lam=0)", {"lam": 0.0}),
                  ("BLADE, no refinement (alpha=1)", {"alpha_min": 1.0}))
#: training images drawn per case for the grid of translations
N_EXAMPLES = 6


def _case_params(name: str, d: Dict) -> Dict:
    """Fine-tune like the case's ERM did: fashion CNN, every layer, batch 128, width-32
    translator; the EfficientNet built-ins, only the blocks ERM trained, batch 64, and a
    width-16 translator (a width-32 one at 64 px takes 15 minutes on 2 cores)."""
    if name not in PRETRAINED_IMAGE_BENCHMARKS:
        return {}
    upto = d["info"]["params"]["finetune_from"]
    return {"batch_size": d["info"]["params"]["batch_size"], "translator_width": 16,
            "frozen": ["stem"] + [f"blocks.{i}" for i in range(upto)]}


def _translator_cache(name: str, digest: str, method) -> str:
    """Where the study keeps a case's trained translator: keyed by the train images, every
    BLADE parameter and the seed (the pseudo domains it was trained on follow from them)."""
    import os

    from ..data.cache import cache_key, cache_root

    params = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in method.get_params().items()
              if k != "translator"}
    key = cache_key(f"{name}-blade-translator", {"train": digest, **params}, method.seed, version="blade-1")
    return os.path.join(cache_root(), f"{name}-blade-translator-{key[:24]}.pt")


def _fit_cached(name: str, digest: str, method, erm, train, progress: bool):
    """``method.fit(erm, train)`` with its translator from the cache when one was trained
    before (then the fit trains everything else); returns ``(model, translator log)``."""
    from ..data.cache import load_cache, save_cache
    from ..translate import Translator

    path = _translator_cache(name, digest, method)
    hit = load_cache(path)
    if hit is not None:
        g = Translator(tuple(hit["shape"]), hit["n_domains"], hit["width"])
        g.load_state_dict(hit["state_dict"])
        method.translator = g.eval()
        try:
            return method.fit(erm, train, progress=progress), hit["log"]
        finally:
            method.translator = None
    tuned = method.fit(erm, train, progress=progress)
    log = method.report_["translator"]
    save_cache(path, {"state_dict": method.translator_.state_dict(), "shape": list(method.translator_.shape),
                      "n_domains": method.translator_.n_domains, "width": method.translator_width, "log": log})
    return tuned, log


def colour_probe(x: torch.Tensor, attr: np.ndarray):
    """Nearest mean of per-channel image means, fitted on real images and their true
    attribute: a predictor of the attribute from colour alone (tint, background)."""
    feats = x.float().mean((2, 3)).numpy()
    means = np.stack([feats[attr == a].mean(0) for a in range(int(attr.max()) + 1)])

    def predict(z: torch.Tensor) -> np.ndarray:
        f = z.float().mean((2, 3)).numpy()
        return ((f[:, None, :] - means[None]) ** 2).sum(2).argmin(1)

    return predict


def _figures(model, x, y, groups) -> Dict:
    from ..methods.base import model_outputs
    from ..metrics import GroupReport

    r = GroupReport(y.numpy(), model_outputs(model, x).argmax(1).numpy(), groups, 2)
    return {"mean": r.accuracy, "worst_group": r.worst_group_accuracy,
            "per_group": [g["accuracy"] for g in r.per_group]}


def blade_study(settings: Sequence, seed: int = 0, progress: bool = True) -> List[Dict]:
    """One row per case of :data:`BLADE_CASES` whose benchmark is among ``settings``:
    ERM's, BLADE's and each :data:`BLADE_VARIANTS` entry's test figures, BLADE's domain
    agreement, translation probe, alpha per group, translator losses, seconds;
    ``_examples`` (not written to JSON) holds a few training images and translations."""
    from ..methods import BLADE
    from ..methods.blade import domain_agreement
    from ..translate import translate
    from ..results import data_hash
    from .report import loaded_cases

    rows = []
    for (name, bb, params), d in loaded_cases(BLADE_CASES, settings, seed, rows, "BLADE", progress):
        erm = d["backbone"].eval()
        xtr, ytr = d["inputs"]("train")
        xt, yt = d["inputs"]("test")
        gtr, gt = d["train"].groups, d["test"].groups
        attr = gtr % 2
        train = torch.utils.data.TensorDataset(xtr, ytr)
        digest = hashlib.sha256(xtr.numpy().tobytes() + ytr.numpy().tobytes()).hexdigest()[:16]
        row = {"benchmark": name, "backbone": bb, "params": params, "seed": seed,
               "data_hash": data_hash(d), "train_hash": digest,
               "ERM": _figures(erm, xt, yt, gt)}
        kw = _case_params(name, d)
        m = BLADE(seed=seed, **kw)
        t = time.perf_counter()
        tuned, tlog = _fit_cached(name, digest, m, erm, train, progress)
        secs = time.perf_counter() - t
        probe = colour_probe(xtr, attr)
        dom_truth = domain_agreement(m.domains_, attr, gtr)
        # the translation's target, in true-attribute terms: the attribute its pseudo domain stands for
        k = m.translator_.n_domains
        stand = np.array([np.bincount(attr[m.domains_ == j], minlength=2).argmax() if (m.domains_ == j).any()
                          else j for j in range(k)])
        moved = probe(translate(m.translator_, xtr, m.targets_)) == stand[m.targets_]
        # fit seconds without the translator when it came from the cache: add the time it took to train
        secs += tlog["seconds"] if m.report_["translator"] is None else 0.0
        row["BLADE"] = {**_figures(tuned, xt, yt, gt), "seconds": secs, "stage_seconds": m.report_["seconds"],
                        "domain_agreement": dom_truth, "domain_sizes": m.report_["domain_sizes"],
                        "colour_probe_real": float((probe(xtr) == attr).mean()),
                        "translated_to_target": float(moved.mean()),
                        "alpha_per_group": [float(m.alpha_[gtr == g].mean()) for g in range(4)],
                        "alpha_quantiles": m.report_["alpha_quantiles"],
                        "translator": tlog, "translator_cached": m.report_["translator"] is None,
                        "losses": m.report_["losses"],
                        "bias_model": {**_figures(m.bias_model_, xt, yt, gt), "log": m.report_["bias_model"]}}
        for label, vkw in BLADE_VARIANTS:
            v = BLADE(seed=seed, **{**kw, **vkw, "translator": m.translator_})
            t = time.perf_counter()
            out = v.fit(erm, train, progress=progress)
            row[label] = {**_figures(out, xt, yt, gt), "seconds": time.perf_counter() - t}
        pick = np.random.default_rng(seed).choice(len(ytr), N_EXAMPLES, replace=False)
        row["_examples"] = {"images": xtr[pick], "translated": translate(m.translator_, xtr[pick], m.targets_[pick]),
                            "labels": [f"y={int(ytr[i])}, domain {int(m.domains_[i])} -> {int(m.targets_[i])}"
                                       for i in pick]}
        rows.append(row)
    return rows


def blade_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    """Worst-group / mean accuracy per case and method (mean over seeds, range of the
    worst group), then BLADE's domain agreement, translation probe and alpha per group."""
    from .report import by_case, seeds_label

    labels = ["ERM", "BLADE"] + [v[0] for v in BLADE_VARIANTS]
    out = ["BLADE on the built-ins, " + seeds_label(seeds) + ": test accuracy, %, worst group (range over seeds) / "
           "mean. Control: the same fine-tuning epochs with cross-entropy on the unchanged images.", "",
           "| benchmark | backbone | " + " | ".join(labels) + " |", "| --- | --- | " + " | ".join("---" for _ in labels)
           + " |"]
    cases = by_case(rows)
    for (name, bb), rs in cases.items():
        cells = []
        for label in labels:
            wg = [r[label]["worst_group"] for r in rs]
            rng = f" ({100 * min(wg):.1f}–{100 * max(wg):.1f})" if len(rs) > 1 else ""
            cells.append(f"{100 * np.mean(wg):.1f}{rng} / {100 * np.mean([r[label]['mean'] for r in rs]):.1f}")
        out.append(f"| {name} | {bb} | " + " | ".join(cells) + " |")
    out += ["", "BLADE's pieces (mean over seeds): pseudo domains against the true attribute (best relabelling), "
            "overall and per group (groups 2y + a; 1 and 2 are the minority ones); share of translations a colour "
            "probe (nearest mean of channel means, fitted on real train images) puts in the target domain (on real "
            "images it is right for the share in brackets); mean alpha per group (1 keeps the image); the "
            "bias-amplified model's worst group / mean; fit seconds.", "",
            "| benchmark | domains match | per group | translated to target | alpha per group | bias model | fit s |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for (name, bb), rs in cases.items():
        b = [r["BLADE"] for r in rs]
        per = np.mean([x["domain_agreement"]["per_group"] for x in b], 0)
        alpha = np.mean([x["alpha_per_group"] for x in b], 0)
        out.append(f"| {name} | {100 * np.mean([x['domain_agreement']['overall'] for x in b]):.1f} | "
                   + " / ".join(f"{100 * v:.0f}" for v in per)
                   + f" | {100 * np.mean([x['translated_to_target'] for x in b]):.1f} "
                     f"({100 * np.mean([x['colour_probe_real'] for x in b]):.1f}) | "
                   + " / ".join(f"{v:.2f}" for v in alpha)
                   + f" | {100 * np.mean([x['bias_model']['worst_group'] for x in b]):.1f} / "
                     f"{100 * np.mean([x['bias_model']['mean'] for x in b]):.1f} | "
                     f"{np.mean([x['seconds'] for x in b]):.0f} |")
    return "\n".join(out) + "\n"


def blade_figures(rows: List[Dict], out: str) -> List[str]:
    """``blade_translations_<benchmark>.png``: training images and their translation into
    the other pseudo domain (first seed per case)."""
    import os

    from .plots import have_matplotlib, save_saliency_grid

    if not have_matplotlib():
        return []
    paths, seen = [], set()
    for r in rows:
        if "_examples" not in r or r["benchmark"] in seen:
            continue
        seen.add(r["benchmark"])
        e = r["_examples"]
        path = os.path.join(out, f"blade_translations_{r['benchmark']}.png")
        paths.append(save_saliency_grid(path, e["images"], [e["translated"]], titles=["image", "translated"],
                                        row_labels=e["labels"]))
    return paths
