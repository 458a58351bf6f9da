"""Projections of a feature space for the figures: PCA, t-SNE, and MCA of the categorical columns.

Computed once per feature space (never per k) on a seeded sample of rows shared
by all spaces, so every k's labels, and every method's, can be drawn on them.
PCA is fitted on all rows; t-SNE (openTSNE, the faster engine; scikit-learn's
stays reachable with engine="sklearn") runs on the sample only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA


def pca(X: np.ndarray, rows: np.ndarray, seed: int) -> tuple[pd.DataFrame, list[float]]:
    n_comp = min(3, X.shape[1])
    p = PCA(n_components=n_comp, random_state=seed).fit(X)
    coords = p.transform(X[rows])
    out = pd.DataFrame({f"pca{i + 1}": coords[:, i] for i in range(n_comp)})
    return out, [float(v) for v in p.explained_variance_ratio_]


def tsne(X: np.ndarray, seed: int, engine: str = "opentsne", threads: int = 1) -> np.ndarray:
    if len(X) < 10:
        return np.zeros((len(X), 2))
    perplexity = float(min(30, max(2, (len(X) - 1) / 3)))
    if engine == "sklearn":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(X)
    from openTSNE import TSNE as OTSNE

    emb = OTSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=threads,
                initialization="pca", verbose=False).fit(np.ascontiguousarray(X, dtype=np.float64))
    return np.asarray(emb)


def mca(frame: pd.DataFrame, categorical: list[str], rows: np.ndarray, seed: int) -> tuple[pd.DataFrame, list[float]]:
    """Multiple correspondence analysis (prince) of the categorical columns, fitted on all rows."""
    import prince

    if len(categorical) < 2:
        return pd.DataFrame({"mca1": np.zeros(len(rows)), "mca2": np.zeros(len(rows))}), [0.0, 0.0]
    data = frame[categorical].astype(str)
    m = prince.MCA(n_components=2, random_state=seed, one_hot=True).fit(data)
    coords = np.asarray(m.row_coordinates(data.iloc[rows]))
    try:
        var = [float(v) / 100 for v in np.asarray(m.percentage_of_variance_)[:2]]
    except AttributeError:
        var = [float(v) for v in np.asarray(m.eigenvalues_)[:2]]
    return pd.DataFrame({"mca1": coords[:, 0], "mca2": coords[:, 1]}), var


def project_space(X: np.ndarray, rows: np.ndarray, seed: int, engine: str = "opentsne", threads: int = 1) -> tuple[pd.DataFrame, dict]:
    coords, var = pca(X, rows, seed)
    t = tsne(X[rows], seed, engine, threads)
    coords["tsne1"], coords["tsne2"] = t[:, 0], t[:, 1]
    coords.insert(0, "row", rows)
    return coords, {"pca_explained_variance": var, "rows": int(len(rows)), "fitted_rows_pca": int(len(X)),
                    "tsne_engine": engine}
