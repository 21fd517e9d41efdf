"""`pydebias report`: every method on every built-in, both identification settings and
both backbone kinds, one seed (or several, and the spread across them): a markdown table,
a PNG and the JSON behind them; and the studies behind NeuronTune's defaults (mask mode,
λ and its selection margin) and behind its failures (shortcut localisation)."""
from __future__ import annotations

import os
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

from ..methods import REGISTRY
from ..results import data_hash, rows_data_hash

#: the backbone label of the pretrained image built-ins, and those built-ins (headline first)
PRETRAINED_IMAGE = "EfficientNet-Lite0 (ImageNet)"
PRETRAINED_IMAGE_BENCHMARKS = ("fashion-on-photos-strong", "fashion-on-photos")
# (benchmark, backbone, identification split, loader parameters)
Setting = Tuple[str, str, str, Dict]


def default_settings(benchmarks: Optional[Sequence[str]] = None) -> List[Setting]:
    out: List[Setting] = [(name, PRETRAINED_IMAGE, split, p)
                          for name in PRETRAINED_IMAGE_BENCHMARKS
                          for split, p in (("biased", {}), ("balanced", {"val_balanced": True}))]
    for name in ("colored-fashion", "fashion-on-textures", "fashion-square"):
        for bb, two in (("two-stage", True), ("from scratch", False)):
            for split, p in (("biased", {}), ("balanced", {"val_balanced": True})):
                out.append((name, bb, split, {"two_stage": two, **p}))
    out += [("reviews-token", "MiniLM (pretrained)", "biased", {}),
            ("reviews-token", "MiniLM (pretrained)", "balanced", {"val_balanced": True}),
            ("reviews-token", "bag-of-words MLP (from scratch)", "biased", {"backbone": "mlp"}),
            ("reviews-token", "bag-of-words MLP (from scratch)", "balanced", {"backbone": "mlp", "val_balanced": True}),
            ("adult-sex", "MLP (one-stage)", "as in the data", {}),
            ("planted", "planted", "biased", {}),
            ("planted", "planted", "balanced", {"val_corr": 0.5})]
    if benchmarks:
        unknown = set(benchmarks) - {s[0] for s in out}
        if unknown:
            raise ValueError(f"benchmarks: unknown {sorted(unknown)}")
        out = [s for s in out if s[0] in benchmarks]
    return out


def run_report(settings: Sequence[Setting], seed: int = 0, n_boot: int = 200, progress: bool = True,
               methods: Optional[Sequence[str]] = None) -> List[Dict]:
    from .compare import compare
    from ..data import availability, load

    rows = []
    for name, bb, split, params in settings:
        ok, why = availability(name)
        if not ok:
            rows.append({"benchmark": name, "backbone": bb, "id_split": split, "skipped": why})
            continue
        t = time.perf_counter()
        data = load(name, seed=seed, **params)
        load_s = time.perf_counter() - t
        res = compare(data, methods, seed=seed, n_boot=n_boot, progress=progress, erm_head=data.get("head"))
        rows.append({"benchmark": name, "backbone": bb, "id_split": split, "params": params,
                     "data_hash": data_hash(data), "load_seconds": load_s, "results": res})
    return rows


#: NeuronTune variants compared by :func:`neurontune_modes` (guard off: the variant's own effect)
NT_VARIANTS = {
    "intersection": {"mask_mode": "intersection"},
    "union": {"mask_mode": "union"},
    "per_class": {"mask_mode": "per_class"},
    "intersection, λ=0": {"mask_mode": "intersection", "lam": 0.0},
    "union, λ=0": {"mask_mode": "union", "lam": 0.0},
    "per_class, λ=0": {"mask_mode": "per_class", "lam": 0.0},
}


def _erm_head(data: Dict, seed: int):
    """The backbone's own head where the benchmark has one, else an ERM head fit on train."""
    if data.get("head") is not None:
        return data["head"]
    from ..methods import ERM

    return ERM(seed=seed).fit(data["train"])


def neurontune_modes(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """Worst-group / mean test accuracy and neurons zeroed of each :data:`NT_VARIANTS`
    NeuronTune (identification on val, retraining on train, guard off) per setting,
    beside ERM, and under ``"lam_candidates"`` every λ candidate the default
    (``lam="auto"``) weighed, for NeuronTune and NeuronTune (val), with its selection score and
    test worst-group accuracy: the measurements behind the ``mask_mode``, ``lam`` and
    ``lam_margin`` defaults (:func:`lam_margin_table` replays the rule on them)."""
    from tqdm import tqdm

    from ..data import availability, load
    from ..methods import NeuronTune
    from ..metrics import evaluate

    rows = []
    for name, bb, split, params in tqdm(settings, desc="NeuronTune variants", disable=not progress):
        ok, why = availability(name)
        if not ok:
            rows.append({"benchmark": name, "backbone": bb, "id_split": split, "skipped": why})
            continue
        data = load(name, seed=seed, **params)
        erm = _erm_head(data, seed)
        base = evaluate(erm, data["test"])
        row = {"benchmark": name, "backbone": bb, "id_split": split, "params": params, "data_hash": data_hash(data),
               "ERM": {"worst_group": base.worst_group_accuracy, "mean": base.accuracy}}
        fitted = {}
        for label, kw in NT_VARIANTS.items():
            m = fitted[label] = NeuronTune(seed=seed, guard=False, **kw)
            head = m.fit(data["train"], data["val"], head=erm)
            rep = evaluate(head, data["test"])
            row[label] = {"worst_group": rep.worst_group_accuracy, "mean": rep.accuracy,
                          "n_zeroed": int(len(m.spurious_neurons())),
                          "lam": lam if (lam := m.report_["rounds"][-1]["lam"]) != float("inf") else None}
        # every λ candidate of the default (union, λ="auto"), retrained on train and on val: its
        # label-free selection score and its test accuracy, the evidence for lam_margin
        row["lam_candidates"] = {}
        for variant, retrain_on in (("NeuronTune", "train"), ("NeuronTune (val)", "val")):
            if retrain_on == "train":  # the main variant's default fit is the "union" one above
                m = fitted["union"]
            else:
                m = NeuronTune(retrain_on=retrain_on, seed=seed, guard=False)
                m.fit(data["train"], data["val"], head=erm)
            cands = []
            for c in m.report_["rounds"][0]["selection"]:
                with warnings.catch_warnings():  # the guard's verdicts on candidates are not news
                    warnings.simplefilter("ignore", RuntimeWarning)
                    fixed = NeuronTune(retrain_on=retrain_on, seed=seed, guard=False,
                                       lam=c["lam"]).fit(data["train"], data["val"], head=erm)
                cands.append({**c, "worst_group": evaluate(fixed, data["test"]).worst_group_accuracy})
            row["lam_candidates"][variant] = cands
        rows.append(row)
    return rows


#: identification-split correlations of :func:`balance_study` (0.5 = group-balanced)
BALANCE_CORRS = (0.5, 0.6, 0.7, 0.8, 0.9)
#: the annotation-free methods (and the references) the balance study fits
BALANCE_METHODS = ("classbalanced-val", "neurontune", "neurontune-val", "nsf", "dfr")


def balance_study(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """How balanced must the identification split be? For each benchmark with a biased
    setting in ``settings``, refit :data:`BALANCE_METHODS` (guard off) with val drawn at
    each correlation of :data:`BALANCE_CORRS` (and at the train one, the biased split),
    same backbone and test split: worst-group test accuracy per method, and whether the
    guard's label-free check called the head harmful."""
    from tqdm import tqdm

    from ..data import availability, load
    from ..metrics import evaluate

    rows = []
    biased = [(n, bb, p) for n, bb, split, p in settings if split == "biased" and "val_corr" in _loader_params(n)]
    for name, bb, params in tqdm(biased, desc="identification balance", disable=not progress):
        ok, why = availability(name)
        if not ok:
            rows.append({"benchmark": name, "backbone": bb, "skipped": why})
            continue
        train_corr = _train_corr(name, params)
        for corr in sorted({*BALANCE_CORRS, train_corr}):
            data = load(name, seed=seed, **{**params, "val_corr": float(corr)})
            erm = _erm_head(data, seed)
            row = {"benchmark": name, "backbone": bb, "val_corr": float(corr), "train_corr": train_corr,
                   "data_hash": data_hash(data), "ERM": evaluate(erm, data["test"]).worst_group_accuracy}
            for key in BALANCE_METHODS:
                spec = REGISTRY[key]
                m = spec.make(seed=seed, **({"guard": False} if spec.guarded else {}))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    head = m.fit(data["train"], data["val"], head=erm)
                g = (getattr(m, "report_", None) or {}).get("guard") or {}
                row[spec.label] = {"worst_group": evaluate(head, data["test"]).worst_group_accuracy,
                                   "flagged": g.get("harmful")}
            rows.append(row)
    return rows


#: JTT's up-weights compared by :func:`jtt_weights` ("balanced" is the default)
JTT_WEIGHTS = ("balanced", 2.0, 5.0, 10.0, 20.0, 50.0)
#: AFR's pulls towards the ERM head (``l2``) compared by :func:`afr_anchors` (1e-3 is the default)
AFR_ANCHORS = (1e-3, 1e-2, 1e-1, 1.0)
#: NSF with the paper's update (unrescued outliers dropped, the default) and with every outlier kept
NSF_KEEP = (False, True)
#: the last-layer retrainings on val compared by :func:`retrain_rows`, each beside the same fit on as
#: many train rows per class as val has
RETRAIN_ROWS = ("ClassBalanced on val", "ClassBalanced on train rows", "AFR on val", "AFR on train rows")


def _baseline_sweep(settings: Sequence[Setting], seed: int, progress: bool, desc: str, fit_one,
                    values: Sequence, skip_balanced: bool) -> List[Dict]:
    """Worst-group test accuracy of ERM and of ``fit_one(value, data, erm_head, seed)``
    (-> (head, extra row entries)) for each of ``values`` on each setting (those with a
    balanced identification split skipped when ``skip_balanced``)."""
    from tqdm import tqdm

    from ..data import availability, load
    from ..metrics import evaluate

    rows = []
    for name, bb, split, params in tqdm(settings, desc=desc, disable=not progress):
        if skip_balanced and split == "balanced":
            continue
        ok, why = availability(name)
        if not ok:
            rows.append({"benchmark": name, "backbone": bb, "id_split": split, "skipped": why})
            continue
        data = load(name, seed=seed, **params)
        erm = _erm_head(data, seed)
        row = {"benchmark": name, "backbone": bb, "id_split": split, "data_hash": data_hash(data),
               "ERM": evaluate(erm, data["test"]).worst_group_accuracy}
        for v in values:
            head, extra = fit_one(v, data, erm, seed)
            row[str(v)] = evaluate(head, data["test"]).worst_group_accuracy
            row.update(extra)
        rows.append(row)
    return rows


def _sweep_markdown(rows: List[Dict], values: Sequence, param: str, title: str, case_keys: Sequence[str],
                    loss_points: Optional[float] = None) -> str:
    """Mean (lowest–highest) worst-group accuracy over seeds per setting and value, the mean
    over settings and each value's largest loss of a setting's mean against ERM's (and, with
    ``loss_points``, how many setting means fall more than that below ERM's); a column is
    headed ``param=value``, or the value alone when ``param`` is empty."""
    import numpy as np

    keys = ["ERM"] + [str(v) for v in values]
    col = (lambda k: f"{param}={k}") if param else str
    out = [title, "", "| benchmark | ERM | " + " | ".join(col(k) for k in keys[1:]) + " |",
           "| --- | --- | " + " | ".join("---" for _ in keys[1:]) + " |"]
    keyed = by_case(rows, *case_keys)
    means = {k: [] for k in keys}
    for case, rs in keyed.items():
        cells = []
        for k in keys:
            v = 100 * np.array([r[k] for r in rs])
            means[k].append(v.mean())
            cells.append(mean_range(v))
        label = f"{case[0]} ({case[1]})" + (f", {case[2]} split" if len(case) > 2 else "")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    if keyed:
        out.append("| **mean over settings** | " + " | ".join(f"{np.mean(means[k]):.1f}" for k in keys) + " |")
        out += ["", "Largest loss of a setting's mean against ERM's: " + "; ".join(
            f"{col(k)} {min(a - b for a, b in zip(means[k], means['ERM'])):+.1f}" for k in keys[1:]) + "."]
        if loss_points is not None:
            out.append(f"Setting means more than {loss_points:g} points below ERM's: " + "; ".join(
                f"{col(k)} {sum(a - b < -loss_points for a, b in zip(means[k], means['ERM']))}" for k in keys[1:])
                + ".")
    return "\n".join(out) + "\n"


def jtt_weights(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """Worst-group test accuracy of JTT with each of :data:`JTT_WEIGHTS` beside ERM, on
    every setting whose identification split is not the balanced one (JTT reads train
    only): the measurements behind ``up_weight="balanced"``."""
    from ..methods import JTT

    def fit_one(u, data, erm, seed):
        m = JTT(up_weight=u, seed=seed)
        head = m.fit(data["train"])
        return head, ({"error_weight_per_class": m.report_["error_weight_per_class"]} if u == "balanced" else {})

    return _baseline_sweep(settings, seed, progress, "JTT up-weights", fit_one, JTT_WEIGHTS, skip_balanced=True)


def jtt_weights_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    """The :func:`jtt_weights` table: one line per setting, one column per up-weight."""
    return _sweep_markdown(rows, JTT_WEIGHTS, "up_weight", (
        f"JTT's up-weight, {seeds_label(seeds)}: worst-group test accuracy, %, mean over seeds "
        "(lowest–highest); \"balanced\" weighs every class × error cell of train the same (the default)."),
        ("benchmark", "backbone"))


def afr_anchors(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """Worst-group test accuracy of AFR (``gamma="auto"``) with each pull towards the ERM
    head of :data:`AFR_ANCHORS` beside ERM, on every setting: the measurements behind
    AFR's ``l2``."""
    from ..methods import AFR

    def fit_one(a, data, erm, seed):
        m = AFR(l2=a, seed=seed)
        head = m.fit(data["train"], data["val"], head=erm)
        return head, {f"gamma {a}": m.gamma_}

    return _baseline_sweep(settings, seed, progress, "AFR anchors", fit_one, AFR_ANCHORS, skip_balanced=False)


def afr_anchors_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    """The :func:`afr_anchors` table: one line per setting and split, one column per ``l2``."""
    return _sweep_markdown(rows, AFR_ANCHORS, "l2", (
        f"AFR's pull towards the ERM head, {seeds_label(seeds)}: worst-group test accuracy, %, mean over seeds "
        "(lowest–highest); γ chosen label-free (`gamma=\"auto\"`) at every `l2`; `l2=0.001` is the default."),
        ("benchmark", "backbone", "id_split"))


#: AFR's floors on the effective sample size of a candidate gamma's weights, replayed by
#: :func:`afr_ess_markdown` (0: every candidate fitted, the rule before the floor)
AFR_MIN_ESS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def afr_ess(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """AFR's label-free choice of gamma on every setting: each candidate's holdout score and
    Kish effective sample size (one ``gamma="auto"`` fit with ``min_ess=0``), each
    candidate's worst-group test accuracy (a fixed-gamma fit), and the choice replayed at
    each floor of :data:`AFR_MIN_ESS`: the measurements behind ``min_ess``."""
    from ..methods import AFR
    from ..methods.baselines import afr_pick
    from ..metrics import evaluate

    def fit_one(floor, data, erm, seed):
        m = AFR(min_ess=floor, seed=seed)
        head = m.fit(data["train"], data["val"], head=erm)
        cands = [dict(c, worst_group=evaluate(AFR(gamma=c["gamma"], seed=seed).fit(
            data["train"], data["val"], head=erm), data["test"]).worst_group_accuracy) for c in m.report_["selection"]]
        picked = {f: afr_pick(cands, f) for f in AFR_MIN_ESS}
        wga = {c["gamma"]: c["worst_group"] for c in cands}
        return head, {"candidates": cands, **{str(f): wga[g] for f, g in picked.items()},
                      **{f"gamma {f}": g for f, g in picked.items()}}

    # the replays' key "0.0" overwrites the fit's with the same figure: the refit at its gamma is that head
    return _baseline_sweep(settings, seed, progress, "AFR effective sizes", fit_one, (0.0,), skip_balanced=False)


def afr_ess_markdown(rows: List[Dict], seeds: Sequence[int], loss_points: float = 5.0) -> str:
    """The :func:`afr_ess` table: one line per setting and split, one column per floor."""
    return _sweep_markdown(rows, AFR_MIN_ESS, "min_ess", (
        f"AFR's floor on the effective sample size, {seeds_label(seeds)}: worst-group test accuracy, %, mean over "
        "seeds (lowest–highest); `gamma=\"auto\"` fits only the candidates whose weights keep a Kish effective "
        "sample size of at least `min_ess` × the rows (the largest always), replayed exactly from one fit that "
        "scored every candidate; `min_ess=0.0` is the rule without a floor."),
        ("benchmark", "backbone", "id_split"), loss_points=loss_points)


def nsf_outliers(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """Worst-group test accuracy of NSF with each ``keep_unrescued`` of :data:`NSF_KEEP`
    and with ``"auto"``'s choice between them, beside ERM, on every setting, with the
    outliers, how many the elimination step rescued and both heads' holdout scores: the
    measurements behind the default. One ``"auto"`` fit gives both candidate heads."""
    from ..methods import NSF
    from ..metrics import evaluate

    def fit_one(_, data, erm, seed):
        m = NSF(keep_unrescued="auto", seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the guard's check, off here
            head = m.fit(data["train"], data["val"], head=erm)
        c, k = m.report_["counts"], m.report_["keep_unrescued"]
        return head, {"outliers": c["outliers"], "rescued": c["rescued"],
                      **{str(v): evaluate(h, data["test"]).worst_group_accuracy
                         for v, h in m.candidate_heads_.items()},
                      **{f"score {v}": sc for v, sc in k["scores"].items()}, "auto picks True": k["chosen"],
                      "keep_margin": k["margin"]}

    return _baseline_sweep(settings, seed, progress, "NSF outliers", fit_one, ("auto",), skip_balanced=False)


#: ``keep_margin`` values replayed by :func:`keep_margin_table`
KEEP_MARGINS = (0.0, 0.01, 0.02, 0.05, 0.1)


def keep_margin_table(rows: List[Dict], loss_points: float = 5.0) -> List[Dict]:
    """Per ``keep_margin`` of :data:`KEEP_MARGINS`, NSF's ``"auto"`` replayed on the recorded
    scores of :func:`nsf_outliers` rows (exact: both heads come from the same draws): the
    mean over settings of each setting's mean worst-group accuracy, how many setting means
    fall more than ``loss_points`` below ERM's, the largest such loss and the fits where
    ``True`` is kept."""
    import numpy as np

    from ..methods.nsf import keeps_unrescued

    keyed = by_case([r for r in rows if "score True" in r], "benchmark", "backbone", "id_split")
    out = []
    for m in KEEP_MARGINS:
        means, losses, picks = [], [], 0
        for rs in keyed.values():
            kept = [keeps_unrescued(r["score True"], r["score False"], m) for r in rs]
            v = 100 * np.mean([r["True"] if k else r["False"] for r, k in zip(rs, kept)])
            means.append(v)
            losses.append(v - 100 * np.mean([r["ERM"] for r in rs]))
            picks += sum(kept)
        out.append({"margin": m, "n_settings": len(keyed), "n_fits": sum(len(rs) for rs in keyed.values()),
                    "mean_worst_group": float(np.mean(means)) if means else None,
                    "n_below_erm": int(sum(x < -loss_points for x in losses)),
                    "largest_loss": float(min(losses)) if losses else None, "true_kept": int(picks)})
    return out


def nsf_outliers_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    """The :func:`nsf_outliers` table: one line per setting and split, one column per choice,
    and ``"auto"`` replayed at each margin of :data:`KEEP_MARGINS`."""
    fits = [r for r in rows if "auto" in r]
    margins = sorted({r["keep_margin"] for r in fits if "keep_margin" in r})
    margin = f" = {', '.join(f'{m:g}' for m in margins)}" if margins else ""
    text = _sweep_markdown(rows, NSF_KEEP + (("auto",) if fits else ()), "keep_unrescued", (
        f"NSF's unrescued outliers, {seeds_label(seeds)}: worst-group test accuracy, %, mean over seeds "
        "(lowest–highest); `keep_unrescued=False` (the paper) drops the outliers the elimination step leaves "
        "nearer another class's target, `True` trains on them too. `auto` (the default) fits both and "
        "keeps `True` when its score on NSF's holdout (pseudo-group balanced accuracy + balanced accuracy, labels "
        f"only) beats `False`'s by more than `keep_margin`{margin}."),
        ("benchmark", "backbone", "id_split"))
    if not fits:  # rows from before the replay existed
        return text
    text += f"\n`auto` picked `True` in {sum(r['auto picks True'] for r in fits)} of {len(fits)} fits.\n"
    table = keep_margin_table(fits)
    return text + "\n".join([
        "", "`auto` replayed at other margins on the same fits' scores (exact: both heads come from the same draws):",
        "", "| keep_margin | " + " | ".join(f"{t['margin']:g}" for t in table) + " |",
        "| --- | " + " | ".join("---" for _ in table) + " |",
        "| mean over settings | " + " | ".join(f"{t['mean_worst_group']:.1f}" for t in table) + " |",
        "| settings > 5 below ERM | " + " | ".join(str(t["n_below_erm"]) for t in table) + " |",
        "| largest loss against ERM | " + " | ".join(f"{t['largest_loss']:+.1f}" for t in table) + " |",
        f"| fits keeping `True` (of {table[0]['n_fits']}) | " + " | ".join(str(t["true_kept"]) for t in table) + " |",
    ]) + "\n"


#: NSF update lengths compared by :func:`nsf_steps` (500: the authors' Waterbirds setting;
#: 100-110 their CelebA and CivilComments settings)
NSF_STEPS = (50, 100, 250, 500, 1000)


def nsf_steps(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """Worst-group test accuracy of NSF (every other parameter its default) with each
    ``n_update_steps`` of :data:`NSF_STEPS`, beside ERM, on every setting."""
    from ..methods import NSF

    def fit_one(steps, data, erm, seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the guard's check, off here
            return NSF(n_update_steps=steps, seed=seed).fit(data["train"], data["val"], head=erm), {}

    return _baseline_sweep(settings, seed, progress, "NSF update steps", fit_one, NSF_STEPS, skip_balanced=False)


def nsf_steps_markdown(rows: List[Dict], seeds: Sequence[int], loss_points: float = 5.0) -> str:
    """The :func:`nsf_steps` table, and per value how many setting means fall more than
    ``loss_points`` below ERM's."""
    return _sweep_markdown(rows, NSF_STEPS, "n_update_steps", (
        f"NSF's update length, {seeds_label(seeds)}: worst-group test accuracy, %, mean over seeds "
        "(lowest–highest), NSF with each `n_update_steps` and every other parameter its default."),
        ("benchmark", "backbone", "id_split"), loss_points=loss_points)


def _train_rows_like(train, val, seed: int):
    """A class-stratified random sample of ``train`` with as many rows per class as ``val``
    (all of a class where train has fewer)."""
    import numpy as np

    rng = np.random.default_rng([seed, 11])
    y_tr, y_va = np.asarray(train.labels), np.asarray(val.labels)
    idx = [rng.choice(np.flatnonzero(y_tr == c), min(int((y_va == c).sum()), int((y_tr == c).sum())), replace=False)
           for c in np.unique(y_va)]
    return train.subset(np.sort(np.concatenate(idx)))


def retrain_rows(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """Worst-group test accuracy of ClassBalanced and AFR retrained on ``val`` and on a
    train sample of the same size per class (:data:`RETRAIN_ROWS`), beside ERM and ERM's
    accuracy on train and val, on every biased setting: whether a loss from retraining on
    val comes from its few rows or from rows the backbone never trained on."""
    from ..methods import AFR, ClassBalanced
    from ..metrics import evaluate

    def fit_one(v, data, erm, seed):
        rows = data["val"] if v.endswith("on val") else _train_rows_like(data["train"], data["val"], seed)
        if v.startswith("AFR"):
            head = AFR(seed=seed).fit(data["train"], rows, head=erm)
        else:
            head = ClassBalanced(retrain_on="val", seed=seed).fit(data["train"], rows, head=erm)
        return head, ({"ERM accuracy": {s: evaluate(erm, data[s]).accuracy for s in ("train", "val")}}
                      if v == RETRAIN_ROWS[0] else {})

    return _baseline_sweep(settings, seed, progress, "retraining rows", fit_one, RETRAIN_ROWS, skip_balanced=True)


def retrain_rows_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    """The :func:`retrain_rows` table, and ERM's train / val accuracy per setting."""
    import numpy as np

    text = _sweep_markdown(rows, RETRAIN_ROWS, "", (
        f"Last-layer retraining on val against the same on train rows, {seeds_label(seeds)}: worst-group test "
        "accuracy, %, mean over seeds (lowest–highest). \"on train rows\": as many rows per class as val has, drawn "
        "from train (rows the backbone, or the ERM head where there is no backbone, was trained on), in place of "
        "val; biased identification splits."),
        ("benchmark", "backbone"))
    acc = ["", "ERM's accuracy on train / val, %, mean over seeds (a backbone that memorised train scores 100 on it):",
           ""]
    for case, rs in by_case(rows, "benchmark", "backbone").items():
        tr, va = (100 * np.mean([r["ERM accuracy"][s] for r in rs]) for s in ("train", "val"))
        acc.append(f"- {case[0]} ({case[1]}): {tr:.1f} / {va:.1f}")
    return text + "\n".join(acc) + "\n"


def mean_range(v) -> str:
    """``mean (lowest–highest)`` of percentages (the mean alone for one value)."""
    return f"{v.mean():.1f} ({v.min():.0f}–{v.max():.0f})" if len(v) > 1 else f"{v.mean():.1f}"


def _loader_params(name: str):
    import inspect

    from ..data import _loader

    return inspect.signature(_loader(name)).parameters


def _train_corr(name: str, params: Dict) -> float:
    """The train split's attribute–label correlation of a setting: its own ``corr``, else the
    built-in's preset, else the loader's default."""
    from ..data import defaults

    return float({**defaults(name), **params}["corr"])


def balance_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    """Mean worst-group accuracy over seeds per benchmark and identification correlation."""
    import numpy as np

    labels = [REGISTRY[k].label for k in BALANCE_METHODS]
    out = [f"Identification-split balance, {seeds_label(seeds)}: worst-group test accuracy, %, mean over seeds "
           "(lowest–highest), as val's attribute–label correlation goes from 0.5 (group-balanced) to the train "
           "one (biased); guard off, the same backbone and test split. (n flagged) = fits the guard's label-free "
           "check called harmful.", "",
           "| benchmark | val corr. | ERM | " + " | ".join(labels) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in labels) + " |"]
    for (name, bb, corr), rs in by_case(rows, "benchmark", "backbone", "val_corr").items():
        def cell(vals, flags=None):
            v = 100 * np.array(vals)
            s = mean_range(v)
            n = sum(bool(f) for f in flags or [])
            return s + (f" ({n} flagged)" if n else "")
        out.append(f"| {name} ({bb}) | {corr:g} | {cell([r['ERM'] for r in rs])} | "
                   + " | ".join(cell([r[m]["worst_group"] for r in rs], [r[m]["flagged"] for r in rs])
                                for m in labels) + " |")
    return "\n".join(out) + "\n"


def choose_lam(candidates: List[Dict], margin: float) -> Dict:
    """NeuronTune's ``lam="auto"`` rule on recorded candidates: the paper's λ = 0 unless a
    candidate's score beats it by more than ``margin`` (ties keep the larger λ)."""
    best = None
    for c in candidates:  # in NeuronTune's order: λ descending
        if best is None or c["score"] > best["score"] + 1e-12:
            best = c
    paper = next((c for c in candidates if c["lam"] == 0.0), None)
    return paper if paper is not None and paper["score"] >= best["score"] - margin else best


#: margins compared by :func:`lam_margin_table`; inf = always the paper's λ = 0
LAM_MARGINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1, float("inf"))


def lam_margin_table(rows: List[Dict]) -> List[Dict]:
    """Per margin: mean test worst-group accuracy of the λ it selects over every recorded
    (setting, seed, variant), and how many of those fall more than 5 points below ERM."""
    fits = [(r["ERM"]["worst_group"], cands) for r in rows if "lam_candidates" in r
            for cands in r["lam_candidates"].values() if cands]
    out = []
    for mu in LAM_MARGINS:
        picked = [choose_lam(c, mu)["worst_group"] for _, c in fits]
        out.append({"margin": mu, "n_fits": len(fits),
                    "mean_worst_group": float(sum(picked) / max(1, len(picked))),
                    "n_below_erm_by_5": int(sum(p < e - 0.05 for p, (e, _) in zip(picked, fits)))})
    return out


def seeds_label(seeds: Sequence[int]) -> str:
    """A caption's words for ``seeds``: 'seed 0' or 'seeds 0, 1, 2'."""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def loaded_cases(cases: Sequence, settings: Sequence, seed: int, rows: List[Dict], desc: str, progress: bool):
    """Each case ``(benchmark, backbone label, loader parameters, ...)`` of a model-level
    study whose benchmark is among ``settings``, with its loaded data: yields ``(case, d)``;
    a case whose sources are missing gets a ``skipped`` row in ``rows`` instead."""
    from tqdm import tqdm

    from ..data import availability, load

    wanted = {s[0] for s in settings}
    for case in tqdm([c for c in cases if c[0] in wanted], desc=desc, disable=not progress):
        ok, why = availability(case[0])
        if not ok:
            rows.append({"benchmark": case[0], "backbone": case[1], "skipped": why})
            continue
        yield case, load(case[0], seed=seed, **case[2])


def by_case(rows: List[Dict], *keys: str) -> Dict:
    """A study's rows that ran (not ``skipped``), grouped by their ``keys`` values (default
    benchmark and backbone), in first-seen order: one table line per group."""
    keyed: Dict = {}
    for r in rows:
        if "skipped" not in r:
            keyed.setdefault(tuple(r[k] for k in (keys or ("benchmark", "backbone"))), []).append(r)
    return keyed


def neurontune_modes_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    labels = ["ERM"] + list(NT_VARIANTS)
    many = len(seeds) > 1
    out = [f"NeuronTune mask mode and λ, {seeds_label(seeds)}, guard off, retraining on train: worst-group / "
           "mean test accuracy %, [neurons zeroed for at least one class]; no λ given = `lam=\"auto\"`.", "",
           "| benchmark | backbone | id split | " + ("seed | " if many else "") + " | ".join(labels) + " |",
           "| --- | --- | --- | " + ("--- | " if many else "") + " | ".join("---" for _ in labels) + " |"]
    for r in rows:
        if "skipped" in r:
            continue
        cells = []
        for k in labels:
            v = r[k]
            c = f"{100 * v['worst_group']:.1f} / {100 * v['mean']:.1f}"
            cells.append(c + (f" [{v['n_zeroed']}]" if "n_zeroed" in v else ""))
        out.append(f"| {r['benchmark']} | {r['backbone']} | {r['id_split']} | "
                   + (f"{r['seed']} | " if many else "") + " | ".join(cells) + " |")
    table = lam_margin_table(rows)
    if table and table[0]["n_fits"]:
        out += ["", f"`lam_margin` of `lam=\"auto\"` (keep the paper's λ = 0 unless a candidate's label-free "
                f"score beats it by more than the margin), replayed on the recorded candidates of "
                f"{table[0]['n_fits']} fits (every setting above, NeuronTune and NeuronTune (val)): mean worst-group "
                "test accuracy of the λ each margin selects, and how many of those fits fall more than 5 points "
                "below ERM; ∞ = always λ = 0.", "",
                "| margin | " + " | ".join("∞" if t["margin"] == float("inf") else f"{t['margin']:g}"
                                         for t in table) + " |",
                "| --- | " + " | ".join("---" for _ in table) + " |",
                "| mean worst-group % | " + " | ".join(f"{100 * t['mean_worst_group']:.2f}" for t in table) + " |",
                "| fits > 5 below ERM | " + " | ".join(str(t["n_below_erm_by_5"]) for t in table) + " |"]
    return "\n".join(out) + "\n"


def localisation(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """:func:`pydebias.tools.localisation.shortcut_localisation` per (benchmark, backbone) of
    ``settings``, beside NeuronTune's own mask (biased identification split, guard off,
    retraining on train): how spread the shortcut is, and whether NeuronTune finds it.

    The neurons are ranked on the balanced-identification setting's val split where there
    is one (both attribute values in every class), and NeuronTune identifies on the
    biased one's; the backbone and train/test embeddings are the same in both.
    """
    from tqdm import tqdm

    from ..data import availability, load
    from .localisation import shortcut_localisation
    from ..methods import NeuronTune
    from ..metrics import evaluate

    pairs: Dict = {}
    for name, bb, split, params in settings:
        pairs.setdefault((name, bb), {})[split] = params
    rows = []
    for (name, bb), by_split in tqdm(pairs.items(), desc="shortcut localisation", disable=not progress):
        ok, why = availability(name)
        if not ok:
            rows.append({"benchmark": name, "backbone": bb, "skipped": why})
            continue
        rank_params = by_split.get("balanced", next(iter(by_split.values())))
        id_params = by_split.get("biased", next(iter(by_split.values())))
        ranked = load(name, seed=seed, **rank_params)
        data = load(name, seed=seed, **id_params)
        loc = shortcut_localisation(data["train"], ranked["val"], data["test"], seed=seed)
        erm = _erm_head(data, seed)
        nt = NeuronTune(seed=seed, guard=False)
        nt.fit(data["train"], data["val"], head=erm)
        mask = nt.spurious_neurons()
        top = set(loc["order"][:mask.size])
        rows.append({"benchmark": name, "backbone": bb, "rank_params": rank_params, "id_params": id_params,
                     "data_hash": data_hash(data), "rank_data_hash": data_hash(ranked),
                     **loc, "erm_worst_group": evaluate(erm, data["test"]).worst_group_accuracy,
                     "neurontune": {"n_zeroed": int(mask.size), "zeroed": mask.tolist(),
                                    "in_oracle_top": int(sum(int(i) in top for i in mask)),
                                    "worst_group": evaluate(nt.head_, data["test"]).worst_group_accuracy}})
    return rows


def localisation_markdown(rows: List[Dict], seeds: Sequence[int]) -> str:
    many = len(seeds) > 1
    out = [f"Shortcut localisation, {seeds_label(seeds)}: live neurons ranked by within-class |correlation| with the "
           "spurious attribute (group labels read: an oracle, not a method), the top k zeroed, the head "
           "retrained on train as NeuronTune's main variant does; worst-group test accuracy %. "
           "k = 0 is class-balanced retraining. \"k for +5\" = the fewest zeroed neurons that lift worst-group "
           "accuracy 5 points over k = 0. Group-balanced: the same retraining on train with DFR's group-balanced "
           "weights and no mask (group labels read): what DFR's weighting reaches on the training rows. "
           "NeuronTune: its own mask (biased identification split, guard off) "
           "and how many of its neurons are among the oracle's top |S|.", "",
           "| benchmark | backbone | " + ("seed | " if many else "") + "ERM | live / all | worst-group % at "
           "k = 0, 1, 2, 4, ... (k: %) | k for +5 | group-balanced on train | NeuronTune |S| (in oracle top-|S|) "
           "| NeuronTune |",
           "| --- | --- | " + ("--- | " if many else "") + "--- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "skipped" in r:
            continue
        curve = ", ".join(f"{c['k']}: {100 * c['worst_group']:.1f}" for c in r["curve"])
        kg = "none" if r["k_gain"] is None else f"{r['k_gain']} of {r['n_live']}"
        nt, gb = r["neurontune"], r.get("group_balanced")
        out.append(f"| {r['benchmark']} | {r['backbone']} | " + (f"{r['seed']} | " if many else "")
                   + f"{100 * r['erm_worst_group']:.1f} | "
                   f"{r['n_live']} / {r['n_features']} | {curve} | {kg} | "
                   + ("–" if gb is None else f"{100 * gb['worst_group']:.1f}")
                   + f" | {nt['n_zeroed']} ({nt['in_oracle_top']}) | {100 * nt['worst_group']:.1f} |")
    return "\n".join(out) + "\n"


def _cell(r) -> str:
    rep = r["report"]
    s = f"{100 * rep.worst_group_accuracy:.1f}"
    if rep.worst_group_ci:
        s += f" ({100 * rep.worst_group_ci[0]:.0f}–{100 * rep.worst_group_ci[1]:.0f})"
    if "unguarded" in r:
        s += f" ‡{100 * r['unguarded'].worst_group_accuracy:.1f}"
    elif r.get("guard_flagged"):
        s += " §"
    return s


def markdown(rows: List[Dict], seed: int) -> str:
    done = [r for r in rows if "results" in r]
    methods = list(done[0]["results"]) if done else []
    head = "| benchmark | backbone | id split | " + " | ".join(methods) + " |"
    sep = "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |"
    out = [f"Worst-group test accuracy, % (bootstrap 95 % interval), seed {seed}. "
           "‡ = the guard returned the ERM head; the figure after ‡ is the debiased head it set aside. "
           "§ = the guard's label-free check called this head harmful (the guard is off by default, so it "
           "was kept; a warning said so).",
           "", head, sep]
    for r in done:
        out.append(f"| {r['benchmark']} | {r['backbone']} | {r['id_split']} | "
                   + " | ".join(_cell(r["results"][m]) for m in methods) + " |")
    out += ["", "Mean test accuracy, % (unweighted over test samples; test splits are group-balanced "
            "except adult-sex).", "", head, sep]
    for r in done:
        out.append(f"| {r['benchmark']} | {r['backbone']} | {r['id_split']} | "
                   + " | ".join(f"{100 * r['results'][m]['report'].accuracy:.1f}" for m in methods) + " |")
    out += ["", "Fit time, seconds (post-hoc methods on fixed embeddings; ERM = the backbone's own head "
            "where it has one).", "", head, sep]
    for r in done:
        out.append(f"| {r['benchmark']} | {r['backbone']} | {r['id_split']} | "
                   + " | ".join(f"{r['results'][m]['seconds']:.2f}" for m in methods) + " |")
    if done:
        out += ["", harm_markdown(harm_summary(rows)).rstrip("\n")]
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        out += [""] + [f"Skipped {r['benchmark']} ({r['backbone']}, {r['id_split']}): {r['skipped']}" for r in skipped]
    return "\n".join(out) + "\n"


def summary(rows: List[Dict]) -> Dict:
    """Gains over ERM that the acceptance criteria speak of, computed from the rows."""
    out = {}
    for r in rows:
        if "results" not in r:
            continue
        erm = r["results"]["ERM"]["report"].worst_group_accuracy
        key = f"{r['benchmark']} / {r['backbone']} / {r['id_split']}"
        out[key] = {m: round(100 * (v["report"].worst_group_accuracy - erm), 1)
                    for m, v in r["results"].items() if m != "ERM"}
    return out


#: the image built-ins whose two-stage backbones the gain criteria speak of (docs/data.md)
IMAGE_BUILTINS = ("colored-fashion", "fashion-on-textures", "fashion-square")
#: the annotation-free methods that check themselves on held-out identification data
GUARDED = tuple(s.label for s in REGISTRY.values() if s.guarded)


def _setting(r: Dict) -> str:
    return f"{r['benchmark']} / {r['backbone']} / {r['id_split']}"


def harm_summary(rows: List[Dict], loss_points: float = 5.0) -> Dict:
    """What one seed's table says about gains and harm, in points of worst-group accuracy:

    * ``"image_lift"``: each method's mean gain over ERM on the three image built-ins with
      the two-stage backbone and a biased identification split, and ``"neurontune_vs_cb"``
      NeuronTune against class-balanced retraining there (with both 95 % intervals);
    * ``"losses"``: every result more than ``loss_points`` below ERM (as run);
    * ``"guard"``: every time the guard's check called a head harmful (``acted``: the
      guard was on and returned the ERM head), with what the debiased head scores against
      ERM (``cost`` > 0: a gain acting on it gives up; < 0: a loss it avoids).
    """
    done = [r for r in rows if "results" in r]
    lifts: Dict[str, List[float]] = {}
    vs_cb, losses, guard = [], [], []
    for r in done:
        res = r["results"]
        erm = res["ERM"]["report"].worst_group_accuracy
        for m, v in res.items():
            wga = v["report"].worst_group_accuracy
            if m != "ERM" and wga < erm - loss_points / 100:
                losses.append({"setting": _setting(r), "method": m, "guarded": m in GUARDED,
                               "erm": 100 * erm, "result": 100 * wga, "points": 100 * (wga - erm)})
            if v.get("guard_flagged") or "unguarded" in v:
                # the check called the head harmful: acting on it means ERM's head instead
                aside = (v["unguarded"] if "unguarded" in v else v["report"]).worst_group_accuracy
                guard.append({"setting": _setting(r), "method": m, "erm": 100 * erm, "set_aside": 100 * aside,
                              "cost": 100 * (aside - erm), "acted": "unguarded" in v})
        if r["benchmark"] in IMAGE_BUILTINS and r["backbone"] == "two-stage" and r["id_split"] == "biased":
            for m, v in res.items():
                lifts.setdefault(m, []).append(100 * (v["report"].worst_group_accuracy - erm))
            if "NeuronTune" in res and "ClassBalanced" in res:
                nt, cb = res["NeuronTune"]["report"], res["ClassBalanced"]["report"]
                vs_cb.append({"benchmark": r["benchmark"], "neurontune": 100 * nt.worst_group_accuracy,
                              "classbalanced": 100 * cb.worst_group_accuracy,
                              "neurontune_ci": [100 * c for c in nt.worst_group_ci or []],
                              "classbalanced_ci": [100 * c for c in cb.worst_group_ci or []]})
    return {"loss_points": loss_points, "image_lift": {m: sum(v) / len(v) for m, v in lifts.items() if m != "ERM"},
            "image_settings": len(vs_cb), "neurontune_vs_cb": vs_cb, "losses": losses, "guard": guard}


def harm_markdown(h: Dict) -> str:
    """:func:`harm_summary` as the paragraphs under the tables."""
    out = ["Gains and harm, in points of worst-group accuracy (computed from the table above).", ""]
    if h["image_settings"]:
        lift = ", ".join(f"{m} {v:+.1f}" for m, v in h["image_lift"].items())
        out.append(f"- Mean gain over ERM on the {h['image_settings']} image built-ins (two-stage backbone, "
                   f"biased identification split): {lift}.")
        cmp = "; ".join(f"{c['benchmark']} {c['neurontune']:.1f} against {c['classbalanced']:.1f}"
                        + (" (intervals overlap)" if c["neurontune_ci"] and c["classbalanced_ci"]
                           and c["neurontune_ci"][0] <= c["classbalanced_ci"][1]
                           and c["classbalanced_ci"][0] <= c["neurontune_ci"][1] else "")
                        for c in h["neurontune_vs_cb"])
        wins = sum(c["neurontune"] > c["classbalanced"] for c in h["neurontune_vs_cb"])
        out.append(f"- NeuronTune against class-balanced retraining there: higher on {wins} of "
                   f"{h['image_settings']} ({cmp}).")
    for guarded, label in ((True, "guarded methods (" + ", ".join(GUARDED) + ")"), (False, "other methods")):
        rows = [x for x in h["losses"] if x["guarded"] == guarded]
        body = "; ".join(f"{x['method']} on {x['setting']} {x['points']:+.1f} ({x['erm']:.1f} -> {x['result']:.1f})"
                         for x in rows) or "none"
        out.append(f"- More than {h['loss_points']:g} points below ERM, {label}: {body}.")
    body = "; ".join(f"{g['method']} on {g['setting']}: the debiased head scores {g['set_aside']:.1f} "
                     f"against ERM's {g['erm']:.1f} (acting on it: {'gain given up' if g['cost'] > 0 else 'loss avoided'} "
                     f"{abs(g['cost']):.1f})" for g in h["guard"]) or "never"
    out.append(f"- The guard's check called the head harmful (with the guard on, ERM's head is returned): {body}.")
    return "\n".join(out) + "\n"


def guard_record(summaries: Sequence[Dict]) -> Dict:
    """The guard's record over several :func:`harm_summary` (e.g. one per seed): how often it
    fired, how many of the heads it set aside would have lost more than ``loss_points``,
    the points it gave up and avoided, and how many results of the guarded methods still
    lose more than ``loss_points``."""
    fired = [g for h in summaries for g in h["guard"] if g["method"] in GUARDED]
    lp = summaries[0]["loss_points"] if summaries else 5.0
    given_up = sum(g["cost"] for g in fired if g["cost"] > 0)
    avoided = -sum(g["cost"] for g in fired if g["cost"] < 0)
    return {"fired": len(fired), "set_aside_harmful": sum(g["cost"] < -lp for g in fired),
            "points_given_up": given_up, "points_avoided": avoided, "net": avoided - given_up,
            "guarded_losses": sum(x["guarded"] for h in summaries for x in h["losses"]), "loss_points": lp}


def seeds_harm_markdown(summaries: Dict[int, Dict]) -> str:
    """One line per seed of :func:`harm_summary`, then the guard's record over all of them."""
    rec = guard_record(list(summaries.values()))
    lp = f"{rec['loss_points']:g}"
    out = ["Gains and harm per seed, points of worst-group accuracy. Gain = mean over the image built-ins "
           "(two-stage backbone, biased identification split); \"> ClassBalanced\" = where NeuronTune scores "
           f"higher than class-balanced retraining there; losses = results of any method more than "
           f"{lp} points below ERM on that seed (as shipped).", "",
           f"| seed | NeuronTune gain | NSF gain | NeuronTune > ClassBalanced | losses > {lp} | guard's check flagged: "
           "gain given up / loss avoided |", "| --- | --- | --- | --- | --- | --- |"]
    for seed, h in sorted(summaries.items()):
        lift = h["image_lift"]
        wins = [c["benchmark"] for c in h["neurontune_vs_cb"] if c["neurontune"] > c["classbalanced"]]
        loss = [f"{x['method']} on {x['setting']} {x['points']:+.1f}" for x in h["losses"]]
        g = [x for x in h["guard"] if x["method"] in GUARDED]
        gain = [f"{lift[m]:+.1f}" if m in lift else "–" for m in ("NeuronTune", "NSF")]
        beat = (f"{len(wins)} of {h['image_settings']}" + (f" ({', '.join(wins)})" if wins else "")
                if h["image_settings"] else "–")
        out.append(f"| {seed} | {gain[0]} | {gain[1]} | {beat} | "
                   + ("; ".join(loss) or "none") + f" | {len(g)}: "
                   f"{sum(x['cost'] for x in g if x['cost'] > 0):.1f} / {-sum(x['cost'] for x in g if x['cost'] < 0):.1f} |")
    out += ["", f"Over these seeds the guard's check called {rec['fired']} heads harmful; {rec['set_aside_harmful']} "
            f"of them lose more than {lp} points against ERM; acting on every call would give up "
            f"{rec['points_given_up']:.1f} points of gains and avoid {rec['points_avoided']:.1f} points of losses "
            f"(net {rec['net']:+.1f}); {rec['guarded_losses']} results of the guarded methods lose more than {lp} "
            "points as shipped."]
    return "\n".join(out) + "\n"


def across_seeds(rows_by_seed: Dict[int, List[Dict]]) -> List[Dict]:
    """Worst-group accuracy of every method per setting over several seeds' reports:
    ``{"benchmark", "backbone", "id_split", "seeds", "methods": {m: {"worst_group":
    [per seed], "mean", "min", "max", "gain_over_erm_mean"}}}``."""
    import numpy as np

    seeds = sorted(rows_by_seed)
    keyed: Dict = {}
    for s in seeds:
        for r in rows_by_seed[s]:
            if "results" in r:
                keyed.setdefault((r["benchmark"], r["backbone"], r["id_split"]), {})[s] = r["results"]
    out = []
    for (name, bb, split), by_seed in keyed.items():
        have = [s for s in seeds if s in by_seed]
        methods = list(by_seed[have[0]])
        erm = np.array([by_seed[s]["ERM"]["report"].worst_group_accuracy for s in have])
        cells = {}
        for m in methods:
            v = np.array([by_seed[s][m]["report"].worst_group_accuracy for s in have])
            cells[m] = {"worst_group": v.tolist(), "mean": float(v.mean()), "min": float(v.min()),
                        "max": float(v.max()), "gain_over_erm_mean": float((v - erm).mean())}
        out.append({"benchmark": name, "backbone": bb, "id_split": split, "seeds": have, "methods": cells})
    return out


def across_seeds_markdown(rows: List[Dict]) -> str:
    if not rows:
        return "No setting ran.\n"
    methods = list(rows[0]["methods"])
    seeds = sorted({s for r in rows for s in r["seeds"]})
    head = "| benchmark | backbone | id split | " + " | ".join(methods) + " |"
    sep = "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |"
    out = [f"Worst-group test accuracy, %, over seeds {', '.join(map(str, seeds))}: mean (lowest–highest). "
           "Each seed draws its own splits and trains its own backbone; every method as shipped (guard off). "
           "**Bold**: a mean more than 5 points below ERM's.", "", head, sep]
    for r in rows:
        erm = r["methods"]["ERM"]["mean"] if "ERM" in r["methods"] else None
        cells = []
        for m in methods:
            c = r["methods"][m]
            txt = f"{100 * c['mean']:.1f} ({100 * c['min']:.0f}–{100 * c['max']:.0f})"
            cells.append(f"**{txt}**" if erm is not None and c["mean"] < erm - 0.05 else txt)
        out.append(f"| {r['benchmark']} | {r['backbone']} | {r['id_split']} | " + " | ".join(cells) + " |")
    losses = mean_losses(rows)
    out += ["", "Means over the seeds more than 5 points below ERM's: "
            + ("; ".join(f"{x['method']} on {x['setting']} {x['points']:+.1f}" for x in losses) or "none") + "."]
    return "\n".join(out) + "\n"


def mean_losses(rows: List[Dict], loss_points: float = 5.0) -> List[Dict]:
    """Every (setting, method) of :func:`across_seeds` whose mean worst-group accuracy is
    more than ``loss_points`` below ERM's mean."""
    out = []
    for r in rows:
        erm = r["methods"].get("ERM")
        for m, c in r["methods"].items():
            if erm is not None and m != "ERM" and c["mean"] < erm["mean"] - loss_points / 100:
                out.append({"setting": f"{r['benchmark']} / {r['backbone']} / {r['id_split']}", "method": m,
                            "points": 100 * (c["mean"] - erm["mean"])})
    return out


def plot(rows: List[Dict], path: str) -> str:
    import numpy as np

    from .plots import _pyplot, save_png

    plt = _pyplot()

    done = [r for r in rows if "results" in r]
    methods = list(done[0]["results"])
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(done)), 4))
    xs = np.arange(len(done))
    w = 0.8 / len(methods)
    for k, m in enumerate(methods):
        vals = [r["results"][m]["report"].worst_group_accuracy for r in done]
        ax.bar(xs + k * w, vals, w, label=m)
    ax.set_xticks(xs + w * (len(methods) - 1) / 2,
                  [f"{r['benchmark']}\n{r['backbone']}\n{r['id_split']}" for r in done], fontsize=6)
    ax.set_ylabel("worst-group test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, 1.15))
    fig.tight_layout()
    return save_png(fig, path)


def footer(v: Optional[Dict] = None) -> str:
    """The versions a table was made with (``v``, a result file's ``versions``; default this
    process's), and the instruction set of torch's CPU kernels: backbones trained on another
    one differ (README, "Results"), and so do the figures."""
    from ..results import versions

    v = v or versions()
    return (f"\nMade with pydebias {v.get('pydebias')}, torch {v.get('torch')} (CPU kernels: "
            f"{v.get('torch_cpu_capability')}), numpy {v.get('numpy')}, faiss {v.get('faiss')}.\n")


def write(rows: List[Dict], out_dir: str, seed: int) -> Dict[str, str]:
    from ..results import jsonable, provenance, write_atomic, write_json
    from . import plots

    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, "report.md"), "json": os.path.join(out_dir, "report.json")}
    write_atomic(paths["markdown"], (markdown(rows, seed) + footer()).encode())
    js = {**provenance(seed, "auto", data_hash=rows_data_hash(rows)), "summary_gain_over_erm_points": summary(rows),
          "do_no_harm": harm_summary(rows), "rows": []}
    for r in rows:
        row = {k: v for k, v in r.items() if k != "results"}
        if "results" in r:
            row["methods"] = {m: {**v["report"].to_dict(), "seconds": v["seconds"],
                                  "unguarded": v["unguarded"].to_dict() if "unguarded" in v else None,
                                  "method_report": jsonable(v["method_report"])}
                              for m, v in r["results"].items()}
        js["rows"].append(row)
    write_json(paths["json"], js)
    if plots.have_matplotlib() and any("results" in r for r in rows):
        paths["png"] = plot(rows, os.path.join(out_dir, "report.png"))
    return paths
