"""Sequential stopping of the clusterboot refits against the fixed 100: same classes, same recommendation?

For each planted table of bench_verdict.py (mixed columns, k_true 3-6, separations clear to none, their
column-shuffled copies, rule + noise and outcome tables) and a seeded slice of the bank data, every
(method, k) of the grid (K-means on the encoded space, K-Prototypes; k = 2..8) is refitted 100 times
(`stopping="fixed"`), each refit timed and its labels kept. The sequential run is then the real
`bootstrap_stability(..., stopping="sequential")` over those same refits, replayed (its resamples are the
fixed run's first ones: one seeded stream, tested in tests/test_stopping.py), and its cost the time of
the refits it used. The verdict is then made twice, as compare makes it: on the fixed numbers, and on
the sequential ones with the close calls (`verdict.close_calls`) taken on to 100 refits
(`resume`, again over the recorded refits) until none is left. Prints, per kind of table and overall:
segment classes equal (count / total), refits used / total (confirmations included), the
recommendation (stability rule and for use) equal, and the clusterboot time ratio (sequential / fixed,
the refits' measured seconds).

Run from the repository root (about 30 CPU-minutes for the 24 default tables at 1,000 rows)::

    nice -n 5 .venv/bin/python bench/bench_stopping.py --workers 2
    nice -n 5 .venv/bin/python bench/bench_stopping.py --bank ../shared/data/bank-marketing/train.csv --rows 2000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per worker process: --workers sets the parallelism

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_verdict as bv  # noqa: E402
from segreport.lib.evaluate import bootstrap_stability, whole_method_refit  # noqa: E402
from segreport.lib.features import fit_common, sample_rows  # noqa: E402
from segreport.lib.verdict import (choose_k, close_calls, fair_verdict, gower_silhouette, null_reference,  # noqa: E402
                               recommendation, structure_call, winner_possible)


class Recorder:
    """A refit that runs the method and keeps each resample's labels and seconds, keyed by its rows; and
    its replay, which hands them back without fitting (the sequential run and the confirmations)."""

    def __init__(self, refit):
        self.refit, self.seen = refit, {}

    def __call__(self, rows, base):
        t = time.perf_counter()
        pred = self.refit(rows, base)
        self.seen[self.key(rows)] = (pred, time.perf_counter() - t)
        return pred

    @staticmethod
    def key(rows) -> str:
        return hashlib.sha1(np.ascontiguousarray(rows).tobytes()).hexdigest()

    def replay(self, used: list):
        def refit(rows, base):
            pred, secs = self.seen[self.key(rows)]
            used.append(secs)
            return pred
        return refit


def entry_of(st: dict, sil: float | None) -> dict:
    return {"segments": st["segments"], "ari_mean": st["ari_mean"], "ari_sd": st["ari_sd"], "silhouette": sil,
            "replicate_score": st["replicate_score"], "replicates": st["common_silhouette"],
            "refits": st["resamples"]}


def cells_of(pipes, X_of, common, args):
    """Every (method, k): labels, the fixed run, the sequential run (replayed) and what each cost."""
    n = len(common)
    everyone = np.arange(n)
    score_rows = sample_rows(n, args.silhouette_sample, args.seed)
    out = {}
    for pipe in pipes:
        X = X_of[pipe.name]
        for k in range(args.k_min, args.k_max + 1):
            model = pipe.fit(X, everyone, k, args.seed, args.n_init)
            labels = pipe.predict(model, X, everyone)

            def score(base, pred):
                lab = pred[score_rows]
                return float(silhouette_score(common[score_rows], lab)) if len(np.unique(lab)) > 1 else None

            rec = Recorder(whole_method_refit(lambda rows, k=k, X=X, pipe=pipe: pipe.fit(X, rows, k, args.seed,
                                                                                       args.refit_init),
                                              lambda m, base, X=X, pipe=pipe: pipe.predict(m, X, base)))
            fixed = bootstrap_stability(rec, labels, n, 100, args.seed, n, score, stopping="fixed")
            used = []
            seq = bootstrap_stability(rec.replay(used), labels, n, 100, args.seed, n, score, stopping="sequential")
            lab = labels[score_rows]
            sil = float(silhouette_score(common[score_rows], lab)) if len(np.unique(lab)) > 1 else None
            out[(pipe.name, k)] = {"labels": labels, "fixed": fixed, "seq": seq, "sil": sil, "rec": rec, "score": score,
                                   "fixed_s": sum(s for _, s in rec.seen.values()), "seq_s": sum(used)}
    return out


def fair_of(frame, table, cells, stab, pipes, args):
    """choose_k per method and the fair verdict, as compare makes them, on the stability results `stab`."""
    names = [p.name for p in pipes]
    per_k = {m: {k: entry_of(stab[(m, k)], cells[(m, k)]["sil"]) for (mm, k) in cells if mm == m} for m in names}
    choices = {m: choose_k(per_k[m], grid=list(range(args.k_min, args.k_max + 1))) for m in names}
    chosen = {m: (c["k"] or c["fallback_k"]) for m, c in choices.items()}
    scores = {}
    for m, k in chosen.items():
        def sil(kk, m=m):
            return {"common": per_k[m][kk]["silhouette"],
                    "gower": gower_silhouette(frame, table.numeric, table.categorical, cells[(m, kk)]["labels"],
                                              args.silhouette_sample, args.seed)}
        scores[m] = {"k": k, "silhouette": sil(k), "equal_k": {kk: sil(kk) for kk in set(chosen.values())},
                     "ari_mean": per_k[m][k]["ari_mean"], "ari_sd": per_k[m][k]["ari_sd"],
                     "replicates": {"common": per_k[m][k]["replicates"]}}
    return per_k, choices, chosen, fair_verdict(scores, simplicity=names)


def decide(frame, table, cells, stab, pipes, structures_of, args, outcome):
    """The verdict as compare makes it, on the stability results `stab` {(method, k): result}."""
    per_k, choices, chosen, verdict = fair_of(frame, table, cells, stab, pipes, args)
    m0 = verdict["recommend"]
    structures = {m0: structures_of(m0, chosen[m0])}
    if structures[m0]["structure"] == "none" and verdict["by_stability"] != m0:
        structures[verdict["by_stability"]] = structures_of(verdict["by_stability"], chosen[verdict["by_stability"]])
    rec = recommendation(choices, verdict, structures)
    labels = {key: c["labels"] for key, c in cells.items()}
    use = bv.for_use(frame, table, labels, per_k, choices, chosen, verdict, structures, args, outcome)["new"]
    return {"rec": (rec["method"], rec["k"], rec["label"]), "use": (use["method"], use["k"], use["basis"]),
            "choices": choices, "per_k": per_k}


def call_cells(cells, stab) -> list[dict]:
    out = []
    for (m, k), c in cells.items():
        st = stab[(m, k)]
        stop = st.get("stopping") or {}
        out.append({"method": m, "value": k, "k": k, "stopped_early": bool(stop.get("stopped_early")),
                    "intervals": {str(s): v for s, v in (stop.get("intervals") or {}).items()},
                    "jaccards": {int(s): v["mean_jaccard"] for s, v in st["segments"].items()},
                    "silhouette": c["sil"], "se": (st.get("replicate_score") or {}).get("sd"),
                    "ari_mean": st.get("ari_mean"), "ari_sd": st.get("ari_sd"), "refits": st.get("resamples"),
                    "replicates": st.get("common_silhouette")})
    return out


def compare_modes(frame, schema, pipes, args, outcome=None) -> dict:
    """Fixed vs sequential (+ confirmed close calls) on one table."""
    table = bv.table_of(frame, schema)
    common = fit_common(table)[0]
    X_of = {p.name: p.space(table) for p in pipes}
    cells = cells_of(pipes, X_of, common, args)
    memo = {}

    def structures_of(m, k):
        if (m, k) not in memo:
            pipe = next(p for p in pipes if p.name == m)
            fs = bv.fit_score_for(pipe, args, table.schema)
            sh = null_reference(fs, frame, [k], "shuffle", args.nulls, args.seed, len(frame), observed=False)
            pc = null_reference(fs, frame, [k], "pca", args.nulls, args.seed, len(frame), table.numeric,
                                table.categorical, observed=False)
            obs = {"silhouette": cells[(m, k)]["sil"], "ari": cells[(m, k)]["fixed"]["ari_mean"]}
            memo[(m, k)] = structure_call(obs, sh["ks"][k], pc["ks"][k])
        return memo[(m, k)]

    fixed = decide(frame, table, cells, {key: c["fixed"] for key, c in cells.items()}, pipes, structures_of, args,
                   outcome)
    stab = {key: c["seq"] for key, c in cells.items()}
    confirm_s, confirmed = 0.0, set()
    while True:  # compare.settle: confirm the close calls, choose again, until none is left
        _, choices, _, verdict = fair_of(frame, table, cells, stab, pipes, args)
        possible = winner_possible(verdict) if len(choices) > 1 else True
        calls = [c for c in close_calls(call_cells(cells, stab), choices, winner_possible=possible)
                 if c not in confirmed]
        if not calls:
            break
        for key in calls:
            c = cells[key]
            used = []
            stab[key] = bootstrap_stability(c["rec"].replay(used), c["labels"], len(common), 100, args.seed,
                                            len(common), c["score"], resume=stab[key])
            confirm_s += sum(used)
            confirmed.add(key)
    seq = decide(frame, table, cells, stab, pipes, structures_of, args, outcome)
    classes_same = classes_total = grid_same = 0
    for key, c in cells.items():
        for s, v in c["fixed"]["segments"].items():
            classes_total += 1
            classes_same += int(stab[key]["segments"][s]["class"] == v["class"])
            grid_same += int(c["seq"]["segments"][s]["class"] == v["class"])  # before any confirmation
    return {"classes_same": classes_same, "classes": classes_total, "grid_classes_same": grid_same,
            "refits": sum(stab[key]["resamples"] for key in cells), "refits_fixed": 100 * len(cells),
            "grid_refits": sum(c["seq"]["resamples"] for c in cells.values()), "confirmed": len(confirmed),
            "rec_same": fixed["rec"] == seq["rec"], "use_same": fixed["use"] == seq["use"],
            "rec": fixed["rec"], "rec_seq": seq["rec"], "use": fixed["use"], "use_seq": seq["use"],
            "fixed_s": sum(c["fixed_s"] for c in cells.values()),
            "seq_s": sum(c["seq_s"] for c in cells.values()) + confirm_s}


def one_table(job) -> dict:
    seed, k_true, sep, kind, args = job
    from segreport.lib.verdict import shuffle_columns

    pipes = [{"kmeans": bv.KMeansPipe(), "kprototypes": bv.KPrototypesPipe()}[m] for m in args.methods.split(",")]
    tseed = 1000 * seed + 10 * k_true + len(sep)
    outcome = None
    if kind == "rule":
        frame, truth = bv.rule_table(args.rows, tseed)
    else:
        frame, truth = bv.planted_table(k_true, sep, args.rows, tseed)
    if kind == "shuffled":
        frame = shuffle_columns(frame, 7 + seed)
    if kind == "outcome":
        outcome = bv.with_outcome(truth, tseed)
    t = time.perf_counter()
    out = compare_modes(frame, None, pipes, args, outcome)
    out.update(name=f"{kind} {sep} k_true={k_true} seed={seed}", kind=kind, seconds=round(time.perf_counter() - t, 1))
    return out


def bank_table(args) -> dict:
    from segreport.core.schema import DEFAULT_SCHEMA

    raw = pd.read_csv(args.bank, sep=";")
    rows = sample_rows(len(raw), args.rows, args.seed)
    frame = raw.iloc[rows][[c.name for c in DEFAULT_SCHEMA]].reset_index(drop=True)
    frame[["age", "balance"]] = frame[["age", "balance"]].astype(float)
    y = (raw.iloc[rows]["y"].to_numpy() == "yes").astype(float)
    pipes = [{"kmeans": bv.KMeansPipe(), "kprototypes": bv.KPrototypesPipe()}[m] for m in args.methods.split(",")]
    t = time.perf_counter()
    out = compare_modes(frame, DEFAULT_SCHEMA, pipes, args, outcome=y)
    out.update(name=f"bank slice, {len(frame):,} rows", kind="bank", seconds=round(time.perf_counter() - t, 1))
    return out


def line(r: dict) -> str:
    return (f"  {r['name']}: classes {r['classes_same']}/{r['classes']} (grid {r['grid_classes_same']}), refits {r['refits']}/{r['refits_fixed']} "
            f"(grid {r['grid_refits']}, {r['confirmed']} cells confirmed), recommendation "
            f"{'same' if r['rec_same'] else 'DIFFERS'} {r['rec'][:2]}, for use {'same' if r['use_same'] else 'DIFFERS'}"
            f" {r['use'][:2]}{'' if r['use_same'] else ' vs ' + str(r['use_seq'][:2])}, clusterboot "
            f"{r['seq_s']:.1f}/{r['fixed_s']:.1f} s [{r['seconds']}s]")


def summary(label: str, rs: list[dict]) -> None:
    cs, ct = sum(r["classes_same"] for r in rs), sum(r["classes"] for r in rs)
    ru, rt = sum(r["refits"] for r in rs), sum(r["refits_fixed"] for r in rs)
    sq, fx = sum(r["seq_s"] for r in rs), sum(r["fixed_s"] for r in rs)
    gs = sum(r["grid_classes_same"] for r in rs)
    print(f"{label}: {len(rs)} tables; classes same {cs}/{ct} ({cs / ct:.1%}; in the grid, before the close calls are "
          f"confirmed: {gs}/{ct}); refits {ru}/{rt} ({ru / rt:.1%}; "
          f"grid {sum(r['grid_refits'] for r in rs)}, {sum(r['confirmed'] for r in rs)} cells confirmed); "
          f"recommendation same {sum(r['rec_same'] for r in rs)}/{len(rs)}, for use same "
          f"{sum(r['use_same'] for r in rs)}/{len(rs)}; clusterboot time sequential/fixed {sq:.0f}/{fx:.0f} s = "
          f"{sq / fx:.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=1, help="tables per (k_true, separation)")
    ap.add_argument("--k-true", default="3,4,5,6")
    ap.add_argument("--separations", default="clear,moderate,weak,none")
    ap.add_argument("--shuffled", default="clear", help="separations whose column-shuffled copy is also run")
    ap.add_argument("--methods", default="kmeans,kprototypes")
    ap.add_argument("--rule-tables", type=int, default=2)
    ap.add_argument("--outcome-tables", default="moderate,weak")
    ap.add_argument("--k-min", type=int, default=2)
    ap.add_argument("--k-max", type=int, default=8)
    ap.add_argument("--null-resamples", type=int, default=2, help="bootstrap resamples per null fit (reported "
                    "beside the null's silhouette, not used by the structure call)")
    ap.add_argument("--nulls", type=int, default=3)
    ap.add_argument("--n-init", type=int, default=4)
    ap.add_argument("--refit-init", type=int, default=4)
    ap.add_argument("--silhouette-sample", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="run only the first N planted tables (0: all)")
    ap.add_argument("--bank", help="the bank CSV (';'): also (or with --no-planted, only) a seeded slice of --rows rows")
    ap.add_argument("--no-planted", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = []
    if not args.no_planted:
        seps = args.separations.split(",")
        shuffled = set(args.shuffled.split(",")) if args.shuffled else set()
        jobs = [(seed, k_true, sep, kind, args) for seed in range(args.seeds)
                for k_true in [int(x) for x in args.k_true.split(",")] for sep in seps
                for kind in (["planted"] + (["shuffled"] if sep in shuffled else []))]
        jobs += [(seed, 3, "rule", "rule", args) for seed in range(args.rule_tables)]
        jobs += [(seed, 4, sep, "outcome", args) for seed in range(args.seeds)
                 for sep in (args.outcome_tables.split(",") if args.outcome_tables else [])]
        jobs = jobs[:args.limit] if args.limit else jobs
        if args.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.workers) as pool:
                for r in pool.map(one_table, jobs):
                    print(line(r), flush=True)
                    results.append(r)
        else:
            for r in map(one_table, jobs):
                print(line(r), flush=True)
                results.append(r)
    bank = None
    if args.bank:
        bank = bank_table(args)
        print(line(bank), flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s with {args.workers} workers; rows {args.rows}, k {args.k_min}..{args.k_max}, "
          f"methods {args.methods}, 100 refits at most per cell")
    by_kind = defaultdict(list)
    for r in results:
        by_kind[r["kind"]].append(r)
    for kind, rs in by_kind.items():
        summary(f"  {kind}", rs)
    if results:
        summary("planted tables, all", results)
    if bank:
        summary("bank slice", [bank])


if __name__ == "__main__":
    main()
