"""K-means with outliers left out of the fit but still assigned (methods 1 and 3).

Two algorithms behind one face: scikit-learn's KMeans (Lloyd, k-means++, best of
n_init) for tables below the scale threshold, and MiniBatchKMeans (Sculley's
mini-batch updates, the same k-means++ init on a seeded subset) past it, whose cost
per step does not grow with the number of rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans


class KMeansSegmenter:
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

    def __init__(self, n_clusters=5, n_init=10, max_iter=300, random_state=None, algorithm="lloyd",
                 batch_size=8192):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state
        self.algorithm = algorithm
        self.batch_size = batch_size

    def fit(self, X, exclude=None):
        X = np.asarray(X)
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"{X.shape[0]} rows cannot form {self.n_clusters} segments")
        fit_rows = X if exclude is None else X[~np.asarray(exclude, dtype=bool)]
        if len(fit_rows) < self.n_clusters:
            fit_rows = X
        if self.algorithm == "minibatch":
            self.model_ = MiniBatchKMeans(n_clusters=self.n_clusters, init="k-means++", n_init=self.n_init,
                                          max_iter=self.max_iter, batch_size=self.batch_size,
                                          random_state=self.random_state).fit(fit_rows)
            self.inertia_ = float(self.model_.inertia_)  # compute_labels: over every fitted row, not a batch
        elif self.algorithm == "lloyd":
            self.model_ = KMeans(n_clusters=self.n_clusters, init="k-means++", n_init=self.n_init,
                                 max_iter=self.max_iter, random_state=self.random_state).fit(fit_rows)
            self.inertia_ = float(self.model_.inertia_)
        else:
            raise ValueError(f"algorithm must be 'lloyd' or 'minibatch', got {self.algorithm!r}")
        self.cluster_centers_ = self.model_.cluster_centers_
        self.n_iter_ = int(self.model_.n_iter_)
        self.labels_ = self.predict(X)
        self.distance_ = self.transform(X)[np.arange(len(X)), self.labels_]
        return self

    def predict(self, X):
        return self.model_.predict(np.asarray(X, dtype=self.cluster_centers_.dtype)).astype(np.int64)

    def transform(self, X):
        return self.model_.transform(np.asarray(X, dtype=self.cluster_centers_.dtype))
