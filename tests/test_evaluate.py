"""Metrics, k recommendation, stability (clusterboot), personas from profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from sklearn.metrics import silhouette_score

from segreport.lib.evaluate import FixedRowsSilhouette, bootstrap_stability, elbow_k, recommend_k, validity
from segreport.methods.kmeans import KMeansSegmenter
from segreport.lib.personas import personas, profile


def _stability(X, k, seed=0):
    labels = KMeansSegmenter(k, n_init=3, random_state=seed).fit(X).labels_

    def refit(rows, base):
        return KMeansSegmenter(k, n_init=3, random_state=seed).fit(X[rows]).predict(X[base])

    return bootstrap_stability(refit, labels, len(X), 15, seed, 1000)


def test_planted_clusters_are_stable_and_noise_is_not():
    X, _ = make_blobs(n_samples=1200, centers=4, cluster_std=0.6, random_state=1)
    planted = _stability(X, 4)
    assert planted["ari_mean"] > 0.97
    assert all(s["stable"] for s in planted["segments"].values())
    noise = np.random.default_rng(2).uniform(size=(1200, 6))
    unif = _stability(noise, 4)
    assert unif["ari_mean"] < 0.8 and unif["ari_mean"] < planted["ari_mean"] - 0.2


def test_fixed_rows_silhouette_is_scikit_learns_silhouette():
    """The bootstrap's scorer (distances computed once) gives scikit-learn's number for any labeling,
    singleton segments and unused label values included, and None where the silhouette is undefined."""
    rng = np.random.default_rng(3)
    X, _ = make_blobs(n_samples=400, centers=4, n_features=7, random_state=3)
    score = FixedRowsSilhouette(X)
    for k in (2, 3, 6):
        lab = rng.integers(0, k, len(X)) * 5  # label values need not be 0..k-1
        lab[17] = 999  # a segment of one row scores 0 there
        assert abs(score(lab) - silhouette_score(X, lab)) < 1e-12
    planted = KMeansSegmenter(4, n_init=3, random_state=0).fit(X).labels_
    assert abs(score(planted) - silhouette_score(X, planted)) < 1e-12 and score(planted) > 0.5
    assert score(np.zeros(len(X), int)) is None and score(np.arange(len(X))) is None


def test_weighted_kmeans_is_kmeans_on_the_repeated_rows():
    """A bootstrap resample's distinct rows fitted once, weighted by their count: the same optimum
    (centres and inertia) as fitting every repeated row."""
    X, _ = make_blobs(n_samples=500, centers=3, n_features=4, cluster_std=1.5, random_state=4)
    draw = np.sort(np.random.default_rng(4).choice(len(X), len(X)))
    rows, counts = np.unique(draw, return_counts=True)
    assert len(rows) < 0.7 * len(draw)
    full = KMeansSegmenter(3, n_init=5, random_state=0).fit(X[draw])
    weighted = KMeansSegmenter(3, n_init=5, random_state=0).fit(X[rows], sample_weight=counts)
    order = lambda c: c[np.lexsort(c.T[::-1])]  # noqa: E731 - centres in a fixed order
    assert np.allclose(order(full.cluster_centers_), order(weighted.cluster_centers_))
    assert abs(full.inertia_ - weighted.inertia_) < 1e-6 * full.inertia_
    # excluded rows (outliers) drop their weights with them
    out = np.zeros(len(rows), bool)
    out[:5] = True
    ex = KMeansSegmenter(3, n_init=5, random_state=0).fit(X[rows], exclude=out, sample_weight=counts)
    ref = KMeansSegmenter(3, n_init=5, random_state=0).fit(X[rows][~out], sample_weight=counts[~out])
    assert np.allclose(order(ex.cluster_centers_), order(ref.cluster_centers_))


def test_recommend_prefers_smaller_k_within_tolerance():
    rec = recommend_k({3: 0.30, 4: 0.305, 5: 0.25})
    assert rec["k"] == 3 and rec["best_silhouette_k"] == 4 and "within 0.01" in rec["reason"]
    assert recommend_k({3: 0.2, 4: 0.4})["k"] == 4
    assert recommend_k({3: None})["k"] is None


def test_elbow_finds_the_knee():
    assert elbow_k({2: 100, 3: 40, 4: 30, 5: 25, 6: 22}) == 3


def test_validity_on_separated_blobs():
    X, y = make_blobs(n_samples=600, centers=3, cluster_std=0.5, random_state=0)
    v = validity(X, y, silhouette_sample=200, seed=0)
    assert v["silhouette"] > 0.7 and abs(v["silhouette_rows"] - 200) <= 3 and v["davies_bouldin"] < 0.5


def test_personas_name_the_distinctive_traits():
    rng = np.random.default_rng(0)
    n = 1000
    seg = np.repeat([0, 1], n // 2)
    frame = pd.DataFrame({
        "age": np.where(seg == 1, rng.normal(68, 4, n), rng.normal(35, 6, n)),
        "job": np.where(seg == 1, rng.choice(["retired", "admin."], n, p=[0.9, 0.1]),
                        rng.choice(["admin.", "technician", "retired"], n, p=[0.5, 0.45, 0.05])),
        "housing": np.where(seg == 1, "no", rng.choice(["yes", "no"], n, p=[0.8, 0.2])),
    })
    prof = profile(frame, seg, ["age"], ["job", "housing"], min_segment_size=20)
    assert sum(s["size"] for s in prof["segments"]) == n
    cards = personas(prof, None, {"age": "Age", "job": "Job", "housing": "Housing loan"}, {"age": "years"}, {"housing"})
    assert "Retired" in cards[1]["name"] or "High age" in cards[1]["name"]
    t = {x["column"]: x for x in cards[1]["traits"]}
    assert t["age"]["direction"] == "higher" and t["job"]["level"] == "retired" and t["job"]["share"] > 0.8
    small = profile(frame, np.r_[np.zeros(n - 5, int), np.ones(5, int)], ["age"], ["job"], min_segment_size=20)
    assert small["segments"][1]["suppressed"] and "numeric" not in small["segments"][1]


def test_dispersion_scores_equal_scikit_learns_on_blocks_of_a_memory_mapped_space(tmp_path):
    """Davies-Bouldin and Calinski-Harabasz, accumulated block by block in float64 (for memory), are
    scikit-learn's values; a segment absent from a block and labels that are not 0..k-1 are handled."""
    from sklearn.datasets import make_blobs
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from segreport.lib.evaluate import dispersion_scores

    X, y = make_blobs(5000, n_features=12, centers=4, cluster_std=2.5, random_state=3)
    X = X.astype(np.float32)
    y = np.where(np.arange(5000) < 700, 0, y) * 3 + 5  # the first block holds one segment only; labels 5, 8, 11, 14
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    db, ch = dispersion_scores(Xm, y, block=512)
    assert db == pytest.approx(davies_bouldin_score(X, y), rel=1e-5)
    assert ch == pytest.approx(calinski_harabasz_score(X, y), rel=1e-9)
    assert dispersion_scores(Xm, y, block=100_000) == pytest.approx((db, ch), rel=1e-12)
    same = np.zeros((10, 3), dtype=np.float32)
    assert dispersion_scores(same, np.repeat([0, 1], 5)) == (0.0, 1.0)  # no spread anywhere: scikit-learn's 0 and 1


@pytest.mark.parametrize("dtype,columns", [(np.float32, 37), (np.float64, 5), (np.float32, 16)])
def test_columnwise_ecod_gives_pyods_numbers_bit_for_bit(dtype, columns, tmp_path):
    """ECOD a block of columns at a time (the memory of prepare at 1M rows): pyod's scores, threshold
    and labels exactly, on fitted and new rows, with tied values, a skewed column and a constant one."""
    import joblib
    from pyod.models.ecod import ECOD

    from segreport.lib.ecod import ColumnwiseECOD
    from segreport.lib.features import ecod_outliers

    rng = np.random.default_rng(3)
    X = rng.standard_normal((1500, columns)).astype(dtype)
    X[:, 0] = np.round(X[:, 0])  # ties
    X[:, 1] = rng.exponential(size=len(X))  # skewed the other way
    X[:, 2] = 1.0  # constant: skewness nan, as in pyod
    new = rng.standard_normal((400, columns)).astype(dtype)
    ref = ECOD(contamination=0.05).fit(X)
    ours = ColumnwiseECOD(contamination=0.05)
    ours.columns = 4  # blocks that do not divide the columns
    ours.fit(X)
    assert np.array_equal(ref.decision_scores_, ours.decision_scores_, equal_nan=True)
    assert ref.threshold_ == ours.threshold_ or (np.isnan(ref.threshold_) and np.isnan(ours.threshold_))
    assert np.array_equal(ref.labels_, ours.labels_)
    assert np.array_equal(ref.decision_function(new), ours.decision_function(new), equal_nan=True)
    joblib.dump(ours, tmp_path / "det.joblib")  # the outlier model a run stores and `assign` loads
    assert np.array_equal(joblib.load(tmp_path / "det.joblib").decision_function(new), ours.decision_function(new),
                          equal_nan=True)
    # the scalable path: fitted on a sample, every row scored block by block against it
    flags, scores, det = ecod_outliers(X[:, 3:], 0.05, sample=1000, seed=1)
    assert isinstance(det, ColumnwiseECOD)
    pyod = ECOD(contamination=0.05).fit(np.asarray(X[:, 3:][np.sort(det_rows := _sample(1500, 1000, 1))]))
    assert len(det_rows) == 1000
    expected = np.concatenate([pyod.decision_function(X[lo:lo + 50_000, 3:]) for lo in range(0, 1500, 50_000)])
    assert np.array_equal(scores, expected) and np.array_equal(flags, expected > pyod.threshold_)


def _sample(n, size, seed):
    from segreport.lib.features import sample_rows

    return sample_rows(n, size, seed)
