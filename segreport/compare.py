"""Stage 3 of a run: the metrics table over all cells, agreement between methods, the recommended
segmentation of each method, and the ranking on common ground (comparison/comparison.json)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .methods import get
from .store import STABILITY, RunLayout, atomic_write_json, atomic_write_parquet, cell_name, read_json


def compare(layout: RunLayout, ctx: dict, statuses: dict) -> dict:
    """Metrics table over all cells, agreement between methods, recommended grid value per method."""
    from .evaluate import agreement, elbow_k, recommend_k

    methods = ctx["methods"]
    rows, labels = [], {}
    for method in methods:
        grid = get(method).grid
        for v in ctx["grid"][method]:
            name = cell_name(method, v, grid)
            st = statuses.get(name, {})
            row = {"method": method, "grid": grid, "value": int(v), "k": int(v) if grid == "k" else None,
                   "status": st.get("status", "missing"), "error": st.get("error")}
            mfile = layout.cell(method, v, grid) / "metrics.json"
            if row["status"] == "done" and mfile.exists():
                m = read_json(mfile)
                row.update(k=m["k"], cost=m["cost"], lgbm_accuracy=m["lgbm_accuracy"], fitted_rows=m["fitted_rows"],
                           outliers=m["outliers"], min_size=min(m["sizes"]), max_size=max(m["sizes"]),
                           stability_ari=(m.get("stability") or {}).get("ari_mean"))
                for space in ("own", "common"):
                    for metric in ("silhouette", "davies_bouldin", "calinski_harabasz"):
                        row[f"{space}_{metric}"] = m[space].get(metric)
                labels[(method, v)] = layout.cell_labels(method, v, grid)
            rows.append(row)
    table = pd.DataFrame(rows)
    recommended = {}
    for method in methods:
        m = get(method)
        sub = table[(table.method == method) & (table.status == "done")]
        # own-space silhouette where the method has a Euclidean space of its own and k is given, else the
        # common space's (a density method's own map rewards many small segments)
        col = "own_silhouette" if m.euclidean and m.grid == "k" else "common_silhouette"
        rec = recommend_k({int(v): (None if pd.isna(s) else float(s)) for v, s in zip(sub.value, sub[col])})
        rec["metric"] = col
        rec["value"] = rec.pop("k")
        rec["elbow_k"] = elbow_k({int(v): float(c) for v, c in zip(sub.value, sub.cost)}) \
            if len(sub) and m.grid == "k" else None
        if rec["value"] is None and len(sub):
            rec["value"] = int(sub.value.min())
        rec["k"] = (int(sub[sub.value == rec["value"]].k.iloc[0]) if rec["value"] is not None and len(sub) else None)
        rec["grid"] = m.grid
        recommended[method] = rec
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
    verdict = rank_methods(layout, recommended, table)
    extras = {}
    for method in methods:
        v = recommended[method]["value"]
        if v is not None and (method, v) in labels:
            extra = get(method).extra_comparison(layout, ctx, recommended[method]["k"])
            if extra is not None:
                extras[method] = extra
    result = {"recommended": recommended, "agreement": agree, "agreement_chosen": chosen, "outcome": outcome,
              "verdict": verdict, "extras": extras}
    atomic_write_parquet(layout.metrics_table, table)
    atomic_write_json(layout.comparison_json, result)
    return result


def _labels_at_k(table: pd.DataFrame, labels: dict, method: str, k: int):
    """A method's labels with k segments (a method whose k is found: the first grid value that found k)."""
    sub = table[(table.method == method) & (table.status == "done") & (table.k == k)]
    return labels.get((method, int(sub.value.iloc[0]))) if len(sub) else None


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
        rates = [{"segment": int(s), "rate": float(pos[lab == s].mean()), "size": int((lab == s).sum())}
                 for s in np.unique(lab)]
        r = np.array([x["rate"] for x in rates])
        out["methods"][method] = {"k": rec["k"], "rates": rates, "spread": float(r.max() - r.min()),
                                  "nmi": float(normalized_mutual_info_score(y, lab))}
    return out


def rank_methods(layout: RunLayout, recommended: dict, table: pd.DataFrame) -> dict | None:
    """Which method segments best on common ground, and how sure: paired bootstrap replicates.

    Each method's segments at its recommended k are scored by silhouette in the common space; the
    bootstrap refits (same resampled rows for every method, same seed) give one score per replicate,
    so "A beats B in 19 of 20 resamples" is a direct measure of how sure the ranking is.
    """
    scores, stab = {}, {}
    for method, rec in recommended.items():
        row = table[(table.method == method) & (table.value == rec["value"])]
        if not len(row) or row.iloc[0]["status"] != "done":
            continue
        f = layout.cell(method, rec["value"], rec["grid"]) / STABILITY
        scores[method] = {"k": rec["k"], "common_silhouette": float(row.iloc[0]["common_silhouette"])}
        if f.exists():
            st = read_json(f)
            reps = [x for x in st.get("common_silhouette", []) if x is not None]
            stab[method] = reps
            scores[method].update(ari_mean=st["ari_mean"], ari_sd=st["ari_sd"],
                                  replicate_silhouette_mean=float(np.mean(reps)) if reps else None,
                                  replicate_silhouette_sd=float(np.std(reps)) if reps else None,
                                  dissolved=sum(1 for v in st["segments"].values() if v["dissolved"]))
    if not scores:
        return None
    best = max(scores, key=lambda m: scores[m]["common_silhouette"])
    wins = {}
    for other in scores:
        if other == best or not stab.get(best) or not stab.get(other):
            continue
        a, b = stab[best], stab[other]
        n = min(len(a), len(b))
        wins[other] = {"wins": int(sum(1 for i in range(n) if a[i] > b[i])), "of": n}
    most_stable = max((m for m in scores if "ari_mean" in scores[m]), key=lambda m: scores[m]["ari_mean"], default=None)
    return {"best": best, "scores": scores, "wins": wins, "most_stable": most_stable}
