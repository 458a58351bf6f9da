"""One grid cell: fit one method at one grid value on its feature space and write its results.

Called by the thin notebook analysis/segment.ipynb (which papermill executes per cell), and
usable directly. Writes, in results/<run>/cells/<method>/<k or grid value>/, the
artifacts named in store (labels, metrics, profile, personas, SHAP, stability, the
fitted model that `assign` needs). Only the method interface is used: no method name
is tested here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..lib.data import sample_rows
from ..lib.evaluate import FixedRowsSilhouette, bootstrap_stability, ecod_refit, validity, whole_method_refit
from ..lib.explain import rule_tree, shap_direction, surrogate, surrogate_dask
from ..methods import get, params_of
from ..methods.base import fit_rows, segments
from ..lib.personas import personas, profile
from .prepare import COMMON, load_space
from ..core.store import LABELS, MODEL, PERSONAS, PROFILE, RULES, SHAP, SHAP_SAMPLE, STABILITY, TIMINGS, RunLayout
from ..lib.verdict import gower_silhouette


class CellError(Exception):
    """A cell that cannot produce a segmentation (e.g. a density method finding one segment)."""


def _threads() -> int:
    return int(os.environ.get("SEGREPORT_THREADS", os.cpu_count() or 1))


def fit_method(method, value: int, space: dict, params, seed: int, scale: dict | None = None):
    """The fitted estimator, every row's segment and distance, and the rows it marks as outliers."""
    n = len(space["X"])
    model = fit_rows(method, method.estimator(value, params, seed, scale or {}), space, np.arange(n))
    labels, dist = segments(method, model, space["X"])
    found = method.found_outliers(model)
    outliers = found if found is not None else space.get("outliers")
    if len(np.unique(labels)) < 2:
        raise CellError(f"{method.display} found a single segment at {method.grid_label} {value}: "
                        "no segmentation to report")
    return model, labels, dist, outliers


def stability(method, value: int, space: dict, params, seed: int, labels: np.ndarray,
              common: np.ndarray, scale: dict | None = None, resume: dict | None = None) -> dict | None:
    """Clusterboot (Hennig 2007) on a seeded subsample: the whole method refitted in every bootstrap
    resample, its outlier step included (ECOD refitted on the resample), with the same number of
    starts as the fit, stopped as `stability_stopping` says; see evaluate.bootstrap_stability.
    resume: the cell's earlier sequential result, taken on to every resample (compare's confirmation)."""
    B = int(params.stability_resamples)
    if B == 0:
        return None
    X = space["X"]
    mode, contamination = method.outlier_params(params)
    detect = ecod_refit(method.outlier_matrix(space, common), contamination) if mode == "ecod" else None

    weighted = method.weighted_refit

    def fit(rows):
        est = method.estimator(value, params, seed, scale or {})
        if weighted:
            # a bootstrap resample repeats rows: each distinct row once, weighted by its count, is the
            # same objective (k-means++ seeding and Lloyd's means weight rows as copies would) on ~63%
            # of the rows
            rows, counts = np.unique(rows, return_counts=True)
            return est.fit(np.asarray(X[rows]), sample_weight=counts.astype(np.float64), **method.fit_kwargs(space))
        return est.fit(np.asarray(X[rows]), **method.fit_kwargs(space))

    def predict(model, base):
        return segments(method, model, X[base])[0]

    scorer = {}

    def score(base, pred):
        # the same rows are scored in every resample: their distances are computed once
        if not scorer:
            scorer["rows"] = sample_rows(len(base), 2000, seed)
            scorer["silhouette"] = FixedRowsSilhouette(common[base[scorer["rows"]]])
        return scorer["silhouette"](pred[scorer["rows"]])

    refit = whole_method_refit(fit, predict, detect, min_rows=getattr(method.estimator(value, params, seed, {}),
                                                                       "n_clusters", 2))
    return bootstrap_stability(refit, labels, len(labels), B, seed, int(params.stability_sample), score,
                               stopping="fixed" if resume is not None else params.stability_stopping, resume=resume)


def run_cell(run_dir: str | Path, method_name: str, value: int) -> dict:
    """Fit, score, profile and explain one (method, grid value); returns the metrics dict."""
    lap = Laps()
    layout = RunLayout(run_dir)
    ctx = layout.read_context()
    params = params_of(ctx)
    method = get(method_name)
    seed = int(params.seed)
    grid = method.grid
    frame = pd.read_parquet(layout.table)
    space = load_space(layout, method_name, mmap=True)  # read-only, its pages shared by the cells of a worker host
    common = load_space(layout, COMMON, mmap=True)["X"]
    scale = ctx.get("scale") or {}
    lap("read")
    model, labels, dist, outliers = fit_method(method, value, space, params, seed, scale)
    k = int(labels.max()) + 1
    lap("fit")
    stab = stability(method, value, space, params, seed, labels, common, scale)
    lap("stability")
    labels_df = pd.DataFrame({"row": np.arange(len(labels), dtype=np.int64), "segment": labels.astype(np.int64),
                              "outlier": outliers.astype(bool) if outliers is not None else np.zeros(len(labels), bool),
                              "distance": dist.astype(np.float64)})
    sil_n = int(params.silhouette_sample)
    X_own = method.own_space(space)
    if X_own is None:
        own = {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None,
               "note": f"{method.display}'s space has no Euclidean geometry; see the neutral spaces"}
    else:
        # Euclidean in every own space: on normalised embeddings it is what K-means minimises
        own = validity(np.asarray(X_own), labels, sil_n, seed)
    common_m = validity(common, labels, sil_n, seed)
    # Gower (1971): a neutral space no method optimises (range-scaled numbers, category mismatches)
    gower = {"silhouette": gower_silhouette(frame, ctx["used"]["numeric"], ctx["used"]["categorical"], labels,
                                            sample=min(2000, sil_n), seed=seed),
             "rows": int(min(2000, sil_n, len(labels)))}
    own_fitted = None
    if outliers is not None and X_own is not None and outliers.any():
        # the seed article scored K-means on the rows kept after ECOD: reported beside the full-data numbers
        keep = ~outliers
        own_fitted = validity(np.asarray(X_own)[keep], labels[keep], sil_n, seed)
    lap("metrics")
    # done with the memory-mapped spaces: unmapped before the surrogate, whose training data gets the memory
    # (an LLM cell at 1,000,000 rows held its 1.5 GB embedding through LightGBM's minute on the cluster)
    del space, common, X_own
    scheduler = os.environ.get("SEGREPORT_DASK_SCHEDULER")
    if scale.get("lightgbm") == "dask" and scheduler:
        ex = surrogate_dask(frame, labels, ctx["used"]["categorical"], scheduler, seed=seed,
                            holdout=int(scale["holdout"]), rounds=int(scale["lightgbm_rounds"]),
                            shap_sample=int(params.shap_sample), threads=_threads())
    else:
        ex = surrogate(frame, labels, ctx["used"]["categorical"], seed=seed, folds=int(params.lgbm_folds),
                       max_rows=int(params.explain_rows), shap_sample=int(params.shap_sample), threads=_threads())
    lap("surrogate")
    tree = rule_tree(frame, labels, ctx["used"]["categorical"], max_depth=3, seed=seed)
    tree.pop("model", None)
    direction = shap_direction(ex["shap_sample"], frame, ctx["used"]["numeric"], ctx["used"]["categorical"])
    lap("rules")
    prof = profile(frame, labels, ctx["used"]["numeric"], ctx["used"]["categorical"], int(params.min_segment_size),
                   outliers=outliers)
    cards = personas(prof, {str(s): v for s, v in ex["mean_abs_shap"].items()}, ctx["labels"], ctx["units"],
                     set(ctx["used"]["binary"]), stability=stab)
    metrics = {
        "method": method_name, "grid": grid, "value": int(value), "k": k, "seed": seed, "rows": int(len(labels)),
        "fitted_rows": int(len(labels) - (outliers.sum() if outliers is not None else 0)),
        "outliers": int(outliers.sum()) if outliers is not None else 0,
        "cost": method.cost(model), "cost_name": method.cost_name,
        "sizes": np.bincount(labels, minlength=k).tolist(),
        "own": own, "common": common_m, "gower": gower, "own_fitted_rows": own_fitted,
        "rules": {k_: v for k_, v in tree.items() if k_ not in ("rules", "by_segment")},
        "majority_baseline": tree["baseline"]["accuracy"],
        "stability": {k_: v for k_, v in stab.items() if k_ not in ("ari", "common_silhouette")} if stab else None,
        "refits": int(stab["resamples"]) if stab else 0,  # clusterboot refits used (sequential stopping: fewer)
        "lgbm_accuracy": ex["accuracy"], "lgbm_folds": ex["folds"], "lgbm_cv_rows": ex["cv_rows"],
        "lgbm_engine": ex["engine"], "lgbm_validation": ex["validation"], "lgbm_holdout_rows": ex.get("holdout_rows"),
        "shap_rows": ex["shap_rows"],
        "algorithm": {"minibatch": "MiniBatchKMeans", "lloyd": "KMeans (Lloyd)"}.get(
            getattr(model, "algorithm", None), method.algorithm),
        **method.model_facts(model),
    }
    shap_json = {"mean_abs_shap": ex["mean_abs_shap"], "overall": ex["mean_abs_shap_overall"],
                 "rows": ex["shap_rows"], "direction": direction}
    for card in cards:
        card["rule"] = tree["by_segment"].get(card["segment"])
        for d in card.get("drivers", []):  # which way the driver pushes: higher values, or which levels
            info = (direction.get(card["segment"]) or {}).get(d["column"]) or {}
            d["direction"] = info.get("direction")
            d["towards"] = (info.get("towards") or [])[:2]
    lap("personas")
    write = lambda name, obj: layout.write_cell(method_name, value, name, obj, grid)  # noqa: E731
    write(LABELS, labels_df)
    write(SHAP_SAMPLE, ex["shap_sample"])
    write(PROFILE, prof)
    write(RULES, {"rules": tree["rules"], "by_segment": tree["by_segment"], "accuracy": tree["accuracy"],
                  "baseline": tree["baseline"], "simple_rules": tree["simple_rules"], "max_depth": tree["max_depth"]})
    write(PERSONAS, cards)
    write(SHAP, shap_json)
    if stab:
        write(STABILITY, stab)
    write(MODEL, {"method": method_name, "value": int(value), "k": k, "segmenter": model,
                  "explainer_model": ex["model"]})
    layout.write_metrics(method_name, value, metrics, grid)
    lap("write")
    # timings are kept out of metrics.json so that identical reruns give identical bytes
    write(TIMINGS, lap.timings())
    return metrics


class Laps:
    """Seconds per stage of a cell (timings.json; bench/bench_cells.py tabulates them over a run).
    `explain` = surrogate + rules, as earlier timings files named it."""

    def __init__(self):
        self.t0 = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 3)
        self.last = now

    def timings(self) -> dict:
        out = dict(self.stages)
        out["explain"] = round(out.get("surrogate", 0.0) + out.get("rules", 0.0), 3)
        out["total"] = round(time.perf_counter() - self.t0, 3)
        return out
