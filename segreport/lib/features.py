"""The feature spaces, each built once per data set and reused by every k.

- encoded   (K-means): one-hot (nominal) or ordinal (ordered) columns + Yeo-Johnson power transform
- mixed     (K-Prototypes): power-transformed numeric columns + categorical codes
- embedding (LLM): sentence embeddings of each row's text (see embed.py)
- common    (comparison): standardised numeric + one-hot categorical, the space in
            which every method's labels are scored on the same footing

Each builder returns the matrix and a fitted transformer, so that `assign` can
map new customers into the same space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, PowerTransformer

from .data import Table, sample_rows


def _levels(table: Table, col: str) -> list[str]:
    spec = table.spec(col)
    seen = sorted(table.frame[col].unique().tolist())
    if spec.order:
        return [lv for lv in spec.order if lv in seen] + [lv for lv in seen if lv not in spec.order]
    return seen


def _ordinal(table: Table, cols: list[str]) -> OrdinalEncoder:
    return OrdinalEncoder(categories=[_levels(table, c) for c in cols], handle_unknown="use_encoded_value",
                          unknown_value=np.nan)


def encoded_transformer(table: Table, power_transform: str = "all") -> ColumnTransformer:
    """One-hot or ordinal per categorical column, then a Yeo-Johnson power transform.

    A category is one-hot encoded (first level dropped) unless the schema says it is ordered:
    `encoding: ordinal`, or an `order` with no explicit encoding. Ordinal codes of a nominal
    column would invent distances (alphabetical "admin." < "blue-collar" < ... < "unknown"), and a
    power-transformed 0/1 code of a rare binary level weighs as much as a whole numeric column.

    power_transform="all" transforms numeric and ordinal columns together (the seed's first
    notebook); "numeric" transforms only numeric columns and leaves ordinal codes as they are
    (the seed's later configuration). A numeric column with encoding "none" is passed through.
    """
    ordinal, onehot, raw = [], [], []
    numeric = [s.name for s in table.used if s.kind == "numeric" and s.encoding != "none"]
    for spec in table.used:
        if spec.kind == "numeric":
            if spec.encoding == "none":
                raw.append(spec.name)
            continue
        enc = spec.encoding or ("ordinal" if spec.order else "onehot")
        (onehot if enc == "onehot" else raw if enc == "none" else ordinal).append(spec.name)
    parts = []
    if power_transform == "all" and (numeric or ordinal):
        steps = []
        cols = numeric + ordinal
        if ordinal:
            # ordinal codes first, numeric columns passed through after them, then one power transform
            steps.append(ColumnTransformer([("ord", _ordinal(table, ordinal), ordinal)], remainder="passthrough",
                                           verbose_feature_names_out=False))
            cols = ordinal + numeric
        steps.append(PowerTransformer(method="yeo-johnson", standardize=True))
        parts.append(("power", make_pipeline(*steps), cols))
    else:
        if numeric:
            parts.append(("power", PowerTransformer(method="yeo-johnson", standardize=True), numeric))
        if ordinal:
            parts.append(("ordinal", _ordinal(table, ordinal), ordinal))
    raw_cat = [c for c in raw if c not in table.numeric]
    raw_num = [c for c in raw if c in table.numeric]
    if raw_cat:  # encoding "none" on a category: its codes, untransformed
        parts.append(("codes", _ordinal(table, raw_cat), raw_cat))
    if raw_num:
        parts.append(("asis", "passthrough", raw_num))
    if onehot:
        parts.append(("onehot", OneHotEncoder(categories=[_levels(table, c) for c in onehot], drop="first",
                                              handle_unknown="ignore", sparse_output=False), onehot))
    return ColumnTransformer(parts, verbose_feature_names_out=False)


def common_transformer(table: Table) -> ColumnTransformer:
    """Standardised numeric + one-hot categorical (each dummy scaled so a mismatch costs 1)."""
    parts = []
    if table.numeric:
        parts.append(("num", make_pipeline(PowerTransformer(method="yeo-johnson", standardize=True)), table.numeric))
    if table.categorical:
        parts.append(("cat", make_pipeline(
            OneHotEncoder(categories=[_levels(table, c) for c in table.categorical], handle_unknown="ignore",
                          sparse_output=False),
            _Scale(1 / np.sqrt(2))), table.categorical))
    return ColumnTransformer(parts, verbose_feature_names_out=False)


class _Scale(TransformerMixin, BaseEstimator):
    """Multiply by a constant (a stateless transformer usable in a pipeline)."""

    def __init__(self, factor: float = 1.0):
        self.factor = factor

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X, dtype=float) * self.factor

    def get_feature_names_out(self, input_features=None):
        return np.asarray(input_features, dtype=object)


@dataclass
class MixedEncoder:
    """K-Prototypes input: power-transformed numeric block + integer codes of the categorical block."""

    numeric: list[str]
    categorical: list[str]
    levels: dict[str, list[str]] = field(default_factory=dict)
    power: PowerTransformer | None = None

    def fit(self, frame: pd.DataFrame, table: Table) -> "MixedEncoder":
        self.levels = {c: _levels(table, c) for c in self.categorical}
        if self.numeric:
            self.power = PowerTransformer(method="yeo-johnson", standardize=True).fit(frame[self.numeric].to_numpy(float))
        return self

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
        """(X_num, X_cat, number of unseen category values). Unseen levels get code -1 (never matches)."""
        n = len(frame)
        xn = self.power.transform(frame[self.numeric].to_numpy(float)) if self.numeric else np.zeros((n, 0))
        xc = np.zeros((n, len(self.categorical)), dtype=np.int64)
        unseen = 0
        for j, c in enumerate(self.categorical):
            index = {lv: i for i, lv in enumerate(self.levels[c])}
            codes = frame[c].astype(str).map(index).fillna(-1).to_numpy(np.int64)
            unseen += int((codes < 0).sum())
            xc[:, j] = codes
        return np.ascontiguousarray(xn, dtype=np.float64), xc, unseen


def fit_encoded(table: Table, power_transform: str = "all") -> tuple[np.ndarray, ColumnTransformer, list[str]]:
    ct = encoded_transformer(table, power_transform)
    X = ct.fit_transform(table.frame)
    return np.asarray(X, dtype=np.float64), ct, list(ct.get_feature_names_out())


def fit_common(table: Table) -> tuple[np.ndarray, ColumnTransformer]:
    ct = common_transformer(table)
    return np.asarray(ct.fit_transform(table.frame), dtype=np.float64), ct


def fit_mixed(table: Table) -> tuple[np.ndarray, np.ndarray, MixedEncoder]:
    enc = MixedEncoder(table.numeric, table.categorical).fit(table.frame, table)
    xn, xc, _ = enc.transform(table.frame)
    return xn, xc, enc


def column_transform(ct, frame: pd.DataFrame) -> np.ndarray:
    """ct.transform(frame) of a fitted ColumnTransformer, step by step.

    The common space's pipeline ends in features._Scale, which is not a scikit-learn
    estimator: Pipeline.transform's fitted check (get_tags) refuses it in scikit-learn
    1.6+, although fit_transform went through. Applying each fitted step in turn is
    what ColumnTransformer.transform does, without that check.
    """
    blocks = []
    for _name, trans, cols in ct.transformers_:
        if trans == "drop" or len(cols) == 0:
            continue
        part = frame[list(cols)] if not isinstance(cols, slice) else frame.iloc[:, cols]
        if trans == "passthrough":
            out = part.to_numpy()
        else:
            steps = [s for _, s in trans.steps] if isinstance(trans, Pipeline) else [trans]
            out = part
            for step in steps:
                if step is not None and step != "passthrough":
                    out = step.transform(out)
        blocks.append(np.asarray(out, dtype=np.float64).reshape(len(frame), -1))
    return np.hstack(blocks) if blocks else np.zeros((len(frame), 0))


def ecod_outliers(X: np.ndarray, contamination: float, sample: int | None = None, seed: int = 0):
    """ECOD (pyod) outlier flags on a feature space; returns (flags, scores, fitted detector).

    With `sample` (the scalable path), ECOD is fitted on that many seeded rows, whose scores
    set the threshold, and every row is scored block by block: ECOD holds several float64
    copies of what it scores (four float64 arrays of its size: 12 GB for a million 384-dimensional embeddings).
    """
    from .ecod import ColumnwiseECOD  # pyod: only where outliers are flagged

    det = ColumnwiseECOD(contamination=contamination)
    if not sample or sample >= len(X):
        det.fit(X)
        flags, scores = det.labels_.astype(bool), det.decision_scores_.astype(np.float64)
    else:
        det.fit(np.asarray(X[sample_rows(len(X), sample, seed)]))
        scores = np.empty(len(X), dtype=np.float64)
        block = 50_000
        for lo in range(0, len(X), block):
            scores[lo:lo + block] = det.decision_function(np.asarray(X[lo:lo + block]))
        flags = scores > det.threshold_
    for scratch in ("U_l", "U_r", "U_skew", "O"):  # per-call working arrays: not needed to score new rows
        if hasattr(det, scratch):
            delattr(det, scratch)
    return flags, scores, det
