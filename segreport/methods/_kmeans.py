"""The K-means estimator of the methods that cluster a Euclidean space (kmeans, llm, famd).

Imported on first use (see kmeans.py): it needs scikit-learn, which a run that reuses its
finished cells never loads.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.utils import gen_batches
from sklearn.utils.extmath import row_norms
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data


class PlusPlusFloat32:
    """scikit-learn's k-means++ seeding (`sklearn.cluster._kmeans._kmeans_plusplus`, BSD-3) for float32
    rows, with the same random draws and the same float64 arithmetic, but the rows upcast and their
    norms taken once per fit instead of once per candidate batch.

    Written here for speed only. On float32 rows scikit-learn computes every candidate's distances
    through `_euclidean_distances_upcast`, which converts each batch of the data to float64 and
    recomputes its row norms for every batch of 2 + log(k) candidates: at k = 9 that is 9 copies of
    the data per start, and 10 starts per fit. On the bank's 384-dimensional embeddings the seeding
    was half of each clusterboot refit's time (k = 9), most of it those copies and norms. Here the data are upcast once, their norms
    taken once, and the same batches of the same products are formed (`batch_size` as scikit-learn
    sizes them), so every distance, candidate and centre is scikit-learn's bit for bit
    (tests/test_kmeans_init.py compares them).

    Passed to `KMeans(init=...)` as a callable, which scikit-learn calls once per start with the
    mean-centred rows it fits and its random state; the weights are this object's, as scikit-learn
    would have passed them to its own seeding.
    """

    def __init__(self, sample_weight: np.ndarray):
        self.sample_weight = sample_weight
        self._X = None

    def _upcast(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._X is not X:  # the same centred array at every start of one fit
            self._X, self._X64 = X, X.astype(np.float64)
            self._norms = row_norms(self._X64, squared=True)[None, :]
        return self._X64, self._norms

    def _distances(self, rows: np.ndarray, X64: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """`_euclidean_distances(X[rows], X, squared=True)` on float32 X, as scikit-learn computes it."""
        n_x, (n, d) = len(rows), X64.shape
        maxmem = max(((n_x + n) * d + n_x * n) / 10, 10 * 2**17)
        batch = max(int((-2 * d + np.sqrt((2 * d) ** 2 + 4 * maxmem)) / 2), 1)
        if n_x > batch:  # never in k-means++: 2 + log(k) candidates, far below one batch
            raise ValueError("PlusPlusFloat32 scores at most one batch of candidates at a time")
        Xc = X64[rows]
        cc = row_norms(Xc, squared=True)[:, None]
        out = np.empty((n_x, n), dtype=np.float32)
        for part in gen_batches(n, batch):
            dist = -2 * (Xc @ X64[part].T)
            dist += cc
            dist += norms[:, part]
            out[:, part] = dist.astype(np.float32, copy=False)
        return np.maximum(out, 0, out=out)

    def __call__(self, X, n_clusters, random_state):
        X64, norms = self._upcast(X)
        w = self.sample_weight
        n = X.shape[0]
        centers = np.empty((n_clusters, X.shape[1]), dtype=X.dtype)
        n_local_trials = 2 + int(np.log(n_clusters))
        center_id = random_state.choice(n, p=w / w.sum())
        centers[0] = X[center_id]
        closest_dist_sq = self._distances(np.array([center_id]), X64, norms)
        current_pot = closest_dist_sq @ w
        for c in range(1, n_clusters):
            rand_vals = random_state.uniform(size=n_local_trials) * current_pot
            candidate_ids = np.searchsorted(np.cumsum(w * closest_dist_sq), rand_vals)
            np.clip(candidate_ids, None, closest_dist_sq.size - 1, out=candidate_ids)
            distance_to_candidates = self._distances(candidate_ids, X64, norms)
            np.minimum(closest_dist_sq, distance_to_candidates, out=distance_to_candidates)
            candidates_pot = distance_to_candidates @ w.reshape(-1, 1)
            best = np.argmin(candidates_pot)
            current_pot = candidates_pot[best]
            closest_dist_sq = distance_to_candidates[best]
            centers[c] = X[candidate_ids[best]]
        return centers


class KMeansSegmenter(ClusterMixin, TransformerMixin, BaseEstimator):
    """K-means (k-means++, several inits) fitted on inliers; every row gets a segment.

    Parameters
    ----------
    n_clusters : int
    n_init : int
        Number of k-means++ initialisations; the lowest inertia wins.
    max_iter : int
    random_state : int
    algorithm : "lloyd" | "minibatch"
    batch_size : int        rows per mini-batch step (minibatch only)

    Attributes
    ----------
    labels_ : ndarray (n,)  segment of every row, outliers included
    cluster_centers_ : ndarray (k, d)
    inertia_ : float        within-segment sum of squares of the fitted (inlier) rows
    distance_ : ndarray (n,) distance of each row to its segment's centre
    """

    def __init__(self, n_clusters=8, n_init=10, max_iter=300, random_state=None, algorithm="lloyd",
                 batch_size=8192):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state
        self.algorithm = algorithm
        self.batch_size = batch_size

    def fit(self, X, y=None, exclude=None, sample_weight=None):
        """`sample_weight`: a weight per row, as if the row were repeated that many times."""
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"n_samples={X.shape[0]} should be >= n_clusters={self.n_clusters}: "
                             f"{X.shape[0]} rows cannot form {self.n_clusters} segments")
        keep = np.ones(len(X), bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
        if keep.sum() < self.n_clusters:
            keep[:] = True
        fit_rows = X if keep.all() else X[keep]
        weight = None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=X.dtype)[keep]
        if self.algorithm == "minibatch":
            self.model_ = MiniBatchKMeans(n_clusters=self.n_clusters, init="k-means++", n_init=self.n_init,
                                          max_iter=self.max_iter, batch_size=self.batch_size,
                                          random_state=self.random_state).fit(fit_rows, sample_weight=weight)
            self.inertia_ = float(self.model_.inertia_)  # compute_labels: over every fitted row, not a batch
        elif self.algorithm == "lloyd":
            # float32 rows (embeddings): the same k-means++ seeds, upcast once (PlusPlusFloat32)
            init = "k-means++"
            if fit_rows.dtype == np.float32:
                init = PlusPlusFloat32(_check_sample_weight(weight, fit_rows, dtype=fit_rows.dtype))
            self.model_ = KMeans(n_clusters=self.n_clusters, init=init, n_init=self.n_init,
                                 max_iter=self.max_iter, random_state=self.random_state).fit(fit_rows,
                                                                                             sample_weight=weight)
            self.model_.set_params(init="k-means++")  # what it ran; the saved model holds no data
            self.inertia_ = float(self.model_.inertia_)
        else:
            raise ValueError(f"algorithm must be 'lloyd' or 'minibatch', got {self.algorithm!r}")
        self.cluster_centers_ = self.model_.cluster_centers_
        self.n_iter_ = int(self.model_.n_iter_)
        D = self.model_.transform(X)
        self.labels_ = D.argmin(axis=1).astype(np.int64)
        self.distance_ = D[np.arange(len(X)), self.labels_]
        return self

    def predict(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.model_.transform(X.astype(self.cluster_centers_.dtype, copy=False)).argmin(axis=1).astype(np.int64)

    def transform(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.model_.transform(X.astype(self.cluster_centers_.dtype, copy=False))

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_


# pickles (model.joblib) and reprs name the public module, as before the estimator moved here
KMeansSegmenter.__module__ = "segreport.methods.kmeans"
