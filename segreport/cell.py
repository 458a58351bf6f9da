"""One grid cell: fit one method at one k on its feature space and write its results.

Called by the thin notebook analysis/<method>.ipynb (which papermill executes),
and usable directly. Writes, in results/<run>/cells/<method>/k<k>/:
labels.parquet, metrics.json, profile.json, personas.json, shap.json,
shap_sample.parquet and model.joblib (what `assign` needs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from .evaluate import validity
from .explain import surrogate
from .personas import personas, profile
from .pipeline import load_space
from .store import RunLayout, atomic_write_json, atomic_write_parquet, read_json


def _threads() -> int:
    return int(os.environ.get("SEGREPORT_THREADS", os.cpu_count() or 1))


def fit_method(method: str, k: int, space: dict, params: dict, seed: int):
    """The fitted segmenter, its labels, cost and own-space matrix for metrics."""
    from .methods.kmeans import KMeansSegmenter

    mp = params[method]
    outliers = space.get("outliers")
    if method in ("kmeans", "llm"):
        X = space["X"]
        model = KMeansSegmenter(n_clusters=k, n_init=mp["n_init"], max_iter=mp["max_iter"],
                                random_state=seed).fit(X, exclude=outliers)
        return model, model.labels_, model.inertia_, X, model.distance_
    if method == "kprototypes":
        from .methods.kprototypes import KPrototypesSegmenter

        xn, xc = space["X_num"], space["X_cat"]
        fit_rows = np.ones(len(xn), bool) if outliers is None else ~outliers
        model = KPrototypesSegmenter(n_clusters=k, gamma=mp["gamma"], init=mp["init"], n_init=mp["n_init"],
                                     max_iter=mp["max_iter"], engine=mp["engine"], random_state=seed)
        model.fit(xn[fit_rows], xc[fit_rows])
        dist = model.transform(xn, xc)
        labels = dist.argmin(axis=1).astype(np.int64)
        return model, labels, float(model.cost_), None, dist[np.arange(len(labels)), labels]
    raise ValueError(f"unknown method {method!r}")


def run_cell(run_dir: str | Path, method: str, k: int) -> dict:
    """Fit, score, profile and explain one (method, k); returns the metrics dict."""
    t0 = time.perf_counter()
    layout = RunLayout(run_dir)
    ctx = read_json(layout.context)
    params = ctx["params"]
    seed = int(params["seed"])
    out = layout.cell(method, k)
    frame = pd.read_parquet(layout.table)
    space = load_space(layout, method)
    common = load_space(layout, "common")["X"]
    model, labels, cost, X_own, dist = fit_method(method, k, space, params, seed)
    outliers = space.get("outliers")
    labels_df = pd.DataFrame({"row": np.arange(len(labels), dtype=np.int64), "segment": labels.astype(np.int64),
                              "outlier": outliers.astype(bool) if outliers is not None else np.zeros(len(labels), bool),
                              "distance": dist.astype(np.float64)})
    t_fit = time.perf_counter() - t0
    sil_n = int(params["silhouette_sample"])
    if method == "kprototypes":
        own = {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None,
               "note": "K-Prototypes' space has no Euclidean geometry; see the common space"}
    else:
        own = validity(X_own, labels, sil_n, seed, metric="cosine" if method == "llm" else "euclidean")
    common_m = validity(common, labels, sil_n, seed)
    t_metrics = time.perf_counter() - t0 - t_fit
    ex = surrogate(frame, labels, ctx["used"]["categorical"], seed=seed, folds=int(params["lgbm_folds"]),
                   shap_sample=int(params["shap_sample"]), threads=_threads())
    t_explain = time.perf_counter() - t0 - t_fit - t_metrics
    prof = profile(frame, labels, ctx["used"]["numeric"], ctx["used"]["categorical"],
                   int(params["min_segment_size"]))
    cards = personas(prof, {str(s): v for s, v in ex["mean_abs_shap"].items()}, ctx["labels"], ctx["units"],
                     set(ctx["used"]["binary"]))
    metrics = {
        "method": method, "k": k, "seed": seed, "rows": int(len(labels)),
        "fitted_rows": int(len(labels) - (outliers.sum() if outliers is not None else 0)),
        "outliers": int(outliers.sum()) if outliers is not None else 0,
        "cost": cost, "cost_name": "cost" if method == "kprototypes" else "inertia",
        "sizes": np.bincount(labels, minlength=k).tolist(),
        "own": own, "common": common_m,
        "lgbm_accuracy": ex["accuracy"], "lgbm_folds": ex["folds"], "lgbm_cv_rows": ex["cv_rows"],
        "shap_rows": ex["shap_rows"],
    }
    if method == "kprototypes":
        metrics["gamma"] = float(model.gamma_)
        metrics["engine"] = params["kprototypes"]["engine"]
    shap_json = {"mean_abs_shap": ex["mean_abs_shap"], "overall": ex["mean_abs_shap_overall"],
                 "rows": ex["shap_rows"]}
    atomic_write_parquet(out / "labels.parquet", labels_df)
    atomic_write_parquet(out / "shap_sample.parquet", ex["shap_sample"])
    atomic_write_json(out / "profile.json", prof)
    atomic_write_json(out / "personas.json", cards)
    atomic_write_json(out / "shap.json", shap_json)
    tmp = out / ".model.joblib.tmp"
    joblib.dump({"method": method, "k": k, "segmenter": model, "explainer_model": ex["model"]}, tmp)
    os.replace(tmp, out / "model.joblib")
    # timings are kept out of metrics.json so that identical reruns give identical bytes
    atomic_write_json(out / "timings.json", {"fit": round(t_fit, 3), "metrics": round(t_metrics, 3),
                                            "explain": round(t_explain, 3),
                                            "total": round(time.perf_counter() - t0, 3)})
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
