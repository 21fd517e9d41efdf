"""`pydebias report --clarc`: ERM, P-, A- and RR-ClArC on the built-ins with a pasted
artifact and concept labels: accuracy on clean test inputs, on attacked ones (the
artifact pasted into every test input), worst-group accuracy and TCAV of the class the
artifact pushes; and on the headline built-in, whose shortcut is the photo behind the
object, with that background as the concept (worst group only: nothing to paste).
Whole-model methods: each fit runs the network, not just its head."""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

#: (benchmark, backbone label, loader parameters, the class the artifact goes with); a
#: built-in without artifact flags (``concepts``) takes its spurious attribute as the concept
CLARC_CASES = (("fashion-square", "two-stage CNN", {}, 0),
               ("fashion-on-photos", "EfficientNet-Lite0 (ImageNet)", {"shortcut": "square"}, 1),
               ("fashion-on-photos-strong", "EfficientNet-Lite0 (ImageNet)", {}, 1))
#: (label, method name, constructor parameters); RR-ClArC lam=0 is the control: the same
#: class-weighted fine-tuning without the penalty; the other lams are the sweep behind the
#: default (100), lam="auto" picks one from the concept labels, and the classifiers' CAVs
#: are compared with the default signal CAV
CLARC_METHODS = (("P-ClArC", "PClArC", {}), ("A-ClArC", "AClArC", {}),
                 ("RR-ClArC, lam=0", "RRClArC", {"lam": 0.0}), ("RR-ClArC, lam=1", "RRClArC", {"lam": 1.0}),
                 ("RR-ClArC, lam=10", "RRClArC", {"lam": 10.0}), ("RR-ClArC", "RRClArC", {}),
                 ("RR-ClArC, lam=1000", "RRClArC", {"lam": 1000.0}),
                 ("RR-ClArC, lam=auto", "RRClArC", {"lam": "auto"}),
                 ("RR-ClArC, lam=auto, lam_score=groups", "RRClArC", {"lam": "auto", "lam_score": "groups"})) + tuple(
    (f"RR-ClArC, cav={how}", "RRClArC", {"cav": how}) for how in ("ridge", "logistic", "svm", "lasso"))
#: the CAV at a conv map instead of the embedding, spatially max-pooled (the authors') or
#: mean-pooled: which pooling to use where the layer is a map (SmallCNN's last conv block
#: reaches the head through a max-pool and two linears, so RR-ClArC takes autograd's
#: gradient there; EfficientNet-Lite0's top is averaged into the head: the closed form)
CLARC_CASE_METHODS = {
    name: tuple((f"RR-ClArC, layer={layer}, {how}-pooled CAV", "RRClArC", {"layer": layer, "pooling": how})
                for how in ("max", "mean"))
    for name, layer in (("fashion-square", "conv.4"), ("fashion-on-photos", "top"),
                        ("fashion-on-photos-strong", "top"))}


def concept_labels(split) -> np.ndarray:
    """A split's concept labels: its artifact flags, or, where it has none, its spurious
    attribute ``a`` (the two-class, two-attribute built-ins number groups ``2*y + a``: on
    the photos, the background)."""
    if split.concepts is not None:
        return split.concepts
    return split.groups - 2 * split.labels


def _attacked(name: str, data: Dict) -> Optional[torch.Tensor]:
    """Every test input with the artifact pasted in; None where the concept is not an
    artifact that can be pasted (a background)."""
    if data["test"].concepts is None:
        return None
    if name == "fashion-square":
        from ..data.fashion import paste_square

        return paste_square(data["inputs"]("test")[0])
    return data["inputs"]("test", attacked=True)[0]


def _predict(model, x: torch.Tensor) -> torch.Tensor:
    from ..methods.base import model_outputs

    return model_outputs(model, x).argmax(1)


def figures(model, x: torch.Tensor, y: torch.Tensor, x_attacked: Optional[torch.Tensor], concepts: np.ndarray,
            groups: np.ndarray) -> Dict[str, Optional[float]]:
    """Clean accuracy (test rows without the artifact), attacked accuracy (the artifact in
    every row), worst-group and mean accuracy on the test split as drawn. Without attacked
    inputs (the concept is a background) clean and attacked are None."""
    right = (_predict(model, x) == y).numpy()
    pasted = x_attacked is not None
    return {"clean": float(right[concepts == 0].mean()) if pasted else None,
            "attacked": float((_predict(model, x_attacked) == y).double().mean()) if pasted else None,
            "worst_group": float(min(right[groups == g].mean() for g in np.unique(groups))),
            "mean": float(right.mean())}


def clarc_study(settings: Sequence, seed: int = 0, progress: bool = True) -> List[Dict]:
    """One row per case of :data:`CLARC_CASES` whose benchmark is among ``settings``:
    ERM's and every :data:`CLARC_METHODS` method's figures, TCAV of the artifact's class
    along ERM's CAV, fit seconds."""
    import time

    from .. import methods
    from ..concepts import tcav
    from ..results import data_hash
    from .report import loaded_cases

    rows = []
    for (name, bb, params, cls), d in loaded_cases(CLARC_CASES, settings, seed, rows, "ClArC", progress):
        erm = d["backbone"].eval()
        x, y = d["inputs"]("test")
        xa = _attacked(name, d)
        ct, gt = concept_labels(d["test"]), d["test"].groups
        train = torch.utils.data.TensorDataset(*d["inputs"]("train"))
        concepts = concept_labels(d["train"]).astype(bool)
        on = torch.from_numpy(ct == 1)
        row = {"benchmark": name, "backbone": bb, "params": params, "artifact_class": cls, "seed": seed,
               "concept": "artifact" if d["train"].concepts is not None else "background",
               "data_hash": data_hash(d),
               "ERM": figures(erm, x, y, xa, ct, gt)}
        cav = None
        for label, cls_name, kw in CLARC_METHODS + CLARC_CASE_METHODS.get(name, ()):
            m = getattr(methods, cls_name)(seed=seed, **kw)
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                fixed = m.fit(erm, train, concepts=concepts)
            secs = time.perf_counter() - t
            if cav is None:  # the default CAV (the first method's): TCAV and the CAV cosines use it
                cav = m.cav_
                row["cav"] = cav.summary()
                row["ERM"]["tcav"] = tcav(erm, cav, x[on], cls)
            same_layer = m.cav_.layer == cav.layer
            common = {**figures(fixed, x, y, xa, ct, gt), "seconds": secs,
                      "cav_cosine": m.cav_.cosine(cav) if same_layer else None}
            if hasattr(m, "hook_"):
                row[label] = common
                m.hook_.remove()  # TCAV below is read without the projection
            else:
                row[label] = {**common, "tcav": tcav(fixed, cav, x[on], cls), "closed_form": m.report_.get("closed_form"),
                              "lam": m.report_.get("lam")}
                if "lam_auto" in m.report_:  # every candidate's held-out scores
                    row[label]["lam_auto"] = m.report_["lam_auto"]
        rows.append(row)
    return rows


def clarc_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    """Clean / attacked / worst-group accuracy per case and method (mean over seeds, the
    worst group's range), TCAV."""
    from .report import by_case, mean_range, seeds_label

    labels = list(dict.fromkeys(["ERM"] + [m[0] for m in CLARC_METHODS]
                                + [m[0] for ms in CLARC_CASE_METHODS.values() for m in ms]))
    out = ["ClArC on the built-ins with a pasted square, and on `fashion-on-photos-strong` with its background "
           "as the concept, " + seeds_label(seeds) + ": accuracy, %, on clean test "
           "inputs (no square), on attacked ones (the square pasted into every test input) and worst group of "
           "the test split (lowest–highest seed in brackets); mean over seeds; a background cannot be pasted, so "
           "there only the worst group. TCAV: quotient (0.5 = no push) and sensitivity of the concept's "
           "class along ERM's CAV, on test rows with the concept (P-ClArC's hook is removed for it). Every "
           "method at its defaults (layer: the embedding; RR-ClArC: lam=100) unless the label says otherwise. "
           "CAV cos: cosine of the method's CAV with the default one (signal CAV at the embedding).",
           "", "| benchmark | backbone | method | clean | attacked | worst group | TCAV quotient | TCAV sensitivity "
           "| CAV cos | fit s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (name, bb), rs in by_case(rows).items():
        for label in labels:
            if any(label not in r for r in rs):
                continue

            def values(k, sub=None):
                vals = [(r[label].get(sub) or {}).get(k) if sub else r[label].get(k) for r in rs]
                return [v for v in vals if v is not None]

            def mean(k, sub=None):
                vals = values(k, sub)
                return float(np.mean(vals)) if vals else None
            cells = [f"{100 * mean(k):.1f}" if mean(k) is not None else "–" for k in ("clean", "attacked")]
            cells.append(mean_range(100 * np.asarray(values("worst_group"))))
            q, s, cos, sec = mean("quotient", "tcav"), mean("sensitivity", "tcav"), mean("cav_cosine"), mean("seconds")
            cells += [f"{q:.2f}" if q is not None else "–", f"{s:.3g}" if s is not None else "–",
                      f"{cos:.2f}" if cos is not None else "–", f"{sec:.0f}" if sec is not None else "–"]
            picks = [r[label]["lam_auto"]["lam"] for r in rs if "lam_auto" in r[label]]
            shown = label + (" (picked λ = " + " / ".join(f"{v:g}" for v in picks) + ")" if picks else "")
            out.append(f"| {name} | {bb} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
