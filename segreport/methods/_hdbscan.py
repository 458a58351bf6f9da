"""The estimator of method `hdbscan`: scikit-learn's HDBSCAN with every point assigned.

Imported on first use (see hdbscan.py): it needs scikit-learn, which a run that reuses its
finished cells never loads.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class HDBSCANSegmenter(ClusterMixin, TransformerMixin, BaseEstimator):
    """HDBSCAN (scikit-learn) with every point assigned: noise -> nearest clustered point's segment.

    Attributes
    ----------
    labels_ : segment of every row (noise included, by its nearest clustered neighbour)
    noise_ : bool mask of the rows HDBSCAN left in no cluster
    n_clusters_ : number of segments found (at least 1: all-noise data is one segment)
    cluster_centers_ : mean position of each segment's clustered members
    """

    def __init__(self, min_cluster_size=5, min_samples=None, cluster_selection_method="eom", random_state=None):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method
        self.random_state = random_state  # HDBSCAN is deterministic; kept for a uniform interface

    def fit(self, X, y=None):
        from sklearn.cluster import HDBSCAN
        from sklearn.neighbors import KNeighborsClassifier

        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        mcs = int(max(2, min(self.min_cluster_size, len(X))))
        raw = HDBSCAN(min_cluster_size=mcs, min_samples=self.min_samples,
                      cluster_selection_method=self.cluster_selection_method, copy=True).fit(X).labels_
        self.noise_ = raw < 0
        if self.noise_.all():
            raw = np.zeros(len(X), dtype=np.int64)
        self.n_clusters_ = int(raw.max()) + 1
        keep = raw >= 0
        self.knn_ = KNeighborsClassifier(n_neighbors=1).fit(X[keep], raw[keep])
        labels = raw.astype(np.int64).copy()
        if (~keep).any():
            labels[~keep] = self.knn_.predict(X[~keep])
        self.labels_ = labels
        self.cluster_centers_ = np.vstack([X[keep & (raw == s)].mean(axis=0) for s in range(self.n_clusters_)])
        return self

    def predict(self, X):
        check_is_fitted(self, "knn_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.knn_.predict(X).astype(np.int64)

    def transform(self, X):
        """Euclidean distance of each row to each segment's centre (of its clustered members)."""
        check_is_fitted(self, "knn_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return np.sqrt(((X[:, None, :] - self.cluster_centers_[None, :, :]) ** 2).sum(axis=2))

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_


# pickles (model.joblib) and reprs name the public module, as before the estimator moved here
HDBSCANSegmenter.__module__ = "segreport.methods.hdbscan"
