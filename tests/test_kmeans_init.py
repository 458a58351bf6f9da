"""The float32 k-means++ seeding (PlusPlusFloat32) is scikit-learn's, bit for bit, only faster."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.cluster._kmeans import _kmeans_plusplus
from sklearn.metrics.pairwise import _euclidean_distances
from sklearn.utils import check_random_state
from sklearn.utils.extmath import row_norms

from segreport.methods._kmeans import PlusPlusFloat32
from segreport.methods.kmeans import KMeansSegmenter


def _unit_rows(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Unit vectors around k directions, float32, as sentence embeddings are."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    X = centres[rng.integers(0, k, n)] + rng.normal(scale=0.8, size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


@pytest.mark.parametrize("n,d,k", [(1300, 384, 9), (3000, 64, 2), (2500, 384, 5)])
def test_seeds_are_scikit_learns(n, d, k):
    X = _unit_rows(n, d, 4, seed=n)
    X -= X.mean(axis=0)  # KMeans seeds the mean-centred rows
    w = np.random.default_rng(k).integers(1, 5, n).astype(np.float32)  # a bootstrap's repeat counts
    for seed in range(3):
        ours = PlusPlusFloat32(w)(X, k, check_random_state(seed))
        ref, _ = _kmeans_plusplus(X, k, row_norms(X, squared=True), w, check_random_state(seed))
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("n,d", [(1300, 384), (45_000, 384), (2500, 17)])
def test_candidate_distances_are_scikit_learns_bit_for_bit(n, d):
    """The distances behind every draw: the float64 products of the same batches, cast to float32."""
    X = _unit_rows(n, d, 5, seed=d)
    X -= X.mean(axis=0)
    seeding = PlusPlusFloat32(np.ones(n, np.float32))
    X64, norms = seeding._upcast(X)
    for rows in (np.array([7]), np.array([3, 900, 1200, 11])):
        ref = _euclidean_distances(X[rows], X, Y_norm_squared=row_norms(X, squared=True), squared=True)
        np.testing.assert_array_equal(seeding._distances(rows, X64, norms), ref)


def test_segmenter_fits_as_scikit_learns_kmeans_and_saves_no_data():
    X = _unit_rows(2000, 384, 6, seed=3)
    rows, counts = np.unique(np.random.default_rng(0).integers(0, len(X), len(X)), return_counts=True)
    ours = KMeansSegmenter(7, n_init=4, random_state=11).fit(X[rows], sample_weight=counts)
    ref = KMeans(7, n_init=4, random_state=11).fit(X[rows], sample_weight=counts.astype(np.float32))
    np.testing.assert_array_equal(ours.model_.labels_, ref.labels_)
    np.testing.assert_array_equal(ours.cluster_centers_, ref.cluster_centers_)
    assert ours.inertia_ == float(ref.inertia_)
    assert ours.model_.get_params()["init"] == "k-means++"  # the pickled model holds no callable, no weights
