"""The ``pydebias`` command: datasets, demo, bench."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from ._version import __version__


def _cmd_datasets(args) -> int:
    from .data import BUILTINS, availability

    print(f"{'name':<22}{'available':<11}description")
    for name, desc in BUILTINS.items():
        ok, why = availability(name)
        print(f"{name:<22}{'yes' if ok else 'no':<11}{desc}" + ("" if ok else f"  [{why}]"))
    return 0


def _cmd_demo(args) -> int:
    from tqdm import tqdm

    from . import evaluate, plots
    from .data import load
    from .methods import DFR, ERM
    from .results import provenance, write_json

    t0 = time.perf_counter()
    steps = ["load data", "ERM", "DFR", "evaluate"]
    bar = tqdm(total=len(steps), desc="demo", disable=args.quiet, unit="step")
    bar.set_postfix_str(steps[0])
    data = load(args.data, seed=args.seed)
    train, val, test = data["train"], data["val"], data["test"]
    bar.update(); bar.set_postfix_str(steps[1])
    erm = ERM(seed=args.seed).fit(train)
    bar.update(); bar.set_postfix_str(steps[2])
    dfr_method = DFR(seed=args.seed)
    dfr = dfr_method.fit(val)
    bar.update(); bar.set_postfix_str(steps[3])
    names = data.get("group_names")
    reports = {name: evaluate(head, test, train_set=train, group_names=names, n_boot=args.n_boot, seed=args.seed)
               for name, head in (("ERM", erm), ("DFR", dfr))}
    bar.update(); bar.close()
    for name, rep in reports.items():
        print(f"\n== {name} on {args.data} / test ==")
        print(rep.table())
    os.makedirs(args.out, exist_ok=True)
    result = {
        "command": "demo", "data": args.data,
        **provenance(args.seed, "auto", data_hash=train.fingerprint() + ":" + test.fingerprint()),
        "seconds": time.perf_counter() - t0,
        "methods": {name: rep.to_dict() for name, rep in reports.items()},
        "dfr": dfr_method.report_,
    }
    path = os.path.join(args.out, "results.json")
    write_json(path, result)
    print(f"\nwrote {path}")
    if plots.have_matplotlib():
        png = plots.group_accuracy_bars(reports, os.path.join(args.out, "group_accuracy.png"),
                                        title=f"{args.data}: per-group test accuracy", group_names=names)
        print(f"wrote {png}")
    else:
        print("(no plot: install matplotlib for a PNG of per-group accuracy)")
    return 0


def _cmd_bench(args) -> int:
    from . import benchmarks
    from .results import provenance, write_json

    rows = benchmarks.run(quick=args.quick)
    print(benchmarks.format_table(rows))
    if args.json:
        write_json(args.json, {"rows": rows, **provenance(0, "all")})
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pydebias", description="Find and remove spurious bias from trained models.")
    p.add_argument("--version", action="version", version=f"pydebias {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("datasets", help="list the built-in benchmarks and whether each is available")
    d.set_defaults(fn=_cmd_datasets)
    demo = sub.add_parser("demo", help="ERM vs DFR on a built-in benchmark, with a group table")
    demo.add_argument("--data", default="planted", help="built-in benchmark (see `pydebias datasets`)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="results", help="directory for results.json and the plot")
    demo.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the worst-group CI")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(fn=_cmd_demo)
    b = sub.add_parser("bench", help="kernel speed as ratios to one read of the input and to baselines")
    b.add_argument("--json", help="also write the table as JSON to this path")
    b.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the bar)")
    b.set_defaults(fn=_cmd_bench)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "fn", None):
        build_parser().print_help()
        return 0
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"pydebias: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
