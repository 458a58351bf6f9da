"""The scalable path for large tables: MiniBatchKMeans, ECOD fitted on a sample, and what it costs in agreement."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from segreport.methods import Params
from segreport.lib.features import ecod_outliers
from segreport.methods.kmeans import KMeansSegmenter
from segreport.stages.prepare import scale_plan


def test_minibatch_kmeans_finds_the_same_segments_as_lloyd():
    X, _ = make_blobs(n_samples=30_000, centers=5, n_features=8, cluster_std=2.0, random_state=3)
    full = KMeansSegmenter(5, n_init=3, random_state=0).fit(X)
    mini = KMeansSegmenter(5, n_init=3, random_state=0, algorithm="minibatch", batch_size=2048).fit(X)
    assert isinstance(mini.model_, __import__("sklearn.cluster").cluster.MiniBatchKMeans)
    assert adjusted_rand_score(full.labels_, mini.labels_) > 0.98
    assert mini.inertia_ <= full.inertia_ * 1.02  # inertia over every row, not the last batch
    assert np.array_equal(mini.labels_, mini.predict(X))


def test_ecod_fitted_on_a_sample_flags_the_same_rows():
    X = np.random.default_rng(0).standard_t(df=3, size=(60_000, 6))
    flags, scores, det = ecod_outliers(X, 0.1, sample=10_000, seed=1)
    full, full_scores, _ = ecod_outliers(X, 0.1)
    assert abs(flags.mean() - 0.1) < 0.01
    assert (flags == full).mean() > 0.99 and np.corrcoef(scores, full_scores)[0, 1] > 0.999
    assert not hasattr(det, "U_l")  # working arrays dropped: the saved detector stays small


def test_scale_plan_follows_the_threshold():
    p = Params(scale={"threshold": 1000})
    small, big = scale_plan(p, 999, True), scale_plan(p, 1000, True)
    assert not small["scalable"] and small["centroids"] == "lloyd" and small["lightgbm"] == "local"
    assert big["scalable"] and big["centroids"] == "minibatch" and big["lightgbm"] == "dask"
    assert scale_plan(p, 5000, False)["lightgbm"] == "local"  # no cluster: LightGBM on a sample, in the cell
    assert big["ecod_sample"] is None and scale_plan(p, 200_000, True)["ecod_sample"] == 100_000
