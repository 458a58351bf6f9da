"""`segreport track`: score each new snapshot of the customer table with a run's segmentation
and follow the segments over time.

A snapshot (the customer table as of a month) is scored with the saved pipeline of one
(method, k) of a finished run (`assign.score_frame`: the run's normalisation, transformers,
outlier model and centres), locally or in row parts as Dask tasks, and kept in
``results/<run>/snapshots/<as-of>/``:

    snapshot.json    what was scored (file sha256, rows, method, k, model sha256), what the
                     normalisation met (unseen levels, imputed numbers), drift per column
    labels.parquet   row, segment, outlier, distance; id and outcome where the snapshot has them
    drift.parquet    per column and bin: the fitting table's share and the snapshot's

The same file under the same as-of is never scored twice (nothing is rewritten). After each
snapshot the history is summarised against the fitting table (the "baseline") into
``results/<run>/tracking.json`` and ``results/<run>/tracking/*.parquet``, which the report's
tracking page reads:

- segment sizes and shares per period, the change against the baseline and whether it exceeds
  sampling noise (two-proportion z-test, 95 %);
- where an identifier column is in both periods, who moved from which segment to which, and who
  is new or gone (between consecutive periods);
- drift per input column, by type with an effect size and a decision (segreport/lib/drift.py: normed
  Wasserstein + K-S for numbers, Jensen-Shannon + chi-square for categories, the missing share and
  levels never seen on their own; the PSI kept as a number), as a whole and within each segment;
- whether the drift changes the segments: the segmentation refitted on the snapshot (same method,
  k, seed), its ARI with the saved assignment next to a refit on as many baseline rows;
- the outcome rate per segment where the snapshot has the run's outcome column;
- the share of customers far from their segment's centre (beyond the fitting table's 95th
  percentile of distances) and of outliers, against the fitting table;
- a recommendation for the latest snapshot: keep, watch or re-fit, with the numbers that
  triggered it (drift alone is watch; re-fit needs the segments themselves to change).

The measures are stored with each snapshot; the thresholds (params.yml's `tracking:` block) are
applied when the history is summarised, so other thresholds re-judge a history without scoring again.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .. import SegreportError
from .assign import _Run, normalise_new, score_frame
from ..core.config import TrackingParams
from .dask_grid import DaskSession
from ..lib.data import MISSING_LEVEL, infer_schema, read_raw, to_binary
from ..lib.drift import CATEGORICAL, MEASURES, NUMERIC, TESTS, agreement, by_segment, decide, measure_table
from ..lib.drift import bin_counts, decile_edges, psi  # noqa: F401  (this module's names before drift.py)
from ..methods.base import fit_rows, segments
from ..core.store import (DRIFT, LABELS, MODEL, PERSONAS, SNAPSHOT, RunLayout, RunLock, atomic_folder, atomic_write_json,
                    atomic_write_parquet, chosen_segmentation, read_json, read_json_or_empty, sha256_file, sweep_partial)

SNAPSHOTS = "snapshots"
BASELINE = "baseline"
PSI_MODERATE, PSI_LARGE = 0.10, 0.25
CONFIDENCE = 0.95         # size changes: two-sided two-proportion z-test at this level
FAR_QUANTILE = 0.95       # "far from the centre": beyond this quantile of the fitting table's distances
FAR_RATIO = 2.0           # re-fit when the far share is over this many times what the fitting table had
OUTLIER_RATIO = 1.5       # re-fit when the outlier share is over this many times the fitting table's
EVIDENCE = 0.01           # ... and a one-sided binomial test says so at this level
PART_ROWS = 50_000        # rows per Dask task
_AS_OF = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2}))?$")


# --------------------------------------------------------------------------- small pieces


def parse_as_of(value: str | None) -> tuple[str, str]:
    """'2026-11' -> ('2026-11', 'November 2026'); '2026-11-30' -> (.., '30 November 2026'); None: this month."""
    if value is None:
        today = _dt.date.today()
        value = f"{today.year:04d}-{today.month:02d}"
    m = _AS_OF.match(str(value).strip())
    if not m:
        raise SegreportError(f"--as-of {value!r}: expected a month YYYY-MM (e.g. 2026-11) or a day YYYY-MM-DD")
    year, month, day = int(m.group(1)), int(m.group(2)), m.group(3)
    if not 1 <= month <= 12:
        raise SegreportError(f"--as-of {value!r}: month {month} is not 1..12")
    label = f"{calendar.month_name[month]} {year}"
    if day is not None:
        try:
            _dt.date(year, month, int(day))
        except ValueError:
            raise SegreportError(f"--as-of {value!r}: no such day") from None
        label = f"{int(day)} {label}"
    return m.group(0), label


def psi_reading(value: float | None) -> str | None:
    if value is None:
        return None
    return "stable" if value < PSI_MODERATE else "moderate" if value <= PSI_LARGE else "large"


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:,.2f}"


def column_drift(train: pd.Series, new: pd.Series, kind: str) -> tuple[dict, pd.DataFrame]:
    """PSI of one column of new rows against the fitting table, with its bins; unseen levels counted."""
    if kind == "numeric":
        edges = decile_edges(train.to_numpy())
        e, a = bin_counts(train.to_numpy(), edges), bin_counts(new.to_numpy(), edges)
        names = ([f"up to {_fmt(edges[0])}"] + [f"{_fmt(lo)} to {_fmt(hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
                 + [f"over {_fmt(edges[-1])}"]) if len(edges) else ["all"]
        summary = {"baseline_median": float(train.median()), "median": float(new.median()),
                   "unseen_rows": 0, "unseen_levels": {}}
    else:
        tr, nw = train.astype(str), new.astype(str)
        levels = sorted(tr.unique())
        ce, ca = tr.value_counts(), nw.value_counts()
        unseen = ca[~ca.index.isin(levels)].sort_values(ascending=False)
        names = levels + ["(not in the fitting table)"]
        e = np.array([ce.get(lv, 0) for lv in levels] + [0])
        a = np.array([ca.get(lv, 0) for lv in levels] + [int(unseen.sum())])
        se, sa = e / max(e.sum(), 1), a / max(a.sum(), 1)
        top = int(np.argmax(np.abs(sa - se)))
        summary = {"unseen_rows": int(unseen.sum()),
                   "unseen_levels": {str(lv): int(n) for lv, n in unseen.head(10).items()},
                   "top_level": names[top], "top_baseline_share": float(se[top]), "top_share": float(sa[top])}
    value = psi(e, a)
    summary.update(kind=kind, psi=value)
    bins = pd.DataFrame({"bin": names, "order": np.arange(len(names)),
                         "baseline_share": e / max(e.sum(), 1), "share": a / max(a.sum(), 1)})
    return summary, bins


def size_test(n0: int, x0: int, n1: int, x1: int) -> dict:
    """Two-proportion z-test of a segment's share in the baseline (x0 of n0) and a snapshot (x1 of n1)."""
    from scipy.stats import norm

    p0, p1 = x0 / n0, x1 / n1
    pooled = (x0 + x1) / (n0 + n1)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    z = 0.0 if se == 0 else (p1 - p0) / se
    p = float(2 * norm.sf(abs(z)))
    return {"baseline_share": p0, "share": p1, "change": p1 - p0, "z": z, "p_value": p,
            "beyond_noise": bool(p < 1 - CONFIDENCE)}


def migration(prev: pd.DataFrame, cur: pd.DataFrame) -> pd.DataFrame:
    """Customers by (from_segment, to_segment) between two periods matched on `id`: from -1 = new
    customers (only in `cur`), to -1 = departed (only in `prev`)."""
    a = prev[["id", "segment"]].rename(columns={"segment": "from_segment"})
    b = cur[["id", "segment"]].rename(columns={"segment": "to_segment"})
    m = a.merge(b, on="id", how="outer")
    m = m.fillna({"from_segment": -1, "to_segment": -1}).astype({"from_segment": "int64", "to_segment": "int64"})
    out = m.groupby(["from_segment", "to_segment"]).size().rename("customers").reset_index()
    return out.sort_values(["from_segment", "to_segment"]).reset_index(drop=True)


def binomial_excess(x: int, n: int, p0: float) -> float:
    """One-sided p-value of seeing at least x of n when the rate is p0."""
    from scipy.stats import binom

    if n == 0 or p0 <= 0:
        return 1.0 if x == 0 else 0.0
    return float(binom.sf(x - 1, n, p0))


def _outcome_values(s: pd.Series) -> pd.Series:
    """As the run read its outcome column (data.load_table): yes/no where boolean-like, else text."""
    b = to_binary(s)
    return (b if b is not None else s.astype(str)).reset_index(drop=True).astype(str)


# --------------------------------------------------------------------------- one snapshot


class _Snapshot:
    """A scored snapshot: its facts (snapshot.json), labels and drift bins."""

    def __init__(self, meta: dict, labels: pd.DataFrame, drift: pd.DataFrame):
        self.meta, self.labels, self.drift = meta, labels, drift

    @classmethod
    def read(cls, folder: Path) -> "_Snapshot":
        try:
            return cls(read_json(folder / SNAPSHOT), pd.read_parquet(folder / LABELS), pd.read_parquet(folder / DRIFT))
        except (OSError, ValueError) as exc:
            raise SegreportError(f"{folder}: an incomplete snapshot ({type(exc).__name__}); remove the folder "
                                 "and track that file again") from None

    def write(self, folder: Path) -> None:
        """All files into a temporary folder beside it, then one rename: never a half-written snapshot."""
        with atomic_folder(folder) as tmp:
            atomic_write_parquet(tmp / LABELS, self.labels)
            atomic_write_parquet(tmp / DRIFT, self.drift)
            atomic_write_json(tmp / SNAPSHOT, self.meta)


def history(layout: RunLayout) -> dict[str, _Snapshot]:
    """The run's snapshots by as-of, oldest first."""
    root = layout.root / SNAPSHOTS
    if not root.is_dir():
        return {}
    out = {}
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and _AS_OF.match(folder.name):
            out[folder.name] = _Snapshot.read(folder)
    return out


def find_identifier(df: pd.DataFrame, schema: list, given: str | None, path: str) -> str | None:
    """The identifier column of a snapshot: --id, else a schema column of kind identifier, else one
    that data inference calls an identifier (as `segreport inspect` shows)."""
    if given:
        if given not in df.columns:
            raise SegreportError(f"{path}: identifier column '{given}' (--id) is not in the file")
        return given
    for spec in schema:
        if spec.kind == "identifier" and spec.name in df.columns:
            return spec.name
    used = {s.name for s in schema if s.use}
    rest = df[[c for c in df.columns if c not in used]]
    if rest.shape[1] == 0:
        return None
    specs, _ = infer_schema(rest)
    ids = [s.name for s in specs if s.kind == "identifier"]
    return ids[0] if ids else None


def score(run_dir: Path, method: str, k: int, df: pd.DataFrame, path: str, executor: str = "local",
          workers: int = 0, scheduler: str | None = None, part_rows: int = PART_ROWS,
          progress: bool = False) -> tuple[pd.DataFrame, int]:
    """assign.score_frame on the rows: in this process, or cut into row parts, one Dask task each."""
    if executor != "dask":
        return score_frame(run_dir, method, k, df, path), 1
    n_workers = workers or (os.cpu_count() or 1)
    size = max(1, min(int(part_rows), math.ceil(len(df) / n_workers)))
    bounds = [(lo, min(lo + size, len(df))) for lo in range(0, len(df), size)]
    with DaskSession(scheduler, min(n_workers, len(bounds))) as session:
        futures = {session.submit(score_frame, str(Path(run_dir).resolve()), method, k,
                                  df.iloc[lo:hi].reset_index(drop=True), path, key=f"track-part-{i}-{lo}"): i
                   for i, (lo, hi) in enumerate(bounds)}
        parts = session.gather(futures, progress, f"scoring ({session.n_workers} Dask workers)", unit="row",
                               weight=lambda i: bounds[i][1] - bounds[i][0])
    return pd.concat([parts[i] for i in range(len(bounds))], ignore_index=True), len(bounds)


# --------------------------------------------------------------------------- what is checked and measured


def check_snapshot(df: pd.DataFrame, run, frame: pd.DataFrame, path: str, id_column: str | None) -> list[str]:
    """One-line errors for a snapshot the segmentation cannot be applied to (beyond what normalise_new
    refuses: a fitted column missing, text in a numeric column): a category column holding none of the
    levels it was fitted on (a column of another type), an outcome value the run never had. Returns the
    columns the run never used, which are ignored."""
    for col in run.train.columns:
        if pd.api.types.is_numeric_dtype(run.train[col]):
            continue
        given = frame[col][df[col].notna().to_numpy()]
        levels = set(run.train[col].astype(str).unique()) - {MISSING_LEVEL}
        if len(given) and not given.isin(levels).any():
            seen = ", ".join(repr(v) for v in given.drop_duplicates().head(3))
            raise SegreportError(f"{path}: column '{col}' holds none of the values it was fitted on ({seen} where "
                                 f"the run had {', '.join(repr(v) for v in sorted(levels)[:4])}"
                                 f"{', ...' if len(levels) > 4 else ''}): a column of another type?")
    outcome = run.params.outcome
    if outcome and outcome in df.columns and run.layout.outcome.exists():
        known = set(pd.read_parquet(run.layout.outcome)["outcome"].astype(str).unique())
        values = _outcome_values(df[outcome][df[outcome].notna()])
        unknown = sorted(set(values.unique()) - known)
        if unknown:
            raise SegreportError(f"{path}: column '{outcome}' (the run's outcome) holds {unknown[0]!r}, a value the "
                                 f"run never had (it had {', '.join(repr(v) for v in sorted(known))})")
    schema = {s.name for s in run.schema()}
    decided = {d["column"] for d in run.ctx.get("data", {}).get("decisions") or []}
    return [c for c in df.columns if c not in schema and c not in decided and c != id_column and c != outcome]


def baseline_missing(run) -> dict[str, float]:
    """Each fitted column's share of missing cells in the fitting table's file (context.json's data facts)."""
    rows = max(int(run.ctx.get("data", {}).get("rows") or len(run.train)), 1)
    out = {}
    for d in run.ctx.get("data", {}).get("decisions") or []:
        if d["column"] in run.train.columns and d.get("missing_n") is not None:
            out[d["column"]] = int(d["missing_n"]) / rows
    return out


def _kinds(run) -> dict[str, str]:
    return {c: NUMERIC if pd.api.types.is_numeric_dtype(run.train[c]) else CATEGORICAL for c in run.train.columns}


def _refit_draws(run, frame: pd.DataFrame, saved: np.ndarray, outlier: np.ndarray, draws: int,
                 seed: int) -> list[dict]:
    """The run's method refitted (same k, seed and parameters, its outliers left out) on `draws`
    bootstrap resamples of the rows; each refit assigns every row, and its segments are set against
    `saved` (ARI, matched share)."""
    import warnings

    with warnings.catch_warnings():  # levels never seen: counted in the drift, as scoring counts them
        warnings.filterwarnings("ignore", message="Found unknown categories", category=UserWarning)
        X, _ = run.m.transform_new(run, frame)
    space = {"X": X, "outliers": np.asarray(outlier, bool) if run.space_info.get("outliers") else None,
             "info": run.space_info}
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    out = []
    # one thread: a few thousand rows gain nothing from more, and on a busy machine OpenMP's threads
    # waiting on each other made each fit 20 times slower (1.7 s against 0.09 s, 2 cores at load 8)
    with threadpool_limits(1):
        for _ in range(int(draws)):
            rows = np.sort(rng.choice(len(X), len(X), replace=True))
            est = run.m.estimator(run.k, run.params, run.params.seed, run.ctx.get("scale") or {})
            model = fit_rows(run.m, est, space, rows)
            got = agreement(np.asarray(saved), segments(run.m, model, X)[0])
            got.pop("pairs")
            out.append(got)
    return out


def refit_check(run, frame: pd.DataFrame, labels: pd.DataFrame, sample: int, draws: int = 5) -> dict:
    """Does the drift change the segments? The segmentation refitted (same method, k, seed and
    parameters) on `draws` bootstrap resamples of (a seeded sample of at most `sample` rows of) the
    snapshot, each against the snapshot's saved assignment; and, for what refitting alone changes,
    the same on as many rows of the fitting table against the fit's own labels. Medians decide: one
    refit can land on another of two near-equal solutions of an unstable segmentation by chance."""
    seed = int(run.params.seed)
    n = min(len(frame), int(sample))
    rows = (np.arange(len(frame)) if n == len(frame) else
            np.sort(np.random.default_rng(seed).choice(len(frame), n, replace=False)))
    snap = _refit_draws(run, frame.iloc[rows].reset_index(drop=True), labels["segment"].to_numpy()[rows],
                        labels["outlier"].to_numpy()[rows], draws, seed)
    fit = pd.read_parquet(run.cell / LABELS, columns=["segment", "outlier"])
    nb = min(n, len(run.train))
    rows_b = (np.arange(nb) if nb == len(run.train) else
              np.sort(np.random.default_rng(seed + 1).choice(len(run.train), nb, replace=False)))
    base = _refit_draws(run, run.train.iloc[rows_b].reset_index(drop=True), fit["segment"].to_numpy()[rows_b],
                        fit["outlier"].to_numpy()[rows_b], draws, seed + 1)
    med = lambda xs, key: float(np.median([x[key] for x in xs]))  # noqa: E731
    return {"rows": n, "sampled": n < len(frame), "draws": int(draws),
            "ari": med(snap, "ari"), "ari_all": [x["ari"] for x in snap],
            "ari_min": min(x["ari"] for x in snap), "ari_max": max(x["ari"] for x in snap),
            "baseline_ari_min": min(x["ari"] for x in base), "baseline_ari_max": max(x["ari"] for x in base),
            "matched_share": med(snap, "matched_share"), "changed_share": med(snap, "changed_share"),
            "baseline_rows": nb, "baseline_ari": med(base, "ari"), "baseline_ari_all": [x["ari"] for x in base],
            "baseline_changed_share": med(base, "changed_share")}


# --------------------------------------------------------------------------- the command


def track(run_dir, data_path, method: str | None = None, k: int | None = None, as_of: str | None = None,
          id_column: str | None = None, executor: str = "local", workers: int = 0, scheduler: str | None = None,
          replace: bool = False, part_rows: int = PART_ROWS, progress: bool = False, tracking=None) -> dict:
    """Score a snapshot and add it to the run's history; rebuild tracking.json. Returns a summary.
    `tracking`: the thresholds (config.TrackingParams); default: the run's own.
    Holds the run folder's lock (store.RunLock) like `segreport run`: it waits for a run writing the folder."""
    root = Path(run_dir)
    if not root.is_dir():
        raise SegreportError(f"{root}: no such run folder; run `segreport run` first")
    with RunLock(root):  # like a run: the run's files are not rewritten under it, nor its history by another track
        sweep_partial(root, deep=False)  # what a killed run or track was writing (their folders included)
        sweep_partial(root / SNAPSHOTS)
        return _track(root, data_path, method, k, as_of, id_column, executor, workers, scheduler, replace, part_rows,
                      progress, tracking)


def _track(root: Path, data_path, method, k, as_of, id_column, executor, workers, scheduler, replace, part_rows,
           progress, tracking) -> dict:
    layout = RunLayout(root)
    past = history(layout)
    if method is None and k is None and past:  # the history goes on with the segmentation it follows
        first = next(iter(past.values())).meta
        method, k = first["method"], first["k"]
    method, k = chosen_segmentation(layout, method, k)
    run = _Run(root, method, k)
    th = tracking if tracking is not None else run.params.tracking
    key, label = parse_as_of(as_of)
    path = str(data_path)
    if not Path(path).is_file():
        read_raw(path)  # the one-line error: not found, a folder, ...
    file_sha = sha256_file(path)
    model_sha = sha256_file(run.cell / MODEL)
    for other_key, snap in past.items():
        m = snap.meta
        if (m["method"], m["k"]) != (method, k):
            raise SegreportError(f"{root / SNAPSHOTS / other_key}: this run's history follows {m['method']} "
                                 f"k={m['k']}, "
                                 f"not {method} k={k}; track with --method {m['method']} --k {m['k']}, or move "
                                 f"{root / SNAPSHOTS} away to start a new history")
        if m["model_sha256"] != model_sha:
            raise SegreportError(f"{root / SNAPSHOTS / other_key}: scored with an earlier fit of {method} k={k} "
                                 f"(the run was refitted since); move {root / SNAPSHOTS} away to start a new history")
    if key in past:
        if past[key].meta["file_sha256"] == file_sha:
            written = write_tracking(layout, run, past, th)
            return {"status": "unchanged", "as_of": key, "label": label, "method": method, "k": k,
                    "rows": past[key].meta["rows"], "tracking_written": written, "summary": _latest(layout)}
        if not replace:
            raise SegreportError(f"{root / SNAPSHOTS / key}: already holds {past[key].meta['source']} "
                                 f"(sha256 {past[key].meta['file_sha256'][:12]}), not {path}; pass --replace to "
                                 "score this file in its place, or give another --as-of")
    df, _ = read_raw(path)
    frame, facts = normalise_new(df, run.schema(), run.train, path, run.pooled())
    idcol = find_identifier(df, run.schema(), id_column, path)
    ignored = check_snapshot(df, run, frame, path, idcol)
    outcome_col = run.params.outcome
    scored, parts = score(root, method, k, df, path, executor, workers, scheduler, part_rows, progress)
    labels = pd.DataFrame({"row": np.arange(len(df), dtype=np.int64),
                           "segment": scored["segment"].to_numpy(np.int64),
                           "outlier": scored["outlier"].to_numpy(bool),
                           "distance": scored["distance"].to_numpy(np.float64)})
    id_note = None
    if idcol is not None:
        ids = df[idcol].reset_index(drop=True)
        ids = ids.astype(object).where(ids.isna(), ids.astype(str).str.strip())
        if ids.isna().any() or ids.duplicated().any():
            id_note = (f"column '{idcol}' has {int(ids.isna().sum())} missing and {int(ids.duplicated().sum())} "
                       "repeated value(s): not used to follow customers")
            idcol = None
        else:
            labels["id"] = ids.astype(str).to_numpy()
    if outcome_col and outcome_col in df.columns:
        labels["outcome"] = _outcome_values(df[outcome_col]).to_numpy()
    else:
        outcome_col = None
    kinds = _kinds(run)
    base_missing = baseline_missing(run)
    new_missing = {c: df[c].isna().to_numpy() for c in run.train.columns}
    measures = {m["column"]: m for m in measure_table(run.train, frame, kinds, base_missing, new_missing)}
    drift_rows, bins = [], []
    for col in run.train.columns:
        summary, b = column_drift(run.train[col], frame[col], kinds[col])
        drift_rows.append({"column": col, **summary, **measures[col]})
        bins.append(b.assign(column=col))
    drift = pd.concat(bins, ignore_index=True)[["column", "order", "bin", "baseline_share", "share"]]
    fit_seg = pd.read_parquet(run.cell / LABELS, columns=["segment"])["segment"].to_numpy()
    seg_rows = by_segment(run.train, fit_seg, frame, labels["segment"].to_numpy(), k, kinds, base_missing,
                          new_missing, th.segment_min_rows)
    refit = refit_check(run, frame, labels, th.refit_sample, th.refit_draws)
    meta = {"as_of": key, "label": label, "source": path, "file_sha256": file_sha, "rows": int(len(df)),
            "method": method, "k": k, "model_sha256": model_sha, "id_column": idcol, "id_note": id_note,
            "outcome_column": outcome_col, "unseen": facts["unseen"], "pooled": facts["pooled"],
            "imputed": facts["imputed"], "ignored_columns": ignored, "drift": drift_rows,
            "segment_drift": seg_rows, "refit": refit}
    snap = _Snapshot(meta, labels, drift)
    new_history = dict(past)
    new_history[key] = snap
    new_history = dict(sorted(new_history.items()))
    tracking, tables = summarise(layout, run, new_history, th)  # everything computed before anything is written
    snap.write(layout.root / SNAPSHOTS / key)
    _write_tracking(layout, tracking, tables)
    return {"status": "replaced" if key in past else "added", "as_of": key, "label": label, "method": method,
            "k": k, "rows": int(len(df)), "parts": parts, "id_column": idcol, "tracking_written": True,
            "summary": tracking}


def _latest(layout: RunLayout) -> dict:
    return read_json_or_empty(layout.tracking)


def write_tracking(layout: RunLayout, run, snaps: dict[str, _Snapshot], th=None) -> bool:
    """Rebuild tracking.json where it does not describe these snapshots under these thresholds; True if written."""
    th = th if th is not None else run.params.tracking
    current = _latest(layout)
    if (current.get("history") == _signature(snaps) and current.get("thresholds") == th.model_dump(mode="json")
            and layout.tracking_tables.is_dir()):
        return False
    tracking, tables = summarise(layout, run, snaps, th)
    _write_tracking(layout, tracking, tables)
    return True


def _signature(snaps: dict[str, _Snapshot]) -> list:
    return [[key, s.meta["file_sha256"], s.meta["model_sha256"]] for key, s in snaps.items()]


def _write_tracking(layout: RunLayout, tracking: dict, tables: dict[str, pd.DataFrame]) -> None:
    with atomic_folder(layout.tracking_tables) as tmp:
        for name, table in tables.items():
            atomic_write_parquet(tmp / layout.tracking_table(name).name, table)
    atomic_write_json(layout.tracking, tracking)


# --------------------------------------------------------------------------- the history, summarised


def _baseline_ids(layout: RunLayout, ctx: dict, id_column: str) -> pd.Series | None:
    """The fitting table's identifiers (read from its file, if unchanged), cached in tracking/."""
    cache = layout.tracking_table("baseline_ids")
    sha = ctx["data"].get("file_sha256")
    if cache.exists():
        got = pd.read_parquet(cache)
        known = read_json_or_empty(layout.tracking).get("baseline_ids")
        if list(got.columns) == ["id"] and known == [id_column, sha]:
            return got["id"]
    path = Path(ctx["data"]["path"])
    if not path.is_file() or sha256_file(path) != sha:
        return None
    df, _ = read_raw(path)
    if id_column not in df.columns:
        return None
    ids = df[id_column].reset_index(drop=True)
    if ids.isna().any():
        return None
    ids = ids.astype(str).str.strip()
    return None if ids.duplicated().any() else ids


def summarise(layout: RunLayout, run, snaps: dict[str, _Snapshot], th=None) -> tuple[dict, dict[str, pd.DataFrame]]:
    """tracking.json and its tables from the fitting table's labels and the scored snapshots, the drift
    decisions under thresholds `th` (config.TrackingParams; default: the run's)."""
    th = th if th is not None else run.params.tracking
    ctx, params = run.ctx, run.params
    method, k = run.method, run.k
    fit = pd.read_parquet(run.cell / LABELS)
    personas = {int(c["segment"]): c for c in read_json(run.cell / PERSONAS)}
    segments = [{"segment": s, "code": f"S{s + 1}", "name": str(personas.get(s, {}).get("name") or f"S{s + 1}")}
                for s in range(k)]
    labels_of = ctx.get("labels", {})
    periods = [{"key": BASELINE, "label": "Baseline", "rows": int(len(fit)), "source": ctx["data"]["path"]}]
    periods += [{"key": key, "label": s.meta["label"], "rows": s.meta["rows"], "source": s.meta["source"]}
                for key, s in snaps.items()]
    seg_of = {BASELINE: fit["segment"].to_numpy()} | {key: s.labels["segment"].to_numpy() for key, s in snaps.items()}

    # sizes and the test of each change against the baseline
    n0 = len(fit)
    c0 = np.bincount(seg_of[BASELINE], minlength=k)
    sizes = []
    for p in periods:
        c = np.bincount(seg_of[p["key"]], minlength=k)
        n = int(c.sum())
        for s in range(k):
            row = {"period": p["key"], "segment": s, "customers": int(c[s]), "share": float(c[s] / n)}
            if p["key"] != BASELINE:
                t = size_test(n0, int(c0[s]), n, int(c[s]))
                row.update(change=t["change"], z=t["z"], p_value=t["p_value"], beyond_noise=t["beyond_noise"])
            else:
                row.update(change=0.0, z=0.0, p_value=1.0, beyond_noise=False)
            sizes.append(row)
    sizes_df = pd.DataFrame(sizes)

    # migration between consecutive periods where both have the identifier
    id_column = next((s.meta["id_column"] for s in snaps.values() if s.meta.get("id_column")), None)
    ids_of: dict[str, pd.Series] = {}
    baseline_ids = None
    if id_column is not None:
        baseline_ids = _baseline_ids(layout, ctx, id_column)
        if baseline_ids is not None and len(baseline_ids) == len(fit):
            ids_of[BASELINE] = baseline_ids
    for key, s in snaps.items():
        if s.meta.get("id_column") == id_column and "id" in s.labels.columns:
            ids_of[key] = s.labels["id"]
    transitions, mig_rows = [], []
    keys = [p["key"] for p in periods]
    for a, b in zip(keys[:-1], keys[1:]):
        if a not in ids_of or b not in ids_of:
            continue
        m = migration(pd.DataFrame({"id": ids_of[a].to_numpy(), "segment": seg_of[a]}),
                      pd.DataFrame({"id": ids_of[b].to_numpy(), "segment": seg_of[b]}))
        both = m[(m.from_segment >= 0) & (m.to_segment >= 0)]
        stayed = int(both[both.from_segment == both.to_segment].customers.sum())
        matched = int(both.customers.sum())
        tr = {"from": a, "to": b, "matched": matched, "stayed": stayed, "moved": matched - stayed,
              "moved_share": (matched - stayed) / matched if matched else None,
              "new": int(m[m.from_segment < 0].customers.sum()), "departed": int(m[m.to_segment < 0].customers.sum())}
        # per segment: who left it for another segment, who joined it from another
        tr["segments"] = [{"segment": s,
                           "moved_out": int(both[(both.from_segment == s) & (both.to_segment != s)].customers.sum()),
                           "moved_in": int(both[(both.to_segment == s) & (both.from_segment != s)].customers.sum()),
                           "new": int(m[(m.from_segment < 0) & (m.to_segment == s)].customers.sum()),
                           "departed": int(m[(m.from_segment == s) & (m.to_segment < 0)].customers.sum())}
                          for s in range(k)]
        flows = both[both.from_segment != both.to_segment].sort_values("customers", ascending=False).head(3)
        tr["largest_moves"] = [{"from_segment": int(r.from_segment), "to_segment": int(r.to_segment),
                                "customers": int(r.customers)} for r in flows.itertuples()]
        transitions.append(tr)
        mig_rows.append(m.assign(from_period=a, to_period=b))
    mig_df = (pd.concat(mig_rows, ignore_index=True) if mig_rows else
              pd.DataFrame({"from_segment": pd.Series(dtype="int64"), "to_segment": pd.Series(dtype="int64"),
                            "customers": pd.Series(dtype="int64"), "from_period": pd.Series(dtype=str),
                            "to_period": pd.Series(dtype=str)}))
    mig_df = mig_df[["from_period", "to_period", "from_segment", "to_segment", "customers"]]

    # drift per column: effect size, test, missing share, unseen levels, the decision; PSI as a number
    drift_rows = []
    for key, s in snaps.items():
        for d in s.meta["drift"]:
            row = {"period": key, "column": d["column"], "label": labels_of.get(d["column"], d["column"]),
                   "kind": d["kind"], "psi": d["psi"], "reading": psi_reading(d["psi"]),
                   "unseen_rows": d["unseen_rows"],
                   "unseen_levels": ", ".join(f"{lv} ({n:,})" for lv, n in d["unseen_levels"].items()),
                   "baseline_median": d.get("baseline_median"), "median": d.get("median"),
                   "top_level": d.get("top_level"), "top_baseline_share": d.get("top_baseline_share"),
                   "top_share": d.get("top_share")}
            if d.get("effect", "absent") != "absent":  # snapshots tracked before effect sizes: PSI only
                dec = decide(d, th)
                row.update(measure=MEASURES[d["kind"]], test=TESTS[d["kind"]], effect=d["effect"],
                           p_value=d["p_value"], missing_share=d["missing_share"],
                           baseline_missing_share=d["baseline_missing_share"], missing_p=d["missing_p"],
                           unseen_share=d.get("unseen_share", 0.0), threshold=dec["threshold"],
                           drifted=dec["drifted"], drift_kinds=", ".join(dec["drift_kinds"]))
            drift_rows.append(row)
    drift_df = pd.DataFrame(drift_rows)
    bins_df = pd.concat([s.drift.assign(period=key) for key, s in snaps.items()], ignore_index=True)
    seg_rows = []
    for key, s in snaps.items():
        for d in s.meta.get("segment_drift") or []:
            row = {"period": key, "segment": d["segment"], "column": d["column"],
                   "label": labels_of.get(d["column"], d["column"]), "measured": d["measured"],
                   "rows": d["rows"], "baseline_rows": d["baseline_rows"]}
            if d["measured"]:
                dec = decide(d, th)
                row.update(kind=d["kind"], effect=d["effect"], p_value=d["p_value"],
                           missing_share=d["missing_share"], unseen_share=d.get("unseen_share", 0.0),
                           threshold=dec["threshold"], drifted=dec["drifted"],
                           drift_kinds=", ".join(dec["drift_kinds"]))
            seg_rows.append(row)
    seg_cols = {"period": str, "segment": "int64", "column": str, "label": str, "measured": bool, "rows": "int64",
                "baseline_rows": "int64", "kind": str, "effect": float, "p_value": float, "missing_share": float,
                "unseen_share": float, "threshold": float, "drifted": bool, "drift_kinds": str}
    seg_df = pd.DataFrame(seg_rows, columns=list(seg_cols)) if seg_rows else pd.DataFrame(
        {c: pd.Series(dtype=t) for c, t in seg_cols.items()})
    refits = {key: s.meta["refit"] for key, s in snaps.items() if s.meta.get("refit")}

    # the outcome per segment, where a period has it
    outcome = None
    outcome_col = params.outcome
    out_file = layout.outcome
    if outcome_col and any(s.meta.get("outcome_column") for s in snaps.values()):
        comp = read_json_or_empty(layout.comparison_json).get("outcome") or {}
        y_of = {}
        if out_file.exists():
            y_of[BASELINE] = pd.read_parquet(out_file)["outcome"].astype(str).to_numpy()
        for key, s in snaps.items():
            if "outcome" in s.labels.columns:
                y_of[key] = s.labels["outcome"].astype(str).to_numpy()
        positive = comp.get("positive")
        if positive is None:
            levels, counts = np.unique(next(iter(y_of.values())), return_counts=True)
            positive = "yes" if "yes" in levels else str(levels[np.argmin(counts)])
        rates = []
        for p in periods:
            y = y_of.get(p["key"])
            if y is None:
                continue
            seg = seg_of[p["key"]]
            for s in range(k):
                n = int((seg == s).sum())
                rates.append({"period": p["key"], "segment": s, "customers": n,
                              "rate": float((y[seg == s] == positive).mean()) if n else None})
            rates.append({"period": p["key"], "segment": -1, "customers": int(len(y)),
                          "rate": float((y == positive).mean())})
        outcome = {"column": outcome_col, "positive": str(positive), "periods": sorted({r["period"] for r in rates},
                                                                                         key=keys.index)}
        outcome_df = pd.DataFrame(rates)
    else:
        outcome_df = pd.DataFrame({"period": pd.Series(dtype=str), "segment": pd.Series(dtype="int64"),
                                   "customers": pd.Series(dtype="int64"), "rate": pd.Series(dtype=float)})

    # far from the centres, and outliers, against the fitting table
    fit_dist = fit["distance"].to_numpy(float)
    far_cut = float(np.quantile(fit_dist, FAR_QUANTILE))
    fit_far = float((fit_dist > far_cut).mean())
    has_outliers = bool(run.space_info.get("outliers"))
    fit_out = float(fit["outlier"].mean()) if has_outliers else None
    fit_facts = {"rows": int(n0), "distance_cut": far_cut, "far_share": fit_far, "far_quantile": FAR_QUANTILE,
                 "outlier_share": fit_out, "min_segment_size": int(params.min_segment_size)}
    health = []
    for key, s in snaps.items():
        d = s.labels["distance"].to_numpy(float)
        x_far, n = int((d > far_cut).sum()), len(d)
        h = {"period": key, "rows": n, "far": x_far, "far_share": x_far / n,
             "far_p_value": binomial_excess(x_far, n, fit_far)}
        if has_outliers:
            x_out = int(s.labels["outlier"].sum())
            h.update(outliers=x_out, outlier_share=x_out / n, outlier_p_value=binomial_excess(x_out, n, fit_out))
        health.append(h)

    latest = keys[-1]
    recommendation = recommend(latest, sizes_df, drift_df, health[-1], fit_facts, segments, labels_of,
                               seg_df, refits.get(latest), th)
    tracking = {
        "method": method, "k": k, "model_sha256": snaps[latest].meta["model_sha256"],
        "history": _signature(snaps), "baseline_ids": [id_column, ctx["data"].get("file_sha256")]
        if BASELINE in ids_of else None,
        "periods": periods, "latest": latest, "segments": segments, "fit": fit_facts,
        "sizes": sizes, "confidence": CONFIDENCE,
        "migration": {"id_column": id_column, "transitions": transitions,
                      "notes": [s.meta["id_note"] for s in snaps.values() if s.meta.get("id_note")]},
        "thresholds": th.model_dump(mode="json"),
        "drift": {"thresholds": {"moderate": PSI_MODERATE, "large": PSI_LARGE},
                  "latest": [r for r in drift_rows if r["period"] == latest],
                  "by_period": {key: {r["column"]: r["psi"] for r in drift_rows if r["period"] == key}
                                for key in snaps},
                  "effect_by_period": {key: {r["column"]: r.get("effect") for r in drift_rows if r["period"] == key}
                                       for key in snaps},
                  "segments_latest": [r for r in seg_rows if r["period"] == latest]},
        "refit": refits,
        "ignored_columns": {key: s.meta.get("ignored_columns") or [] for key, s in snaps.items()},
        "outcome": outcome, "outcome_rates": outcome_df.to_dict(orient="records"),
        "health": health, "recommendation": recommendation,
    }
    tables = {"sizes": sizes_df, "migration": mig_df, "drift": drift_df, "drift_bins": bins_df,
              "segment_drift": seg_df, "outcome": outcome_df}
    if BASELINE in ids_of:
        tables["baseline_ids"] = pd.DataFrame({"id": ids_of[BASELINE].astype(str).to_numpy()})
    return tracking, tables


def recommend(latest: str, sizes: pd.DataFrame, drift: pd.DataFrame, health: dict, fit: dict,
              segments: list[dict], labels_of: dict, seg_drift: pd.DataFrame | None = None,
              refit: dict | None = None, th=None) -> dict:
    """Keep, watch or re-fit, judged on the latest snapshot, with the numbers behind it.

    Drift alone never asks for a re-fit: it asks whether the segments change. **Re-fit** when the
    segmentation refitted on the snapshot agrees with the saved assignment (ARI) by more than
    `ari_drop` less than a refit on as many rows of the fitting table does (the segments would
    change, not just the customers), when a segment fell below the minimum segment size, or when
    clearly more customers than in the fitting table sit far from every centre (over twice the
    fitting share beyond its 95th percentile distance) or are outliers (over 1.5 times the fitting
    share), each at a one-sided binomial p below 0.01. **Watch** when a column drifted (its
    distribution, its missing share or levels never seen; see drift.decide), or drifted within a
    segment, or those two shares rose significantly but less: the customers changed, the segments
    hold. **Keep** otherwise. Size changes beyond noise are listed to watch, but alone they do not
    turn keep into watch (with several segments, one of them passes a 95 % test by chance often)."""
    th = th if th is not None else TrackingParams()
    name = {s["segment"]: s for s in segments}
    reasons, watch = [], []
    d = drift[drift.period == latest]
    measured = "drifted" in d.columns and d["drifted"].notna().any()
    drifted: list[dict] = []
    if measured:
        hit = d[d["drifted"].fillna(False).astype(bool)].assign(ratio=lambda x: x["effect"] / x["threshold"])
        for r in hit.sort_values("ratio", ascending=False).itertuples():
            drifted.append({"kind": "drift", "column": r.column, "label": r.label, "measure": r.measure,
                            "effect": None if pd.isna(r.effect) else float(r.effect), "threshold": float(r.threshold),
                            "psi": None if pd.isna(r.psi) else float(r.psi),
                            "drift_kinds": r.drift_kinds, "missing_share": float(r.missing_share),
                            "baseline_missing_share": float(r.baseline_missing_share),
                            "unseen_share": float(r.unseen_share), "unseen_levels": r.unseen_levels})
    else:  # snapshots tracked before effect sizes were measured: PSI only
        for r in d.sort_values("psi", ascending=False).itertuples():
            if r.psi >= PSI_MODERATE:
                drifted.append({"kind": "drift", "column": r.column, "label": r.label, "measure": "PSI",
                                "effect": float(r.psi), "threshold": PSI_MODERATE, "psi": float(r.psi),
                                "drift_kinds": "distribution", "missing_share": None, "baseline_missing_share": None,
                                "unseen_share": None, "unseen_levels": r.unseen_levels})
    watch += drifted
    for r in d[d.unseen_rows > 0].itertuples():
        if not any(w["column"] == r.column and "unseen" in w["drift_kinds"] for w in drifted):
            watch.append({"kind": "unseen", "column": r.column, "label": r.label, "rows": int(r.unseen_rows),
                          "levels": r.unseen_levels})
    seg_items = []
    if seg_drift is not None and len(seg_drift):
        sd = seg_drift[(seg_drift.period == latest) & seg_drift.measured.astype(bool)]
        sd = sd[sd["drifted"].fillna(False).astype(bool)]
        for seg, g in sd.assign(ratio=sd["effect"] / sd["threshold"]).groupby("segment", sort=True):
            g = g.sort_values("ratio", ascending=False)
            seg_items.append({"kind": "segment_drift", "segment": int(seg), "code": name[int(seg)]["code"],
                              "name": name[int(seg)]["name"], "columns": list(g["label"]),
                              "effects": [float(v) for v in g["effect"]]})
    watch += seg_items
    s = sizes[sizes.period == latest]
    for r in s.itertuples():
        seg = name[int(r.segment)]
        if r.customers < fit["min_segment_size"]:
            reasons.append({"kind": "small", "segment": int(r.segment), "code": seg["code"], "name": seg["name"],
                            "customers": int(r.customers), "minimum": fit["min_segment_size"]})
        if r.beyond_noise:
            watch.append({"kind": "size", "segment": int(r.segment), "code": seg["code"], "name": seg["name"],
                          "baseline_share": float(r.share - r.change), "share": float(r.share),
                          "change": float(r.change), "p_value": float(r.p_value)})
    # more customers far from every centre, or outliers: re-fit past the ratio, watch when only significant
    checks = [("far", "far", FAR_RATIO)]
    if health.get("outlier_share") is not None and fit.get("outlier_share"):
        checks.append(("outliers", "outlier", OUTLIER_RATIO))
    fit_worse = False
    for kind, key, ratio in checks:
        if health[f"{key}_p_value"] >= EVIDENCE or health[f"{key}_share"] <= fit[f"{key}_share"]:
            continue
        item = {"kind": kind, "share": health[f"{key}_share"], "fit_share": fit[f"{key}_share"],
                "customers": health["far" if kind == "far" else "outliers"], "p_value": health[f"{key}_p_value"],
                "ratio": ratio}
        fit_worse = True
        (reasons if health[f"{key}_share"] > ratio * fit[f"{key}_share"] else watch).append(item)
    changed = gap = None
    if refit:
        gap = refit["baseline_ari"] - refit["ari"]
        changed = gap > th.ari_drop
        if changed:
            reasons.insert(0, {"kind": "segments", **refit, "ari_gap": gap, "ari_drop": th.ari_drop,
                               "columns": [w["label"] for w in drifted],
                               "segments": [f"{w['code']} · {w['name']}" for w in seg_items]})
    action = "refit" if reasons else "watch" if (drifted or seg_items or fit_worse) else "keep"
    return {"period": latest, "action": action, "reasons": reasons, "watch": watch,
            "columns": [w["label"] for w in drifted], "segments": [f"{w['code']} · {w['name']}" for w in seg_items],
            "segment_codes": [w["code"] for w in seg_items], "refit": refit, "segments_changed": changed,
            "ari_gap": gap, "far_watch": fit_worse,
            "rules": {"psi_large": PSI_LARGE, "psi_moderate": PSI_MODERATE, "far_ratio": FAR_RATIO,
                      "outlier_ratio": OUTLIER_RATIO, "evidence": EVIDENCE, "ari_drop": th.ari_drop,
                      "min_segment_size": fit["min_segment_size"]}}


def name_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def describe(result: dict) -> str:
    """The command's answer: what was tracked, and the recommendation in one sentence."""
    t = result.get("summary") or {}
    rec = t.get("recommendation") or {}
    head = {"unchanged": "already tracked (same file, same as-of): nothing scored",
            "added": "tracked", "replaced": "re-tracked"}[result["status"]]
    line = (f"{head}: {result['rows']:,} customers as of {result['label']} with {result['method']} k={result['k']}"
            + (f" ({result['parts']} Dask parts)" if result.get("parts", 1) > 1 else ""))
    ignored = (t.get("ignored_columns") or {}).get(result["as_of"]) or []
    if ignored:
        line += f"\ncolumns the run never used, ignored: {', '.join(ignored)}"
    if rec:
        when = next((p["label"] for p in t.get("periods", []) if p["key"] == rec["period"]), rec["period"])
        line += f"\nrecommendation for {when}: {sentence(rec)}"
    return line


def sentence(rec: dict) -> str:
    """The recommendation in one sentence naming the columns and segments (the CLI's; the page words its own)."""
    cols, segs, r = name_list(rec.get("columns") or []), name_list(rec.get("segment_codes") or []), rec.get("refit")
    drift = ((f"{cols} drifted" + (f", also within {segs}" if segs else "")) if cols else
             f"columns drifted within {segs}, though not in the whole table")
    agree = (f"refits on the snapshot give a median ARI of {r['ari']:.2f} with the saved segments "
             f"({r['changed_share']:.0%} would change segment) against {r['baseline_ari']:.2f} for refits on "
             "baseline customers") if r else ""
    if rec["action"] == "refit":
        why = "; ".join(_reason_text(x) for x in rec["reasons"])
        return f"re-fit the segmentation: {why}" + (f" ({drift})" if cols or segs else "")
    if rec["action"] == "watch" and not (cols or segs):
        return "watch: more customers than at baseline sit far from every segment, though not enough to re-fit"
    if rec["action"] == "watch":
        return f"watch: {drift}, but the segments hold" + (f" ({agree})" if agree else "")
    return "keep the segmentation: no column drifted and the segments hold" + (f" ({agree})" if agree else "")


def _reason_text(r: dict) -> str:
    if r["kind"] == "segments":
        return (f"refits on the snapshot agree with the saved segments at a median ARI of {r['ari']:.2f} against "
                f"{r['baseline_ari']:.2f} for refits on baseline customers ({r['changed_share']:.0%} would change "
                "segment)")
    if r["kind"] == "drift":
        return f"{r['label']} drifted, PSI {r['psi']:.2f}"
    if r["kind"] == "small":
        return f"{r['code']} {r['name']} has {r['customers']} customers, under {r['minimum']}"
    if r["kind"] == "far":
        return f"{r['share']:.1%} far from every centre against {r['fit_share']:.1%} when fitted"
    return f"{r['share']:.1%} outliers against {r['fit_share']:.1%} when fitted"
