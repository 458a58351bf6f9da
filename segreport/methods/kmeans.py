"""K-means with outliers left out of the fit but still assigned (methods 1 and 3)."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans


class KMeansSegmenter:
    """K-means (k-means++, several inits) fitted on inliers; every row gets a segment.

    Parameters
    ----------
    n_clusters : int
    n_init : int
        Number of k-means++ initialisations; the lowest inertia wins.
    max_iter : int
    random_state : int

    Attributes
    ----------
    labels_ : ndarray (n,)  segment of every row, outliers included
    cluster_centers_ : ndarray (k, d)
    inertia_ : float        within-segment sum of squares of the fitted (inlier) rows
    distance_ : ndarray (n,) distance of each row to its segment's centre
    """

    def __init__(self, n_clusters=5, n_init=10, max_iter=300, random_state=None):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, exclude=None):
        X = np.asarray(X)
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"{X.shape[0]} rows cannot form {self.n_clusters} segments")
        fit_rows = X if exclude is None else X[~np.asarray(exclude, dtype=bool)]
        if len(fit_rows) < self.n_clusters:
            fit_rows = X
        self.model_ = KMeans(n_clusters=self.n_clusters, init="k-means++", n_init=self.n_init,
                             max_iter=self.max_iter, random_state=self.random_state).fit(fit_rows)
        self.cluster_centers_ = self.model_.cluster_centers_
        self.inertia_ = float(self.model_.inertia_)
        self.n_iter_ = int(self.model_.n_iter_)
        self.labels_ = self.predict(X)
        self.distance_ = self.transform(X)[np.arange(len(X)), self.labels_]
        return self

    def predict(self, X):
        return self.model_.predict(np.asarray(X, dtype=self.cluster_centers_.dtype)).astype(np.int64)

    def transform(self, X):
        return self.model_.transform(np.asarray(X, dtype=self.cluster_centers_.dtype))
