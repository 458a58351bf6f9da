"""Stage 3 of a run: the metrics table over all cells, agreement between methods, each method's k
(one rule for all: stability, then silhouette within its bootstrap error), a null reference, a fair
verdict in neutral spaces, and one recommendation (comparison/comparison.json).

The comparison is reused when nothing it depends on changed (`comparison_key`: the cells it reads,
the feature spaces, the parameters, the data, the outcome and the code it runs) and its files are
intact (comparison/done.json records their size and sha256, as a cell's done.json does).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..lib.data import Table, sample_rows
from ..lib.evaluate import agreement, elbow_k, recommend_k
from ..methods import REGISTRY, BuildEnv, Space, get, params_of
from ..methods.base import fit_rows, segments
from ..lib.recommend import outcome_halves, outcome_spread, recommend, rule_equivalent, structure_kind
from ..core.schema import ColumnSpec
from ..lib.evaluate import STOPPING_ALPHA, STOPPING_BATCH, STOPPING_RULE, stopping_looks
from .prepare import COMMON, load_space
from ..core.store import (DONE, METRICS, STABILITY, RecordError, RunLayout, atomic_write_json, atomic_write_parquet, cell_name,
                    file_record, key, read_json, read_json_or_empty, say_damaged, sha256_file, to_json, verify)
from ..lib.verdict import (choose_k, close_calls, fair_verdict, null_reference, recommendation, structure_call,
                           winner_possible)

PACKAGE = Path(__file__).resolve().parent.parent
# the modules compare() runs (besides methods/*.py): its null references refit each method's whole
# pipeline (cell, features, evaluate), its verdict (verdict) and the LLM's numbers experiment (embed)
COMPARE_MODULES = ("__init__.py", "stages/compare.py", "stages/cell.py", "lib/verdict.py", "lib/evaluate.py", "lib/features.py", "lib/explain.py",
                   "lib/personas.py", "stages/prepare.py", "report/notebook.py", "core/schema.py", "core/config.py", "lib/data.py", "core/store.py",
                   "methods/llm/sentence_model.py", "methods/llm/embed.py", "methods/llm/embed_fast.py", "lib/recommend.py")
# parameters that change where or how a run works, never what the comparison computes
NOT_COMPARED = ("data", "run", "results", "site", "render", "workers", "executor", "scheduler", "cache_dir",
                "figure_sample", "publish_assignments", "tracking")


@lru_cache(maxsize=None)
def compare_code_hash() -> str:
    """sha256 of the source compare() runs: a comparison computed by other code is not reused."""
    h = hashlib.sha256()
    files = {PACKAGE / f for f in COMPARE_MODULES} | set((PACKAGE / "methods").rglob("*.py"))
    for f in sorted(files):
        h.update(f.relative_to(PACKAGE).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def comparison_key(layout: RunLayout, ctx: dict, statuses: dict) -> str:
    """What the comparison depends on: each cell's status, key and files (their sha256 as its done.json
    recorded them: no file is hashed again), the feature spaces' keys, the parameters, the data's
    fingerprint, the outcome, and the code. A new k, a failed or recomputed cell, a changed parameter
    or a code change gives another key."""
    cells = []
    for method in ctx["methods"]:
        grid = get(method).grid
        for v in ctx["grid"][method]:
            name = cell_name(method, v, grid)
            st = statuses.get(name, {})
            status = st.get("status", "missing")
            done = read_json_or_empty(layout.cell(method, v, grid) / DONE) if status == "done" else {}
            files = {f: (r or {}).get("sha256") for f, r in sorted((done.get("files") or {}).items())}
            cells.append([name, status, st.get("key"), st.get("error"), files])
    params = {n: v for n, v in ctx["params"].items() if n not in NOT_COMPARED}
    data = ctx["data"]
    outcome = sha256_file(layout.outcome) if layout.outcome.exists() else None
    return key("comparison", __version__, cells, {n: s.get("key") for n, s in sorted(ctx["spaces"].items())}, params,
               data["fingerprint"], data.get("outcome"), outcome, ctx["schema"], ctx.get("inputs"), ctx["grid"],
               ctx["methods"], compare_code_hash())


def compare(layout: RunLayout, ctx: dict, statuses: dict) -> tuple[dict, bool]:
    """The comparison (see `_compare`), reused where its key is unchanged and its files are intact.
    Returns (the comparison, whether it was reused). A damaged or missing file is said so in one line
    and the comparison computed again."""
    ck = comparison_key(layout, ctx, statuses)
    done_path = layout.comparison / DONE
    done = read_json_or_empty(done_path)
    if done.get("key") == ck and done.get("files"):
        bad = verify(layout.comparison, done["files"])
        if bad is None:
            try:
                return layout.read_comparison().dump(), True
            except RecordError:  # the size and hash matched, yet it is not a comparison: computed again below
                pass
        else:
            say_damaged(*bad, "recomputing the comparison")
    done_path.unlink(missing_ok=True)  # from here until it is written again, nothing here is reused
    result = _compare(layout, ctx, statuses)
    atomic_write_json(done_path, {"key": ck, "files": {p.name: file_record(p) for p in (layout.comparison_json,
                                                                                      layout.metrics_table)}})
    return result, False


def _compare(layout: RunLayout, ctx: dict, statuses: dict) -> dict:
    """Metrics table over all cells, agreement between methods, recommended grid value per method."""
    methods = ctx["methods"]
    rows, labels = [], {}
    for method in methods:
        grid = get(method).grid
        for v in ctx["grid"][method]:
            name = cell_name(method, v, grid)
            st = statuses.get(name, {})
            row = {"method": method, "grid": grid, "value": int(v), "k": int(v) if grid == "k" else None,
                   "status": st.get("status", "missing"), "error": st.get("error")}
            if row["status"] == "done" and layout.cell_file(method, v, METRICS, grid).exists():
                m = layout.read_metrics(method, v, grid)
                row.update(k=m["k"], cost=m["cost"], lgbm_accuracy=m["lgbm_accuracy"], fitted_rows=m["fitted_rows"],
                           outliers=m["outliers"], min_size=min(m["sizes"]), max_size=max(m["sizes"]),
                           stability_ari=(m.get("stability") or {}).get("ari_mean"),
                           refits=int(m.get("refits", (m.get("stability") or {}).get("resamples", 0))))
                for space in ("own", "common"):
                    for metric in ("silhouette", "davies_bouldin", "calinski_harabasz"):
                        row[f"{space}_{metric}"] = m[space].get(metric)
                labels[(method, v)] = layout.cell_labels(method, v, grid)
            rows.append(row)
    table = pd.DataFrame(rows)
    stabs = {(r["method"], r["value"]): read_json(f) for r in rows if r["status"] == "done"
             and (f := layout.cell(r["method"], r["value"], r["grid"]) / STABILITY).exists()}
    recommended, choices, confirmed, verdict = settle(layout, ctx, table, stabs)
    if confirmed:  # the table's stability: the numbers the comparison rests on, and their refits
        for i, (m, v) in enumerate(zip(table.method, table.value)):
            if (m, int(v)) in confirmed:
                table.loc[i, "refits"] = confirmed[(m, int(v))]["refits"]
                table.loc[i, "stability_ari"] = stabs[(m, int(v))]["ari_mean"]
    agree = []
    for k in sorted({int(x) for x in table.k.dropna()}):
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                la, lb = _labels_at_k(table, labels, a, k), _labels_at_k(table, labels, b, k)
                if la is not None and lb is not None:
                    agree.append({"k": k, "a": a, "b": b, **agreement(la, lb)})
    chosen = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            va, vb = recommended[a]["value"], recommended[b]["value"]
            if (a, va) in labels and (b, vb) in labels:
                chosen.append({"a": a, "ka": recommended[a]["k"], "b": b, "kb": recommended[b]["k"],
                               **agreement(labels[(a, va)], labels[(b, vb)])})
    outcome = None
    if ctx["data"].get("outcome") and layout.outcome.exists():
        outcome = outcome_separation(pd.read_parquet(layout.outcome)["outcome"], labels, recommended)
    params = ctx["params"]
    nulls, structure = {}, {}
    if int(params.get("null_references", 0)) > 0:
        for method in methods:
            k = recommended[method]["k"]
            if k is not None and get(method).null_reference:
                nulls[method], structure[method] = _memo(layout, ctx, f"null-{method}", [method, k],
                                                         lambda: list(null_check(layout, ctx, method, k)))
    rec = None
    if verdict is not None and choices:
        rec = recommendation(choices, verdict, structure or {m: {} for m in choices})
        if rec.get("method"):
            rec["value"] = recommended[rec["method"]]["value"] if rec["k"] == recommended[rec["method"]]["k"] \
                else _value_of(table, rec["method"], rec["k"])
            rec["display"] = get(rec["method"]).display
        rec = for_use(layout, ctx, table, labels, choices, recommended, verdict, structure, rec, stabs)
        rec["reasons"] = [display_names(r) for r in rec.get("reasons", [])]
        verdict["reasons"] = [display_names(r) for r in verdict.get("reasons", [])]
    extras = {}
    for method in methods:
        v = recommended[method]["value"]
        if v is not None and (method, v) in labels:
            kk = recommended[method]["k"]
            extra = _memo(layout, ctx, f"extra-{method}", [method, kk],
                          lambda: get(method).extra_comparison(layout, ctx, kk))
            if extra is not None:
                extras[method] = extra
    result = {"recommendation": rec, "recommended": recommended, "choices": choices, "agreement": agree, "agreement_chosen": chosen,
              "outcome": outcome, "verdict": verdict, "nulls": nulls, "structure": structure, "extras": extras,
              "refits": refits_summary(ctx, table, stabs, confirmed)}
    atomic_write_parquet(layout.metrics_table, table)
    layout.write_comparison(result)
    return result


def _memo(layout: RunLayout, ctx: dict, name: str, parts: list, compute):
    """A part of the comparison that depends on one method's recommended k, not on the cells (the null
    reference refits on tables without segments, the LLM's numbers experiment), kept in
    comparison/<name>.json under a key of its inputs: adding a k to the grid recomputes the comparison,
    and these parts only where that method's recommended k moved. A missing or unreadable file is
    computed again."""
    method = parts[0]
    params = {n: v for n, v in ctx["params"].items() if n not in NOT_COMPARED + ("k",)}
    mk = key("comparison-part", __version__, name, parts, params, ctx["data"]["fingerprint"], ctx["schema"],
             (ctx.get("inputs") or {}).get(method), (ctx["spaces"].get(method) or {}).get("key"),
             ctx["spaces"]["common"]["key"], compare_code_hash())
    path = layout.comparison_part(name)
    held = read_json_or_empty(path)
    if held.get("key") == mk and "value" in held:
        if held.get("sha256") == _digest(held["value"]):
            return held["value"]
        say_damaged(path, "its content differs from the hash it recorded", "computing it again")
    value = json.loads(to_json(compute()))  # as a reuse reads it: the same bytes either way
    atomic_write_json(path, {"key": mk, "sha256": _digest(value), "value": value})
    return value


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _labels_at_k(table: pd.DataFrame, labels: dict, method: str, k: int):
    """A method's labels with k segments (a method whose k is found: the first grid value that found k)."""
    sub = table[(table.method == method) & (table.status == "done") & (table.k == k)]
    return labels.get((method, int(sub.value.iloc[0]))) if len(sub) else None


def segment_rates(positive: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Per segment: the outcome's rate, its 95% Wilson interval (scipy's binomtest) and its lift over
    the whole table's rate."""
    from scipy.stats import binomtest

    base = float(positive.mean())
    out = []
    for s in np.unique(labels):
        member = labels == s
        n, hits = int(member.sum()), int(positive[member].sum())
        ci = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        rate = hits / n
        out.append({"segment": int(s), "rate": rate, "size": n, "positives": hits,
                    "ci_low": float(ci.low), "ci_high": float(ci.high),
                    "lift": rate / base if base > 0 else None,
                    # the interval excludes the table's rate: the segment differs beyond sampling noise
                    "differs": bool(ci.low > base or ci.high < base)})
    return out


def outcome_separation(outcome: pd.Series, labels: dict, recommended: dict) -> dict:
    """Share of the outcome's positive level per segment, and how much the segments separate it."""
    from sklearn.metrics import normalized_mutual_info_score

    y = outcome.astype(str).to_numpy()
    levels, counts = np.unique(y, return_counts=True)
    positive = "yes" if "yes" in levels else levels[np.argmin(counts)]
    pos = (y == positive).astype(float)
    out = {"positive": str(positive), "population_rate": float(pos.mean()), "methods": {}}
    for method, rec in recommended.items():
        lab = labels.get((method, rec["value"]))
        if lab is None:
            continue
        rates = segment_rates(pos, lab)
        r = np.array([x["rate"] for x in rates])
        out["methods"][method] = {"k": rec["k"], "rates": rates, "spread": float(r.max() - r.min()),
                                  "nmi": float(normalized_mutual_info_score(y, lab))}
    return out


def display_names(text: str) -> str:
    """Method keys in computed reasons -> the names the report uses."""
    for name, m in REGISTRY.items():
        text = re.sub(rf"\b{name}\b", m.display, text)
    return text


def _value_of(table: pd.DataFrame, method: str, k: int) -> int | None:
    sub = table[(table.method == method) & (table.status == "done") & (table.k == k)]
    return int(sub.value.iloc[0]) if len(sub) else None


def settle(layout: RunLayout, ctx: dict, table: pd.DataFrame, stabs: dict) -> tuple[dict, dict, dict, dict | None]:
    """Each method's k (`choose`), after the close calls are confirmed: a cell whose refits stopped early
    (sequential stopping) and whose numbers the recommendation reads near a threshold or a rival
    (verdict.close_calls) is refitted to the full count (`confirm`) and the choice made again, until no
    close call is left, so the recommendation is the one the full count of refits gives. `stabs`
    ({(method, value): stability}) is updated in place. Returns (recommended, choices, confirmed
    {(method, value): {from, refits}}, the fair verdict (`fair`) on the numbers settled)."""
    confirmed = {}
    while True:
        recommended, choices = {}, {}
        for method in ctx["methods"]:
            recommended[method], choices[method] = choose(layout, method, table, ctx, stabs)
        verdict = fair(layout, recommended, table, ctx, stabs)
        # a winner possible (verdict.winner_possible) on what no refit changes: the replicates are read too
        possible = winner_possible(verdict) if len(choices) > 1 else True
        calls = [c for c in close_calls(_call_cells(table, stabs), choices, winner_possible=possible)
                 if c not in confirmed]
        if not calls:
            return recommended, choices, confirmed, verdict
        for method, v in calls:
            held = stabs[(method, v)]
            stabs[(method, v)] = confirm(layout, ctx, method, v, held)
            confirmed[(method, v)] = {"from": int(held["resamples"]), "refits": int(stabs[(method, v)]["resamples"])}


def _call_cells(table: pd.DataFrame, stabs: dict) -> list[dict]:
    """The finished cells as verdict.close_calls reads them."""
    out = []
    for _, row in table[table.status == "done"].iterrows():
        st = stabs.get((row.method, int(row.value)))
        if st is None or row.k is None or pd.isna(row.k):
            continue
        stop = st.get("stopping") or {}
        sil = row.common_silhouette
        out.append({"method": row.method, "value": int(row.value), "k": int(row.k),
                    "stopped_early": bool(stop.get("stopped_early")), "intervals": stop.get("intervals") or {},
                    "jaccards": {int(s): x.get("mean_jaccard") for s, x in st["segments"].items()},
                    "silhouette": None if sil is None or pd.isna(sil) else float(sil),
                    "se": (st.get("replicate_score") or {}).get("sd"),
                    "ari_mean": st.get("ari_mean"), "ari_sd": st.get("ari_sd"), "refits": st.get("resamples"),
                    "replicates": st.get("common_silhouette")})
    return out


def confirm(layout: RunLayout, ctx: dict, method: str, value: int, held: dict) -> dict:
    """A cell's stability taken on from where its sequential refits stopped to the full count: its
    first refits as they were, the rest refitted (evaluate.bootstrap_stability's resume), the fixed
    run's result. Kept in comparison/confirm-<method>-<value>.json under a key of the cell's
    stability (see `_memo`)."""
    def compute():
        from .cell import stability as cell_stability  # scikit-learn and LightGBM (explain): only where a cell is confirmed

        params = params_of(ctx)
        m = get(method)
        space = load_space(layout, method, mmap=True)
        common = load_space(layout, COMMON, mmap=True)["X"]
        labels = layout.cell_labels(method, value, m.grid)
        return cell_stability(m, value, space, params, int(params.seed), labels, common, ctx.get("scale") or {},
                              resume=held)

    return _memo(layout, ctx, f"confirm-{cell_name(method, value, get(method).grid).replace('/', '-')}",
                 [method, int(value), _digest(held)], compute)


def refits_summary(ctx: dict, table: pd.DataFrame, stabs: dict, confirmed: dict) -> dict:
    """How many clusterboot refits the comparison's numbers rest on, and the stopping rule, for the report."""
    params = ctx["params"]
    most = int(params.get("stability_resamples", 0))
    stopping = params.get("stability_stopping", "fixed")
    looks = stopping_looks(most)
    done = [(m, int(v)) for m, v, s in zip(table.method, table.value, table.status) if s == "done" and (m, int(v)) in stabs]
    used = sum(int(stabs[c]["resamples"]) for c in done)
    early = sum(1 for c in done if (stabs[c].get("stopping") or {}).get("stopped_early"))
    return {"stopping": stopping, "max": most, "cells": len(done), "used": used, "of": most * len(done),
            "stopped_early": early, "confirmed": len(confirmed),
            "confirmed_cells": [{"method": m, "value": v, **confirmed[(m, v)]} for m, v in sorted(confirmed)],
            "rule": STOPPING_RULE.format(batch=STOPPING_BATCH, max=most, looks_text=", ".join(str(x) for x in looks),
                                         alpha=STOPPING_ALPHA, looks=len(looks)) if stopping == "sequential" and looks else None}


def choose(layout: RunLayout, method: str, table: pd.DataFrame, ctx: dict, stabs: dict) -> tuple[dict, dict]:
    """A method's k by the same rule as every other's (verdict.choose_k): every segment valid under
    clusterboot, silhouette in the common space within one bootstrap standard error of the best,
    then the more stable, then the smaller k. A method whose grid is not k is judged on the k it
    found (the most stable grid value where several found the same k)."""
    m = get(method)
    sub = table[(table.method == method) & (table.status == "done")]
    per_k, value_of = {}, {}
    for _, row in sub.iterrows():
        st = stabs.get((method, int(row.value)))
        if st is None or row.common_silhouette is None or pd.isna(row.common_silhouette):
            continue
        k = int(row.k)
        if k in per_k and per_k[k]["ari_mean"] >= st["ari_mean"]:
            continue
        per_k[k] = {"segments": st["segments"], "ari_mean": st["ari_mean"], "ari_sd": st["ari_sd"],
                    "silhouette": float(row.common_silhouette), "replicate_score": st.get("replicate_score"),
                    "refits": int(st["resamples"])}
        value_of[k] = int(row.value)
    rec = {"grid": m.grid, "metric": "common_silhouette",
           "elbow_k": elbow_k({int(v): float(c) for v, c in zip(sub.value, sub.cost)}) if len(sub) > 2 and m.grid == "k"
           else None}
    if per_k:
        grid = [int(v) for v in ctx["grid"][method]] if m.grid == "k" else sorted(per_k)
        ch = choose_k(per_k, grid=grid)
        k = ch["k"] if ch["k"] is not None else ch.get("fallback_k")
        ch["reasons"] = [display_names(r) for r in ch.get("reasons", [])]
        rec.update(k=k, value=value_of.get(k), rule=ch["rule"], reason="; ".join(ch["reasons"]),
                   qualified=ch["k"] is not None, edge=bool(ch.get("edge")), edge_reason=ch.get("edge_reason"))
        return rec, ch
    # no stability measured (stability_resamples: 0): the highest silhouette, smaller k within 0.01
    old = recommend_k({int(v): (None if pd.isna(s_) else float(s_)) for v, s_ in zip(sub.value, sub.common_silhouette)})
    v = old["k"] if old["k"] is not None else (int(sub.value.min()) if len(sub) else None)
    k = int(sub[sub.value == v].k.iloc[0]) if v is not None and len(sub) else None
    rec.update(k=k, value=v, rule=old["rule"] + " (no stability was measured: stability_resamples is 0)",
               reason=old.get("reason", ""), qualified=False, edge=False, edge_reason=None)
    return rec, {"k": k, "fallback_k": k, "reasons": [old.get("reason", "")], "edge": False, "table": []}


def _table_of(layout: RunLayout, ctx: dict):
    frame = pd.read_parquet(layout.table)
    schema = [ColumnSpec.model_validate(s) for s in ctx["schema"]]
    return Table(frame=frame, schema=schema, path=ctx["data"]["path"], file_sha256=ctx["data"]["file_sha256"])


def null_check(layout: RunLayout, ctx: dict, method: str, k: int) -> tuple[dict, dict]:
    """The method's whole pipeline (encoding, outliers, fit) rerun on tables without segments, at its k:
    column-shuffled copies (no association) and principal-axes uniform references (correlations kept),
    each on a seeded sample of `null_sample` rows, against the same pipeline on the real sample."""
    from dataclasses import replace

    from sklearn.metrics import silhouette_score

    from ..lib.features import ecod_outliers, fit_common  # scikit-learn: only where the null references are fitted

    params = params_of(ctx)
    m = get(method)
    table = _table_of(layout, ctx)
    inputs = (ctx.get("inputs") or {}).get(method) or {}
    mode, contamination = m.outlier_params(params)

    n, seed, rows = int(params.null_references), int(params.seed), int(params.null_sample)
    observed_rows = sample_rows(len(table.frame), rows, seed)  # the sample null_reference draws
    observed = table.frame.iloc[observed_rows].reset_index(drop=True) if m.rowwise_space else None

    def fit_score(frame: pd.DataFrame, kk: int, seed: int) -> dict:
        t = replace(table, frame=frame.reset_index(drop=True))
        if observed is not None and frame.equals(observed):  # the run's own rows: its space has them
            X = np.load(layout.space_matrix(method), mmap_mode="r")[observed_rows]
            sp = Space({"X": X}, None, {}, outlier_X=X)
        else:
            sp = m.build_space(t, params, BuildEnv(inputs=inputs, cache_dir=params.cache_dir, progress=False,
                                                   seed=seed, k=[kk]))
        space = {"X": sp.arrays["X"], "info": sp.info}
        if mode == "ecod" and sp.outlier_X is not None:
            space["outliers"] = ecod_outliers(sp.outlier_X, contamination, None, seed)[0]
        model = fit_rows(m, m.estimator(kk, params, seed, {}), space, np.arange(len(frame)))
        labels = segments(m, model, space["X"])[0]
        common = fit_common(t)[0]
        sil = float(silhouette_score(common, labels)) if len(np.unique(labels)) > 1 else None
        return {"silhouette": sil, "ari": None}

    shuffled = null_reference(fit_score, table.frame, [k], "shuffle", n, seed, rows)
    pca = null_reference(fit_score, table.frame, [k], "pca", n, seed, rows, table.numeric, table.categorical,
                         observed=False)
    entry = shuffled["ks"][int(k)]
    call = structure_call(entry["observed"], entry, pca["ks"][int(k)])
    call["reasons"] = [display_names(r) for r in call.get("reasons", [])]
    return {"k": int(k), "rows": shuffled["rows"], "references": n, "observed": entry["observed"],
            "shuffled": entry["silhouette_summary"], "pca": pca["ks"][int(k)]["silhouette_summary"],
            "shuffled_values": entry["silhouette"], "pca_values": pca["ks"][int(k)]["silhouette"]}, call


def fair(layout: RunLayout, recommended: dict, table: pd.DataFrame, ctx: dict, stabs: dict) -> dict | None:
    """verdict.fair_verdict over the neutral spaces (common, Gower) at each method's k and at the
    other methods' k, and on stability."""
    scores = {}
    done = table[table.status == "done"]
    for method, rec in recommended.items():
        row = done[(done.method == method) & (done.value == rec.get("value"))]
        if rec.get("value") is None or not len(row):
            continue
        m = get(method)
        metrics = layout.read_metrics(method, rec["value"], m.grid)
        st = stabs.get((method, int(rec["value"]))) or {}
        scores[method] = {"k": rec["k"], "silhouette": {"common": metrics["common"].get("silhouette"),
                                                       "gower": (metrics.get("gower") or {}).get("silhouette")},
                          "ari_mean": st.get("ari_mean"), "ari_sd": st.get("ari_sd"),
                          "replicates": {"common": st.get("common_silhouette")} if st.get("common_silhouette") else {},
                          "equal_k": {}}
        for _, r in done[done.method == method].iterrows():
            mm = layout.read_metrics(method, int(r.value), m.grid)
            scores[method]["equal_k"][int(r.k)] = {"common": mm["common"].get("silhouette"),
                                                   "gower": (mm.get("gower") or {}).get("silhouette")}
    if not scores:
        return None
    order = [m for m in REGISTRY if m in scores]  # the registry lists the simpler methods first
    return fair_verdict(scores, simplicity=order)


def candidate_cells(layout: RunLayout, ctx: dict, table: pd.DataFrame, labels: dict, stabs: dict) -> list[dict]:
    """Every finished (method, k) as verdict.recommend reads it: sizes, each segment's mean bootstrap
    Jaccard, its rule equivalent (the best rule of at most two columns), its outcome separation (chosen on
    one seeded half of the customers, reported on the other) and its distinctness (common-space
    silhouette and bootstrap SE)."""
    seed = int(ctx["params"].get("seed", 0))
    frame = pd.read_parquet(layout.table)
    numeric = [c for c in ctx["used"]["numeric"] if c in frame.columns]
    categorical = [c for c in ctx["used"]["categorical"] if c in frame.columns]
    pos = select = None
    if ctx["data"].get("outcome") and layout.outcome.exists():
        y = pd.read_parquet(layout.outcome)["outcome"].astype(str).to_numpy()
        levels, counts = np.unique(y, return_counts=True)
        positive = "yes" if "yes" in levels else levels[np.argmin(counts)]
        pos = (y == positive).astype(float)
        select = outcome_halves(len(y), seed)
    cells = []
    for _, row in table[table.status == "done"].iterrows():
        method, v = row.method, int(row.value)
        lab = labels.get((method, v))
        if lab is None or row.k is None or pd.isna(row.k):
            continue
        m = get(method)
        st = stabs.get((method, v)) or {}
        jac = {int(s): (x.get("mean_jaccard") if isinstance(x, dict) else x) for s, x in (st.get("segments") or {}).items()}
        segs, sizes = np.unique(lab, return_counts=True)
        rs = st.get("replicate_score") or {}
        sil = row.common_silhouette
        cells.append({
            "method": method, "k": int(row.k), "value": v, "simplicity": getattr(m, "simplicity", 99), "n": int(len(lab)),
            "sizes": [int(x) for x in sizes], "jaccards": jac,
            "rule": rule_equivalent(frame, numeric, categorical, lab, seed=seed),
            "outcome": outcome_spread(pos, lab, select, seed) if pos is not None and len(pos) == len(lab) else None,
            "distinct": {"value": None if sil is None or pd.isna(sil) else float(sil), "se": rs.get("sd")}})
    return cells


def natural_pick(recommended: dict, choices: dict, verdict: dict, structure: dict) -> list[dict] | None:
    """Where some method's segments are natural (a "clear" structure call at its k, every segment valid):
    those methods at their k, best first: the verdict's winner if it is one of them, then by the mean
    silhouette over the neutral spaces at its k; ties to the simpler method (the registry lists the
    simpler first)."""
    natural = [m for m, st in structure.items() if (st or {}).get("structure") == "clear"
               and (choices.get(m) or {}).get("k") is not None]
    if not natural:
        return None
    w = verdict.get("winner")
    rows = [r for r in verdict.get("table") or [] if r["measure"] == "silhouette" and r["method"] in natural
            and r["k"] == recommended[r["method"]]["k"] and r["value"] is not None]
    mean = {m: float(np.mean([r["value"] for r in rows if r["method"] == m])) if any(r["method"] == m for r in rows)
            else -np.inf for m in natural}
    order = list(REGISTRY)
    ranked = sorted(natural, key=lambda m: (m != w, -round(mean[m], 6), order.index(m) if m in order else len(order)))
    return [{"method": m, "k": recommended[m]["k"]} for m in ranked]


def for_use(layout: RunLayout, ctx: dict, table: pd.DataFrame, labels: dict, choices: dict, recommended: dict,
            verdict: dict, structure: dict, rec: dict, stabs: dict) -> dict:
    """The recommendation for use (verdict.recommend) in place of the stability one, where a candidate
    passes the bars; else the stability recommendation stays, labelled as it was. Adds options,
    rule_equivalent, basis, structure_kind (natural | reproducible | constructive) and the rule."""
    # the verdict's own last step (the most stable, then the simplest) no longer decides: say what it is
    verdict["reasons"] = [r.replace("recommended by stability, then simplicity:",
                                    "the most stable, then simplest (shown for reference; stability is a bar here, "
                                    "not what the recommendation ranks by):")
                          for r in verdict.get("reasons", [])]
    cells = candidate_cells(layout, ctx, table, labels, stabs)
    share = float(ctx["params"].get("min_segment_share", 0.05))
    new = recommend(cells, natural_pick(recommended, choices, verdict, structure), min_segment_share=share)
    for o in new["options"]:
        o["display"] = get(o["method"]).display
    new["why"] = [display_names(r) for r in new.get("why") or []]
    if new["why"]:
        new["why"][0] = new["why"][0][:1].upper() + new["why"][0][1:]
    new["excluded"] = {f"{get(key.split('/')[0]).display}, k = {key.split('/')[1]}": why
                       for key, why in new["excluded"].items()}
    keep = {n: new.get(n) for n in ("basis", "candidates", "excluded", "options", "rule", "commonsense",
                                    "min_segment_share", "why", "outcome", "commonsense_ari", "only_commonsense")}
    if new["method"] is None and not rec.get("method"):
        return {**rec, **keep, "rule_equivalent": None}
    if new["method"] is None:  # nothing passes the bars: the most stable partition, labelled as it was
        cell = next((c for c in cells if c["method"] == rec["method"] and c["k"] == rec["k"]), None)
        rec.update(keep, rule_equivalent=({"rule": cell["rule"]["rule"], "agreement": cell["rule"]["agreement"]}
                                          if cell and cell.get("rule") else None),
                   structure_kind="constructive", structure_k=recommended[rec["method"]]["k"],
                   reasons=new["reasons"] + rec.get("reasons", []))
        return rec
    method, k = new["method"], new["k"]
    st = structure.get(method) or {}
    checked_k = recommended[method]["k"] if st else None
    call = st.get("structure") if checked_k == k else None
    kind = structure_kind(call, True)
    label = "commonsense split" if new["commonsense"] else "recommended"
    edge = bool((choices.get(method) or {}).get("edge")) and checked_k == k
    return {**keep, "method": method, "k": k, "value": new["value"], "display": get(method).display,
            "structure": st.get("structure"), "structure_k": checked_k, "structure_checked": checked_k == k,
            "structure_kind": kind, "label": label, "edge": edge,
            "edge_reason": (choices.get(method) or {}).get("edge_reason") if edge else None,
            "rule_equivalent": new["rule_equivalent"],
            "by_stability": {"method": rec.get("method"), "k": rec.get("k"), "label": rec.get("label")},
            "reasons": new["reasons"] + rec.get("reasons", [])[1:]}
