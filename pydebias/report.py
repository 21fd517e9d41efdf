"""`pydebias report`: every method on every built-in, both identification settings and
both backbone kinds, one seed: a markdown table, a PNG and the JSON behind them."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

# (benchmark, backbone, identification split, loader parameters)
Setting = Tuple[str, str, str, Dict]


def default_settings(benchmarks: Optional[Sequence[str]] = None) -> List[Setting]:
    out: List[Setting] = []
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
    from .data import availability, load

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
                     "load_seconds": load_s, "results": res})
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


def neurontune_modes(settings: Sequence[Setting], seed: int = 0, progress: bool = True) -> List[Dict]:
    """Worst-group / mean test accuracy and neurons zeroed of each :data:`NT_VARIANTS`
    NeuronTune (identification on val, retraining on train, guard off) per setting,
    beside ERM: the measurements behind the ``mask_mode`` and ``lam`` defaults."""
    from tqdm import tqdm

    from .data import availability, load
    from .methods import NeuronTune
    from .metrics import evaluate

    rows = []
    for name, bb, split, params in tqdm(settings, desc="NeuronTune variants", disable=not progress):
        ok, why = availability(name)
        if not ok:
            rows.append({"benchmark": name, "backbone": bb, "id_split": split, "skipped": why})
            continue
        data = load(name, seed=seed, **params)
        erm = data.get("head")
        if erm is None:
            from .methods import ERM

            erm = ERM(seed=seed).fit(data["train"])
        base = evaluate(erm, data["test"])
        row = {"benchmark": name, "backbone": bb, "id_split": split, "params": params,
               "ERM": {"worst_group": base.worst_group_accuracy, "mean": base.accuracy}}
        for label, kw in NT_VARIANTS.items():
            m = NeuronTune(seed=seed, guard=False, **kw)
            head = m.fit(data["val"], head=erm, tune_set=data["train"])
            rep = evaluate(head, data["test"])
            row[label] = {"worst_group": rep.worst_group_accuracy, "mean": rep.accuracy,
                          "n_zeroed": int(len(m.spurious_neurons())),
                          "lam": lam if (lam := m.report_["rounds"][-1]["lam"]) != float("inf") else None}
        rows.append(row)
    return rows


def neurontune_modes_markdown(rows: List[Dict], seed: int) -> str:
    labels = ["ERM"] + list(NT_VARIANTS)
    out = [f"NeuronTune mask mode and λ, seed {seed}, guard off, retraining on train: worst-group / mean "
           "test accuracy %, [neurons zeroed for at least one class]; no λ given = `lam=\"auto\"`.", "",
           "| benchmark | backbone | id split | " + " | ".join(labels) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in labels) + " |"]
    for r in rows:
        if "skipped" in r:
            continue
        cells = []
        for k in labels:
            v = r[k]
            c = f"{100 * v['worst_group']:.1f} / {100 * v['mean']:.1f}"
            cells.append(c + (f" [{v['n_zeroed']}]" if "n_zeroed" in v else ""))
        out.append(f"| {r['benchmark']} | {r['backbone']} | {r['id_split']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _cell(r) -> str:
    rep = r["report"]
    s = f"{100 * rep.worst_group_accuracy:.1f}"
    if rep.worst_group_ci:
        s += f" ({100 * rep.worst_group_ci[0]:.0f}–{100 * rep.worst_group_ci[1]:.0f})"
    if "unguarded" in r:
        s += f" ‡{100 * r['unguarded'].worst_group_accuracy:.1f}"
    return s


def markdown(rows: List[Dict], seed: int) -> str:
    done = [r for r in rows if "results" in r]
    methods = list(done[0]["results"]) if done else []
    head = "| benchmark | backbone | id split | " + " | ".join(methods) + " |"
    sep = "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |"
    out = [f"Worst-group test accuracy, % (bootstrap 95 % interval), seed {seed}. "
           "‡ = the guard returned the ERM head; the figure after ‡ is the debiased head it set aside.",
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


def write(rows: List[Dict], out_dir: str, seed: int) -> Dict[str, str]:
    from . import plots
    from .compare import _jsonable
    from .results import provenance, write_atomic, write_json

    os.makedirs(out_dir, exist_ok=True)
    paths = {"markdown": os.path.join(out_dir, "report.md"), "json": os.path.join(out_dir, "report.json")}
    write_atomic(paths["markdown"], markdown(rows, seed).encode())
    js = {**provenance(seed, "auto"), "summary_gain_over_erm_points": summary(rows), "rows": []}
    for r in rows:
        row = {k: v for k, v in r.items() if k != "results"}
        if "results" in r:
            row["methods"] = {m: {**v["report"].to_dict(), "seconds": v["seconds"],
                                  "unguarded": v["unguarded"].to_dict() if "unguarded" in v else None,
                                  "method_report": _jsonable(v["method_report"])}
                              for m, v in r["results"].items()}
        js["rows"].append(row)
    write_json(paths["json"], js)
    if plots.have_matplotlib() and any("results" in r for r in rows):
        paths["png"] = plot(rows, os.path.join(out_dir, "report.png"))
    return paths
