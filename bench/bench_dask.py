"""A synthetic table of 1,000,000 rows through all three methods on a Dask LocalCluster of 2 workers.

    .venv/bin/python bench/bench_dask.py [--rows 1000000] [--workers 2] [--k 3-4] [--cores 64]

Generates the demo table at that size in a scratch folder (cold embedding cache), runs
`segreport run --executor dask --workers N` on it (analysis and report), and samples the resident
memory of the whole process tree (the CLI, the Dask scheduler and workers, the notebook kernels)
every 0.5 s. Prints each stage's wall time and throughput, then an estimate of the wall time on a
cluster of --cores cores from the measured per-worker throughput (one worker = one core here):

* embedding: parts of 8,192 distinct texts, each a task; on C cores, ceil(parts / C) rounds of the
  measured mean time per part;
* feature spaces and grid cells: each runs on one worker; with at least as many cores as cells they
  all run at once, so the stage takes as long as its slowest task (measured);
* what runs in the client process (reading the table, rendering the row texts, assembling the
  embedding, projections, the comparison, the report) does not get faster with more workers:
  counted as measured.

Not a test: numbers depend on the machine. Keep the machine otherwise idle while it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_memory import run_sampled  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _prepare_pids(ctx: dict) -> set[str]:
    """The pid that built the embedding's space: the prepare process (the other spaces are worker tasks)."""
    return {str(i["built_by"]).rsplit(":", 1)[-1] for name, i in ctx["spaces"].items()
            if i.get("embedding") and i.get("built_by")}


def rate(rows: float, seconds: float | None) -> str:
    return f"{rows / seconds:>10,.0f} rows/s" if seconds else f"{'–':>10} rows/s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", default="kmeans,kprototypes,llm")
    ap.add_argument("--k", default="3-4")
    ap.add_argument("--cores", type=int, default=64, help="cluster size for the wall-time estimate")
    ap.add_argument("--scale-threshold", type=int, help="passed to segreport run (default: its own, 200000)")
    ap.add_argument("--cache", help="embedding cache folder (default: a fresh one in the scratch folder: a cold "
                                    "run); a rerun with the same folder reports the parts' measured times again")
    ap.add_argument("--template", help="the LLM method's row-text template (llm: {template: FILE}); e.g. one "
                                       "without the numbers' exact values, so fewer texts are distinct")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (results and report)")
    ns = ap.parse_args()
    from segreport.lib.demo import write_demo

    wd = Path(tempfile.mkdtemp(prefix="segreport-dask-"))
    for name in ("templates", "analysis"):
        (wd / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / "_quarto.yml", wd / "_quarto.yml")
    t = time.perf_counter()
    write_demo(wd / "big.csv", rows=ns.rows, seed=11)
    print(f"generated {ns.rows:,} rows in {time.perf_counter() - t:.1f} s "
          f"({(wd / 'big.csv').stat().st_size / 1e6:.0f} MB) in {wd}", flush=True)
    cmd = [str(ROOT / ".venv" / "bin" / "segreport"), "run", "--data", "big.csv", "--methods", ns.methods,
           "--k", ns.k, "--executor", "dask", "--workers", str(ns.workers)]
    extra = ""
    if ns.cache:
        extra += f"cache_dir: {Path(ns.cache).resolve()}\n"
    if ns.template:
        extra += f"llm: {{template: {Path(ns.template).resolve()}}}\n"
    if extra:
        (wd / "p.yml").write_text(extra)
        cmd += ["--params", "p.yml"]
    if ns.scale_threshold:
        cmd += ["--scale-threshold", str(ns.scale_threshold)]
    print("$", " ".join(cmd[1:]), flush=True)
    at_peak: dict = {}
    proc, out, err, wall, peak = run_sampled(cmd, wd, every=0.5, at_peak=at_peak)
    if proc.returncode != 0:
        print(err[-3000:])
        raise SystemExit(f"run failed ({proc.returncode}); scratch folder kept: {wd}")
    run = wd / "results" / "big"
    manifest = json.loads((run / "manifest.json").read_text())
    tm = manifest["timings"]
    n = ns.rows
    print(out.strip())
    print(f"\nrows {n:,}  methods {ns.methods}  k {ns.k}  executor {manifest['executor']}")
    print(f"scale path: {json.dumps(manifest['scale'])}")
    print(f"wall {wall:.0f} s; all processes together (proportional set sizes) peaked at {peak / 1024 ** 3:.2f} GiB, "
          f"{at_peak.get('seconds')} s into the run:")
    ctx = json.loads((run / "context.json").read_text())
    prep = _prepare_pids(ctx)  # spawned by the CLI as the workers are: told apart by the space it built

    def named(key: str) -> str:
        pid, what = key.split(" ", 1)
        return f"{pid} prepare (CLI's child)" if pid in prep and what == "worker" else key

    def shares(by: dict) -> str:
        return ", ".join(f"{named(k).split(' ', 1)[1]} {b / 1024 ** 3:.2f}" for k, b in
                         sorted(by.items(), key=lambda kv: -kv[1]) if b > 0.05 * 1024 ** 3)

    for name, b in sorted(at_peak.get("processes", {}).items(), key=lambda kv: -kv[1]):
        print(f"    {named(name):<40}{b / 1024 ** 3:6.2f} GiB")
    # each stage's own peak; its bounds from the manifest's stage times, counted back from the run's end
    # (the CLI's start-up, before its clock starts, falls into prepare)
    ends, at = [], wall - tm.get("render", 0.0) - tm["analysis"]
    for stage in ("prepare", "grid", "compare"):
        at += tm[stage]
        ends.append((stage, at))
    ends.append(("render", wall))
    start = 0.0
    for stage, end in ends:
        inside = [s for s in at_peak.get("series", []) if start <= s[0] < end]
        if inside:
            t_, b, by = max(inside, key=lambda s: s[1])
            print(f"  peak in {stage:<8} {b / 1024 ** 3:5.2f} GiB at {t_:6.0f} s   ({shares(by)})")
        start = end
    print()

    print(f"{'stage':<34}{'seconds':>10}   throughput")
    print(f"{'prepare (all of it)':<34}{tm['prepare']:>10.1f}   {rate(n, tm['prepare'])}")
    spaces = manifest["spaces"]
    emb = spaces.get("llm", {}).get("embedding")
    for name, info in spaces.items():
        print(f"{'  space ' + name:<34}{info['seconds']:>10.1f}   {rate(n, info['seconds'])}"
              + ("   (a task on a worker)" if name != "llm" else "   (texts, embedding, assembly, ECOD)"))
    part_mean = None
    if "llm" in spaces:
        ts = spaces["llm"].get("texts_seconds")
        print(f"{'  row texts (Jinja, client)':<34}{ts:>10.1f}   {rate(n, ts)}")
    if emb:
        u = emb["unique_texts"]
        print(f"{'  embedding (distributed)':<34}{emb.get('embed_seconds', 0):>10.1f}   "
              f"{rate(u, emb.get('embed_seconds'))}   ({u:,} distinct texts, {emb['parts']} parts, {emb['precision']}, "
              f"{emb['parts_embedded']} embedded in this run)")
        parts = list(Path(emb["cache"] if Path(emb["cache"]).is_absolute() else wd / emb["cache"]).glob("part-*.parquet"))
        from segreport.methods.llm.embed import part_meta

        metas = [m for m in (part_meta(p) for p in parts) if m["pid"] != proc.pid]  # not the comparison's own
        by: dict[str, list] = {}
        for m in metas:
            by.setdefault(f"{m['host']}:{m['pid']}", []).append(m)
        for w, ms in sorted(by.items()):
            rows = sum(m["rows"] for m in ms)
            secs = sum(m["seconds"] for m in ms)
            loads = max(m["model_loads_in_process"] for m in ms)
            print(f"{'    worker ' + w:<34}{secs:>10.1f}   {rate(rows, secs)}   ({len(ms)} parts, model loaded {loads}x)")
        part_mean = sum(m["seconds"] for m in metas) / len(metas)
    for name, info in manifest["projections"].items():
        print(f"{'  projection ' + name:<34}{info['seconds']:>10.1f}")
    print(f"{'grid (all cells)':<34}{tm['grid']:>10.1f}   {rate(n * len(manifest['cells']), tm['grid'])} (rows x cells)")
    cells = {}
    for name, st in sorted(manifest["cells"].items()):
        m, k = name.split("/")
        ct = json.loads((run / "cells" / m / k / "timings.json").read_text())
        met = json.loads((run / "cells" / m / k / "metrics.json").read_text())
        cells[name] = st["wall_seconds"]
        print(f"{'  cell ' + name:<34}{st['wall_seconds']:>10.1f}   {rate(n, st['wall_seconds'])}   fit {ct['fit']:.1f} s "
              f"({met['algorithm']}), metrics {ct['metrics']:.1f}, stability {ct['stability']:.1f}, "
              f"LightGBM+SHAP {ct['explain']:.1f} ({met['lgbm_engine']}, {met['lgbm_cv_rows']:,} rows)")
    print(f"{'compare':<34}{tm['compare']:>10.1f}")
    print(f"{'render (report)':<34}{tm.get('render', 0):>10.1f}")

    # ---- the estimate for a cluster of ns.cores cores (one worker per core)
    C = ns.cores
    embed_wall = emb.get("embed_seconds", 0.0) if emb else 0.0
    space_tasks = max((i["seconds"] for s, i in spaces.items() if s != "llm"), default=0.0)
    # the client-side part of prepare: everything but the distributed embedding (the space tasks overlap it)
    client_prepare = max(0.0, tm["prepare"] - embed_wall)
    est_embed = math.ceil(emb["parts"] / C) * part_mean if part_mean else 0.0
    est_cells = max(cells.values()) if len(cells) <= C else sum(sorted(cells.values(), reverse=True)[:len(cells)]) / C
    grid_overhead = max(0.0, tm["grid"] - sum(cells.values()) / ns.workers)
    est = client_prepare + max(est_embed, space_tasks) + est_cells + grid_overhead + tm["compare"] + tm.get("render", 0)
    print(f"\nestimate on {C} cores ({C} one-core workers):")
    print(f"  client-side prepare (read, texts, assembly, ECOD, projections) {client_prepare:8.1f} s  (as measured)")
    print(f"  embedding: ceil({emb['parts'] if emb else 0} parts / {C}) x {part_mean or 0:.1f} s per part      "
          f"{est_embed:8.1f} s  (measured here: {embed_wall:.1f} s on {ns.workers})")
    print(f"  grid: the slowest of {len(cells)} cells, all at once            {est_cells:8.1f} s  "
          f"(measured here: {tm['grid']:.1f} s on {ns.workers})")
    print(f"  grid scheduling beyond the cells' own time (as here)    {grid_overhead:8.1f} s")
    print(f"  compare + render                                     {tm['compare'] + tm.get('render', 0):8.1f} s")
    print(f"  total                                                {est:8.1f} s  (measured here: {wall:.1f} s)")
    if not ns.keep:
        shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
