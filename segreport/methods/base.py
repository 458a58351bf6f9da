"""The interface every segmentation method implements, and what the stages may ask of it.

A method is one module in `segreport/methods/` holding a `Method` subclass, registered
by one line in `methods/__init__.py`, plus its about-template
`templates/pages/about/<name>.md.j2`. The stages (prepare, grid, cell, compare, render,
assign) only call what is declared here; no stage tests a method's name. Its grid cells run
the one analysis notebook `analysis/segment.ipynb`, headed by its `notebook_title` and
`notebook_intro`, with the cells of its own (`notebook_cells`) where it has something of its
own to show; its chapter of the report and the chapter's stub come from the registry.

A method declares:

- `name`, `display` and `Params`: its key in params.yml, how the report names it, and a
  pydantic model of its parameters (validated under that key);
- `notebook_title`, `notebook_intro` and `notebook_cells()`: what its grid cells' notebook
  says of it (the title, one paragraph) and the cells it adds to it (none by default);
- `grid`: the parameter its grid runs over: "k" (the number of segments, given), or its own
  (`hdbscan`: min_cluster_size, the number of segments is found) with `grid_values(params)`;
- `requires(table)`: why it cannot run on a table (None where it can);
- `build_space(table, params, env)`: its feature space, built once per data set, with the
  fitted transformer that `assign` reuses (`transform_new`), and the matrix its ECOD outlier
  detector (if any) is fitted on;
- `estimator(value, params, seed, scale, n_init)`: a scikit-learn clusterer (BaseEstimator +
  ClusterMixin: fit / predict / fit_predict / labels_ / transform = distance to each centre);
  `fit_kwargs(space)`: extra arguments of its fit (K-Prototypes: `categorical=`);
- `own_space(space)`: the matrix its own-space metrics are computed in (None: no Euclidean
  geometry), and `projection`: whose projections the report draws its segments on.

What every method shares sits at the end: `fit_rows` (a fit on some rows, the outliers left out)
and `segments` (each row's segment and distance under a fitted model), used alike by the cell, the
comparison's null references, `assign` and `track`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.schema import Strict  # noqa: F401  (every method's Params derives from it)


@dataclass
class Space:
    """A built feature space: arrays saved as <name>.npy, a fitted transformer, facts for the report."""

    arrays: dict[str, np.ndarray]
    transformer: Any = None
    info: dict = field(default_factory=dict)
    outlier_X: np.ndarray | None = None  # what ECOD is fitted on, where the method uses it


@dataclass
class BuildEnv:
    """What a space builder may use besides the table: the run's inputs and the executor's hooks."""

    inputs: dict
    cache_dir: str | None = None
    progress: bool = True
    seed: int = 0
    run_parts: Any = None  # the Dask session's embedding hook (None: embed here)
    k: list[int] = field(default_factory=list)


class Method:
    name: ClassVar[str]
    display: ClassVar[str]
    Params: ClassVar[type]
    grid: ClassVar[str] = "k"  # the grid parameter; "k" = the number of segments is given
    grid_label: ClassVar[str] = "k"  # how pages name the grid parameter
    projection: ClassVar[str] = "own"  # "own": draw on its own space's projections; "common": the common space's
    cost_name: ClassVar[str] = "inertia"
    algorithm: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for the comparison table
    euclidean: ClassVar[bool] = True  # its own space has a Euclidean geometry (own-space metrics, k choice)
    builds_in_client: ClassVar[bool] = False  # its space is built by the client, which sends its parts to Dask
    # how simple the method is to explain and to run again (lower = simpler): the recommendation's tie-break
    # (K-means 1 < K-Prototypes 2 < FAMD 3 < LLM embeddings 4 < HDBSCAN 5)
    simplicity: ClassVar[int] = 99
    null_reference: ClassVar[bool] = True  # its pipeline is rerun on tables without segments (compare.null_check)
    # its estimator's fit takes sample_weight with the meaning of repeated rows: a bootstrap resample's
    # distinct rows are fitted once each, weighted by their count (cell.stability)
    weighted_refit: ClassVar[bool] = False
    # its space is computed row by row with nothing fitted on the table (the LLM's embedding): a sample of the
    # table's rows has the rows of the table's space as its space, so the null reference's observed sample
    # reads them instead of computing them again (compare.null_check)
    rowwise_space: ClassVar[bool] = False
    # its cells' notebook (analysis/segment.ipynb): the title (default: `display`) and the paragraph under it
    notebook_title: ClassVar[str] = ""
    notebook_intro: ClassVar[str] = ""

    # ---------------------------------------------------------------- its notebook

    def notebook_cells(self) -> list[tuple[str, str]]:
        """The cells this method adds to its grid cells' notebook, as ("markdown" | "code", source), shown
        after the scores' chart (the cell tagged `method-cells`): only where it has something of its own to
        show. The code runs in the notebook's namespace (`run_dir`, `method`, `value`, `metrics`, `nb`)."""
        return []

    def notebook_words(self) -> dict:
        """What the notebook's markdown says of this method (the placeholders of analysis/segment.ipynb)."""
        return {"method": self.name, "page": self.display, "title": self.notebook_title or self.display,
                "intro": self.notebook_intro, "grid_label": self.grid_label,
                "cell": "(method, k)" if self.grid == "k" else "grid cell"}

    # ---------------------------------------------------------------- what it needs

    def requires(self, table) -> str | None:
        """Why this method cannot run on `table` (one sentence), or None."""
        return None

    def prepare_inputs(self, params, table, root: Path) -> dict:
        """Inputs beyond the table, checked before anything is written (kept in context.json)."""
        return {}

    def space_key_parts(self, params, inputs: dict) -> list:
        """What the feature space depends on besides the table (its cache key)."""
        return [self.params(params).model_dump(mode="json")]

    def params(self, params):
        return getattr(params, self.name)

    # ---------------------------------------------------------------- the space and the fit

    def build_space(self, table, params, env: BuildEnv) -> Space:
        raise NotImplementedError

    def grid_values(self, params) -> list[int]:
        return list(params.k)

    def estimator(self, value: int, params, seed: int, scale: dict, n_init: int | None = None):
        raise NotImplementedError

    def fit_kwargs(self, space: dict) -> dict:
        return {}

    def own_space(self, space: dict) -> np.ndarray | None:
        return space["X"] if self.euclidean else None

    def cost(self, model) -> float:
        return float(model.inertia_)

    def model_facts(self, model) -> dict:
        """Facts of a fitted model for metrics.json (e.g. K-Prototypes' gamma)."""
        return {}

    def found_outliers(self, model) -> np.ndarray | None:
        """Rows the fit itself marks as outliers (HDBSCAN's noise); None where it marks none."""
        return None

    def outlier_matrix(self, space: dict, common: np.ndarray) -> np.ndarray:
        """The matrix its ECOD detector is fitted on (its own space by default)."""
        return space["X"]

    def outlier_params(self, params) -> tuple[str, float]:
        mp = self.params(params)
        return getattr(mp, "outliers", "none"), getattr(mp, "contamination", 0.1)

    # ---------------------------------------------------------------- new customers (assign)

    def transform_new(self, run, frame) -> tuple[np.ndarray, dict]:
        """New rows (normalised like the run's table) into this method's space, with facts."""
        ct = run.file(run.layout.space_transformer(self.name), f"the {self.display} transformer")
        return np.nan_to_num(np.asarray(ct.transform(frame), dtype=np.float64), nan=0.0), {}

    def outlier_input_new(self, run, frame, X) -> np.ndarray:
        """The matrix the method's ECOD model scores new rows in (its own space by default)."""
        return X

    # ---------------------------------------------------------------- the comparison

    def extra_comparison(self, layout, ctx: dict, value: int) -> dict | None:
        """A method's own experiment for the comparison page (the LLM's numbers-as-words)."""
        return None


# ---------------------------------------------------------------------------- what every method shares


def fit_rows(method, model, space: dict, rows: np.ndarray):
    """Fit `model` on the given rows of the space (the space's outliers among them left out)."""
    outliers = space.get("outliers")
    keep = rows if outliers is None else rows[~outliers[rows]]
    if len(np.unique(keep)) < getattr(model, "n_clusters", 1):
        keep = rows
    X = space["X"]
    if len(keep) == len(X) and np.array_equal(keep, np.arange(len(X))):
        return model.fit(np.asarray(X), **method.fit_kwargs(space))  # every row: the (memory-mapped) space itself
    return model.fit(np.asarray(X[keep]), **method.fit_kwargs(space))


def segments(method, model, X) -> tuple[np.ndarray, np.ndarray]:
    """(segment, distance to its centre) of rows under a fitted model: the closest centre, first on
    ties, or the model's own prediction where its segments are not centre-based."""
    X = np.asarray(X)
    dist = np.asarray(model.transform(X))
    if method.grid == "k":
        lab = dist.argmin(axis=1).astype(np.int64)
    else:
        lab = np.asarray(model.predict(X), dtype=np.int64)
    return lab, dist[np.arange(len(lab)), lab]
