"""The LightGBM surrogate's SHAP values: each row explained for its own segment, by that segment's trees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shap

from segreport.lib.explain import class_booster, surrogate


def _table(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.normal(40, 10, n), "balance": rng.lognormal(7, 1, n),
                          "job": rng.choice(["admin.", "services", "technician", "retired"], n),
                          "housing": rng.choice(["yes", "no"], n)})
    return frame


@pytest.mark.parametrize("k", [2, 4])
def test_own_segment_shap_values_are_the_full_models(k):
    """The values the report keeps (each sampled row's SHAP for its own segment, mean |SHAP| per segment)
    are exactly what shap's TreeExplainer gives on the whole multiclass model."""
    frame = _table()
    cut = np.quantile(frame.age + frame.balance / 500, np.linspace(0, 1, k + 1)[1:-1])
    labels = np.searchsorted(cut, frame.age + frame.balance / 500) + 3 * (frame.job == "retired") % k
    labels = np.unique(labels, return_inverse=True)[1]
    out = surrogate(frame, labels, ["job", "housing"], seed=0, folds=2, max_rows=1500, shap_sample=400)
    model, sample = out["model"], out["shap_sample"]
    X = frame.iloc[sample["row"]].copy()
    for c in ["job", "housing"]:
        X[c] = X[c].astype("category")
    X = X[frame.columns]
    full = np.asarray(shap.TreeExplainer(model).shap_values(X))
    if full.ndim == 2:  # binary: the log-odds of the second segment; the first's are the negative
        full = np.stack([-full, full], axis=2)
    elif full.shape[0] == k and full.shape[1] == len(X):
        full = np.transpose(full, (1, 2, 0))
    seg = sample["segment"].to_numpy()
    own = full[np.arange(len(X)), :, seg]
    kept = sample[[f"shap_{c}" for c in frame.columns]].to_numpy()
    np.testing.assert_allclose(kept, own, rtol=1e-10, atol=1e-12)
    for c in range(k):
        for j, col in enumerate(frame.columns):
            assert out["mean_abs_shap"][c][col] == pytest.approx(np.abs(full[seg == c, j, c]).mean(), rel=1e-10)


def test_class_booster_is_that_class_s_trees():
    """One class's booster predicts that class's raw score of the full model, and its contributions."""
    import lightgbm as lgb

    frame = _table(800, 1)
    X = frame.assign(job=frame.job.astype("category"), housing=frame.housing.astype("category"))
    y = (X.age > 40).astype(int) + (X.job == "retired").astype(int) * 2
    model = lgb.LGBMClassifier(n_estimators=30, verbose=-1).fit(X, y)
    raw = model.booster_.predict(X, raw_score=True)
    contrib = model.booster_.predict(X, pred_contrib=True)
    width = X.shape[1] + 1
    for c in range(model.n_classes_):
        sub = class_booster(model.booster_, c)
        assert sub.num_trees() == model.booster_.num_trees() // model.n_classes_
        np.testing.assert_allclose(sub.predict(X, raw_score=True), raw[:, c], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sub.predict(X, pred_contrib=True), contrib[:, c * width:(c + 1) * width],
                                   rtol=1e-12, atol=1e-12)
