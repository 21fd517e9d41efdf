"""Run methods side by side on one benchmark: the engine of `pydebias demo/run/report`.

Every method sees the same embeddings and splits through the one call shape
``fit(train, val, head=erm)``; ERM is fitted once on ``train`` (or is the backbone's own
head) and handed to the post-hoc methods. Only DFR reads group labels (of val).
"""
from __future__ import annotations

import time
import warnings
from typing import Dict, List, Optional, Sequence

from ..methods import ERM, REGISTRY
from ..metrics import GroupReport, evaluate
from ..results import data_hash, jsonable, provenance


def available_methods() -> List[str]:
    """Registry names, in table order."""
    return list(REGISTRY)


def check_method_params(method_params: Optional[Dict[str, Dict]], arg: str = "method_params") -> Dict[str, Dict]:
    """``method_params`` (registry name -> constructor parameters), its names checked: a
    registered method other than ERM (the reference), and parameters of its constructor that
    its registry entry does not fix, ``seed`` excepted (it is ``compare``'s). Values are
    checked by the method's own ``fit``."""
    out = dict(method_params or {})
    for key, params in out.items():
        if key not in REGISTRY:
            raise ValueError(f"{arg}: unknown method {key!r}; available: {available_methods()}")
        if key == "erm" and params:
            raise ValueError(f"{arg}: ERM is the reference (the backbone's own head, or ERM's defaults); "
                             "pass a trained head as erm_head, or set another method")
        spec = REGISTRY[key]
        known = sorted(k for k in spec.make().get_params() if k not in spec.params and k != "seed")
        for k in params:
            if k not in known:
                why = ("fixed by this entry" if k in spec.params else
                       "use --seed on the command line, seed= in compare" if k == "seed" else "unknown")
                raise ValueError(f"{arg}: {k!r} cannot be set for {key} ({why}); its parameters are {known}")
    return out


def compare(data: Dict, methods: Optional[Sequence[str]] = None, seed: int = 0, n_boot: int = 200,
            progress: bool = True, erm_head=None,
            method_params: Optional[Dict[str, Dict]] = None) -> Dict[str, Dict]:
    """Fit and evaluate the registry ``methods`` (names; default all) on ``data``
    ({'train','val','test'} EmbeddingSets).

    Returns label -> {"report": GroupReport (on test), "seconds": fit time, "head",
    "method_report": the method's ``report_``}, and "unguarded" (the head the guard set
    aside, on test) where the guard fired. ``erm_head`` reuses a trained ERM head (e.g.
    the backbone's own), else ERM is fitted on ``train``. ``method_params``: registry name
    -> constructor parameters that replace that method's defaults.
    """
    from tqdm import tqdm

    methods = list(methods) if methods else available_methods()
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; available: {available_methods()}")
    method_params = check_method_params(method_params)
    t = time.perf_counter()
    if erm_head is None:
        erm_head = ERM(seed=seed).fit(data["train"])
    erm_seconds = time.perf_counter() - t
    names = data.get("group_names")
    out: Dict[str, Dict] = {}
    for name in tqdm(methods, desc=f"methods on {data['test'].name}", disable=not progress, unit="method"):
        spec = REGISTRY[name]
        t = time.perf_counter()
        if name == "erm":
            head, method = erm_head, None
        else:
            method = spec.make(seed=seed, **method_params.get(name, {}))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the guard's warnings land in report_ instead
                head = method.fit(data["train"], data["val"], head=erm_head)
        seconds = erm_seconds if name == "erm" else time.perf_counter() - t
        rep = evaluate(head, data["test"], train_set=data["train"], group_names=names, n_boot=n_boot, seed=seed)
        r = out[spec.label] = {"report": rep, "seconds": seconds, "head": head,
                               "method_report": getattr(method, "report_", None)}
        guard = (r["method_report"] or {}).get("guard") or {}
        if guard:  # the label-free check ran: did it call the head harmful (acted on or not)?
            r["guard_flagged"] = bool(guard.get("harmful"))
        if guard.get("kept_erm_head"):
            # what the guard cost (or saved): the head it set aside, on the test split
            r["unguarded"] = evaluate(method.debiased_head_, data["test"], train_set=data["train"])
    return out


def results_json(results: Dict[str, Dict], data: Dict, dataset: str, seed: int, params: Dict) -> Dict:
    return {
        "dataset": dataset, "params": params, **provenance(seed, "auto", data_hash=data_hash(data)),
        "methods": {name: {**r["report"].to_dict(), "seconds": r["seconds"],
                           "guard_fired": "unguarded" in r, "guard_flagged": r.get("guard_flagged"),
                           "unguarded": r["unguarded"].to_dict() if "unguarded" in r else None,
                           "method_report": jsonable(r["method_report"])} for name, r in results.items()},
    }


def markdown_table(results: Dict[str, Dict]) -> str:
    """Worst-group accuracy first (with its bootstrap 95 % interval), then mean, then time."""
    lines = ["| method | worst-group acc. (95% CI) | mean acc. | fit time (s) |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        rep: GroupReport = r["report"]
        ci = f" ({100 * rep.worst_group_ci[0]:.1f}–{100 * rep.worst_group_ci[1]:.1f})" if rep.worst_group_ci else ""
        lines.append(f"| {name} | {100 * rep.worst_group_accuracy:.1f}{ci} | {100 * rep.accuracy:.1f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def _choice_line(name: str, rep: Dict) -> Optional[str]:
    """One line saying what a fitted method chose from its ``report_`` (None when nothing)."""
    m = rep.get("method")
    if m == "JTT":
        w = ", ".join(f"{x:.1f}" for x in rep["error_weight_per_class"])
        return f"{name}: {rep['n_errors']} of {rep['n_train']} training rows wrong, up-weighted x({w}) per class"
    if m == "AFR":
        sel = rep.get("selection") or []
        skipped = [f"{c['gamma']:g}" for c in sel if c.get("score") is None]
        how = "picked label-free" if sel else "fixed"
        return (f"{name}: gamma = {rep['gamma']:g} {how}" + (f"; not fitted ({', '.join(skipped)}): effective sample "
                f"size under min_ess = {rep['min_ess']:g} of the rows" if skipped else ""))
    if m == "NeuronTune":
        r = rep["rounds"][-1]
        per = ", ".join(str(n) for n in r["n_spurious_per_class"])
        return f"{name}: lambda = {r['lam']:g}, {len(r['spurious'])} neurons zeroed ({per} per class)"
    if m == "NSF":
        c, k = rep["counts"], rep.get("keep_unrescued")
        out = ", ".join(str(n) for n in c["outliers_per_class"])
        res = ", ".join(str(n) for n in c["rescued_per_class"])
        kept = ("every outlier" if c["dropped"] == 0 and c["g1"] == c["outliers"] else "the rescued ones")
        return (f"{name}: {c['outliers']} outliers of {c['n_fit']} rows ({out} per class), {c['rescued']} rescued "
                f"({res}); G1 = {kept}, {c['g1']} rows against {c['inliers']} inliers"
                + (" (keep_unrescued='auto' chose True)" if k and k["chosen"] else ""))
    if m == "DFR":
        return f"{name}: l2 = {rep['l2']:g}, picked by worst-group accuracy on half of val (group labels)"
    return None


def choices_text(results: Dict[str, Dict]) -> str:
    """What each method chose, one line each (its ``report_``: gamma, lambda and the neurons
    zeroed, NSF's outliers and G1, DFR's l2), so a user sees the label-free choices."""
    lines = []
    for name, r in results.items():
        try:
            x = _choice_line(name, r.get("method_report") or {})
        except (KeyError, IndexError, TypeError):  # display only: a report of another shape prints nothing
            x = None
        if x:
            lines.append(x)
    return "\n".join(["What each method chose:"] + [f"- {x}" for x in lines]) if lines else ""
