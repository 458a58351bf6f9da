"""Method `hdbscan`: density segments as awslabs' DenseClus finds them: UMAP per data type, then HDBSCAN.

The numeric columns (power-transformed) and the categorical columns (one-hot, Dice
distance) each get their own UMAP graph; the two graphs are intersected (umap-learn's
`*`, DenseClus' default "intersection" combination) into one low-dimensional embedding,
built once per data set. HDBSCAN (scikit-learn) then finds dense regions of that
embedding: it decides the number of segments itself and marks the customers in no
dense region as noise. The grid runs over `min_cluster_size`, not k.

Every customer still gets a segment, as ECOD's outliers do in the K-means method: noise
points take the segment of their nearest clustered neighbour in the embedding and are
flagged as outliers. New customers (assign) take the embedding position of their nearest
training customer in the encoded columns (UMAP's intersected graph has no transform of
its own), then the segment of that position.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import Method, Space, Strict


def __getattr__(name: str):
    """`HDBSCANSegmenter` (in _hdbscan.py: it needs scikit-learn), imported on first use."""
    if name == "HDBSCANSegmenter":
        from ._hdbscan import HDBSCANSegmenter  # scikit-learn: on first use

        return HDBSCANSegmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HDBSCANParams(Strict):
    # the grid: minimum segment sizes; default: 1%, 2%, 5% and 10% of the rows
    min_cluster_size: list[int] | None = None
    min_samples: int | None = Field(None, ge=1)
    n_components: int = Field(5, ge=2)  # UMAP dimensions
    n_neighbors: int = Field(15, ge=2)
    umap_sample: int = Field(4000, ge=200)  # UMAP fitted on this many seeded rows; the rest placed by nearest neighbour


class DenseEmbedding:
    """The encoders, and the training rows' encoded columns and embedding, for placing new rows."""

    def __init__(self, encoder, index, embedding):
        self.encoder, self.index, self.embedding = encoder, index, embedding

    def transform(self, frame):
        from ..lib.features import column_transform  # scikit-learn (features imports it): only where new rows are placed

        Z = column_transform(self.encoder, frame)
        _, nearest = self.index.kneighbors(Z, n_neighbors=1)
        return self.embedding[nearest[:, 0]]


class HDBSCANMethod(Method):
    name = "hdbscan"
    display = "Density segments (HDBSCAN)"
    simplicity = 5  # the recommendation's tie-break: lower = simpler
    Params = HDBSCANParams
    grid = "m"
    null_reference = False  # a UMAP refit per null table costs minutes: not run, and the page says so
    grid_label = "minimum segment size"
    algorithm = "HDBSCAN on a UMAP embedding per data type"
    summary = "UMAP of numbers and of categories, intersected, then HDBSCAN: finds its own number of segments"
    notebook_title = "Density segments (HDBSCAN)"  # its notebook's title (analysis/segment.ipynb)
    notebook_intro = ("Numbers and categories each get a UMAP map, intersected into one embedding; HDBSCAN finds "
                      "the dense regions in it. This cell's parameter is the minimum segment size: the number of "
                      "segments is found, not given; customers in no dense region are noise, flagged as outliers.")

    def grid_values(self, params, rows: int | None = None) -> list[int]:
        mp = params.hdbscan
        if mp.min_cluster_size:
            return sorted(set(int(v) for v in mp.min_cluster_size))
        rows = rows or 1000
        return sorted({max(10, int(round(rows * f))) for f in (0.01, 0.02, 0.05, 0.1)})

    def build_space(self, table, params, env) -> Space:
        import umap
        from sklearn.neighbors import NearestNeighbors

        from ..lib.features import fit_common, sample_rows  # scikit-learn: only where a space is built

        mp = params.hdbscan
        Z, ct = fit_common(table)
        n_num = len(table.numeric)
        rows = sample_rows(len(Z), mp.umap_sample, env.seed)
        kw = dict(n_components=mp.n_components, n_neighbors=min(mp.n_neighbors, len(rows) - 1), min_dist=0.0, n_epochs=200,
                  random_state=env.seed, n_jobs=1)
        parts = []
        if n_num:
            parts.append(umap.UMAP(metric="l2", **kw).fit(Z[rows, :n_num]))
        if Z.shape[1] > n_num:
            parts.append(umap.UMAP(metric="dice", **kw).fit(Z[rows, n_num:] > 0))
        mapper = parts[0] if len(parts) == 1 else parts[0] * parts[1]
        E_sample = np.asarray(mapper.embedding_, dtype=np.float64)
        index = NearestNeighbors(n_neighbors=1).fit(Z[rows])
        E = E_sample[index.kneighbors(Z, n_neighbors=1, return_distance=False)[:, 0]]
        E[rows] = E_sample  # the fitted rows keep their own position
        tr = DenseEmbedding(ct, index, E_sample)
        info = {"dims": int(E.shape[1]), "umap_rows": int(len(rows)), "combination":
                "intersection" if len(parts) == 2 else ("numeric only" if n_num else "categorical only"),
                "n_neighbors": kw["n_neighbors"]}
        return Space({"X": E}, tr, info, outlier_X=None)

    def estimator(self, value, params, seed, scale, n_init=None):
        from ._hdbscan import HDBSCANSegmenter  # scikit-learn: only where a model is fitted

        return HDBSCANSegmenter(min_cluster_size=value, min_samples=params.hdbscan.min_samples, random_state=seed)

    def outlier_params(self, params):
        return "none", 0.0

    def found_outliers(self, model):
        return model.noise_

    def cost(self, model) -> float:
        return float(model.noise_.mean())  # the share of noise: what a density method "pays"

    cost_name = "noise share"

    def model_facts(self, model) -> dict:
        return {"k_found": int(model.n_clusters_), "noise_share": float(model.noise_.mean())}

    def transform_new(self, run, frame):
        tr = run.file(run.layout.space_transformer(self.name), "the UMAP placement")
        return tr.transform(frame), {}
