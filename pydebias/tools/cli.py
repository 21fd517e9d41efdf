"""The ``pydebias`` command: datasets, demo, run, report, bench."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from .._version import __version__
from ..methods import REGISTRY, methods_markdown


#: the seeds of the default `pydebias report`: its headline is the mean and range over them
REPORT_SEEDS = (0, 1, 2, 3, 4)
#: the demo's built-ins, in order of preference (the first one installed is used)
DEMO_DATA = ("fashion-on-photos-strong", "colored-fashion", "planted")
#: the studies behind the report's defaults, each a `pydebias report` flag writing STUDY.md/.json:
#: study -> (what it runs, module of pydebias.tools, rows function, markdown function[, figures function
#: (rows, out directory) -> PNG paths]); row keys starting with "_" feed the figures, not the JSON
REPORT_STUDIES = {
    "neurontune_modes": ("NeuronTune's mask modes and λ on every setting", "report", "neurontune_modes",
                         "neurontune_modes_markdown"),
    "localisation": ("how many neurons carry each shortcut (oracle masks, group labels read) and whether "
                     "NeuronTune's mask finds them", "report", "localisation", "localisation_markdown"),
    "balance": ("the annotation-free methods with identification splits from group-balanced to biased",
                "report", "balance_study", "balance_markdown"),
    "jtt_weights": ("JTT with each up-weight on every setting that is not a balanced identification split",
                    "report", "jtt_weights", "jtt_weights_markdown"),
    "afr_anchors": ("AFR with each pull towards the ERM head (l2) on every setting", "report", "afr_anchors",
                    "afr_anchors_markdown"),
    "afr_ess": ("AFR's label-free choice of gamma replayed with each floor on its weights' effective sample "
                "size (min_ess) on every setting", "report", "afr_ess", "afr_ess_markdown"),
    "retrain_rows": ("ClassBalanced and AFR retrained on val and on as many train rows, on every biased setting",
                     "report", "retrain_rows", "retrain_rows_markdown"),
    "nsf_outliers": ("NSF dropping (the paper) or keeping the outliers its elimination step does not rescue, "
                     "on every setting", "report", "nsf_outliers", "nsf_outliers_markdown"),
    "nsf_steps": ("NSF with each length of its update step (n_update_steps) on every setting", "report",
                  "nsf_steps", "nsf_steps_markdown"),
    "clarc": ("ERM, P-, A- and RR-ClArC (and RR-ClArC's λ sweep) on fashion-square and fashion-on-photos with a "
              "pasted square (clean / attacked / worst-group accuracy, TCAV), and on fashion-on-photos-strong "
              "with the background as the concept (worst group)", "clarc_study", "clarc_study", "clarc_markdown"),
    "masktune": ("ERM and MaskTune (the paper's masks, masks grown by 1-5 pixels, and the same epoch without masks "
                 "as a control) on fashion-square (binary), colored-fashion and both fashion-on-photos built-ins: "
                 "worst-group accuracy, selective classification, mask coverage",
                 "masktune_study", "masktune_study", "masktune_markdown", "masktune_figures"),
    "blade": ("ERM and BLADE (with a plain fine-tune as control and BLADE without alignment or without refinement) on "
              "colored-fashion and both fashion-on-photos built-ins: worst-group accuracy, pseudo-domain purity, "
              "translations",
              "blade_study", "blade_study", "blade_markdown", "blade_figures"),
}


def _cmd_datasets(args) -> int:
    from ..data import BUILTINS, SIZES, availability

    w = max(map(len, BUILTINS)) + 2
    print(f"{'name':<{w}}{'available':<10}{'train/val/test':<21}{'groups':>6}{'dim':>5}  description")
    for name, desc in BUILTINS.items():
        ok, why = availability(name)
        tr, va, te, g, m = SIZES[name]
        print(f"{name:<{w}}{'yes' if ok else 'no':<10}{f'{tr}/{va}/{te}':<21}{g:>6}{m:>5}  {desc}"
              + ("" if ok else f"\n{'':<{w}}install with: {why}"))
    return 0


def _writable_dir(path: str, flag: str) -> None:
    """Fail before the job, not after it: ``path`` must be (or become) a directory this
    process can create files in."""
    import tempfile

    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".pydebias-write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag}: cannot write results to {path!r} ({e.strerror or e}); "
                         "choose a writable directory") from None


def _run_and_write(args, methods, command: str, method_params: Optional[dict] = None) -> int:
    _writable_dir(args.out, "--out")
    from . import plots
    from .compare import choices_text, compare, markdown_table, results_json
    from ..data import load
    from ..results import write_json

    t0 = time.perf_counter()
    data = load(args.data, seed=args.seed, progress=not args.quiet, **_params(args.param))
    results = compare(data, methods, seed=args.seed, n_boot=args.n_boot, progress=not args.quiet,
                      erm_head=data.get("head"), method_params=method_params)
    for name, r in results.items():
        print(f"\n== {name} on {args.data} / test ==")
        print(r["report"].table())
    print("\n" + markdown_table(results))
    choices = choices_text(results)
    if choices:
        print("\n" + choices)
    os.makedirs(args.out, exist_ok=True)
    res = results_json(results, data, args.data, args.seed,
                       {"command": command, "methods": list(results), "data_params": _params(args.param),
                        "method_params": method_params or {}})
    res["seconds_total"] = time.perf_counter() - t0
    path = os.path.join(args.out, "results.json")
    write_json(path, res)
    print(f"\nwrote {path}")
    if plots.have_matplotlib():
        png = plots.group_accuracy_bars({k: r["report"] for k, r in results.items()},
                                        os.path.join(args.out, "group_accuracy.png"),
                                        title=f"{args.data}: per-group test accuracy",
                                        group_names=data.get("group_names"))
        print(f"wrote {png}")
        nt = results.get(REGISTRY["neurontune"].label) or results.get(REGISTRY["neurontune-val"].label)
        if nt is not None and nt["method_report"]:
            png = plots.delta_plot(nt["method_report"], os.path.join(args.out, "neurontune_delta.png"),
                                   title=f"{args.data}: NeuronTune δ per neuron")
            print(f"wrote {png}")
    else:
        print("(no plots: install matplotlib for PNGs)")
    return 0


def _params(items, flag: str = "--param") -> dict:
    """``key=value`` pairs of ``flag`` (the data loader's ``--param``, a method's ``--set``);
    values parsed as Python literals."""
    import ast

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag}: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        low = v.strip().lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        else:
            try:
                out[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                out[k] = v
    return out


def _default_data(args) -> None:
    """``--data`` left out: the first built-in of :data:`DEMO_DATA` that is installed."""
    from ..data import availability

    if args.data is None:
        for name in DEMO_DATA:
            ok, why = availability(name)
            if ok:
                break
            print(f"{name} needs `{why}`; trying the next built-in", file=sys.stderr)
        args.data = name


def _cmd_demo(args) -> int:
    from .compare import available_methods

    _default_data(args)
    return _run_and_write(args, available_methods(), "demo")


def _cmd_run(args) -> int:
    key = args.method.lower()
    if key not in REGISTRY:
        raise ValueError(f"method: unknown {args.method!r}; choose from {list(REGISTRY)}")
    _default_data(args)
    from .compare import check_method_params

    overrides = _params(args.set, "--set")  # names checked before the data loads
    method_params = check_method_params({key: overrides} if overrides else None, "--set")
    # beside the references every table needs: ERM (the starting point) and DFR (group labels)
    methods = list(dict.fromkeys(["erm", key, "dfr"]))
    return _run_and_write(args, methods, f"run {key}", method_params)


def _cmd_methods(args) -> int:
    print(methods_markdown())
    return 0


def _cmd_report(args) -> int:
    _writable_dir(args.out, "--out")
    import importlib

    from . import report

    settings = report.default_settings(args.benchmarks)
    if args.seed is None and not args.seeds:
        args.seeds = list(REPORT_SEEDS)
    stems = [stem for stem in REPORT_STUDIES if getattr(args, stem)]
    if args.join and not stems:
        raise ValueError("--join: name the study the files come from, e.g. `pydebias report --blade --join "
                         "A/blade.json B/blade.json --out DIR`")
    if args.join and args.benchmarks is not None:
        raise ValueError("--benchmarks: not used with --join (the files hold their settings); leave it out")
    for stem in stems:
        _, module, rows_fn, md_fn, *fig_fn = REPORT_STUDIES[stem]
        mod = importlib.import_module(f"{__package__}.{module}")
        to_md = getattr(mod, md_fn)
        if args.join:
            rows, seeds, v, sources = _joined_rows(args.join, stem)
            try:
                md = to_md(rows, seeds)
            except KeyError as e:
                raise ValueError(f"--join: the files' rows lack {e}; pass {stem}.json files written by "
                                 f"`pydebias report {_study_flag(stem)}`") from None
            _write_study(args.out, stem, md, rows, seeds, v, joined_seeds=sources)
            print(md)
            print(f"wrote {stem}.md and {stem}.json under {args.out} (figures are drawn by the runs, not by --join)")
            return 0
        seeds = list(dict.fromkeys(args.seeds or [args.seed]))
        rows = [{**r, "seed": s} for s in seeds for r in getattr(mod, rows_fn)(settings, seed=s,
                                                                               progress=not args.quiet)]
        md = to_md(rows, seeds)
        for path in (getattr(mod, fig_fn[0])(rows, args.out) if fig_fn else []):
            print(f"wrote {path}")
        _write_study(args.out, stem, md, [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                     seeds)
        print(md)
        return 0
    if args.seeds:
        return _report_seeds(args, settings)
    rows = report.run_report(settings, seed=args.seed, n_boot=args.n_boot, progress=not args.quiet)
    paths = report.write(rows, args.out, args.seed)
    print(report.markdown(rows, args.seed))
    for kind, path in paths.items():
        print(f"wrote {path}")
    return 0


def _study_flag(stem: str) -> str:
    return "--" + stem.replace("_", "-")


def _write_study(out: str, stem: str, md: str, rows: List[dict], seeds: List[int],
                 versions: Optional[dict] = None, **extra) -> None:
    """OUT/STUDY.md (the table, then the versions it was made with) and OUT/STUDY.json (provenance
    and the rows). ``versions``: those of the runs a join read, in place of this process's."""
    from . import report
    from ..results import provenance, rows_data_hash, write_atomic, write_json

    os.makedirs(out, exist_ok=True)
    write_atomic(os.path.join(out, f"{stem}.md"), (md + report.footer(versions)).encode())
    js = provenance(seeds[0], "auto", data_hash=rows_data_hash(rows), seeds=seeds, study=stem, **extra)
    if versions:
        js["versions"] = versions
    write_json(os.path.join(out, f"{stem}.json"), {**js, "rows": rows})


def _joined_rows(paths: List[str], stem: str):
    """The rows of several runs of one study (its STUDY.json files, on other seeds, made with
    the same versions) in seed order: (rows, seeds, versions, each file's seeds)."""
    import json

    runs = []
    for path in paths:
        hint = f"pass the {stem}.json files that `pydebias report {_study_flag(stem)}` runs wrote"
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"--join: no file {path!r}; {hint}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"--join: {path!r} is not JSON ({e}); {hint}") from None
        if not (isinstance(d, dict) and isinstance(d.get("rows"), list) and isinstance(d.get("seeds"), list)
                and isinstance(d.get("versions"), dict)):
            raise ValueError(f"--join: {path!r} holds no study rows (expected 'rows', 'seeds' and 'versions'); {hint}")
        if d.get("study", stem) != stem:
            raise ValueError(f"--join: {path!r} holds the {d['study']!r} study, not {stem!r}; pass "
                             f"{_study_flag(str(d['study']))} with it, or other files")
        runs.append((path, d))
    (first, d0), seen = runs[0], {}
    for path, d in runs:
        # the figures depend on every version (and on the CPU's instruction set); the
        # platform string also names the kernel release, which does not change them
        diff = sorted(k for k in set(d0["versions"]) | set(d["versions"])
                      if k != "platform" and d0["versions"].get(k) != d["versions"].get(k))
        if diff:
            raise ValueError(f"--join: {first!r} and {path!r} were made with other versions ("
                             + ", ".join(f"{k}: {d0['versions'].get(k)} against {d['versions'].get(k)}"
                                         for k in diff)
                             + "); join only runs made in one environment")
        for s in d["seeds"]:
            if s in seen:
                raise ValueError(f"--join: seed {s} is in both {seen[s]!r} and {path!r}; join runs on other seeds")
            seen[s] = path
        if any(not isinstance(r, dict) or r.get("seed") not in d["seeds"] for r in d["rows"]):
            raise ValueError(f"--join: {path!r} has rows without one of its seeds {d['seeds']}; {hint}")
    rows = sorted((r for _, d in runs for r in d["rows"]), key=lambda r: r["seed"])  # stable: settings keep order
    return rows, sorted(seen), d0["versions"], [d["seeds"] for _, d in runs]


def _report_seeds(args, settings) -> int:
    """One report per seed under OUT/seed-S/, then OUT/seeds.md/.json across them."""
    from . import report
    from ..results import provenance, rows_data_hash, write_atomic, write_json

    seeds = list(dict.fromkeys(args.seeds))
    by_seed = {}
    for s in seeds:
        by_seed[s] = report.run_report(settings, seed=s, n_boot=args.n_boot, progress=not args.quiet)
        report.write(by_seed[s], os.path.join(args.out, f"seed-{s}"), s)
    rows = report.across_seeds(by_seed)
    harm = {s: report.harm_summary(by_seed[s]) for s in seeds}
    md = report.across_seeds_markdown(rows) + "\n" + report.seeds_harm_markdown(harm)
    write_atomic(os.path.join(args.out, "seeds.md"), (md + report.footer()).encode())
    write_json(os.path.join(args.out, "seeds.json"),
               {**provenance(seeds[0], "auto", seeds=seeds,
                             data_hash=rows_data_hash(r for s in seeds for r in by_seed[s])), "rows": rows,
                "do_no_harm": {str(s): h for s, h in harm.items()},
                "guard_record": report.guard_record(list(harm.values()))})
    print(md)
    print(f"wrote {os.path.join(args.out, 'seeds.md')} and one report per seed under {args.out}/seed-*/")
    return 0


def _cmd_bench(args) -> int:
    if args.json:
        _writable_dir(os.path.dirname(os.path.abspath(args.json)), "--json")
    from . import bench_kernels
    from ..results import provenance, write_json

    if args.e2e:
        rows = bench_kernels.bench_identification(n=(args.rows or [2_000_000])[0],
                                               path=os.path.join(args.dir, "planted_e2e.npy") if args.dir else None,
                                               keep_file=args.keep_files)
    elif args.gpu:
        from .bench_gpu import bench_gpu

        rows = bench_gpu()
    elif args.distributed:
        from .bench_distributed import bench_distributed_medians

        rows = bench_distributed_medians(n=(args.rows or [500_000])[0])
    elif args.out_of_core:
        from .bench_ooc import bench_methods_memmap

        rows = bench_methods_memmap(n=(args.rows or [2_000_000])[0], directory=args.dir)
    elif args.large:
        from .bench_cluster import bench_clustering_scale

        rows = bench_clustering_scale(args.rows or (100_000, 1_000_000, 10_000_000), cold=args.cold,
                              directory=args.dir, keep_files=args.keep_files, threads=args.threads)
    else:
        rows = bench_kernels.run(quick=args.quick)
    print(bench_kernels.format_table(rows))
    if args.json:
        write_json(args.json, {"rows": rows, **provenance(0, "all")})
        print(f"wrote {args.json}")
    return 0


def _cmd_export(args) -> int:
    import json

    import torch

    from ..export import export

    if not os.path.isfile(args.source):
        raise ValueError(f"source: no file {args.source!r}; pass a module saved with torch.save(model, path) or a "
                         "linear head's state dict")
    # a whole pickled module runs code on load: only for files you made or trust
    obj = torch.load(args.source, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        if obj.get("weight") is None or torch.as_tensor(obj["weight"]).dim() != 2:
            raise ValueError(f"source: {args.source!r} holds a dict without a 2-d 'weight'; save a linear head's "
                             "state_dict() or the module itself")
        from ..nn import MaskedLinear

        w = torch.as_tensor(obj["weight"])
        kind = MaskedLinear if obj.get("mask") is not None else torch.nn.Linear  # a masked head keeps its mask
        head = kind(w.shape[1], w.shape[0], bias=obj.get("bias") is not None, dtype=w.dtype)
        head.load_state_dict({k: v for k, v in obj.items() if k in ("weight", "bias", "mask")})
        obj = head
    example = None
    if args.example_shape:
        try:
            shape = tuple(int(v) for v in args.example_shape.split(","))
        except ValueError:
            raise ValueError(f"--example-shape: expected comma-separated sizes, batch first (e.g. 8,3,64,64), got "
                             f"{args.example_shape!r}") from None
        example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    out = export(obj, args.out, format=args.format, example=example, rtol=args.rtol, atol=args.atol)
    print(json.dumps(out))
    return 0


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pydebias", description="Find and remove spurious bias from trained models.")
    p.add_argument("--version", action="version", version=f"pydebias {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("datasets", help="list the built-in benchmarks and whether each is available")
    d.set_defaults(fn=_cmd_datasets)
    def common(sp):
        sp.add_argument("--data", default=None,
                        help="built-in benchmark (see `pydebias datasets`); default: the first installed of "
                             + ", ".join(DEMO_DATA))
        sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="data loader parameter, e.g. val_balanced=true or two_stage=false (repeatable)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--out", default="results", help="directory for results.json and the plots")
        sp.add_argument("--n-boot", type=_non_negative, default=200, help="bootstrap resamples for the worst-group CI")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
    demo = sub.add_parser("demo", help="every method side by side on a built-in benchmark")
    common(demo)
    demo.set_defaults(fn=_cmd_demo)
    run = sub.add_parser("run", help="one method (beside ERM) on a built-in benchmark")
    run.add_argument("method", help=", ".join(REGISTRY))
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="the method's hyper-parameter, e.g. keep_unrescued=true for nsf (repeatable)")
    common(run)
    run.set_defaults(fn=_cmd_run)
    mt = sub.add_parser("methods", help="the registered methods as a markdown table (the README's)")
    mt.set_defaults(fn=_cmd_methods)
    rp = sub.add_parser("report", help="every method x every built-in x both id splits x both backbones")
    rp.add_argument("--benchmarks", nargs="*", help="restrict to these built-ins")
    which = rp.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, default=None, help="one seed's report (OUT/report.md/.json/.png)")
    which.add_argument("--join", nargs="+", metavar="STUDY.json",
                       help="with a study flag: join that study's result files from runs on other seeds (same "
                            "versions) into one table, without refitting")
    which.add_argument("--seeds", type=int, nargs="+",
                       help=f"one report per seed (OUT/seed-S/) and the spread across them (OUT/seeds.md/.json); "
                            f"the default, with seeds {' '.join(map(str, REPORT_SEEDS))}; with a study flag, one "
                            "table over all the seeds")
    rp.add_argument("--out", default="results/report", help="directory for report.md/.json/.png")
    rp.add_argument("--n-boot", type=_non_negative, default=200)
    rp.add_argument("--quiet", action="store_true")
    study = rp.add_mutually_exclusive_group()
    for stem, (what, *_) in REPORT_STUDIES.items():
        study.add_argument("--" + stem.replace("_", "-"), action="store_true",
                           help=f"instead: {what} ({stem}.md/.json)")
    rp.set_defaults(fn=_cmd_report)
    ex = sub.add_parser("export", help="fold a debiased head or model into plain layers and write it (TorchScript, "
                                       "torch.export or ONNX), checked against the original first")
    ex.add_argument("source", help="a module saved with torch.save(model, path), or a linear head's state_dict()")
    ex.add_argument("out", help="the file to write (atomically, only after the check passes)")
    ex.add_argument("--format", default="torchscript", choices=("torchscript", "export", "onnx"))
    ex.add_argument("--example-shape", help="input shape, batch first (e.g. 8,3,64,64); not needed for a linear head")
    ex.add_argument("--rtol", type=float, default=1e-5)
    ex.add_argument("--atol", type=float, default=1e-5)
    ex.set_defaults(fn=_cmd_export)
    b = sub.add_parser("bench", help="kernel speed as ratios to one read of the input and to baselines")
    b.add_argument("--json", help="also write the table as JSON to this path")
    b.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the bar)")
    mode = b.add_mutually_exclusive_group()  # each runs instead of the kernel table
    mode.add_argument("--large", action="store_true",
                   help="instead: clustering pipeline on float32 memmaps of 10^5-10^7 x 256 rows, streamed "
                        "(writes files of up to 10 GB; see docs/performance.md)")
    mode.add_argument("--e2e", action="store_true",
                   help="instead: NeuronTune identification end to end on a float16 memmap of 2,000,000 x 1,024 "
                        "(a 4 GB file, written first) against one read of the file")
    mode.add_argument("--gpu", action="store_true",
                   help="instead: the Triton kernels on a CUDA device as fractions of its copy bandwidth and of cuBLAS "
                        "(bench/gpu.sh runs it with the GPU tests)")
    mode.add_argument("--distributed", action="store_true",
                   help="instead: grouped moments + exact medians across 4 gloo processes of 500,000 x 512 rows each "
                        "(4 GB in memory) against one process's local pass")
    mode.add_argument("--out-of-core", action="store_true",
                   help="instead: DFR, NSF and AFR fitted from a float16 memmap of 2,000,000 x 1,024 (a 4 GB file "
                        "plus scratch copies on disk), peak anonymous memory per fit")
    b.add_argument("--rows", type=int, nargs="+",
                   help="with --large: row counts (default 100000 1000000 10000000); with --e2e / --out-of-core: the "
                        "row count; with --distributed: rows per process")
    b.add_argument("--cold", action="store_true",
                   help="with --large: evict the file from the page cache before each pass")
    b.add_argument("--dir", help="with --large/--e2e/--out-of-core: where the memmaps go (default: a temporary "
                                "directory)")
    b.add_argument("--keep-files", action="store_true", help="with --large/--e2e: keep (and reuse) the memmaps")
    b.add_argument("--threads", type=int, default=1, help="with --large: threads for FAISS, torch and the kernels")
    b.set_defaults(fn=_cmd_bench)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "fn", None):
        build_parser().print_help()
        return 0
    try:
        return args.fn(args)
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as e:
        print(f"pydebias: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
