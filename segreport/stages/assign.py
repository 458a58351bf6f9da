"""`segreport assign`: give new customers the segments of a finished run.

Reapplies what a run saved: the schema and normalisation of its table, the fitted
feature transformer of the method's space (or, for the LLM method, the row-text
template and the embedding model), the ECOD outlier model where the method used
one, and the cell's segmenter. Writes the input rows with `segment` (0..k-1),
`segment_name` (S1..Sk, as in the report), `persona`, `outlier` and `distance`.

New data is normalised against the training table, not on its own: missing
numbers get the training median, category levels the run never saw are counted
and treated as unknown by each space (NaN -> the standardised mean 0 for
K-means' ordinal codes, no dummy for one-hot, code -1 that never matches a
K-Prototypes prototype, the new word in the LLM text), and levels pooled as
'other' in training map to 'other'. Rows of the training table itself get
exactly the run's labels: transforms are deterministic, LLM texts seen in
training reuse the stored embeddings, and ECOD scores new rows against the
training distribution frozen at fit time (not refitted on the new batch).
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from .. import SegreportError
from ..lib.data import _FALSE, _TRUE, MISSING_LEVEL, OTHER_LEVEL, parse_numeric, read_raw, resolve_schema
from ..methods import REGISTRY, get, params_of
from ..methods.base import segments
from ..core.safe_csv import csv_safe
from ..core.schema import ColumnSpec
from ..core.store import LABELS, MODEL, OUTLIER_MODEL, PERSONAS, SPACE_INFO, RunLayout, atomic_write_text, read_json

RESULT_COLUMNS = ("segment", "segment_name", "persona", "outlier", "distance")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# --------------------------------------------------------------------------- the run


class _Run:
    """What assign needs from a finished run, checked to be there."""

    def __init__(self, run_dir, method: str, k: int):
        root = Path(run_dir)
        if method not in REGISTRY:
            raise SegreportError(f"unknown method {method!r} (valid: {', '.join(REGISTRY)})")
        if not root.exists():
            raise SegreportError(f"{root}: no such run folder; run `segreport run` first")
        if not root.is_dir():
            raise SegreportError(f"{root}: is a file, not a run folder (results/<run>)")
        self.layout = layout = RunLayout(root)
        if not layout.context.exists():
            raise SegreportError(f"{root}: not a finished run (no {layout.context.name}); run `segreport run` first")
        self.ctx = ctx = layout.read_context()  # a damaged one: one line naming it (RecordError)
        self.params = params_of(ctx)
        self.m = m = get(method)
        self.method, self.k = method, int(k)
        if method not in ctx.get("methods", self.params.methods):
            raise SegreportError(f"{root}: method '{method}' is not part of this run (methods: "
                                 f"{', '.join(ctx.get('methods', self.params.methods))}); "
                                 f"run `segreport run --methods {method}` first")
        cell = layout.cell(method, k, m.grid)
        if not all((cell / f).exists() for f in (MODEL, PERSONAS, LABELS)):
            done = sorted(int(p.name[len(m.grid):]) for p in cell.parent.glob(f"{m.grid}*")
                          if p.name[len(m.grid):].isdigit() and (p / MODEL).exists())
            have = f" (finished: {m.grid_label}={', '.join(map(str, done))})" if done else ""
            how = f"`segreport run --k {k}`" if m.grid == "k" else f"`segreport run` with {m.grid_label} {k}"
            raise SegreportError(f"{root}: no finished cell {method} {m.grid}={k}; run {how} first{have}")
        self.cell = cell
        model = _load(cell / MODEL, joblib.load)
        self.segmenter = model["segmenter"] if isinstance(model, dict) else model
        cards = _load(cell / PERSONAS, read_json)
        self.personas = {int(c["segment"]): str(c.get("name") or f"S{int(c['segment']) + 1}") for c in cards}
        if not layout.table.exists():
            raise SegreportError(f"{layout.table}: the run's table is missing; rerun `segreport run`")
        self.train = _load(layout.table, pd.read_parquet)
        n_labels = len(pd.read_parquet(cell / LABELS, columns=["row"]))
        if n_labels != len(self.train):
            raise SegreportError(f"{cell}: fitted on {n_labels} rows but the run's table has {len(self.train)}; "
                                 f"the cell is stale, rerun `segreport run`")
        self.space_dir = layout.space(method)
        self.space_info = _load(self.space_dir / SPACE_INFO, read_json)
        self.inputs = (ctx.get("inputs") or {}).get(method) or {}

    def file(self, path: Path, what: str):
        if not path.exists():
            raise SegreportError(f"{path}: {what} is missing from the run; rerun `segreport run`")
        return _load(path, joblib.load)

    def schema(self) -> list[ColumnSpec]:
        return [ColumnSpec.model_validate(s) for s in self.ctx["schema"]]

    def pooled(self) -> set[str]:
        """Columns whose rare levels the run pooled as 'other' (saved with the run's data facts)."""
        return set(self.ctx.get("data", {}).get("pooled") or [])


def _load(path: Path, reader):
    if not Path(path).exists():
        raise SegreportError(f"{path}: missing from the run; rerun `segreport run`")
    try:
        return reader(path)
    except Exception as exc:  # truncated pickle, corrupt parquet or JSON, ...
        raise SegreportError(f"{path}: cannot be read ({type(exc).__name__}); rerun `segreport run`") from None


# --------------------------------------------------------------------------- the new rows


def normalise_new(df: pd.DataFrame, schema: list[ColumnSpec], train: pd.DataFrame, path: str,
                  pooled: set[str] = frozenset()) -> tuple[pd.DataFrame, dict]:
    """The used columns of new rows, typed and cleaned like the run's table (data.normalise), but
    against the training table: its medians, its levels. Returns the frame and counts of what was done.
    """
    by_name = {s.name: s for s in schema}
    used = [by_name.get(c) or ColumnSpec(name=c, kind="numeric" if pd.api.types.is_numeric_dtype(train[c])
                                         else "categorical") for c in train.columns]
    if df.shape[1] == 1 and len(used) > 1:
        raise SegreportError(
            f"{path}: every line is one field: no delimiter among ',', ';', tab and '|' splits the header "
            f"{str(df.columns[0])[:60]!r}")
    resolve_schema(df, used, path)  # a used column missing -> one line naming it
    out: dict[str, pd.Series] = {}
    facts = {"imputed": 0, "unseen": {}, "pooled": 0}
    for spec in used:
        s = df[spec.name].reset_index(drop=True)
        if spec.kind == "numeric":
            num = parse_numeric(s, spec.name, path)
            if num.isna().any():
                facts["imputed"] += int(num.isna().sum())
                # the training column was imputed with its own median, which leaves the median unchanged
                num = num.fillna(float(train[spec.name].median()))
            out[spec.name] = num.astype("float64")
            continue
        levels = set(train[spec.name].astype(str).unique())
        if spec.kind == "binary" and levels <= {"yes", "no", MISSING_LEVEL}:
            low = s.astype(object).where(s.isna(), s.astype(str).str.strip().str.lower())
            s = low.map(lambda v: v if pd.isna(v) else "yes" if v in _TRUE else "no" if v in _FALSE else v)
        cat = s.astype(object).where(s.isna(), s.astype(str).str.strip())
        cat = cat.fillna(MISSING_LEVEL).astype(str)
        new = ~cat.isin(levels)
        if new.any() and spec.name in pooled and OTHER_LEVEL in levels:
            facts["pooled"] += int(new.sum())
            cat = cat.where(~new, OTHER_LEVEL)
        elif new.any():
            facts["unseen"][spec.name] = int(new.sum())
        out[spec.name] = cat.astype(str)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df))), facts


# --------------------------------------------------------------------------- outliers


def ecod_scores(det, X: np.ndarray) -> np.ndarray:
    """ECOD outlier scores of new rows against the detector's training data, frozen.

    pyod's own `decision_function` re-estimates the empirical distributions on
    training + new rows together, so a row's score depends on the rest of the
    batch. Here each value's tail probabilities are looked up in the training
    ECDFs built exactly as pyod built them at fit time (same probability grid,
    same tie rule, same skewness), so a training row gets bit for bit the score
    it had in the fit. A value beyond the training range gets probability
    1/(n+1), as if it had been added to the training data.
    """
    from pyod.models.ecod import skew  # pyod's nan-safe skewness, as ECOD uses it

    Xt = det.X_train
    X = np.ascontiguousarray(np.asarray(X, dtype=Xt.dtype))
    n, d = Xt.shape
    prob = np.linspace(np.ones(d) / n, np.ones(d), n)  # as in pyod's column_ecdf
    floor = 1.0 / (n + 1)

    def ecdf(train: np.ndarray, new: np.ndarray) -> np.ndarray:
        out = np.empty(new.shape, dtype=np.float64)
        for j in range(d):
            col = np.sort(train[:, j])
            cnt = np.searchsorted(col, new[:, j], side="right")  # ties take the last tie's probability
            out[:, j] = np.where(cnt > 0, prob[np.maximum(cnt - 1, 0), j], floor)
        return out

    U_l = -1 * np.log(ecdf(Xt, X))
    U_r = -1 * np.log(ecdf(-Xt, -X))
    skewness = np.sign(skew(Xt, axis=0))
    U_skew = U_l * -1 * np.sign(skewness - 1) + U_r * np.sign(skewness + 1)
    O = np.maximum(U_l, U_r)
    O = np.maximum(U_skew, O)
    return O.sum(axis=1).ravel()


def ecod_flags(det, X: np.ndarray) -> np.ndarray:
    return ecod_scores(det, X) > det.threshold_


# --------------------------------------------------------------------------- output


def _to_csv(out: pd.DataFrame) -> str:
    out = out.copy()
    for c in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[c]) or pd.api.types.is_bool_dtype(out[c])):
            out[c] = out[c].astype(object).map(csv_safe)
    out.columns = [csv_safe(str(c)) for c in out.columns]
    return out.to_csv(index=False)


# --------------------------------------------------------------------------- entry point


def label(run: _Run, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(segment, distance, outlier flag, facts) of normalised rows in the run's fitted pipeline."""
    X, facts = run.m.transform_new(run, frame)
    try:
        # the segment as cell.fit_method gives it to the run's own rows (closest centre, first on ties)
        seg, dist = segments(run.m, run.segmenter, X)
    except ValueError as exc:  # the space changed shape since the cell was fitted
        raise SegreportError(f"{run.cell}: the fitted model does not fit the run's current feature space "
                             f"({str(exc).splitlines()[0]}); rerun `segreport run`") from None
    outlier = np.zeros(len(seg), dtype=bool)
    facts["outliers"] = None
    if run.space_info.get("outliers"):
        det = run.file(run.space_dir / OUTLIER_MODEL, "the ECOD outlier model")
        outlier = ecod_flags(det, run.m.outlier_input_new(run, frame, X))
        facts["outliers"] = int(outlier.sum())
    return seg, dist.astype(np.float64), outlier, facts


def score_frame(run_dir, method: str, k: int, df: pd.DataFrame, path: str = "the new rows") -> pd.DataFrame:
    """RESULT_COLUMNS for raw rows (as read_raw reads them), one row each, in order: what `assign` writes.
    Rows are scored one by one, so parts of a table scored apart (e.g. Dask tasks) give the whole's result."""
    return _score(run_dir, method, k, df, path)[0]


def _score(run_dir, method: str, k: int, df: pd.DataFrame, path: str) -> tuple[pd.DataFrame, dict]:
    """score_frame's rows, and what was done to the input (unseen levels, imputed numbers, outliers)."""
    run = _Run(run_dir, method, k)
    frame, facts = normalise_new(df, run.schema(), run.train, path, run.pooled())
    seg, dist, outlier, more = label(run, frame)
    facts.update(more)
    out = pd.DataFrame({"segment": seg, "segment_name": [f"S{s + 1}" for s in seg],
                        "persona": [run.personas.get(int(s), f"S{s + 1}") for s in seg],
                        "outlier": outlier.astype(bool), "distance": dist})
    return out, facts


def assign(run_dir, method: str, k: int, data_path, out_path) -> tuple[int, str]:
    """Give new customers the segments of a finished run; returns (rows written, short facts string)."""
    path = str(data_path)
    df, _ = read_raw(path)
    scored, facts = _score(run_dir, method, k, df, path)
    out = df.reset_index(drop=True).drop(columns=[c for c in RESULT_COLUMNS if c in df.columns])
    for c in RESULT_COLUMNS:
        out[c] = scored[c].to_numpy()
    atomic_write_text(out_path, _to_csv(out))
    return len(out), _facts(facts, [c for c in RESULT_COLUMNS if c in df.columns])


def _facts(f: dict, replaced: list[str]) -> str:
    parts = []
    if f["unseen"]:
        n = sum(f["unseen"].values())
        parts.append(_plural(n, "unseen category value") + " ("
                     + ", ".join(f"{c}: {v}" for c, v in f["unseen"].items()) + ")")
    if f["pooled"]:
        parts.append(f"{_plural(f['pooled'], 'rare value')} pooled as '{OTHER_LEVEL}'")
    if f["imputed"]:
        parts.append(f"{_plural(f['imputed'], 'missing number')} imputed with the training median")
    if f.get("outliers") is not None:
        parts.append(_plural(f["outliers"], "outlier"))
    if f.get("embedded"):
        parts.append(f"{_plural(f['embedded'], 'new text')} embedded")
    if replaced:
        parts.append(f"input column(s) {', '.join(replaced)} replaced")
    return ", ".join(parts)
