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
from .explain import surrogate, surrogate_dask
from .personas import personas, profile
from .pipeline import load_space
from .store import RunLayout, atomic_write_json, atomic_write_parquet, read_json


def _threads() -> int:
    return int(os.environ.get("SEGREPORT_THREADS", os.cpu_count() or 1))


def make_segmenter(method: str, k: int, mp: dict, seed: int, n_init: int | None = None, scale: dict | None = None):
    """The method's estimator, unfitted, with the run's parameters (and its scale path: see pipeline.scale_plan)."""
    from .methods.kmeans import KMeansSegmenter

    n_init = n_init or mp["n_init"]
    scale = scale or {}
    if method in ("kmeans", "llm"):
        return KMeansSegmenter(n_clusters=k, n_init=n_init, max_iter=mp["max_iter"], random_state=seed,
                               algorithm=scale.get("kmeans") or "lloyd", batch_size=scale.get("batch_size") or 8192)
    if method == "kprototypes":
        from .methods.kprototypes import KPrototypesSegmenter

        rs = mp.get("random_state")
        return KPrototypesSegmenter(n_clusters=k, gamma=mp["gamma"], init=mp["init"], n_init=n_init,
                                    max_iter=mp["max_iter"], engine=mp["engine"],
                                    random_state=seed if rs is None else rs)
    raise ValueError(f"unknown method {method!r}")


def fit_rows(method: str, model, space: dict, rows: np.ndarray):
    """Fit `model` on the given rows of the space (outliers among them left out)."""
    outliers = space.get("outliers")
    keep = rows if outliers is None else rows[~outliers[rows]]
    if len(np.unique(keep)) < model.n_clusters:
        keep = rows
    if method == "kprototypes":
        return model.fit(space["X_num"][keep], space["X_cat"][keep])
    return model.fit(space["X"][keep])


def predict_rows(method: str, model, space: dict, rows: np.ndarray) -> np.ndarray:
    if method == "kprototypes":
        return model.predict(space["X_num"][rows], space["X_cat"][rows]).astype(np.int64)
    return model.predict(space["X"][rows])


def fit_method(method: str, k: int, space: dict, params: dict, seed: int, scale: dict | None = None):
    """The fitted segmenter, its labels, cost and own-space matrix for metrics."""
    mp = params[method]
    n = len(space["X_num"] if method == "kprototypes" else space["X"])
    model = fit_rows(method, make_segmenter(method, k, mp, seed, scale=scale), space, np.arange(n))
    if method == "kprototypes":
        dist = model.transform(space["X_num"], space["X_cat"])
        cost = float(model.cost_)
        own = None
    else:
        dist = model.transform(space["X"])
        cost = float(model.inertia_)
        own = space["X"]
    labels = dist.argmin(axis=1).astype(np.int64)
    return model, labels, cost, own, dist[np.arange(n), labels]


def stability(method: str, k: int, space: dict, params: dict, seed: int, labels: np.ndarray,
              common: np.ndarray, scale: dict | None = None) -> dict | None:
    """Bootstrap refits (fewer inits, same algorithm) on a seeded subsample; see evaluate.bootstrap_stability."""
    from sklearn.metrics import silhouette_score

    from .evaluate import bootstrap_stability
    from .features import sample_rows

    B = int(params["stability_resamples"])
    if B == 0:
        return None
    mp = params[method]

    def refit(rows, base):
        model = make_segmenter(method, k, mp, seed, n_init=min(3, mp["n_init"]), scale=scale)
        return predict_rows(method, fit_rows(method, model, space, rows), space, base)

    score_rows = None

    def score(base, pred):
        nonlocal score_rows
        if score_rows is None:
            score_rows = sample_rows(len(base), 2000, seed)
        lab = pred[score_rows]
        return float(silhouette_score(common[base[score_rows]], lab)) if len(np.unique(lab)) > 1 else None

    return bootstrap_stability(refit, labels, len(labels), B, seed, int(params["stability_sample"]), score)


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
    scale = ctx.get("scale") or {}
    model, labels, cost, X_own, dist = fit_method(method, k, space, params, seed, scale)
    outliers = space.get("outliers")
    t_fit = time.perf_counter() - t0
    t_stab = time.perf_counter()
    stab = stability(method, k, space, params, seed, labels, common, scale)
    t_stab = time.perf_counter() - t_stab
    labels_df = pd.DataFrame({"row": np.arange(len(labels), dtype=np.int64), "segment": labels.astype(np.int64),
                              "outlier": outliers.astype(bool) if outliers is not None else np.zeros(len(labels), bool),
                              "distance": dist.astype(np.float64)})
    sil_n = int(params["silhouette_sample"])
    if method == "kprototypes":
        own = {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None,
               "note": "K-Prototypes' space has no Euclidean geometry; see the common space"}
    else:
        # Euclidean in every own space: on normalised embeddings it is what K-means minimises
        own = validity(X_own, labels, sil_n, seed)
    common_m = validity(common, labels, sil_n, seed)
    own_fitted = None
    if outliers is not None and X_own is not None and outliers.any():
        # the seed article scored K-means on the rows kept after ECOD: reported beside the full-data numbers
        keep = ~outliers
        own_fitted = validity(X_own[keep], labels[keep], sil_n, seed)
    t_metrics = time.perf_counter() - t0 - t_fit - t_stab
    scheduler = os.environ.get("SEGREPORT_DASK_SCHEDULER")
    if scale.get("lightgbm") == "dask" and scheduler:
        ex = surrogate_dask(frame, labels, ctx["used"]["categorical"], scheduler, seed=seed,
                            holdout=int(scale["holdout"]), rounds=int(scale["lightgbm_rounds"]),
                            shap_sample=int(params["shap_sample"]), threads=_threads())
    else:
        ex = surrogate(frame, labels, ctx["used"]["categorical"], seed=seed, folds=int(params["lgbm_folds"]),
                       max_rows=int(params["explain_rows"]),
                       shap_sample=int(params["shap_sample"]), threads=_threads())
    t_explain = time.perf_counter() - t0 - t_fit - t_stab - t_metrics
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
        "own": own, "common": common_m, "own_fitted_rows": own_fitted,
        "stability": {k_: v for k_, v in stab.items() if k_ not in ("ari", "common_silhouette")} if stab else None,
        "lgbm_accuracy": ex["accuracy"], "lgbm_folds": ex["folds"], "lgbm_cv_rows": ex["cv_rows"],
        "lgbm_engine": ex["engine"], "lgbm_validation": ex["validation"], "lgbm_holdout_rows": ex.get("holdout_rows"),
        "shap_rows": ex["shap_rows"],
        "algorithm": "K-Prototypes" if method == "kprototypes"
        else "MiniBatchKMeans" if scale.get("kmeans") == "minibatch" else "KMeans (Lloyd)",
    }
    if method == "kprototypes":
        metrics["gamma"] = float(model.gamma_)
        metrics["engine"] = params["kprototypes"]["engine"]
    shap_json = {"mean_abs_shap": ex["mean_abs_shap"], "overall": ex["mean_abs_shap_overall"],
                 "rows": ex["shap_rows"]}
    for card in cards:
        seg = stab["segments"].get(card["segment"]) if stab else None
        card["stability"] = seg["mean_jaccard"] if seg else None
        card["unstable"] = bool(seg and seg["dissolved"])
    atomic_write_parquet(out / "labels.parquet", labels_df)
    atomic_write_parquet(out / "shap_sample.parquet", ex["shap_sample"])
    atomic_write_json(out / "profile.json", prof)
    atomic_write_json(out / "personas.json", cards)
    atomic_write_json(out / "shap.json", shap_json)
    if stab:
        atomic_write_json(out / "stability.json", stab)
    tmp = out / ".model.joblib.tmp"
    joblib.dump({"method": method, "k": k, "segmenter": model, "explainer_model": ex["model"]}, tmp)
    os.replace(tmp, out / "model.joblib")
    # timings are kept out of metrics.json so that identical reruns give identical bytes
    atomic_write_json(out / "timings.json", {"fit": round(t_fit, 3), "metrics": round(t_metrics, 3),
                                            "explain": round(t_explain, 3), "stability": round(t_stab, 3),
                                            "total": round(time.perf_counter() - t0, 3)})
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
