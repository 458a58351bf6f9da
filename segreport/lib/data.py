"""Reading customer tables, inferring and validating the schema, normalising values.

The reader accepts CSV (delimiter, quoting and encoding detected) and Parquet.
Every problem with the input becomes a one-line SegreportError naming the file,
the column and, where it helps, the rows.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import SegreportError
from ..core.schema import DEFAULT_SCHEMA, PRESET_LEFT_OUT, PRESET_OUTCOME_LABELS, ColumnSpec

MISSING_LEVEL = "missing"
OTHER_LEVEL = "other"
ABSURD = 1e15  # larger magnitudes are typing errors or sentinels, not customer values
_TRUE = {"yes", "y", "true", "t", "1", "1.0"}
_FALSE = {"no", "n", "false", "f", "0", "0.0"}
_ID_NAME = re.compile(r"(^|[_\W])(id|uuid|guid|key)$|^(id|uuid)([_\W]|$)|customer.?(id|no|number)$", re.I)
_DATE_NAME = re.compile(r"date|_at$|time|day_of|dob|birth", re.I)
_NUM_CLEAN = re.compile(r"[\s\u00a0'€$£¥%]|(?<=\d),(?=\d{3}(\D|$))")
ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


@dataclass
class Table:
    """A validated table: the columns used, normalised, plus what was done to it."""

    frame: pd.DataFrame
    schema: list[ColumnSpec]
    path: str
    file_sha256: str
    encoding: str = "utf-8"
    delimiter: str | None = None
    notes: list[str] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    outcome: pd.Series | None = None
    ids: pd.Series | None = None  # the identifier column's values (strings) where it is complete and unique
    id_column: str | None = None
    outcome_name: str | None = None
    outcome_label: str | None = None  # the outcome in words: its schema label, the bank preset's, else None
    outcome_source: str | None = None  # "given" (--outcome / params) or "detected" (by its name, see detect_outcome)
    pooled: list[str] = field(default_factory=list)  # columns whose rare levels were pooled as 'other'
    left_out: list[dict] = field(default_factory=list)  # the file's columns outside the schema: column, reason

    @property
    def used(self) -> list[ColumnSpec]:
        return [c for c in self.schema if c.use and c.kind in ("numeric", "categorical", "binary")]

    @property
    def numeric(self) -> list[str]:
        return [c.name for c in self.used if c.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [c.name for c in self.used if c.kind in ("categorical", "binary")]

    def spec(self, name: str) -> ColumnSpec:
        return next(c for c in self.schema if c.name == name)

    def fingerprint(self) -> str:
        return fingerprint(self.frame)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of a normalised table: column names, dtypes and every value, row order included."""
    h = hashlib.sha256()
    h.update(repr([(c, str(frame[c].dtype)) for c in frame.columns]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


def _decode(path: Path, raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    for enc in ENCODINGS[1:-1]:
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError:
            continue
        warnings.warn(f"{path}: not UTF-8 (byte {raw[first_bad]:#04x} at offset {first_bad}); read as {enc}")
        return text, enc
    raise SegreportError(
        f"{path}: not UTF-8 and not {', '.join(ENCODINGS[1:-1])}: byte {raw[first_bad]:#04x} at offset "
        f"{first_bad} cannot be decoded; re-save the file as UTF-8"
    )


def _sniff(path: Path, text: str) -> str:
    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        header = text.splitlines()[0]
        counts = {d: header.count(d) for d in ",;\t|"}
        best = max(counts, key=counts.get)
        if counts[best] == 0:
            return ","
        return best


def read_raw(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a CSV or Parquet file as strings-or-numbers, with read facts (encoding, delimiter)."""
    p = Path(path)
    if not p.exists():
        raise SegreportError(f"{p}: file not found")
    if p.is_dir():
        raise SegreportError(f"{p}: is a folder, not a data file")
    if p.stat().st_size == 0:
        raise SegreportError(f"{p}: the file is empty")
    info: dict = {"encoding": None, "delimiter": None}
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(p)
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise SegreportError(f"{p}: cannot be read as Parquet ({type(exc).__name__}: {exc})") from None
        info["format"] = "parquet"
    else:
        raw = p.read_bytes()
        text, enc = _decode(p, raw)
        if not text.strip():
            raise SegreportError(f"{p}: the file is empty")
        delim = _sniff(p, text)
        info.update(encoding=enc, delimiter=delim, format="csv")
        try:
            df = pd.read_csv(io.StringIO(text), sep=delim, dtype=str, keep_default_na=False,
                             na_values=["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?"],
                             skipinitialspace=True)
        except pd.errors.ParserError as exc:
            raise SegreportError(f"{p}: cannot be parsed as CSV with delimiter {delim!r}: {exc}".replace("\n", " ")) from None
        header = next(csv.reader(io.StringIO(text.splitlines()[0]), delimiter=delim))
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise SegreportError(f"{p}: duplicated column name(s) in the header: {', '.join(map(repr, dupes))}")
    if df.shape[1] == 0:
        raise SegreportError(f"{p}: no columns found")
    if len(df) == 0:
        raise SegreportError(f"{p}: has a header but no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df, info


# --------------------------------------------------------------------------- values


def to_number(s: pd.Series) -> pd.Series:
    """Numbers stored as text: '1,240', '€ 1 240', '12%' -> float; anything else -> NaN."""
    if pd.api.types.is_numeric_dtype(s):
        return s.astype("float64")
    t = s.astype("string").str.strip()
    t = t.str.replace(_NUM_CLEAN, "", regex=True)
    t = t.str.replace(r"^\((.*)\)$", r"-\1", regex=True)  # accounting negatives
    return pd.to_numeric(t, errors="coerce").astype("float64")


def to_binary(s: pd.Series) -> pd.Series | None:
    """yes/no, Y/N, true/false, 1/0 -> 'yes'/'no' (missing stays NaN); None if not boolean-like."""
    low = s.dropna().astype(str).str.strip().str.lower()
    vals = set(low.unique())
    if not vals or not vals <= (_TRUE | _FALSE):
        return None
    out = s.astype(object).where(s.isna(), s.astype(str).str.strip().str.lower())
    return out.map(lambda v: v if pd.isna(v) else ("yes" if v in _TRUE else "no"))


# --------------------------------------------------------------------------- schema


def infer_schema(df: pd.DataFrame, max_levels: int = 30) -> tuple[list[ColumnSpec], list[dict]]:
    """Classify each column and say why: numeric, categorical, binary, identifier, date or text."""
    specs, decisions = [], []
    n = len(df)
    for name in df.columns:
        s = df[name]
        nonnull = s.dropna()
        nun = nonnull.nunique()
        miss = float(s.isna().mean())
        kind, why = None, ""
        as_num = to_number(nonnull) if len(nonnull) else nonnull
        num_share = float(as_num.notna().mean()) if len(nonnull) else 0.0
        if len(nonnull) == 0:
            kind, why = "text", "all values missing: left out"
        elif nun <= 1:
            kind, why = "categorical", "constant: dropped"
        elif _ID_NAME.search(name):
            kind, why = "identifier", "named like an identifier"
        elif to_binary(nonnull) is not None or nun == 2:
            kind, why = "binary", f"two values ({', '.join(map(str, sorted(nonnull.astype(str).unique())[:2]))})"
        elif num_share >= 0.95:
            if nun == len(nonnull) and n > 50 and (as_num.dropna() % 1 == 0).all() and _is_sequence(as_num):
                kind, why = "identifier", "whole numbers, unique per row and increasing"
            else:
                kind, why = "numeric", f"{num_share:.0%} of values are numbers"
        elif _looks_like_date(name, nonnull):
            kind, why = "date", "values parse as dates"
        elif nonnull.astype(str).str.len().mean() > 25 and nonnull.astype(str).str.count(" ").mean() >= 3:
            kind, why = "text", "long free text"
        elif nun == len(nonnull) and n > 50:
            kind, why = "identifier", "unique per row"
        else:
            kind = "categorical"
            why = f"{nun} distinct values" + (f"; top {max_levels} kept, rest pooled as '{OTHER_LEVEL}'" if nun > max_levels else "")
        use = kind in ("numeric", "categorical", "binary") and "dropped" not in why and "left out" not in why
        specs.append(ColumnSpec(name=name, kind=kind, use=use))
        decisions.append({"column": name, "kind": kind, "missing": miss, "distinct": int(nun),
                          "used": use, "reason": why})
    return specs, decisions


def _is_sequence(x: pd.Series) -> bool:
    v = x.dropna().to_numpy()
    return len(v) > 1 and (np.all(np.diff(v) > 0) or (v.max() - v.min() + 1) == len(v))


def _looks_like_date(name: str, s: pd.Series) -> bool:
    sample = s.astype(str).head(200)
    if not sample.str.contains(r"\d").all() or not sample.str.contains(r"[-/.:]").mean() > 0.9:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return parsed.notna().mean() > 0.9 or bool(_DATE_NAME.search(name) and parsed.notna().mean() > 0.5)


def resolve_schema(df: pd.DataFrame, schema: list[ColumnSpec] | None, path: str) -> tuple[list[ColumnSpec], list[dict]]:
    """The schema in params wins; else the seed's 8 columns if present; else inferred."""
    if schema:
        missing = [c.name for c in schema if c.name not in df.columns]
        if missing:
            close = difflib.get_close_matches(missing[0], list(df.columns), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise SegreportError(
                f"{path}: column '{missing[0]}' named in the schema is not in the file{hint} "
                f"(columns: {', '.join(map(str, df.columns[:20]))})"
            )
        return schema, [{"column": c.name, "kind": c.kind, "used": c.use, "reason": "given in the schema"} for c in schema]
    if all(c.name in df.columns for c in DEFAULT_SCHEMA):
        return list(DEFAULT_SCHEMA), [
            {"column": c.name, "kind": c.kind, "used": True, "reason": "the bank-marketing preset (its 8 customer columns)"}
            for c in DEFAULT_SCHEMA
        ]
    return infer_schema(df)


def left_out_columns(df: pd.DataFrame, decisions: list[dict], preset: bool) -> list[dict]:
    """The file's columns that no decision covers (a given schema, or the bank preset, names only some),
    each with why: the preset's reason for the bank table's columns, else "not in the schema"."""
    decided = {d["column"] for d in decisions}
    return [{"column": str(c), "reason": (PRESET_LEFT_OUT.get(str(c)) if preset else None) or "not in the schema"}
            for c in df.columns if c not in decided]


def _rows(mask: pd.Series, limit: int = 3) -> str:
    # file line numbers: header is line 1
    idx = np.flatnonzero(mask.to_numpy())[:limit]
    return ", ".join(str(i + 2) for i in idx)


def parse_numeric(s: pd.Series, name: str, path: str) -> pd.Series:
    """A numeric column as floats (missing stays NaN); text, infinities and absurd magnitudes are errors."""
    num = to_number(s)
    bad = num.isna() & s.notna()
    if bad.any():
        examples = ", ".join(repr(str(v)) for v in s[bad].head(3))
        raise SegreportError(f"{path}: column '{name}' is numeric but holds text at row(s) {_rows(bad)}: {examples}")
    inf = ~np.isfinite(num.fillna(0.0)) | (num.abs() > ABSURD)
    if inf.any():
        raise SegreportError(
            f"{path}: column '{name}' holds an infinite or absurdly large value "
            f"({float(num[inf].iloc[0])!r}, beyond ±{ABSURD:.0e}) at row(s) {_rows(inf)}"
        )
    return num


def normalise(df: pd.DataFrame, schema: list[ColumnSpec], path: str, max_levels: int = 30,
              min_level_share: float = 0.0, pooled_out: list[str] | None = None
              ) -> tuple[pd.DataFrame, list[ColumnSpec], list[str]]:
    """Typed, clean columns for the used part of the schema; notes on what was changed
    (and, into `pooled_out`, the columns whose rare levels were pooled)."""
    out: dict[str, pd.Series] = {}
    notes: list[str] = []
    kept: list[ColumnSpec] = []
    for spec in schema:
        if not spec.use or spec.kind not in ("numeric", "categorical", "binary"):
            kept.append(spec)
            continue
        s = df[spec.name]
        if s.isna().all():
            raise SegreportError(f"{path}: column '{spec.name}' is entirely missing")
        if spec.kind == "numeric":
            num = parse_numeric(s, spec.name, path)
            if num.isna().any():
                notes.append(f"'{spec.name}': {int(num.isna().sum())} missing value(s) imputed with the median")
                num = num.fillna(float(num.median()))
            if num.nunique() <= 1:
                notes.append(f"'{spec.name}' is constant: dropped")
                kept.append(spec.model_copy(update={"use": False}))
                continue
            out[spec.name] = num
        else:
            if spec.kind == "binary":
                b = to_binary(s)
                s = b if b is not None else s
            cat = s.astype(object).where(s.isna(), s.astype(str).str.strip())
            if cat.isna().any():
                notes.append(f"'{spec.name}': {int(cat.isna().sum())} missing value(s) kept as level '{MISSING_LEVEL}'")
                cat = cat.fillna(MISSING_LEVEL)
            counts = cat.value_counts()
            if len(counts) > max_levels or (min_level_share > 0 and (counts / len(cat)).min() < min_level_share):
                keep = counts.index[:max_levels]
                if min_level_share > 0:
                    keep = [lv for lv in keep if counts[lv] / len(cat) >= min_level_share]
                pooled = ~cat.isin(keep)
                notes.append(f"'{spec.name}': {len(counts) - len(keep)} rare level(s) pooled as '{OTHER_LEVEL}'")
                cat = cat.where(~pooled, OTHER_LEVEL)
                if pooled_out is not None:
                    pooled_out.append(spec.name)
            if cat.nunique() <= 1:
                notes.append(f"'{spec.name}' is constant: dropped")
                kept.append(spec.model_copy(update={"use": False}))
                continue
            out[spec.name] = cat.astype(str)
        kept.append(spec)
    frame = pd.DataFrame(out, index=pd.RangeIndex(len(df)))
    if frame.shape[1] == 0:
        raise SegreportError(f"{path}: no usable column (numeric, categorical or binary) left to segment on")
    return frame, kept, notes


# names that customer tables give the answer a stakeholder wants explained: a churn flag, a campaign
# response, a purchase, a subscription (UCI bank's `y`), a generic target or label
_OUTCOME_NAME = re.compile(
    r"^(y|target|label|class|outcome|result|exited|attrition([_ ]?flag)?|default[_ ]?next[_ ]?month)$"
    r"|(^|[_\W])(churn(ed)?|converted|conversion|respon(se|ded)|subscri(bed|ption)|purchased?|bought|"
    r"target|outcome|label)([_\W]|$)", re.I)
OUTCOME_OFF = "none"


def detect_outcome(df: pd.DataFrame, schema: list[ColumnSpec] | None = None) -> str | None:
    """The column that looks like the outcome: two values and a name such as y, target, churn, label,
    outcome, converted, response or subscribed; None when no column or more than one looks like it.
    A column an explicit schema uses as an input is never taken."""
    inputs = {c.name for c in (schema or []) if c.use}
    found = [c for c in df.columns if str(c) not in inputs and _OUTCOME_NAME.search(str(c))
             and df[c].dropna().nunique() == 2]
    return str(found[0]) if len(found) == 1 else None


def load_table(path: str | Path, schema: list[ColumnSpec] | None = None, outcome: str | None = None) -> Table:
    """Read, resolve the schema, normalise. The one entry point for a run's data.

    `outcome`: the column compared per segment and never fitted; None = the one `detect_outcome`
    finds (if any), "none" = no outcome."""
    path = str(path)
    df, info = read_raw(path)
    if df.shape[1] == 1 and (schema is None or len(schema) > 1):
        raise SegreportError(
            f"{path}: every line is one field: no delimiter among ',', ';', tab and '|' splits the header "
            f"{str(df.columns[0])[:60]!r}"
        )
    if len(df) < 2:
        raise SegreportError(f"{path}: a single row; segments need more distinct rows than k")
    specs, decisions = resolve_schema(df, schema, path)
    source = "given"
    if outcome is None:
        outcome, source = detect_outcome(df, schema), "detected"
    elif outcome.lower() == OUTCOME_OFF:
        outcome = None
    if outcome is not None:
        if outcome not in df.columns:
            raise SegreportError(f"{path}: outcome column '{outcome}' is not in the file")
        if df[outcome].dropna().nunique() < 2:
            raise SegreportError(f"{path}: outcome column '{outcome}' has a single value; nothing to compare")
        specs = [s.model_copy(update={"use": False}) if s.name == outcome else s for s in specs]
        why = ("the outcome, detected by its name: compared per segment, never fitted"
               if source == "detected" else "the outcome: compared per segment, never fitted")
        decisions = [{**d, "used": False, "reason": why} if d["column"] == outcome else d for d in decisions]
        if not any(d["column"] == outcome for d in decisions):
            decisions.append({"column": outcome, "kind": "binary" if df[outcome].dropna().nunique() == 2
                              else "categorical", "used": False, "reason": why})
    pooled: list[str] = []
    frame, specs, notes = normalise(df, specs, path, pooled_out=pooled)
    pooled = [c for c in pooled if c in frame.columns]
    out_series = None
    if outcome is not None:
        o = df[outcome]
        b = to_binary(o)
        out_series = (b if b is not None else o.astype(str)).reset_index(drop=True)
    decisions = [{**d, **quality(df[d["column"]])} if d["column"] in df.columns else d for d in decisions]
    id_column, ids = _identifier(df, specs)
    outcome_label = None
    if outcome is not None:
        spec = next((c for c in (schema or []) if c.name == outcome), None)
        preset = all(c.name in df.columns for c in DEFAULT_SCHEMA) and not schema
        outcome_label = (spec.label if spec is not None and spec.label else
                         PRESET_OUTCOME_LABELS.get(outcome) if preset else None)
    return Table(frame=frame, schema=specs, path=path, file_sha256=file_sha256(path), ids=ids, id_column=id_column,
                 left_out=left_out_columns(df, decisions, preset=not schema),
                 encoding=info.get("encoding") or "binary", delimiter=info.get("delimiter"),
                 notes=notes, decisions=decisions, outcome=out_series, pooled=pooled,
                 outcome_name=outcome, outcome_source=source if outcome is not None else None,
                 outcome_label=outcome_label)


UNKNOWN_WORDS = {"unknown", "n/a", "na", "?", "not known", "none given", "unspecified", "-"}


def quality(s: pd.Series) -> dict:
    """Data quality of one raw column: missing cells, and cells that say they are unknown ("unknown",
    "n/a", "?", ...): a real level for the methods, but no information about the customer."""
    text = s.dropna().astype(str).str.strip().str.lower()
    return {"missing_n": int(s.isna().sum()), "unknown_n": int(text.isin(UNKNOWN_WORDS).sum())}


def _identifier(df: pd.DataFrame, specs: list[ColumnSpec]) -> tuple[str | None, pd.Series | None]:
    """The first identifier column of the schema (else of the file, named like one: customer_id, id, ...),
    as strings, when no value is missing or repeated."""
    named = [s.name for s in specs if s.kind == "identifier" and s.name in df.columns]
    named += [str(c) for c in df.columns if _ID_NAME.search(str(c)) and str(c) not in named
              and not any(s.name == c and s.use for s in specs)]
    for name in named:
        ids = df[name].reset_index(drop=True)
        if ids.isna().any():
            continue
        ids = ids.astype(str).str.strip()
        if not ids.duplicated().any():
            return name, ids
    return None, None


def check_k(table: Table, ks: list[int]) -> None:
    """k must be below the number of distinct rows."""
    n_distinct = len(table.frame.drop_duplicates())
    if n_distinct <= max(ks):
        raise SegreportError(
            f"{table.path}: {len(table.frame)} row(s), {n_distinct} distinct; k={max(ks)} needs more distinct rows than k"
        )


def sample_rows(n: int, size: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """A seeded sample of row indices (sorted), stratified when strata are given. Here, not in features.py,
    so that a run reusing its feature spaces draws it without importing scikit-learn."""
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if strata is None:
        return np.sort(rng.choice(n, size=size, replace=False))
    picked = []
    values, inverse = np.unique(strata, return_inverse=True)
    counts = np.bincount(inverse)
    # proportional allocation by largest remainder: exactly `size` rows (more only where every stratum
    # needs its one row), never the sum of rounded shares
    quota = size * counts / n
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[:size - int(take.sum())]] += 1
    take = np.minimum(np.maximum(take, 1), counts)
    for g in range(len(values)):
        idx = np.flatnonzero(inverse == g)
        picked.append(rng.choice(idx, size=int(take[g]), replace=False))
    return np.sort(np.concatenate(picked))
