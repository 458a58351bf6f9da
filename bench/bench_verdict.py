"""Does the verdict recover planted segments, and does it call tables without segments "none"?

Mixed-type tables with planted segments (k_true 3-6, unequal sizes, separations from clear to
none; numeric, categorical and binary columns) and their column-shuffled copies go through the
verdict with real fits: K-means on the encoded space (`features.fit_encoded`: one-hot + Yeo-Johnson)
and K-Prototypes (`methods.kprototypes`, fast engine) at k = 2..8, bootstrap stability refitting
the whole method in each resample, silhouette in the common space (+ Gower), choose_k per method,
fair_verdict, the null reference (column-shuffled and principal-axes references) and
recommendation. Prints how often the recommendation recovers k_true, the mean ARI of the
recommended segments to the truth, the structure calls, and how often a null table is "none".

Run from the repository root (defaults: 20 tables, about 5 CPU-minutes, so about 3 minutes on 2 idle
cores with --workers 2; 12 minutes were measured on 2 cores shared with other jobs)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_verdict.py
    .venv/bin/python bench/bench_verdict.py --rows 3000 --seeds 3 --resamples 50 --nulls 8   # longer
    .venv/bin/python bench/bench_verdict.py --bank ../shared/data/bank-marketing/train.csv --rows 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per worker process: --workers sets the parallelism
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, silhouette_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segreport.core.schema import ColumnSpec  # noqa: E402
from segreport.lib.data import Table  # noqa: E402
from segreport.lib.evaluate import bootstrap_stability, whole_method_refit  # noqa: E402
from segreport.lib.features import fit_common, fit_encoded, fit_mixed, sample_rows  # noqa: E402
from segreport.methods.kmeans import KMeansSegmenter  # noqa: E402
from segreport.methods.kprototypes import KPrototypesSegmenter  # noqa: E402
from segreport.stages.compare import natural_pick  # noqa: E402
from segreport.lib.recommend import outcome_halves, outcome_spread, recommend, rule_equivalent  # noqa: E402
from segreport.lib.verdict import (choose_k, fair_verdict, gower_silhouette, null_reference, recommendation,  # noqa: E402
                               structure_call)

PLANTED_SCHEMA = [ColumnSpec(name="age", kind="numeric"), ColumnSpec(name="balance", kind="numeric"),
                  ColumnSpec(name="duration", kind="numeric"), ColumnSpec(name="job", kind="categorical"),
                  ColumnSpec(name="marital", kind="categorical"), ColumnSpec(name="housing", kind="binary"),
                  ColumnSpec(name="loan", kind="binary")]
# separation: minimum distance between segment centres (numeric, in SDs), weight of each segment's
# favourite level, logit shift of the binaries
SEPARATIONS = {"clear": (6.0, 0.85, 3.0), "moderate": (3.5, 0.6, 1.8), "weak": (2.0, 0.3, 0.9),
               "none": (0.0, 0.0, 0.0)}


def planted_table(k_true: int, separation: str, rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A bank-like table with k_true planted segments of unequal sizes (5% or more each)."""
    rng = np.random.default_rng(seed)
    dist, w, beta = SEPARATIONS[separation]
    share = rng.dirichlet(np.full(k_true, 2.0))
    share = np.maximum(share, 0.05)
    share /= share.sum()
    truth = rng.choice(k_true, size=rows, p=share)
    # centres spread out (farthest-point choice among random points), then scaled so that the
    # closest two are `dist` SDs apart: every segment has a neighbour at about that distance
    pool = rng.normal(size=(200, 3))
    pick = [0]
    for _ in range(k_true - 1):
        d = np.min(((pool[:, None] - pool[pick][None]) ** 2).sum(-1), axis=1)
        pick.append(int(np.argmax(d)))
    centres = pool[pick]
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))[np.triu_indices(k_true, 1)]
    centres = centres * (dist / d.min()) if dist > 0 else centres * 0
    z = centres[truth] + rng.normal(size=(rows, 3))
    frame = pd.DataFrame({
        "age": np.clip(np.round(42 + 10 * z[:, 0]), 18, 95),
        "balance": np.round(np.exp(6.2 + 0.9 * z[:, 1]) - 300),
        "duration": np.round(np.exp(5.0 + 0.6 * z[:, 2])),
    })
    for col, levels in (("job", ["admin.", "blue-collar", "management", "retired", "services", "technician"]),
                        ("marital", ["divorced", "married", "single"])):
        base = rng.dirichlet(np.full(len(levels), 3.0))
        fav = rng.permutation(np.resize(rng.permutation(len(levels)), k_true))  # distinct where possible
        p = (1 - w) * base[None, :] + w * np.eye(len(levels))[fav]
        u = rng.random(rows)
        frame[col] = np.asarray(levels, dtype=object)[(u[:, None] > np.cumsum(p[truth], axis=1)).sum(1).clip(
            max=len(levels) - 1)]
    for col, base_logit in (("housing", 0.2), ("loan", -1.5)):
        shift = beta * rng.choice([-1.0, 1.0], size=k_true)
        p = 1 / (1 + np.exp(-(base_logit + shift[truth])))
        frame[col] = np.where(rng.random(rows) < p, "yes", "no")
    return frame, truth


def rule_table(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Segments that are a two-column rule plus noise: three planted segments (clear separation on
    the other columns, each at least 5% of the rows) that housing and loan define exactly (housing = no and loan = no; housing = yes;
    housing = no and loan = yes), with 2% of the customers' two values drawn at random."""
    for s in range(seed, seed + 100):  # every segment at 5% or more (the recommendation's size bar)
        frame, truth = planted_table(3, "clear", rows, s)
        if np.bincount(truth).min() >= 0.05 * rows:
            break
    rng = np.random.default_rng(seed + 1)
    housing = np.where(truth == 1, "yes", "no")
    loan = np.where(truth == 2, "yes", np.where(truth == 1, rng.choice(["yes", "no"], rows), "no"))
    flip = rng.random(rows) < 0.02
    frame["housing"] = np.where(flip, rng.choice(["yes", "no"], rows), housing)
    frame["loan"] = np.where(flip, rng.choice(["yes", "no"], rows), loan)
    return frame, truth


def with_outcome(truth: np.ndarray, seed: int) -> np.ndarray:
    """An outcome whose rate differs by planted segment (3% to 30%, spread over the segments)."""
    rng = np.random.default_rng(seed + 2)
    k = int(truth.max()) + 1
    rates = rng.permutation(np.linspace(0.03, 0.30, k))
    return (rng.random(len(truth)) < rates[truth]).astype(float)


def table_of(frame: pd.DataFrame, schema=None) -> Table:
    return Table(frame=frame.reset_index(drop=True), schema=schema or PLANTED_SCHEMA, path="bench", file_sha256="")


class KMeansPipe:
    """K-means on the encoded space (default encodings: one-hot + Yeo-Johnson)."""

    name = "kmeans"

    def space(self, table):
        X, _, _ = fit_encoded(table)
        return X

    def fit(self, X, rows, k, seed, n_init):
        return KMeansSegmenter(k, n_init=n_init, max_iter=300, random_state=seed).fit(X[rows])

    def predict(self, model, X, rows):
        return model.predict(X[rows])


class KPrototypesPipe:
    """K-Prototypes on power-transformed numerics + category codes (fast engine)."""

    name = "kprototypes"

    def space(self, table):
        xn, xc, _ = fit_mixed(table)
        return xn, xc

    def fit(self, X, rows, k, seed, n_init):
        xn, xc = X
        return KPrototypesSegmenter(k, n_init=n_init, random_state=seed).fit_arrays(xn[rows], xc[rows])

    def predict(self, model, X, rows):
        xn, xc = X
        return model.predict_arrays(xn[rows], xc[rows]).astype(np.int64)


def evaluate_cell(pipe, X, common, k, seed, args, resamples=None):
    """One (method, k): labels, stability with the whole method refitted, common-space silhouette."""
    n = len(common)
    everyone = np.arange(n)
    model = pipe.fit(X, everyone, k, seed, args.n_init)
    labels = pipe.predict(model, X, everyone)
    score_rows = sample_rows(n, args.silhouette_sample, seed)

    def score(base, pred):
        lab = pred[score_rows]  # base is every row (max_rows = n below)
        return float(silhouette_score(common[score_rows], lab)) if len(np.unique(lab)) > 1 else None

    refit = whole_method_refit(lambda rows: pipe.fit(X, rows, k, seed, args.refit_init),
                               lambda m, base: pipe.predict(m, X, base))
    st = bootstrap_stability(refit, labels, n, resamples or args.resamples, seed, n, score)
    lab = labels[score_rows]
    sil = float(silhouette_score(common[score_rows], lab)) if len(np.unique(lab)) > 1 else None
    entry = {"segments": st["segments"], "ari_mean": st["ari_mean"], "ari_sd": st["ari_sd"], "silhouette": sil,
             "replicate_score": st["replicate_score"], "replicates": st["common_silhouette"]}
    return labels, entry


def fit_score_for(pipe, args, schema):
    """fit_score(frame, k, seed) for null_reference: the whole pipeline on a (null) table."""
    def fit_score(frame, k, seed):
        table = table_of(frame, schema)
        X, common = pipe.space(table), fit_common(table)[0]
        _, e = evaluate_cell(pipe, X, common, k, seed, args, resamples=args.null_resamples)
        return {"silhouette": e["silhouette"], "ari": e["ari_mean"]}
    return fit_score


SIMPLICITY = {"kmeans": 1, "kprototypes": 2}


def for_use(frame, table, labels, per_k, choices, chosen, verdict, structures, args, outcome=None) -> dict:
    """segreport.lib.recommend on every (method, k) of the bench, as compare.for_use builds it."""
    select = outcome_halves(len(frame), args.seed) if outcome is not None else None
    cells = []
    for (m, k), lab in labels.items():
        e = per_k[m][k]
        _, sizes = np.unique(lab, return_counts=True)
        cells.append({"method": m, "k": k, "value": k, "simplicity": SIMPLICITY.get(m, 99), "n": len(lab),
                      "sizes": [int(x) for x in sizes],
                      "jaccards": {int(s): v["mean_jaccard"] for s, v in e["segments"].items()},
                      "rule": rule_equivalent(frame, table.numeric, table.categorical, lab, seed=args.seed),
                      "outcome": outcome_spread(outcome, lab, select, args.seed) if outcome is not None else None,
                      "distinct": {"value": e["silhouette"], "se": (e.get("replicate_score") or {}).get("sd")}})
    recommended = {m: {"k": k} for m, k in chosen.items()}
    return {"new": recommend(cells, natural_pick(recommended, choices, verdict, structures)), "cells": cells}


def run_verdict(frame: pd.DataFrame, args, pipes, schema=None, outcome=None) -> dict:
    table = table_of(frame, schema)
    numeric, categorical = table.numeric, table.categorical
    common = fit_common(table)[0]
    ks = list(range(args.k_min, args.k_max + 1))
    labels, per_k, choices = {}, {}, {}
    for pipe in pipes:
        X = pipe.space(table)
        per_k[pipe.name] = {}
        for k in ks:
            labels[(pipe.name, k)], per_k[pipe.name][k] = evaluate_cell(pipe, X, common, k, args.seed, args)
        choices[pipe.name] = choose_k(per_k[pipe.name], grid=ks)
    chosen = {m: (c["k"] or c["fallback_k"]) for m, c in choices.items()}
    scores = {}
    for m, k in chosen.items():
        def sil(kk, m=m):
            lab = labels[(m, kk)]
            return {"common": per_k[m][kk]["silhouette"],
                    "gower": gower_silhouette(frame, numeric, categorical, lab, args.silhouette_sample, args.seed)}
        scores[m] = {"k": k, "silhouette": sil(k), "equal_k": {kk: sil(kk) for kk in set(chosen.values())},
                     "ari_mean": per_k[m][k]["ari_mean"], "ari_sd": per_k[m][k]["ari_sd"],
                     "replicates": {"common": per_k[m][k]["replicates"]}}
    verdict = fair_verdict(scores, simplicity=[p.name for p in pipes])
    structures = {}

    def structure_of(m):
        pipe = next(p for p in pipes if p.name == m)
        k = chosen[m]
        fs = fit_score_for(pipe, args, table.schema)
        sh = null_reference(fs, frame, [k], "shuffle", args.nulls, args.seed, args.rows, observed=False)
        pc = null_reference(fs, frame, [k], "pca", args.nulls, args.seed, args.rows, numeric, categorical,
                            observed=False)
        obs = {"silhouette": per_k[m][k]["silhouette"], "ari": per_k[m][k]["ari_mean"]}
        return structure_call(obs, sh["ks"][k], pc["ks"][k])

    m0 = verdict["recommend"]
    structures[m0] = structure_of(m0)
    if structures[m0]["structure"] == "none" and verdict["by_stability"] != m0:
        structures[verdict["by_stability"]] = structure_of(verdict["by_stability"])
    rec = recommendation(choices, verdict, structures)
    use = for_use(frame, table, labels, per_k, choices, chosen, verdict, structures, args, outcome)
    return {"rec": rec, "choices": choices, "verdict": verdict, "labels": labels, "structures": structures,
            "per_k": per_k, "use": use}


def one_table(job: tuple) -> dict:
    """Run the verdict on one planted table (or its column-shuffled copy)."""
    seed, k_true, sep, kind, args = job
    from segreport.lib.verdict import shuffle_columns

    all_pipes = {"kmeans": KMeansPipe(), "kprototypes": KPrototypesPipe()}
    pipes = [all_pipes[m] for m in args.methods.split(",")]
    tseed = 1000 * seed + 10 * k_true + len(sep)
    outcome = None
    if kind == "rule":
        frame, truth = rule_table(args.rows, tseed)
    else:
        frame, truth = planted_table(k_true, sep, args.rows, tseed)
    if kind == "shuffled":
        frame = shuffle_columns(frame, 7 + seed)
    if kind == "outcome":
        outcome = with_outcome(truth, tseed)
    t = time.perf_counter()
    out = run_verdict(frame, args, pipes, outcome=outcome)
    if args.dump:
        import pickle

        Path(args.dump).mkdir(parents=True, exist_ok=True)
        with open(Path(args.dump) / f"{kind}-{sep}-k{k_true}-s{seed}.pkl", "wb") as fh:
            pickle.dump({"per_k": out["per_k"], "truth": truth, "labels": out["labels"],
                         "structures": out["structures"], "verdict": out["verdict"]}, fh)
    rec = out["rec"]
    new = out["use"]["new"]
    ari = adjusted_rand_score(truth, out["labels"][(rec["method"], rec["k"])]) if kind != "shuffled" else None
    use_ari = (adjusted_rand_score(truth, out["labels"][(new["method"], new["k"])])
               if kind != "shuffled" and new["method"] else None)
    extra = {}
    if kind == "rule":  # the segmentation that recovers the rule must be reported as a commonsense split
        cells = out["use"]["cells"]
        best = max(cells, key=lambda c: adjusted_rand_score(truth, out["labels"][(c["method"], c["k"])]))
        listed = {(o["method"], o["k"]): o for o in new["options"]}
        o = listed.get((best["method"], best["k"]))
        extra["rule_found"] = o["rule_equivalent"]["rule"] if o and o["commonsense"] else None
        extra["rule_ari"] = best["rule"]["agreement"] if best.get("rule") else None
        extra["rule_cell"] = f"{best['method']} k={best['k']} (ARI to truth "\
            f"{adjusted_rand_score(truth, out['labels'][(best['method'], best['k'])]):.2f})"
    if kind == "outcome":  # the recommendation separates it at least as well as the best candidate
        pool = [c for c in out["use"]["cells"] if [c["method"], c["k"]] in new["candidates"]]
        best = max(pool, key=lambda c: c["outcome"]["spread"]) if pool else None
        picked = next((c for c in pool if c["method"] == new["method"] and c["k"] == new["k"]), None)
        extra.update(best_spread=best["outcome"]["spread"] if best else None,
                     use_spread=picked["outcome"]["spread"] if picked else None,
                     use_ci_high=picked["outcome"]["ci_high"] if picked else None,
                     use_report_spread=picked["outcome"]["report"]["spread"] if picked else None)
    return {"seed": seed, "k_true": k_true, "separation": sep, "kind": kind, "method": rec["method"],
            "k": rec["k"], "structure": rec["structure"], "label": rec["label"], "edge": rec["edge"],
            "ari_truth": ari, "winner": out["verdict"]["winner"],
            "use_method": new["method"], "use_k": new["k"], "use_basis": new["basis"],
            "use_commonsense": new["commonsense"], "use_ari_truth": use_ari, **extra,
            "k_by_method": {m: c["k"] for m, c in out["choices"].items()},
            "effect": out["structures"][rec["method"]].get("effect"), "seconds": round(time.perf_counter() - t, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=1, help="tables per (k_true, separation)")
    ap.add_argument("--k-true", default="3,4,5,6")
    ap.add_argument("--separations", default="clear,moderate,weak,none")
    ap.add_argument("--shuffled", default="clear", help="separations whose column-shuffled copy is also run")
    ap.add_argument("--methods", default="kmeans,kprototypes")
    ap.add_argument("--kinds", default="planted,shuffled,rule,outcome", help="which kinds of table to run")
    ap.add_argument("--rule-tables", type=int, default=2, help="tables whose segments are a two-column rule + noise")
    ap.add_argument("--outcome-tables", default="moderate,weak",
                    help="separations of planted tables (k_true 4) given an outcome that differs by segment")
    ap.add_argument("--k-min", type=int, default=2)
    ap.add_argument("--k-max", type=int, default=8)
    ap.add_argument("--resamples", type=int, default=15, help="bootstrap resamples per cell")
    ap.add_argument("--null-resamples", type=int, default=5, help="bootstrap resamples per null fit")
    ap.add_argument("--nulls", type=int, default=3, help="null tables per reference")
    ap.add_argument("--n-init", type=int, default=4)
    ap.add_argument("--refit-init", type=int, default=4, help="inits per bootstrap refit (as many as the fit: "
                    "fewer inits find worse optima at large k and understate their stability)")
    ap.add_argument("--silhouette-sample", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bank", help="instead: the verdict on a seeded sample of --rows rows of this bank CSV (';')")
    ap.add_argument("--dump", help="folder to write each table's per-k results to (pickle), to study the rule")
    args = ap.parse_args(argv)
    if args.bank:
        return bank(args)
    ks_true = [int(x) for x in args.k_true.split(",")]
    seps = args.separations.split(",")
    shuffled = set(args.shuffled.split(",")) if args.shuffled else set()
    jobs = [(seed, k_true, sep, kind, args) for seed in range(args.seeds) for k_true in ks_true for sep in seps
            for kind in (["planted"] + (["shuffled"] if sep in shuffled else []))]
    jobs += [(seed, 3, "rule", "rule", args) for seed in range(args.rule_tables)]
    jobs += [(seed, 4, sep, "outcome", args) for seed in range(args.seeds)
             for sep in (args.outcome_tables.split(",") if args.outcome_tables else [])]
    jobs = [j for j in jobs if j[3] in args.kinds.split(",")]
    t0 = time.perf_counter()
    results = []
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            done = pool.map(one_table, jobs)
            results = _report_each(done)
    else:
        results = _report_each(map(one_table, jobs))
    df = pd.DataFrame(results)
    print(f"\n{len(df)} tables in {time.perf_counter() - t0:.0f}s with {args.workers} workers; rows {args.rows}, "
          f"k {args.k_min}..{args.k_max}, {args.resamples} resamples per cell, {args.nulls} nulls per reference")
    planted = df[(df.kind == "planted") & (df.separation != "none")] if len(df) else df
    for sep, g in planted.groupby("separation", sort=False):
        print(f"planted {sep:8s}: k_true recovered {int((g.k == g.k_true).sum())}/{len(g)}, "
              f"mean ARI to truth {g.ari_truth.mean():.2f}, structure {dict(Counter(g.structure))}, "
              f"edge flagged {int(g.edge.sum())}")
        for m in g.iloc[0].k_by_method:
            hits = sum(1 for kt, r in zip(g.k_true, g.k_by_method) if r[m] == kt)
            print(f"    choose_k {m}: k_true {hits}/{len(g)}")
    for sep, g in planted.groupby("separation", sort=False):
        print(f"  for use {sep:8s}: {dict(Counter(g.use_basis))}, same (method, k) as the stability rule "
              f"{int(((g.use_method == g.method) & (g.use_k == g.k)).sum())}/{len(g)}, k_true "
              f"{int((g.use_k == g.k_true).sum())}/{len(g)}, mean ARI to truth {g.use_ari_truth.mean():.2f}")
    rules = df[df.kind == "rule"]
    if len(rules):
        print(f"rule + noise tables: rule found and reported as a commonsense split "
              f"{int(rules.rule_found.notna().sum())}/{len(rules)} (ARI {', '.join(f'{x:.3f}' for x in rules.rule_ari.dropna())});"
              f" recommendation is the split itself {int(rules.use_commonsense.sum())}/{len(rules)}")
        for r in rules.itertuples():
            print(f"    seed {r.seed}: truth best recovered by {r.rule_cell}; its rule: {r.rule_found} -> use "
                  f"{r.use_method} k={r.use_k} ({r.use_basis}{', commonsense split' if r.use_commonsense else ''})")
    outs = df[df.kind == "outcome"]
    if len(outs):
        ok = (outs.use_ci_high >= outs.best_spread)
        print(f"outcome tables: recommendation separates it as well as the best candidate (within its interval) "
              f"{int(ok.sum())}/{len(outs)}")
        for r in outs.itertuples():
            print(f"    {r.separation:8s} k_true={r.k_true}: use {r.use_method} k={r.use_k} spread {r.use_spread:.3f} "
                  f"(other half {r.use_report_spread:.3f}) vs best candidate {r.best_spread:.3f}; ARI to truth "
                  f"{r.use_ari_truth:.2f}")
    nulls = df[(df.kind == "shuffled") | (df.separation == "none")]
    if len(nulls):
        calls = Counter(nulls.structure)
        print(f"null tables (column-shuffled copies + separation none): called 'none' {calls.get('none', 0)}/"
              f"{len(nulls)}, calls {dict(calls)}")


def bank(args) -> None:
    """The verdict on real data: the default schema's 8 bank columns, a seeded sample of rows."""
    from segreport.core.schema import DEFAULT_SCHEMA

    t = time.perf_counter()
    raw = pd.read_csv(args.bank, sep=";")
    frame = raw.iloc[sample_rows(len(raw), args.rows, args.seed)][[c.name for c in DEFAULT_SCHEMA]]
    frame = frame.reset_index(drop=True)
    frame[["age", "balance"]] = frame[["age", "balance"]].astype(float)
    y = (raw.iloc[sample_rows(len(raw), args.rows, args.seed)]["y"].to_numpy() == "yes").astype(float)
    all_pipes = {"kmeans": KMeansPipe(), "kprototypes": KPrototypesPipe()}
    out = run_verdict(frame, args, [all_pipes[m] for m in args.methods.split(",")], DEFAULT_SCHEMA, outcome=y)
    for m, per in out["per_k"].items():
        cells = [f"k={k} sil {e['silhouette']:.3f} ARI {e['ari_mean']:.2f} min Jaccard "
                 f"{min(v['mean_jaccard'] for v in e['segments'].values()):.2f}" for k, e in per.items()]
        print(f"{m}: " + ", ".join(cells))
        print("   choose_k: " + " | ".join(out["choices"][m]["reasons"][-3:]))
    for m, st in out["structures"].items():
        print(f"structure ({m}): {st['structure']}: " + " | ".join(st["reasons"]))
    print("verdict: " + " | ".join(out["verdict"]["reasons"]))
    r = out["rec"]
    print(f"recommendation (stability rule): {r['method']} k={r['k']} structure={r['structure']} ({r['label']}) "
          f"[{time.perf_counter() - t:.0f}s, {len(frame)} rows]")
    new = out["use"]["new"]
    print(f"recommendation for use: {new['method']} k={new['k']} ({new['basis']}"
          f"{', commonsense split' if new['commonsense'] else ''}); rule equivalent: {new['rule_equivalent']}")
    for line in new["reasons"]:
        print(f"   {line}")
    print("options: role | segmentation | sizes | weakest Jaccard | spread (selection half, 95% interval) | "
          "spread (other half) | rule (ARI)")
    for o in new["options"]:
        oc = o["outcome"] or {}
        re_ = o["rule_equivalent"] or {}
        print(f"   {o['role']} | {o['method']} k={o['k']} | {'/'.join(str(x) for x in o['sizes'])} | "
              f"{o['weakest_jaccard']:.3f} | {oc.get('spread', float('nan')):.3f} ({oc.get('ci_low', float('nan')):.3f}-"
              f"{oc.get('ci_high', float('nan')):.3f}) | {oc.get('report_spread', float('nan')):.3f} | "
              f"{re_.get('rule')} ({re_.get('agreement', float('nan')):.3f})")
    for key, why in new["excluded"].items():
        print(f"   not a candidate: {key}: {'; '.join(why)}")


def _report_each(rows) -> list[dict]:
    out = []
    for r in rows:
        out.append(r)
        eff = "" if r["effect"] is None else f"{r['effect']:.3f}"
        ari = "" if r["ari_truth"] is None else f"{r['ari_truth']:.2f}"
        print(f"  {r['kind']:8s} k_true={r['k_true']} {r['separation']:8s} -> {r['method']:11s} k={r['k']} "
              f"{r['structure']:5s} (effect {eff}) by method {r['k_by_method']} ARI to truth {ari} "
              f"winner={r['winner']}; for use: {r['use_method']} k={r['use_k']} ({r['use_basis']}"
              f"{', commonsense split' if r['use_commonsense'] else ''}) [{r['seconds']}s]", flush=True)
    return out


if __name__ == "__main__":
    main()
