"""The `pydebias` command, run in-process."""
import json
import re
import warnings

import numpy as np
import pytest

from pydebias import __version__
from pydebias.methods import NSF
from pydebias.results import rows_data_hash
from pydebias.tools.cli import main
from pydebias.tools.report import keep_margin_table


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


def test_datasets_lists_planted(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "planted" in out and "yes" in out


def test_demo_writes_results_with_provenance(tmp_path, capsys):
    assert main(["demo", "--data", "planted", "--out", str(tmp_path), "--quiet", "--n-boot", "20"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    erm, dfr = res["methods"]["ERM"], res["methods"]["DFR"]
    # the planted shortcut is real, and group-balanced retraining repairs most of it
    assert erm["worst_group_accuracy"] < erm["accuracy"] - 0.15
    assert dfr["worst_group_accuracy"] > erm["worst_group_accuracy"] + 0.2
    assert res["seed"] == 0 and res["versions"]["torch"] and len(res["data_hash"]) > 16
    import torch

    assert res["versions"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "worst group" in capsys.readouterr().out
    if (tmp_path / "group_accuracy.png").exists():
        assert (tmp_path / "group_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_dataset_is_a_clean_error(capsys):
    assert main(["demo", "--data", "nope", "--quiet"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err


def test_bench_quick_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["bench", "--quick", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    impls = {r["impl"] for r in rows}
    assert {"cpp (pydebias._C)", "numpy baseline"} <= impls
    assert all(r["x_one_read"] > 0 for r in rows if r["kernel"] not in ("ClArC epoch", "MaskTune masking", "export"))
    # exported debiased modules against the plain ones in the same format, checked outputs
    ex = {r["impl"]: r for r in rows if r["kernel"] == "export"}
    assert set(ex) == {f"{case}: debiased, {how}" for case in ("head 1280 -> 10", "SmallCNN, batch 256")
                       for how in ("unfolded (eager torch)", "torchscript")}
    assert all(r["x_plain"] > 0 for r in ex.values())
    assert all(r["max_abs_diff"] <= 1e-5 for k, r in ex.items() if "torchscript" in k)
    # RR-ClArC's epochs as ratios to plain fine-tuning on the same path (no timing asserted)
    clarc = {r["impl"]: r for r in rows if r["kernel"] == "ClArC epoch"}
    assert set(clarc) == {"plain fine-tune (forward every step)", "RR-ClArC, autograd",
                          "plain fine-tune (head inputs once)", "RR-ClArC, closed form"}
    assert clarc["RR-ClArC, closed form"]["closed_form"] and not clarc["RR-ClArC, autograd"]["closed_form"]
    assert clarc["plain fine-tune (head inputs once)"]["x_plain_epoch"] == 1.0
    assert clarc["RR-ClArC, closed form"]["x_plain_epoch"] > 0
    # MaskTune's masking against a training step's forward + backward of the same batch
    mt = {r["impl"].split(",")[0]: r for r in rows if r["kernel"] == "MaskTune masking"}
    assert set(mt) == {"forward + backward (training step)", "MaskTune masks + masked copy"}
    assert mt["forward + backward (training step)"]["x_forward_backward"] == 1.0
    assert mt["MaskTune masks + masked copy"]["images_per_s"] > 0
    # grouped quantiles's bar is against torch computing what moments + quantiles returns (mean, var, median), each
    # kernel row against its own baseline and paired
    k2 = {r["impl"]: r for r in rows if r["kernel"] == "grouped median"}
    assert {"torch mean+var+median", "torch median only"} <= set(k2)
    assert k2["cpp moments + medians"]["speedup_vs_torch"] == k2["cpp moments + medians"]["speedup_vs_torch_paired"] > 0
    assert k2["cpp medians alone"]["speedup_vs_torch"] == k2["cpp medians alone"]["speedup_vs_torch_median_only_paired"] > 0


def test_bench_e2e_small_file_finds_the_planted_neurons_and_cleans_up(tmp_path):
    path = tmp_path / "e.json"
    assert main(["bench", "--e2e", "--rows", "20000", "--dir", str(tmp_path), "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())["rows"]
    assert row["kernel"] == "E2E NeuronTune identification" and row["n"] == 20000
    assert row["precision"] == 1.0 and row["recall"] == 1.0
    assert row["x_one_read"] == row["seconds"] / row["one_read_seconds"] > 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["e.json"]  # the memmap it wrote is removed


def test_bench_out_of_core_reports_each_method_and_cleans_up(tmp_path):
    import warnings

    path = tmp_path / "o.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(["bench", "--out-of-core", "--rows", "3000", "--dir", str(tmp_path), "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert [r["impl"].split(",")[0] for r in rows] == ["DFR", "NSF", "AFR"]
    assert all(r["n"] == 3000 and r["peak_anonymous_bytes"] > 0 for r in rows)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["o.json"]  # the memmap and scratch files are removed


def test_run_matches_the_report_for_the_same_seed(tmp_path):
    from pydebias.tools import report

    assert main(["run", "neurontune", "--data", "planted", "--out", str(tmp_path), "--quiet", "--n-boot", "0"]) == 0
    single = json.loads((tmp_path / "results.json").read_text())["methods"]
    assert list(single) == ["ERM", "NeuronTune", "DFR"]  # table labels, from the registry
    rows = report.run_report([("planted", "planted", "biased", {})], seed=0, n_boot=0, progress=False,
                             methods=["erm", "neurontune", "dfr"])
    for name in ("ERM", "NeuronTune", "DFR"):
        rep = rows[0]["results"][name]["report"]
        assert rep.worst_group_accuracy == single[name]["worst_group_accuracy"]
        assert rep.accuracy == single[name]["accuracy"]


def test_report_markdown_and_files(tmp_path):
    from pydebias.tools import report

    rows = report.run_report([("planted", "planted", "balanced", {"val_corr": 0.5})], seed=0, n_boot=20,
                             progress=False, methods=["erm", "classbalanced-val", "dfr"])
    paths = report.write(rows, str(tmp_path), seed=0)
    md = open(paths["markdown"]).read()
    assert "| planted | planted | balanced |" in md and "ClassBalanced (val)" in md
    gains = json.loads(open(paths["json"]).read())["summary_gain_over_erm_points"]
    erm = rows[0]["results"]["ERM"]["report"].worst_group_accuracy
    dfr = rows[0]["results"]["DFR"]["report"].worst_group_accuracy
    assert gains["planted / planted / balanced"]["DFR"] == round(100 * (dfr - erm), 1)


def _fake_rows(table):
    """Report rows from {(benchmark, backbone, split): {method: wga or (wga, set_aside_wga)}}."""
    from types import SimpleNamespace as NS

    def rep(v):
        return NS(worst_group_accuracy=v, worst_group_ci=(v - 0.02, v + 0.02))

    rows = []
    for (name, bb, split), cells in table.items():
        res = {}
        for m, v in cells.items():
            if isinstance(v, str):  # "f0.40": flagged by the guard's check, not acted on (guard off)
                res[m] = {"report": rep(float(v[1:])), "guard_flagged": True}
                continue
            res[m] = {"report": rep(v[0] if isinstance(v, tuple) else v)}
            if isinstance(v, tuple):
                res[m]["unguarded"] = rep(v[1])
        rows.append({"benchmark": name, "backbone": bb, "id_split": split, "results": res})
    return rows


def test_harm_summary_reads_gains_losses_and_guard_cost_off_the_rows():
    from pydebias.tools import report

    rows = _fake_rows({
        ("colored-fashion", "two-stage", "biased"): {"ERM": 0.30, "ClassBalanced": 0.50, "NeuronTune": 0.70,
                                                     "NSF": 0.40},
        ("fashion-on-textures", "two-stage", "biased"): {"ERM": 0.30, "ClassBalanced": 0.45, "NeuronTune": 0.44,
                                                         "NSF": 0.36},
        ("fashion-square", "two-stage", "biased"): {"ERM": 0.16, "ClassBalanced": 0.09, "NeuronTune": 0.10,
                                                    "NSF": (0.16, 0.05)},  # the guard kept ERM
        ("fashion-square", "from scratch", "biased"): {"ERM": 0.20, "ClassBalanced": 0.10, "NeuronTune": 0.30,
                                                       "NSF": (0.20, 0.50)},
        ("planted", "planted", "biased"): {"ERM": 0.50, "NeuronTune": "f0.40", "NSF": "f0.58"},
    })
    h = report.harm_summary(rows)
    assert h["image_settings"] == 3
    assert h["image_lift"]["NeuronTune"] == pytest.approx((40 + 14 - 6) / 3)
    assert h["image_lift"]["NSF"] == pytest.approx((10 + 6 + 0) / 3)
    assert [c["neurontune"] > c["classbalanced"] for c in h["neurontune_vs_cb"]] == [True, False, True]
    assert sorted((x["method"], x["setting"].split(" / ")[1], round(x["points"], 1)) for x in h["losses"]) == [
        ("ClassBalanced", "from scratch", -10.0), ("ClassBalanced", "two-stage", -7.0),
        ("NeuronTune", "planted", -10.0), ("NeuronTune", "two-stage", -6.0)]
    # acted on (guard on) or only flagged (guard off), each check that called a head harmful counts
    assert [(round(g["cost"], 1), g["acted"]) for g in h["guard"]] == [
        (-11.0, True), (30.0, True), (-10.0, False), (8.0, False)]
    rec = report.guard_record([h, h])
    assert rec == {"fired": 8, "set_aside_harmful": 4, "points_given_up": pytest.approx(76.0),
                   "points_avoided": pytest.approx(42.0), "net": pytest.approx(-34.0), "guarded_losses": 4,
                   "loss_points": 5.0}
    md = report.harm_markdown(h)
    assert "higher on 2 of 3" in md and "NeuronTune on fashion-square / two-stage / biased -6.0" in md
    assert "gain given up 30.0" in md and "loss avoided 11.0" in md
    assert "| 7 | +16.0 | +5.3 | 2 of 3 (colored-fashion, fashion-square) |" in report.seeds_harm_markdown({7: h})


def test_neurontune_modes_table_on_planted(tmp_path):
    """The mask-mode / λ comparison behind NeuronTune's defaults: on ``planted`` the literal
    intersection selects nothing, per-class finds the 8 planted neurons but leaves the
    worst group where ERM has it, union finds them and lifts it (NeuronTune's docstring)."""
    from pydebias.tools import report
    from pydebias.methods import NeuronTune

    assert main(["report", "--neurontune-modes", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    md = (tmp_path / "neurontune_modes.md").read_text()
    assert md.count("| planted | planted |") == 2 and "union, λ=0" in md
    for row in json.loads((tmp_path / "neurontune_modes.json").read_text())["rows"]:
        erm = row["ERM"]["worst_group"]
        assert row["intersection"]["n_zeroed"] == 0 and row["union, λ=0"]["n_zeroed"] == 8
        assert row["per_class, λ=0"]["n_zeroed"] == 8
        assert row["union"]["worst_group"] > erm + 0.3 and row["union, λ=0"]["worst_group"] > erm + 0.3
        assert abs(row["per_class, λ=0"]["worst_group"] - erm) < 0.05
        assert f"{100 * erm:.1f} / {100 * row['ERM']['mean']:.1f}" in md
        # replaying lam="auto" on the recorded candidates gives what the fit chose
        picked = report.choose_lam(row["lam_candidates"]["NeuronTune"], NeuronTune().lam_margin)
        assert picked["worst_group"] == row["union"]["worst_group"] and picked["n_zeroed"] == row["union"]["n_zeroed"]
        assert [c["lam"] for c in row["lam_candidates"]["NeuronTune (val)"]][-1] == "inf"  # strict JSON
    assert "| fits > 5 below ERM |" in md and "of 4 fits" in md


def test_localisation_table_on_planted(tmp_path):
    """The oracle study: on ``planted`` the shortcut lives in exactly the 8 planted neurons, so
    zeroing the top 8 by attribute association repairs the worst group (k for +5 = 8), and
    NeuronTune's own mask is those 8."""
    assert main(["report", "--localisation", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    md = (tmp_path / "localisation.md").read_text()
    js = json.loads((tmp_path / "localisation.json").read_text())
    (row,) = js["rows"]
    assert js["seed"] == 0 and js["versions"]["torch"]
    assert row["k_gain"] == 8 and row["n_live"] == 64
    assert row["neurontune"]["n_zeroed"] == 8 and row["neurontune"]["in_oracle_top"] == 8
    curve = {c["k"]: c["worst_group"] for c in row["curve"]}
    assert curve[8] > curve[4] + 0.3 and 64 not in curve  # zeroing every live neuron is not tried
    assert "| planted | planted |" in md and "8 of 64" in md and "8 (8)" in md
    assert f"| {100 * row['group_balanced']['worst_group']:.1f} | 8 (8) |" in md
    # provenance: the masks were ranked on the balanced split's val, fitted on the biased one's
    train, val, test = row["data_hash"].split(":")
    assert row["rank_data_hash"].split(":")[0::2] == [train, test] and row["rank_data_hash"].split(":")[1] != val
    assert js["data_hash"] == rows_data_hash(js["rows"]) and len(js["data_hash"]) == 16


def test_report_studies_are_exclusive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--localisation", "--neurontune-modes"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_report_over_seeds_agrees_with_each_seed(tmp_path):
    assert main(["report", "--seeds", "0", "1", "--benchmarks", "planted", "--out", str(tmp_path), "--quiet",
                 "--n-boot", "0"]) == 0
    per_seed = {s: json.loads((tmp_path / f"seed-{s}" / "report.json").read_text()) for s in (0, 1)}
    assert per_seed[1]["seed"] == 1
    summary = json.loads((tmp_path / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["rows"]) == 2
    for row in summary["rows"]:
        for m, cell in row["methods"].items():
            vals = [next(r for r in per_seed[s]["rows"] if r["id_split"] == row["id_split"])["methods"][m]
                    ["worst_group_accuracy"] for s in (0, 1)]
            assert cell["worst_group"] == vals and cell["mean"] == sum(vals) / 2
    assert "over seeds 0, 1" in (tmp_path / "seeds.md").read_text()
    # every row names its data; a file over several datasets hashes their hashes, in order
    hashes = {s: [r["data_hash"] for r in per_seed[s]["rows"]] for s in (0, 1)}
    assert all(len(set(h)) == 2 for h in hashes.values()) and not set(hashes[0]) & set(hashes[1])
    assert per_seed[0]["data_hash"] == rows_data_hash(per_seed[0]["rows"]) != per_seed[1]["data_hash"]
    assert summary["data_hash"] == rows_data_hash(per_seed[0]["rows"] + per_seed[1]["rows"])
    assert rows_data_hash([]) is None and rows_data_hash([{"data_hash": "a"}, {"data_hash": "b"}]) != rows_data_hash(
        [{"data_hash": "b"}, {"data_hash": "a"}])


def test_report_defaults_to_five_seeds(monkeypatch, tmp_path):
    from pydebias.tools import cli

    seen = {}
    monkeypatch.setattr(cli, "_report_seeds", lambda args, settings: seen.setdefault("seeds", args.seeds) and 0)
    assert main(["report", "--benchmarks", "planted", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen["seeds"] == [0, 1, 2, 3, 4]


def test_result_files_get_the_mode_a_plain_open_would(tmp_path):
    import os
    import stat

    from pydebias.results import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(str(tmp_path / "a.json"), b"{}")
        os.umask(0o077)
        write_atomic(str(tmp_path / "b.json"), b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temporary left


def test_balance_study_on_planted(tmp_path):
    """The identification-balance study: on ``planted`` the methods that retrain on val
    repair the worst group with a balanced val and lose it as val gets biased like train."""
    assert main(["report", "--balance", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "balance.json").read_text())["rows"]
    by_corr = {r["val_corr"]: r for r in rows}
    assert sorted(by_corr) == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert all(r["train_corr"] == 0.95 for r in rows)
    bal, biased = by_corr[0.5], by_corr[0.95]
    assert bal["NeuronTune (val)"]["worst_group"] > bal["ERM"] + 0.3
    assert bal["ClassBalanced (val)"]["worst_group"] > biased["ClassBalanced (val)"]["worst_group"] + 0.2
    assert bal["DFR"]["worst_group"] > bal["ERM"] + 0.3
    md = (tmp_path / "balance.md").read_text()
    assert "| planted (planted) | 0.5 |" in md and "| planted (planted) | 0.95 |" in md


def test_jtt_weights_study_on_planted(tmp_path):
    """JTT's up-weight study: one row per non-balanced setting, every up-weight, and the
    balanced default lifts planted's worst group where a 2x up-weight barely does."""
    assert main(["report", "--jtt-weights", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "jtt_weights.json").read_text())["rows"]
    assert [(r["benchmark"], r["backbone"]) for r in rows] == [("planted", "planted")]  # the balanced one skipped
    r = rows[0]
    assert r["balanced"] > r["ERM"] + 0.3 and r["balanced"] > r["2.0"] + 0.2
    assert len(r["error_weight_per_class"]) == 2 and min(r["error_weight_per_class"]) > 1
    md = (tmp_path / "jtt_weights.md").read_text()
    assert "| planted (planted) |" in md and "up_weight=balanced" in md and "mean over settings" in md


def test_afr_anchors_study_on_planted(tmp_path, monkeypatch):
    """AFR's anchor study: both identification splits of planted, a worst group and a
    label-free γ per l2 (two of them here, for time), and the default among those studied."""
    from pydebias.methods import AFR
    from pydebias.tools import report

    assert AFR().l2 in report.AFR_ANCHORS
    monkeypatch.setattr(report, "AFR_ANCHORS", (1e-3, 1.0))
    assert main(["report", "--afr-anchors", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "afr_anchors.json").read_text())["rows"]
    assert [r["id_split"] for r in rows] == ["biased", "balanced"]
    for r in rows:
        assert r["0.001"] > r["ERM"] + 0.1 and r["1.0"] > r["ERM"] + 0.1
        assert r["gamma 0.001"] in (0.0, 1.0, 2.0, 4.0, 8.0) and r["gamma 1.0"] in (0.0, 1.0, 2.0, 4.0, 8.0)
    md = (tmp_path / "afr_anchors.md").read_text()
    assert "| planted (planted), biased split |" in md and "| planted (planted), balanced split |" in md
    assert "l2=0.001" in md and "l2=1.0" in md and "l2=0.01" not in md.split("\n", 2)[2]


def test_afr_ess_study_replays_the_choice_at_each_floor(tmp_path):
    """AFR's effective-size study on planted: every candidate scored once, each floor's column
    is the candidate that floor lets AFR pick (gamma 0, the most even weights, always
    eligible), and the default's column is what AFR as shipped returns."""
    import warnings

    from pydebias.data import load
    from pydebias.methods import AFR
    from pydebias.metrics import evaluate
    from pydebias.tools import report

    assert AFR().min_ess in report.AFR_MIN_ESS
    assert main(["report", "--afr-ess", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "afr_ess.json").read_text())["rows"]
    assert [r["id_split"] for r in rows] == ["biased", "balanced"]
    for r in rows:
        cands = r["candidates"]
        assert [c["gamma"] for c in cands] == [0.0, 1.0, 2.0, 4.0, 8.0] and all(c["score"] is not None for c in cands)
        for f in report.AFR_MIN_ESS:
            ok = [c for c in cands if c["ess"] >= f or c["gamma"] == 0.0]
            best = max(ok, key=lambda c: c["score"])
            assert r[f"gamma {f}"] == best["gamma"] and r[str(f)] == best["worst_group"]
    d = load("planted", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = AFR(seed=0).fit(d["train"], d["val"], head=report._erm_head(d, 0))
    assert evaluate(head, d["test"]).worst_group_accuracy == rows[0][str(AFR().min_ess)]
    md = (tmp_path / "afr_ess.md").read_text()
    assert "| planted (planted), biased split |" in md and "min_ess=0.05" in md and "Setting means more than 5" in md


def test_nsf_outliers_study_on_planted(tmp_path):
    """NSF's unrescued-outlier study: both identification splits of planted, each choice's
    worst group, and the counts it rests on (some outliers left unrescued)."""
    assert main(["report", "--nsf-outliers", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "nsf_outliers.json").read_text())["rows"]
    assert [r["id_split"] for r in rows] == ["biased", "balanced"]
    for r in rows:
        assert 0 < r["rescued"] < r["outliers"]
        assert r["True"] > r["ERM"] + 0.1 and r["False"] > r["ERM"] + 0.1
    assert rows[1]["True"] > rows[1]["False"] + 0.1  # balanced split: the dropped rows are the minority's
    for r in rows:  # the label-free choice follows the holdout scores and takes that fit's figure
        assert r["keep_margin"] == NSF().keep_margin
        assert r["auto picks True"] == (r["score True"] > r["score False"] + r["keep_margin"])
        assert r["auto"] == r[str(r["auto picks True"])] and 0.5 < r["score False"] <= 2.0
    md = (tmp_path / "nsf_outliers.md").read_text()
    assert "| planted (planted), balanced split |" in md and "keep_unrescued=True" in md
    assert "keep_unrescued=auto" in md and f"picked `True` in {sum(r['auto picks True'] for r in rows)} of 2 fits" in md
    # the margin replay: at the fits' own margin it is the auto column; each margin keeps True where the gap exceeds it
    table = {t["margin"]: t for t in keep_margin_table(rows)}
    own = table[NSF().keep_margin]
    assert own["mean_worst_group"] == pytest.approx(100 * np.mean([r["auto"] for r in rows]))
    assert own["true_kept"] == sum(r["auto picks True"] for r in rows)
    assert own["largest_loss"] == pytest.approx(100 * min(r["auto"] - r["ERM"] for r in rows))
    gaps = [r["score True"] - r["score False"] for r in rows]
    for t in table.values():
        assert t["true_kept"] == sum(g > t["margin"] for g in gaps)
    assert "| keep_margin | 0 | 0.01 | 0.02 | 0.05 | 0.1 |" in md


def test_nsf_steps_study_on_planted(tmp_path, monkeypatch):
    """NSF's update-length study: each value's column is the worst group of a plain NSF fit
    with that many update steps (the default's among them), and the lengths give other heads."""
    from pydebias import data
    from pydebias.metrics import evaluate
    from pydebias.tools import report

    assert NSF().n_update_steps in report.NSF_STEPS
    monkeypatch.setattr(report, "NSF_STEPS", (10, NSF().n_update_steps))
    assert main(["report", "--nsf-steps", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "nsf_steps.json").read_text())["rows"]
    assert [r["id_split"] for r in rows] == ["biased", "balanced"]
    d = data.load("planted", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        head = NSF(seed=0).fit(d["train"], d["val"], head=report._erm_head(d, 0))
    assert rows[0][str(NSF().n_update_steps)] == evaluate(head, d["test"]).worst_group_accuracy
    assert any(r["10"] != r[str(NSF().n_update_steps)] for r in rows)
    md = (tmp_path / "nsf_steps.md").read_text()
    assert "| planted (planted), balanced split |" in md and "n_update_steps=10" in md
    assert re.search(r"more than 5 points below ERM's: n_update_steps=10 \d+; n_update_steps=\d+ \d+\.", md)


def test_run_prints_what_each_method_chose(tmp_path, capsys):
    """After the table, one line per method with its label-free choice, read from the same
    ``report_`` that results.json holds: AFR's gamma and the candidates it did not fit,
    NSF's outliers and G1, DFR's l2."""
    assert main(["run", "afr", "--data", "planted", "--set", "min_ess=0.5", "--out", str(tmp_path), "--quiet",
                 "--n-boot", "0"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "results.json").read_text())["methods"]
    afr, dfr = res["AFR"]["method_report"], res["DFR"]["method_report"]
    skipped = [f"{c['gamma']:g}" for c in afr["selection"] if c["score"] is None]
    assert skipped and afr["min_ess"] == 0.5
    assert f"- AFR: gamma = {afr['gamma']:g} picked label-free; not fitted ({', '.join(skipped)})" in out
    assert f"- DFR: l2 = {dfr['l2']:g}," in out and "- ERM" not in out
    assert main(["run", "nsf", "--data", "planted", "--out", str(tmp_path), "--quiet", "--n-boot", "0"]) == 0
    out = capsys.readouterr().out
    c = json.loads((tmp_path / "results.json").read_text())["methods"]["NSF"]["method_report"]["counts"]
    assert f"- NSF: {c['outliers']} outliers of {c['n_fit']} rows" in out
    assert f"{c['g1']} rows against {c['inliers']} inliers" in out


def test_run_sets_a_method_hyper_parameter_and_names_bad_ones(tmp_path, capsys):
    """`pydebias run nsf --set keep_unrescued=true`: the fit uses it (every outlier in G1) and
    results.json records it; an unknown, fixed or seed key is refused by name."""
    out = tmp_path / "r"
    assert main(["run", "nsf", "--data", "planted", "--set", "keep_unrescued=true", "--out", str(out),
                 "--n-boot", "0", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["params"]["method_params"] == {"nsf": {"keep_unrescued": True}}
    nsf = res["methods"]["NSF"]["method_report"]
    assert nsf["params"]["keep_unrescued"] is True and nsf["counts"]["dropped"] == 0
    assert nsf["counts"]["g1"] == nsf["counts"]["outliers"] > nsf["counts"]["rescued"]
    capsys.readouterr()
    for argv, match in ((["nsf", "--set", "keep_unrescue=true"], "'keep_unrescue' cannot be set for nsf (unknown)"),
                        (["neurontune-val", "--set", "retrain_on=train"], "fixed by this entry"),
                        (["nsf", "--set", "seed=3"], "use --seed"),
                        (["erm", "--set", "l2=0.1"], "ERM is the reference"),
                        (["nsf", "--set", "keep_unrescued"], "--set: expected key=value")):
        assert main(["run", *argv, "--data", "planted", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert match in err, err


def test_compare_checks_method_params_before_fitting():
    """compare(method_params=): the names are checked at its boundary (the command's --set
    shares the check); a good one reaches the method."""
    from pydebias.data import planted
    from pydebias.tools.compare import compare

    d = planted(n_train=600, n_val=300, n_test=300, seed=0)
    for bad, match in (({"nope": {}}, "unknown method 'nope'"), ({"nsf": {"nope": 1}}, "'nope' cannot be set"),
                       ({"erm": {"l2": 1.0}}, "ERM is the reference")):
        with pytest.raises(ValueError, match=match):
            compare(d, ["erm", "nsf"], progress=False, n_boot=0, method_params=bad)
    res = compare(d, ["nsf"], progress=False, n_boot=0, method_params={"nsf": {"keep_unrescued": True}})
    assert res["NSF"]["method_report"]["counts"]["dropped"] == 0


def test_retrain_rows_study_on_planted(tmp_path):
    """The retraining-rows study: the biased split only, ClassBalanced and AFR on val and on
    as many train rows, and ERM's train / val accuracy beside them."""
    assert main(["report", "--retrain-rows", "--benchmarks", "planted", "--seed", "0", "--out", str(tmp_path),
                 "--quiet"]) == 0
    rows = json.loads((tmp_path / "retrain_rows.json").read_text())["rows"]
    assert [r["id_split"] for r in rows] == ["biased"]
    r = rows[0]
    for k in ("ClassBalanced on val", "ClassBalanced on train rows", "AFR on val", "AFR on train rows"):
        assert 0.0 <= r[k] <= 1.0
    assert r["ClassBalanced on val"] != r["ClassBalanced on train rows"]  # fitted on other rows
    assert 0.5 < r["ERM accuracy"]["val"] <= r["ERM accuracy"]["train"] + 0.05
    md = (tmp_path / "retrain_rows.md").read_text()
    assert "| planted (planted) |" in md and "| ClassBalanced on val |" in md and "fit=" not in md
    assert "- planted (planted): " in md


def test_train_rows_like_matches_val_per_class():
    """The train sample stands in for val: the same count per class (all of a class train
    has fewer of), rows of train, reproducible from the seed."""
    from pydebias.data import EmbeddingSet
    from pydebias.tools.report import _train_rows_like

    rng = np.random.default_rng(0)
    train = EmbeddingSet(rng.normal(size=(100, 3)).astype(np.float32), np.r_[np.zeros(90), np.ones(10)].astype(int))
    val = EmbeddingSet(rng.normal(size=(40, 3)).astype(np.float32), np.r_[np.zeros(25), np.ones(15)].astype(int))
    a, b, c = (_train_rows_like(train, val, s) for s in (0, 0, 1))
    assert np.bincount(a.labels).tolist() == [25, 10]
    rows = {tuple(x) for x in np.asarray(train.features)}
    assert all(tuple(x) in rows for x in np.asarray(a.features))
    assert np.array_equal(a.features, b.features) and not np.array_equal(a.features, c.features)


def test_balance_study_reads_the_train_correlation_of_a_preset():
    """The balance study's biased row sits at the train split's own correlation: a
    setting's ``corr``, else the built-in's preset (0.97 for the strong photos), else the
    loader's default."""
    from pydebias.data import PRESETS
    from pydebias.tools.report import _train_corr

    assert _train_corr("fashion-on-photos-strong", {}) == PRESETS["fashion-on-photos-strong"]["corr"] == 0.97
    assert _train_corr("fashion-on-photos", {}) == 0.95
    assert _train_corr("fashion-on-photos-strong", {"corr": 0.9}) == 0.9
    assert _train_corr("planted", {}) == 0.95


def test_join_of_runs_on_other_seeds_is_the_run_over_all_of_them(tmp_path, capsys):
    """`report --STUDY --join`: the rows of runs on other seeds, joined in seed order whatever
    the files' order, give the table and rows of one run over every seed; files that cannot
    be joined (a seed twice, other versions, another study, no rows) are clear errors."""
    whole = tmp_path / "whole"
    assert main(["report", "--retrain-rows", "--benchmarks", "planted", "--seeds", "0", "1", "--out", str(whole),
                 "--quiet"]) == 0
    full = json.loads((whole / "retrain_rows.json").read_text())
    assert full["study"] == "retrain_rows" and full["seeds"] == [0, 1]
    parts = []
    for s in (1, 0):  # the later seed first: the join sorts
        part = {**full, "seeds": [s], "seed": s, "rows": [r for r in full["rows"] if r["seed"] == s]}
        parts.append(tmp_path / f"seed{s}.json")
        parts[-1].write_text(json.dumps(part))
    joined = tmp_path / "joined"
    assert main(["report", "--retrain-rows", "--join", *map(str, parts), "--out", str(joined)]) == 0
    assert (joined / "retrain_rows.md").read_text() == (whole / "retrain_rows.md").read_text()
    js = json.loads((joined / "retrain_rows.json").read_text())
    assert js["rows"] == full["rows"] and js["seeds"] == [0, 1] and js["data_hash"] == full["data_hash"]
    assert js["versions"] == full["versions"] and js["joined_seeds"] == [[1], [0]]

    other = tmp_path / "other.json"
    capsys.readouterr()
    for payload, argv, match in (
            (None, [str(parts[0]), str(parts[0])], "seed 1 is in both"),
            ({**full, "seeds": [5], "rows": [{**r, "seed": 5} for r in full["rows"]],
              "versions": {**full["versions"], "torch": "0.0.0"}}, [str(parts[0]), str(other)],
             "other versions \\(torch: .+ against 0\\.0\\.0\\); join only runs made in one environment"),
            ({**full, "study": "blade"}, [str(other)], "holds the 'blade' study, not 'retrain_rows'; pass --blade"),
            ({"rows": []}, [str(other)], "holds no study rows"),
            ({**full, "seeds": [7]}, [str(other)], r"rows without one of its seeds \[7\]")):
        if payload is not None:
            other.write_text(json.dumps(payload))
        assert main(["report", "--retrain-rows", "--join", *argv, "--out", str(tmp_path / "bad")]) == 2
        assert re.search(match, capsys.readouterr().err), match
    other.write_text("{not json")
    for argv, match in ((["--retrain-rows", "--join", str(other)], "is not JSON"),
                        (["--retrain-rows", "--join", str(tmp_path / "missing.json")], "no file"),
                        (["--join", str(parts[0])], "--join: name the study"),
                        (["--retrain-rows", "--benchmarks", "planted", "--join", str(parts[0])],
                         "--benchmarks: not used")):
        assert main(["report", *argv, "--out", str(tmp_path / "bad")]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "bad" / "retrain_rows.json").exists()  # nothing written on a refused join
