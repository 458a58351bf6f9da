"""Method `famd`: Factor Analysis of Mixed Data (prince), then K-means on the leading components.

FAMD weighs numeric columns (standardised) and categories (indicator columns scaled by
their frequency) so that each column contributes alike, then takes principal components:
a Euclidean space in which K-means is at home. Among the best methods for mixed data in
published comparisons (Costa, Papatsouma and Markos 2023). The number of components kept
is the smallest that explains `inertia` of the total (stated on the method's page).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from .base import Method, Space, Strict
from .kmeans import kmeans_estimator

if TYPE_CHECKING:
    import pandas as pd


class FAMDParams(Strict):
    inertia: float = Field(0.7, gt=0, le=1)  # keep the fewest components explaining this share of the inertia
    max_components: int = Field(30, ge=2)
    outliers: Literal["ecod", "none"] = "none"
    contamination: float = Field(0.1, gt=0, lt=0.5)
    n_init: int = Field(10, ge=1)
    max_iter: int = Field(300, ge=1)


class FAMDTransformer:
    """A fitted prince.FAMD and the number of components kept: new rows -> the same coordinates.

    prince's own `transform` recomputes each category's proportion from the rows it is given, so
    a customer's coordinates would depend on the other customers in the batch (a single new row
    would have every proportion at 0 or 1). Here the proportions are the fitting table's, frozen
    at fit; everything else is prince's (its scaler, its one-hot columns, its PCA rotation).
    """

    def __init__(self, famd, columns: list[str], numeric: list[str], n: int):
        self.famd, self.columns, self.numeric, self.n = famd, columns, numeric, n
        self.proportions = None

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[self.columns].copy()
        for c in self.columns:
            out[c] = out[c].astype(float) if c in self.numeric else out[c].astype(str)
        return out

    def fit(self, frame: pd.DataFrame) -> "FAMDTransformer":
        X = self.frame(frame)
        self.famd.fit(X)
        self.proportions = self._one_hot(X).mean(axis="rows")
        return self

    def _one_hot(self, X: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        cat = self.famd._active_cat_cols()
        return pd.get_dummies(X[cat].astype(str), dtype=float).reindex(columns=self.famd.one_hot_columns_,
                                                                         fill_value=0)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        import pandas as pd
        import prince

        f, X = self.famd, self.frame(frame)
        X_num = X[f._active_num_cols()].astype(float)
        X_num[:] = f.num_scaler_.transform(X_num)
        p = self.proportions
        Z = pd.concat([X_num, self._one_hot(X).sub(p, axis="columns").div(np.sqrt(p), axis="columns")],
                      axis=1).fillna(0.0)
        coords = prince.pca.PCA.row_coordinates(f, Z)
        return np.ascontiguousarray(np.asarray(coords)[:, :self.n], dtype=np.float64)


class FAMDMethod(Method):
    name = "famd"
    display = "FAMD + K-means"
    simplicity = 3  # the recommendation's tie-break: lower = simpler
    Params = FAMDParams
    algorithm = "K-means on FAMD components"
    summary = "K-means on the leading components of a factor analysis of mixed data (FAMD)"
    notebook_title = "FAMD + K-means"  # its notebook's title (analysis/segment.ipynb)
    notebook_intro = ("The mixed table is reduced to its leading FAMD components (prince), in which every column "
                      "weighs alike; K-means groups the customers in that space.")
    weighted_refit = True

    def requires(self, table) -> str | None:
        if not table.numeric or not table.categorical:
            return (f"FAMD needs numeric and categorical columns (with numbers only it is PCA, with categories only "
                    f"MCA); this table has {len(table.numeric)} numeric and {len(table.categorical)} categorical")
        return None

    def build_space(self, table, params, env) -> Space:
        import prince

        mp = params.famd
        cols = table.numeric + table.categorical
        total = len(table.numeric) + sum(table.frame[c].nunique() for c in table.categorical) - len(table.categorical)
        n_fit = int(max(2, min(mp.max_components, total)))
        famd = prince.FAMD(n_components=n_fit, n_iter=3, random_state=env.seed, engine="sklearn",
                           handle_unknown="ignore")
        tr = FAMDTransformer(famd, cols, table.numeric, n_fit).fit(table.frame)
        cum = np.asarray(famd.cumulative_percentage_of_variance_, dtype=float) / 100.0
        n = int(np.searchsorted(cum, mp.inertia - 1e-12) + 1) if cum[-1] >= mp.inertia else n_fit
        n = max(2, min(n, n_fit))
        tr.n = n
        X = tr.transform(table.frame)
        info = {"dims": n, "components_fitted": n_fit, "explained_inertia": float(cum[n - 1]),
                "inertia_target": mp.inertia, "reached": bool(cum[n - 1] >= mp.inertia - 1e-9),
                "cumulative": [float(v) for v in cum]}
        return Space({"X": X}, tr, info, outlier_X=X)

    def estimator(self, value, params, seed, scale, n_init=None):
        return kmeans_estimator(value, self.params(params), seed, scale, n_init)

    def transform_new(self, run, frame):
        tr = run.file(run.layout.space_transformer(self.name), "the FAMD transformer")
        return tr.transform(frame), {}
