"""Run methods side by side on one benchmark: the engine of `pydebias demo/run/report`.

Every method sees the same embeddings and splits; ERM is fitted once on ``train`` and
handed to the post-hoc methods. Only DFR reads group labels (of the val split).
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

from .metrics import GroupReport, evaluate


def _registry() -> Dict[str, Callable]:
    from . import methods as M

    reg = {
        "ERM": lambda d, erm, seed: (erm, None),
        # class-balanced retraining on the same sets as NeuronTune / NeuronTune†: the
        # control that shares their retraining but not their masks
        "ClassBalanced": lambda d, erm, seed: _fit(M.ClassBalanced(seed=seed), d["train"], head=erm),
        "ClassBalanced†": lambda d, erm, seed: _fit(M.ClassBalanced(seed=seed), d["val"], head=erm),
        "JTT": lambda d, erm, seed: _fit(M.JTT(seed=seed), d["train"]),
        "AFR": lambda d, erm, seed: _fit(M.AFR(seed=seed), d["val"], head=erm),
        "NeuronTune": lambda d, erm, seed: _fit(M.NeuronTune(seed=seed), d["val"], head=erm, tune_set=d["train"]),
        "NeuronTune†": lambda d, erm, seed: _fit(M.NeuronTune(seed=seed), d["val"], head=erm),
        "DFR": lambda d, erm, seed: _fit(M.DFR(seed=seed), d["val"]),
    }
    if hasattr(M, "NSF"):
        reg["NSF"] = lambda d, erm, seed: _fit(M.NSF(seed=seed), d["val"], head=erm)
    return reg


def _fit(method, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the guard's warnings land in report_ instead
        head = method.fit(*args, **kwargs)
    return head, method


def available_methods() -> List[str]:
    order = ["ERM", "ClassBalanced", "ClassBalanced†", "JTT", "AFR", "NeuronTune", "NeuronTune†", "NSF", "DFR"]
    reg = _registry()
    return [m for m in order if m in reg]


def compare(data: Dict, methods: Optional[Sequence[str]] = None, seed: int = 0, n_boot: int = 200,
            progress: bool = True, erm_head=None) -> Dict[str, Dict]:
    """Fit and evaluate ``methods`` on ``data`` ({'train','val','test'} EmbeddingSets).

    Returns name -> {"report": GroupReport (on test), "seconds": fit time,
    "method_report": the method's ``report_``}. ``erm_head`` reuses a trained ERM head
    (e.g. the backbone's own), else ERM is fitted on ``train``.
    """
    from tqdm import tqdm

    from .methods import ERM

    reg = _registry()
    methods = list(methods) if methods else available_methods()
    unknown = [m for m in methods if m not in reg]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; available: {list(reg)}")
    t = time.perf_counter()
    if erm_head is None:
        erm_head = ERM(seed=seed).fit(data["train"])
    erm_seconds = time.perf_counter() - t
    names = data.get("group_names")
    out: Dict[str, Dict] = {}
    for name in tqdm(methods, desc=f"methods on {data['test'].name}", disable=not progress, unit="method"):
        t = time.perf_counter()
        head, method = reg[name](data, erm_head, seed)
        seconds = erm_seconds if name == "ERM" else time.perf_counter() - t
        rep = evaluate(head, data["test"], train_set=data["train"], group_names=names, n_boot=n_boot, seed=seed)
        out[name] = {"report": rep, "seconds": seconds, "head": head,
                     "method_report": getattr(method, "report_", None)}
        guard = (out[name]["method_report"] or {}).get("guard") or {}
        if guard.get("kept_erm_head"):
            # what the guard cost (or saved): the head it set aside, on the test split
            out[name]["unguarded"] = evaluate(method.debiased_head_, data["test"], train_set=data["train"])
    return out


def results_json(results: Dict[str, Dict], data: Dict, dataset: str, seed: int, params: Dict) -> Dict:
    from .results import provenance

    fp = ":".join(data[s].fingerprint() for s in ("train", "val", "test"))
    return {
        "dataset": dataset, "params": params, **provenance(seed, "auto", data_hash=fp),
        "methods": {name: {**r["report"].to_dict(), "seconds": r["seconds"],
                           "guard_fired": "unguarded" in r,
                           "unguarded": r["unguarded"].to_dict() if "unguarded" in r else None,
                           "method_report": _jsonable(r["method_report"])} for name, r in results.items()},
    }


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if obj != obj else repr(obj)  # NaN -> null, +-inf -> "inf" / "-inf"
    return obj


def markdown_table(results: Dict[str, Dict]) -> str:
    """Worst-group accuracy first (with its bootstrap 95 % interval), then mean, then time."""
    lines = ["| method | worst-group acc. (95% CI) | mean acc. | fit time (s) |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        rep: GroupReport = r["report"]
        ci = f" ({100 * rep.worst_group_ci[0]:.1f}–{100 * rep.worst_group_ci[1]:.1f})" if rep.worst_group_ci else ""
        lines.append(f"| {name} | {100 * rep.worst_group_accuracy:.1f}{ci} | {100 * rep.accuracy:.1f} | {r['seconds']:.2f} |")
    return "\n".join(lines)
