"""Method `kprototypes`: K-Prototypes (Huang 1997) on power-transformed numbers and category codes.

The estimator, `KPrototypesSegmenter` (and `initial_prototypes`), lives in `_kprototypes.py`: it needs
scikit-learn and numba, so it is imported on first use; `segreport.methods.kprototypes.<name>` still
finds it (and every other name of that module).
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from pydantic import Field

from .base import Method, Space, Strict


def __getattr__(name: str):
    """The estimator module's names (KPrototypesSegmenter, initial_prototypes, ...), imported on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    from . import _kprototypes  # scikit-learn and numba: on first use

    try:
        return getattr(_kprototypes, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


class KPrototypesParams(Strict):
    engine: Literal["fast", "kmodes"] = "fast"
    gamma: Optional[float] = Field(None, gt=0)
    init: Literal["Huang", "Cao", "random"] = "Huang"
    n_init: int = Field(10, ge=1)
    max_iter: int = Field(100, ge=1)
    outliers: Literal["ecod", "none"] = "none"
    contamination: float = Field(0.1, gt=0, lt=0.5)
    random_state: Optional[int] = None  # default: the run's seed


class KPrototypesMethod(Method):
    """Method `kprototypes`: power-transformed numbers + category codes in one table, Huang's distance."""

    name = "kprototypes"
    display = "K-Prototypes"
    simplicity = 2  # the recommendation's tie-break: lower = simpler
    Params = KPrototypesParams
    projection = "common"
    cost_name = "cost"
    euclidean = False  # squared differences + gamma * mismatches: scored in the neutral spaces instead
    algorithm = "K-Prototypes"
    summary = "K-Prototypes: squared differences of numbers plus gamma for each category mismatch"
    notebook_title = "K-Prototypes on mixed features"  # its notebook's title (analysis/segment.ipynb)
    notebook_intro = ("Numeric columns (power-transformed) use squared Euclidean distance, categorical columns a "
                      "mismatch count weighted by gamma, as in Huang (1997).")

    def requires(self, table) -> str | None:
        if not table.numeric or not table.categorical:
            return (f"K-Prototypes needs at least one numeric and one categorical column; this table has "
                    f"{len(table.numeric)} numeric and {len(table.categorical)} categorical")
        return None

    def build_space(self, table, params, env) -> Space:
        from ..lib.features import fit_common, fit_mixed  # scikit-learn: only where a space is built

        xn, xc, enc = fit_mixed(table)
        X = np.hstack([xn, xc.astype(np.float64)])
        outlier_X = fit_common(table)[0] if params.kprototypes.outliers == "ecod" else None
        return Space({"X": X}, enc, {"numeric": table.numeric, "categorical": table.categorical,
                                     "categorical_index": list(range(xn.shape[1], X.shape[1]))}, outlier_X)

    def outlier_matrix(self, space, common):
        return common  # ECOD needs a Euclidean space: the common space, as in build_space

    def fit_kwargs(self, space: dict) -> dict:
        return {"categorical": space["info"]["categorical_index"]}

    def estimator(self, value, params, seed, scale, n_init=None):
        from ._kprototypes import KPrototypesSegmenter  # scikit-learn and numba: only where a model is fitted

        mp = self.params(params)
        return KPrototypesSegmenter(n_clusters=value, gamma=mp.gamma, init=mp.init, n_init=n_init or mp.n_init,
                                    max_iter=mp.max_iter, engine=mp.engine,
                                    random_state=seed if mp.random_state is None else mp.random_state)

    def cost(self, model) -> float:
        return float(model.cost_)

    def model_facts(self, model) -> dict:
        return {"gamma": float(model.gamma_), "engine": model.engine}

    def transform_new(self, run, frame):
        enc = run.file(run.layout.space_transformer(self.name), "the K-Prototypes encoder")
        # unseen levels get code -1 (never matches a prototype); they are swapped for a known level
        # before the encoder and set to -1 after it, as pandas deprecates unknown values in a Categorical
        frame = frame.copy()
        unseen = {}
        for c in enc.categorical:
            unseen[c] = ~frame[c].isin(enc.levels[c]).to_numpy()
            if unseen[c].any():
                frame.loc[unseen[c], c] = enc.levels[c][0]
        xn, xc, _ = enc.transform(frame)
        for j, c in enumerate(enc.categorical):
            xc[unseen[c], j] = -1
        return np.hstack([xn, xc.astype(np.float64)]), {}

    def outlier_input_new(self, run, frame, X):
        from ..lib.features import column_transform  # scikit-learn (features imports it): only where new rows are placed

        ct = run.file(run.layout.space_transformer("common"), "the common-space transformer")
        return column_transform(ct, frame)
