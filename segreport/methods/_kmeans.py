"""The K-means estimator of the methods that cluster a Euclidean space (kmeans, llm, famd).

Imported on first use (see kmeans.py): it needs scikit-learn, which a run that reuses its
finished cells never loads.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data


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
            self.model_ = KMeans(n_clusters=self.n_clusters, init="k-means++", n_init=self.n_init,
                                 max_iter=self.max_iter, random_state=self.random_state).fit(fit_rows,
                                                                                             sample_weight=weight)
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
