"""Why customers fall into their segment: a LightGBM surrogate on the original columns + SHAP.

The classifier learns the segment labels from the customer's own columns (not
the encoded space), so SHAP speaks of age, job, balance... Categorical columns
use LightGBM's native categorical splits. Accuracy is cross-validated with early
stopping on a slice of each training fold; SHAP (TreeExplainer) runs on a seeded
sample of rows.

Past the scale threshold on a Dask cluster, `surrogate_dask` trains the classifier
with LightGBM's Dask interface on every row but a seeded holdout (the table split
into one partition per worker, the workers training one model together), measures
accuracy on the holdout, and explains the same seeded SHAP sample with the trained
booster brought back to this process.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from .features import sample_rows


def model_frame(frame: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    X = frame.copy()
    for c in categorical:
        X[c] = X[c].astype("category")
    return X


def _lgbm_params(seed: int, threads: int) -> dict:
    """The surrogate's settings, shared by the in-process and the Dask classifier."""
    return dict(learning_rate=0.1, num_leaves=31, min_child_samples=10, random_state=seed, n_jobs=threads,
                deterministic=True, force_row_wise=True, verbose=-1)


def _classifier(n_classes: int, seed: int, threads: int):
    import lightgbm as lgb

    return lgb.LGBMClassifier(n_estimators=300, objective="multiclass" if n_classes > 2 else "binary",
                              **_lgbm_params(seed, threads))


def _fit(X, y, seed, threads):
    import lightgbm as lgb

    n_classes = len(np.unique(y))
    counts = np.bincount(y)
    strat = y if counts[counts > 0].min() >= 2 else None
    Xtr, Xval, ytr, yval = train_test_split(X, y, test_size=0.1, random_state=seed, stratify=strat)
    clf = _classifier(n_classes, seed, threads)
    clf.fit(Xtr, ytr, eval_X=(Xval,), eval_y=(yval,), callbacks=[lgb.early_stopping(15, verbose=False)])
    return clf


def surrogate(frame: pd.DataFrame, labels: np.ndarray, categorical: list[str], seed: int = 0,
              folds: int = 3, max_rows: int = 20000, shap_sample: int = 2000, threads: int = 1) -> dict:
    """Cross-validated accuracy of LightGBM predicting the segment, and SHAP on a sample.

    Returns a dict with accuracy facts, mean |SHAP| per (segment, feature) and the
    per-row SHAP values of the sample (rows are indices into `frame`).
    """
    X = model_frame(frame, categorical)
    y = np.asarray(labels, dtype=np.int64)
    n = len(X)
    rows = sample_rows(n, max_rows, seed, strata=y)  # CV on a stratified sample past max_rows
    Xs, ys = X.iloc[rows].reset_index(drop=True), y[rows]
    min_count = np.bincount(ys)[np.bincount(ys) > 0].min()
    k_folds = int(max(2, min(folds, min_count)))
    accs, iters = [], []
    skf = StratifiedKFold(n_splits=k_folds, shuffle=True, random_state=seed)
    for tr, te in skf.split(Xs, ys):
        clf = _fit(Xs.iloc[tr], ys[tr], seed, threads)
        accs.append(float((clf.predict(Xs.iloc[te]) == ys[te]).mean()))
        iters.append(int(clf.best_iteration_ or clf.n_estimators))
    final = _fit(Xs, ys, seed, threads)
    out = _explain(final, X, y, list(frame.columns), shap_sample, seed)
    out.update(accuracy=float(np.mean(accs)), accuracy_folds=accs, folds=k_folds, cv_rows=int(len(rows)),
               best_iterations=iters, engine="lightgbm", validation="cross-validation")
    return out


def _explain(final, X: pd.DataFrame, y: np.ndarray, features: list[str], shap_sample: int, seed: int) -> dict:
    """Mean |SHAP| per (segment, feature) and per-row SHAP values on a seeded, stratified sample."""
    import shap

    n = len(X)
    srows = sample_rows(n, shap_sample, seed + 1, strata=y)
    expl = shap.TreeExplainer(final)
    sv = np.asarray(expl.shap_values(X.iloc[srows]))
    # normalise to (rows, features, classes)
    classes = list(final.classes_)
    if sv.ndim == 2:  # binary: one output, the log-odds of class 1
        sv = np.stack([-sv, sv], axis=2)
    elif sv.shape[0] == len(classes) and sv.shape[1] == len(srows):
        sv = np.transpose(sv, (1, 2, 0))
    ys_shap = y[srows]
    per_segment = {}
    for ci, c in enumerate(classes):
        members = ys_shap == c
        vals = np.abs(sv[members, :, ci]) if members.any() else np.abs(sv[:, :, ci])
        per_segment[int(c)] = {f: float(vals[:, j].mean()) for j, f in enumerate(features)}
    own = np.searchsorted(classes, ys_shap)
    overall = {f: float(np.abs(sv[np.arange(len(srows)), j, own]).mean()) for j, f in enumerate(features)}
    rows_frame = pd.DataFrame({"row": srows, "segment": ys_shap})
    for j, f in enumerate(features):
        rows_frame[f"shap_{f}"] = sv[np.arange(len(srows)), j, own]
    return {"shap_rows": int(len(srows)), "mean_abs_shap": per_segment, "mean_abs_shap_overall": overall,
            "shap_sample": rows_frame, "model": final}


def surrogate_dask(frame: pd.DataFrame, labels: np.ndarray, categorical: list[str], scheduler: str, seed: int = 0,
                   holdout: int = 20000, rounds: int = 100, shap_sample: int = 2000, threads: int = 1) -> dict:
    """The surrogate trained by LightGBM's Dask interface on the cluster at `scheduler` (see module doc).

    Trainings of several cells take turns (a cluster-wide lock): LightGBM's Dask training
    needs every worker holding data at once, and two interleaved trainings could each wait
    for a worker the other holds.
    """
    import dask.dataframe as dd
    import lightgbm as lgb
    from distributed import Client, Lock

    X = model_frame(frame, categorical)
    y = np.asarray(labels, dtype=np.int64)
    n = len(X)
    test = sample_rows(n, min(holdout, max(1, n // 5)), seed, strata=y)
    train = np.ones(n, dtype=bool)
    train[test] = False
    with Client(scheduler) as client:  # the default client of this (kernel) process: Lock uses it
        workers = len(client.scheduler_info()["workers"])
        part = X[train].assign(__segment=y[train])
        ddf = dd.from_pandas(part, npartitions=max(1, workers)).persist()
        clf = lgb.DaskLGBMClassifier(client=client, n_estimators=rounds, **_lgbm_params(seed, threads))
        with Lock("segreport-lightgbm"):
            clf.fit(ddf.drop(columns="__segment"), ddf["__segment"])
        final = clf.to_local()
        del ddf
    acc = float((final.predict(X.iloc[test]) == y[test]).mean())
    out = _explain(final, X, y, list(frame.columns), shap_sample, seed)
    out.update(accuracy=acc, accuracy_folds=[acc], folds=1, cv_rows=int(train.sum()), holdout_rows=int(len(test)),
               best_iterations=[rounds], engine="lightgbm.dask", validation="holdout", dask_workers=workers)
    return out
