"""Method `kmeans`: K-means on encoded columns, ECOD outliers left out of the fit but still assigned.

`KMeansSegmenter` is the K-means estimator shared by the methods that cluster a
Euclidean space (kmeans, llm, famd). Two algorithms behind one face: scikit-learn's
KMeans (Lloyd, k-means++, best of n_init) for tables below the scale threshold, and
MiniBatchKMeans (Sculley's mini-batch updates, the same k-means++ init on a seeded
subset) past it, whose cost per step does not grow with the number of rows. It lives in
_kmeans.py, imported on first use: a run that reuses its cells never loads scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from .base import Method, Space, Strict

if TYPE_CHECKING:
    from ._kmeans import KMeansSegmenter


def __getattr__(name: str):
    """`KMeansSegmenter` (in _kmeans.py: it needs scikit-learn), imported on first use."""
    if name == "KMeansSegmenter":
        from ._kmeans import KMeansSegmenter  # scikit-learn: on first use

        return KMeansSegmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class KMeansParams(Strict):
    outliers: Literal["ecod", "none"] = "ecod"
    contamination: float = Field(0.1, gt=0, lt=0.5)
    n_init: int = Field(10, ge=1)
    max_iter: int = Field(300, ge=1)
    power_transform: Literal["all", "numeric"] = "all"  # all = numeric + ordinal columns (the seed's first notebook)


def kmeans_estimator(k: int, mp, seed: int, scale: dict, n_init: int | None = None) -> KMeansSegmenter:
    """K-means with a method's n_init / max_iter and the run's scale path (see prepare.scale_plan)."""
    from ._kmeans import KMeansSegmenter  # scikit-learn: only where a model is fitted

    return KMeansSegmenter(n_clusters=k, n_init=n_init or mp.n_init, max_iter=mp.max_iter, random_state=seed,
                           algorithm=(scale or {}).get("centroids") or "lloyd",
                           batch_size=(scale or {}).get("batch_size") or 8192)


class KMeansMethod(Method):
    name = "kmeans"
    display = "K-means"
    simplicity = 1  # the recommendation's tie-break: lower = simpler
    Params = KMeansParams
    algorithm = "K-means on encoded columns"
    summary = "K-means on one-hot / ordinal codes and power-transformed numbers; ECOD outliers left out of the fit"
    notebook_title = "K-means on encoded features"  # its notebook's title (analysis/segment.ipynb)
    notebook_intro = ("Each column is encoded (ordinal or one-hot, per the schema) and power-transformed; ECOD "
                      "flags outliers, which are left out of the fit and then assigned to their nearest segment.")
    weighted_refit = True

    def build_space(self, table, params, env) -> Space:
        from ..lib.features import fit_encoded  # scikit-learn: only where a space is built

        X, ct, names = fit_encoded(table, params.kmeans.power_transform)
        return Space({"X": X}, ct, {"dims": int(X.shape[1]), "features": names}, outlier_X=X)

    def estimator(self, value, params, seed, scale, n_init=None):
        return kmeans_estimator(value, self.params(params), seed, scale, n_init)
