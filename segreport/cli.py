"""The command line: `segreport run | render | assign | list | track | inspect | demo-data`.

Every `run` option also has a key in params.yml; the command line overrides the
file. Errors caused by the input are printed as one line and exit with status 2 (so is
`run --no-wait` on a run folder another run is writing); a full disk or quota, or another
failure to write a file, as one line naming the file with status 4; an interrupted run with
status 130.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from pathlib import Path

from . import SegreportError, __version__
from .stages.assign import assign
from .lib.data import detect_outcome, infer_schema, read_raw, resolve_schema
from .lib.demo import write_demo, write_snapshots
from .report.downloads import campaign_list
from .methods.llm.embed_fast import PATHS
from .methods import DEFAULT_METHODS, REGISTRY, load_params
from .report.render import render
from .core.resources import DEFAULT_PARAMS
from .runner import run
from .core.store import NoSpaceError, WriteError, no_space
from .stages.track import describe, track

NO_SPACE = 4  # the exit status of a command stopped by a full disk or quota, or a file it could not write
#              (bad input: 2, interrupted: 130)

EPILOG_RUN = """examples:
  segreport run                                   # params.yml, demo data by default
  segreport run --data customers.csv --k 3-8
  segreport run --methods kmeans,llm --k 4-6 --workers 2
  segreport run --params params/seed-2023.yml --data ../shared/data/bank-marketing/train.csv
"""


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="parameters file (YAML); default: $SEGREPORT_PARAMS if set, "
                                                  "else params.yml if present")
    p.add_argument("--data", help="customer table: CSV (delimiter detected) or Parquet; 'demo' = generated demo data")
    p.add_argument("--run", help="run name: results go to <results>/<run>/ (default: the data file's stem)")
    p.add_argument("--results", help="folder for run results (default: results)")
    p.add_argument("--site", help="output folder of the rendered report (default: _site)")
    p.add_argument("--methods", help=f"comma-separated methods among {','.join(REGISTRY)} "
                                     f"(default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--k", help="numbers of segments: a range '3-8' or a list '3,5,7' (default: 3-8)")
    p.add_argument("--seed", type=int, help="random seed for every random step (default: 42)")
    p.add_argument("--workers", type=int, help="parallel grid cells (default 0 = number of cores)")
    p.add_argument("--executor", choices=["local", "dask"],
                   help="where the grid cells run: local = a process pool on this machine (default); "
                        "dask = Dask tasks, on a local Dask cluster of --workers processes or on --scheduler's")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --executor dask: the Dask scheduler to send cells to, e.g. tcp://host:8786 "
                        "(its workers need segreport installed and the results folder at the same path); "
                        "default: start a local Dask cluster")
    p.add_argument("--scale-threshold", dest="scale.threshold", type=int, metavar="ROWS",
                   help="tables of at least this many rows take the scalable path: MiniBatchKMeans, ECOD fitted "
                        "on a sample, LightGBM on the Dask cluster with --executor dask (default: 200000)")
    p.add_argument("--outcome", help="column whose rate per segment the report compares, never used for fitting "
                                     "(default: a two-valued column named like an outcome, such as y, target, "
                                     "churn, converted or response, as `segreport inspect` shows; 'none': no outcome)")
    p.add_argument("--model", dest="llm.model", help="sentence-transformers model name or folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--precision", dest="llm.precision", choices=("auto",) + PATHS,
                   help="embedding path: auto = the fastest that passes the fidelity gate against fp32 on this machine")
    p.add_argument("--kprototypes-engine", dest="kprototypes.engine", choices=["fast", "kmodes"],
                   help="K-Prototypes implementation: segreport's vectorised one or the kmodes package")


def _overrides(ns: argparse.Namespace, keys: list[str]) -> dict:
    return {k: getattr(ns, k, None) for k in keys}


RUN_KEYS = ["data", "run", "results", "site", "methods", "k", "seed", "workers", "outcome", "llm.model",
            "llm.precision", "kprototypes.engine", "executor", "scheduler", "scale.threshold"]


def _params(ns, extra: dict | None = None):
    path = ns.params or os.environ.get("SEGREPORT_PARAMS") or None  # the variable: where a command is fixed
    if path is None:                                                  # (Quarto's pre-render, a CI job)
        path = "params.yml" if Path("params.yml").exists() else DEFAULT_PARAMS
    ov = _overrides(ns, RUN_KEYS)
    ov.update(extra or {})
    return load_params(path, ov)


def cmd_run(ns) -> int:
    if ns.pages_only and os.environ.get("SEGREPORT_PAGES_READY"):
        return 0  # `segreport render` already wrote the pages and called quarto
    params = _params(ns, {"render": False} if ns.no_render else None)
    summary = run(params, progress=not ns.quiet, build_site=not ns.pages_only, wait=not ns.no_wait)
    print(summary)
    return 0


def cmd_render(ns) -> int:
    params = _params(ns)
    out = render(params, quarto=ns.engine)
    print(f"report: {out['html']}" + (f" and {out['pdf']}" if out.get("pdf") else ""))
    return 0


def cmd_demo(ns) -> int:
    if ns.snapshots:
        paths = write_snapshots(ns.out, rows=ns.rows, seed=ns.seed, snapshots=ns.snapshots, drift=ns.drift)
        print(f"wrote the fitting table {paths[0]} ({ns.rows} demo customers with customer_id), "
              f"{len(paths) - 1} later snapshot(s) {paths[1]} .. {paths[-1]}, and what was planted in "
              f"{paths[0].parent / (Path(ns.out).stem + '.planted.json')}")
        return 0
    path = write_demo(ns.out, rows=ns.rows, seed=ns.seed)
    print(f"wrote {ns.rows} demo customers to {path}")
    return 0


def cmd_inspect(ns) -> int:
    df, info = read_raw(ns.data)
    params = _params(ns) if ns.params else None
    specs, decisions = resolve_schema(df, params.schema if params else None, ns.data)
    if not decisions or "missing" not in decisions[0]:
        _, inferred = infer_schema(df)
        by = {d["column"]: d for d in inferred}
        for d in decisions:
            d.update({k: v for k, v in by.get(d["column"], {}).items() if k in ("missing", "distinct")})
    outcome = detect_outcome(df, params.schema if params else None)
    decisions = [{**d, "used": False, "reason": "the outcome (detected by its name): compared per segment, never "
                  "fitted; --outcome none keeps it as an input"} if d["column"] == outcome else d for d in decisions]
    print(f"{ns.data}: {len(df)} rows, {df.shape[1]} columns"
          + (f", delimiter {info['delimiter']!r}, encoding {info['encoding']}" if info.get("delimiter") else ""))
    w = max(len(str(d["column"])) for d in decisions)
    print(f"{'column':<{w}}  {'kind':<11} {'missing':>7} {'distinct':>8}  used  reason")
    for d in decisions:
        print(f"{str(d['column']):<{w}}  {d['kind']:<11} {d.get('missing', 0):>7.1%} {d.get('distinct', 0):>8}  "
              f"{'yes' if d['used'] else 'no ':<4}  {d['reason']}")
    print(f"outcome: {outcome} (detected by its name; --outcome COLUMN or --outcome none to change)" if outcome
          else "outcome: none detected (give one with --outcome COLUMN)")
    return 0


def cmd_assign(ns) -> int:
    n, facts = assign(ns.run_dir, ns.method, ns.k, ns.data, ns.out)
    print(f"wrote {n} labelled rows to {ns.out}" + (f" ({facts})" if facts else ""))
    return 0


def cmd_list(ns) -> int:
    n, which = campaign_list(ns.run_dir, ns.segment, ns.out, method=ns.method, k=ns.k)
    print(f"wrote {n} customers of {', '.join(ns.segment)} ({which}) to {ns.out}")
    return 0


def cmd_track(ns) -> int:
    # the thresholds: params.yml's `tracking:` block (--params, $SEGREPORT_PARAMS, ./params.yml), else the run's
    path = ns.params or os.environ.get("SEGREPORT_PARAMS") or ("params.yml" if Path("params.yml").exists() else None)
    tracking = load_params(path).tracking if path else None
    result = track(ns.run_dir, ns.data, method=ns.method, k=ns.k, as_of=ns.as_of, id_column=ns.id,
                   executor=ns.executor, workers=ns.workers, scheduler=ns.scheduler, replace=ns.replace,
                   progress=not ns.quiet, tracking=tracking)
    print(describe(result))
    print(f"the tracking page: segreport render --run {Path(ns.run_dir).name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segreport",
        description="Customer segmentation reports: " + ", ".join(m.display for m in REGISTRY.values())
                    + " for a grid of k, run as papermill notebooks and rendered into one HTML site and PDF.")
    parser.add_argument("--version", action="version", version=f"segreport {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="analyse (the grid of method x k) and render the report",
                       description="Load and validate the data, build the feature spaces, run one papermill "
                                   "notebook per (method, k), compare the methods and render the report. "
                                   "Finished cells whose inputs did not change are reused.",
                       epilog=EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(p)
    p.add_argument("--no-render", action="store_true", help="analysis only; render later with `segreport render`")
    p.add_argument("--pages-only", action="store_true",
                   help="analysis + report/*.qmd pages, no site (what `quarto render` calls before it renders)")
    p.add_argument("--no-wait", action="store_true",
                   help="where another segreport run is writing the same run folder, stop at once (exit status 2) "
                        "instead of waiting for it to finish")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("render", help="re-render the report from existing results (no analysis)",
                       description="Turn a run's results into report/*.qmd pages and build _site/ (HTML + PDF): "
                                   "with `quarto render` where Quarto is installed, else with pandoc and typst.")
    _add_run_options(p)
    p.add_argument("--engine", choices=["auto", "quarto", "builtin"], default="auto",
                   help="auto: quarto if on PATH, else the built-in pandoc + typst renderer")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("demo-data", help="write the generated bank-like demo table",
                       description="Generate a bank-like customer table with the seed's 8 columns and realistic "
                                   "joint structure; deterministic for a seed.")
    p.add_argument("--rows", type=int, default=5000, help="number of customers (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--out", default="data/demo.csv", help="output CSV (default data/demo.csv)")
    p.add_argument("--snapshots", type=int, default=0, metavar="N",
                   help="also follow the customers over N periods: writes OUT-0.csv (the fitting table, with "
                        "customer_id), OUT-1.csv .. OUT-N.csv and OUT.planted.json (who moved, left, arrived)")
    p.add_argument("--drift", type=float, default=0.3,
                   help="with --snapshots: how much changes per period, 0..1 (default 0.3: 10%% of customers "
                        "move on a life stage, 6%% leave, 7.5%% arrive, balances +30%%, ages +1)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("inspect", help="show how each column of a table would be used",
                       description="Print each column's kind (numeric, categorical, binary, identifier, date, "
                                   "text), missing share, distinct values, and whether it will be used, with why.")
    p.add_argument("--data", required=True, help="CSV or Parquet file")
    p.add_argument("--params", default=None, help="parameters file whose schema applies (optional)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("assign", help="give new customers the segments of a finished run",
                       description="Reapply the fitted pipeline saved with a run (encoders, transforms, outlier "
                                   "model, centroids or prototypes, embedding model and template) to new rows.")
    p.add_argument("--run", dest="run_dir", required=True, help="the run's results folder, e.g. results/demo")
    p.add_argument("--method", required=True, choices=list(REGISTRY))
    p.add_argument("--k", type=int, required=True,
                   help="which cell of the grid: its k (for hdbscan: its minimum segment size)")
    p.add_argument("--data", required=True, help="new customers: CSV or Parquet with the run's columns")
    p.add_argument("--out", required=True, help="output CSV: the rows with segment, persona, outlier, distance")
    p.set_defaults(func=cmd_assign)

    p = sub.add_parser("list", help="write a campaign list: the customers of a segment, with all their columns",
                       description="The rows of the run's customer table that fall in the given segments, with "
                                   "segment, persona and outlier flag added (the recommended segmentation unless "
                                   "--method and --k say otherwise).")
    p.add_argument("--run", dest="run_dir", required=True, help="the run's results folder, e.g. results/demo")
    p.add_argument("--segment", action="append", required=True,
                   help="segment code (S3), number (3) or persona name; repeat for several")
    p.add_argument("--method", choices=list(REGISTRY), help="which method (default: the recommended one)")
    p.add_argument("--k", type=int, help="which k (default: the method's recommended k)")
    p.add_argument("--out", required=True, help="output CSV")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("track", help="score a new snapshot of the customer table and follow the segments over time",
                       description="Assign a snapshot (the customer table as of a month) with a run's saved "
                                   "segmentation, keep it in results/<run>/snapshots/<as-of>/ and summarise the "
                                   "history in results/<run>/tracking.json: sizes, moves between segments, drift "
                                   "per column, outcome per segment, and whether to keep or re-fit. `segreport "
                                   "render` then adds the tracking page to the report.")
    p.add_argument("--run", dest="run_dir", required=True, help="the run's results folder, e.g. results/demo")
    p.add_argument("--method", choices=list(REGISTRY),
                   help="which method (default: the run's recommended segmentation)")
    p.add_argument("--k", type=int, help="which k (default: the recommended k of the method)")
    p.add_argument("--data", required=True, help="the snapshot: CSV or Parquet with the run's columns")
    p.add_argument("--as-of", dest="as_of", metavar="YYYY-MM",
                   help="the month (or day, YYYY-MM-DD) the snapshot describes (default: this month)")
    p.add_argument("--id", metavar="COLUMN",
                   help="customer identifier column (default: detected, as `segreport inspect` shows)")
    p.add_argument("--replace", action="store_true", help="score this file in place of another under the same as-of")
    p.add_argument("--params", default=None, help="parameters file whose `tracking:` block sets the drift "
                                                  "thresholds (default: $SEGREPORT_PARAMS, else params.yml if "
                                                  "present, else the run's own)")
    p.add_argument("--executor", choices=["local", "dask"], default="local",
                   help="local (default), or dask: the snapshot cut into row parts, each scored as a Dask task")
    p.add_argument("--workers", type=int, default=0, help="with --executor dask: LocalCluster workers (default: cores)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="with --executor dask: an existing Dask scheduler")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_track)
    return parser


def _on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return ns.func(ns)
    except SegreportError as exc:
        print(f"segreport: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segreport: interrupted; finished cells are kept and the next run resumes", file=sys.stderr)
        return 130
    except OSError as exc:
        if not isinstance(exc, WriteError):
            if not no_space(exc):
                raise  # not a write the store made: a bug, with its traceback
            exc = NoSpaceError(exc.filename or "?", exc.errno or errno.ENOSPC)
        if isinstance(exc, NoSpaceError):
            print(f"segreport: {exc}; finished cells are kept, free space and run again", file=sys.stderr)
        else:
            print(f"segreport: {exc}; finished cells are kept, run again once it can be written", file=sys.stderr)
        return NO_SPACE


if __name__ == "__main__":
    sys.exit(main())
