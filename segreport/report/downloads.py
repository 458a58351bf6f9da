"""Files to act with: for every finished (method, k), the segment profile table (CSV and a
spreadsheet, numbers rounded for people) and the segment assignments (who is in which segment).

Profiles are aggregates and go into the site's downloads/. Assignments are one row per customer:
they are written beside the results (results/<run>/assignments/) and go into the published site
only when `publish_assignments: true`, so a public GitHub Pages site carries no customer row by
default. Every file is written atomically and byte-reproducibly (the spreadsheet's zip timestamps
and document dates are fixed).
"""

from __future__ import annotations

import io
import re
import zipfile
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .. import SegreportError
from ..core import safe_csv
from ..lib.data import read_raw
from ..methods import get
from ..core.safe_csv import csv_safe
from ..core.store import (LABELS, PERSONAS, PROFILE, RunLayout, atomic_copy, atomic_write_bytes, atomic_write_text, cell_id,
                    chosen_segmentation, key, read_json, sha256_file)

FIXED_TIME = datetime(2000, 1, 1)  # spreadsheet document dates: the same bytes for the same results


def csv_text(frame: pd.DataFrame) -> str:
    out = frame.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
            out[c] = out[c].map(csv_safe)
    return out.to_csv(index=False)


def rounded(v: float | None) -> float | None:
    """A number as a person reads it: whole above 100, one decimal above 10, else two."""
    if v is None or not np.isfinite(v):
        return None
    v = float(v)
    return round(v) if abs(v) >= 100 else round(v, 1) if abs(v) >= 10 else round(v, 2)


def _head(label: str, unit: str | None) -> str:
    return f"{label} median ({unit})" if unit else f"{label} median"


def profile_frame(profile: dict, cards: list[dict], ctx: dict, rates: list[dict] | None = None,
                  outcome: dict | None = None) -> pd.DataFrame:
    """One row per segment and one for all customers: size, share, stability, the outcome's rate with
    its lift and interval, then each used column (numbers by their median in their unit, categories by
    their most common level and its share, yes/no columns by their share of yes)."""
    labels, units = ctx["labels"], ctx.get("units") or {}
    numeric, binary = ctx["used"]["numeric"], set(ctx["used"]["binary"])
    categorical = [c for c in ctx["used"]["categorical"]]
    by_card = {c["segment"]: c for c in cards}
    by_rate = {r["segment"]: r for r in (rates or [])}
    pop = profile["population"]
    rows = []
    o_name = f"{outcome['column']} = {outcome['positive']}" if outcome else None

    def columns(numbers: dict, shares: dict) -> dict:
        row = {}
        for c in numeric:
            row[_head(labels.get(c, c), units.get(c))] = rounded(numbers.get(c))
        for c in categorical:
            lv = shares.get(c) or {}
            if c in binary:
                row[f"{labels.get(c, c)} (% yes)"] = rounded(100 * lv.get("yes", 0.0)) if lv else None
            elif lv:
                top = max(sorted(lv), key=lambda x: lv[x])
                row[f"{labels.get(c, c)}: most common"] = top
                row[f"{labels.get(c, c)}: its share (%)"] = rounded(100 * lv[top])
            else:
                row[f"{labels.get(c, c)}: most common"] = None
                row[f"{labels.get(c, c)}: its share (%)"] = None
        return row

    for seg in profile["segments"]:
        s = seg["segment"]
        card = by_card.get(s, {})
        row = {"Segment": f"S{s + 1}", "Persona": card.get("name", ""), "Customers": seg["size"],
               "Share (%)": rounded(100 * seg["share"]),
               "Stability": card.get("stability_class") or "", "Stability (mean Jaccard)":
                   None if card.get("stability") is None else round(float(card["stability"]), 2)}
        if outcome:
            r = by_rate.get(s)
            row[f"{o_name} (%)"] = None if r is None else rounded(100 * r["rate"])
            row["Lift (x the average)"] = None if r is None or r["lift"] is None else round(r["lift"], 2)
            row["95% interval, low (%)"] = None if r is None else rounded(100 * r["ci_low"])
            row["95% interval, high (%)"] = None if r is None else rounded(100 * r["ci_high"])
        row["Outliers"] = seg.get("outliers")
        if seg["suppressed"]:  # too small to profile: its size only (see min_segment_size)
            row.update({k: None for k in columns({}, {})})
        else:
            row.update(columns({c: v["median"] for c, v in seg["numeric"].items()},
                               {c: {lv: x["share"] for lv, x in d.items()} for c, d in seg["categorical"].items()}))
        rows.append(row)
    total = {"Segment": "All", "Persona": "All customers", "Customers": profile["rows"], "Share (%)": 100.0,
             "Stability": "", "Stability (mean Jaccard)": None}
    if outcome:
        total.update({f"{o_name} (%)": rounded(100 * outcome["population_rate"]), "Lift (x the average)": 1.0,
                      "95% interval, low (%)": None, "95% interval, high (%)": None})
    total["Outliers"] = sum(int(s.get("outliers") or 0) for s in profile["segments"]) \
        if any("outliers" in s for s in profile["segments"]) else None
    total.update(columns({c: v["median"] for c, v in pop["numeric"].items()}, pop["categorical"]))
    rows.append(total)
    return pd.DataFrame(rows)


def xlsx_bytes(sheets: dict[str, pd.DataFrame]) -> bytes:
    """A spreadsheet (openpyxl through pandas) whose bytes depend only on its contents."""
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as xw:
        for name, frame in sheets.items():
            frame.to_excel(xw, sheet_name=name[:31], index=False)
            ws = xw.sheets[name[:31]]
            for i, col in enumerate(frame.columns, start=1):  # columns as wide as their header
                ws.column_dimensions[ws.cell(row=1, column=i).column_letter].width = min(40, max(10, len(str(col)) + 2))
        xw.book.properties.created = FIXED_TIME
        xw.book.properties.modified = FIXED_TIME
        xw.book.properties.creator = "segreport"
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":  # openpyxl stamps the time of saving, whatever was set
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                              rb"\g<1>" + FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + rb"\g<2>", data)
            dst.writestr(fixed, data)
    return out.getvalue()


def assignments_frame(labels: pd.DataFrame, cards: list[dict], ids: pd.DataFrame | None) -> pd.DataFrame:
    """Who is in which segment: the identifier (or the row number in the file, 1 = first data row),
    segment code, persona name, and whether the customer was an outlier the method left out of its fit."""
    names = {c["segment"]: c.get("name", "") for c in cards}
    seg = labels["segment"].to_numpy()
    first = ids.reset_index(drop=True) if ids is not None else pd.DataFrame({"row": labels["row"].to_numpy() + 1})
    out = first.assign(segment=[f"S{s + 1}" for s in seg], persona=[names.get(int(s), "") for s in seg],
                       outlier=np.where(labels["outlier"].to_numpy(bool), "yes", "no"))
    return out


def run_ref(layout: RunLayout) -> str:
    """The run folder as the report names it in commands: results folder and run (results/bank)."""
    return f"{layout.root.parent.name}/{layout.root.name}"


@lru_cache(maxsize=None)
def _code() -> str:
    """What a profile file's bytes depend on besides its inputs: this module, safe_csv, pandas and openpyxl."""
    from importlib import metadata

    return "|".join([sha256_file(__file__), sha256_file(safe_csv.__file__)]
                    + [metadata.version(p) for p in ("pandas", "openpyxl")])


def write_downloads(layout: RunLayout, report_dir: Path, ctx: dict, cells: dict, outcome: dict | None,
                    rates_of, publish_assignments: bool = False) -> dict:
    """Profiles (CSV + XLSX) into report/downloads/profiles/, assignments into results/<run>/assignments/
    (and report/downloads/assignments/ when published). `cells`: render's cell views; `rates_of(method,
    value)`: the outcome's per-segment rates or None. Returns {cell name: {profile_csv, profile_xlsx,
    assignments}} for the pages."""
    prof_dir = report_dir / "downloads" / "profiles"
    pub_dir = report_dir / "downloads" / "assignments"
    ids = pd.read_parquet(layout.ids) if layout.ids.exists() else None
    ids_key = sha256_file(layout.ids) if ids is not None else None
    outcome_key = sha256_file(layout.outcome) if outcome and layout.outcome.exists() else None
    found, keep_prof, keep_pub = {}, set(), set()
    for (method, v), cell in cells.items():
        if cell.get("status") != "done" or not cell.get("personas"):
            continue
        grid = get(method).grid
        cdir = layout.cell(method, v, grid)
        name = f"{method}-{cell_id(v, grid)}"
        cards = cell["personas"]
        # profiles: rewritten only when what they are made of changed (the profile, the personas, the
        # outcome and its rates by these labels, the columns' names, this module); else kept as they are
        csv_path, xlsx_path, pstamp = prof_dir / f"{name}.csv", prof_dir / f"{name}.xlsx", prof_dir / f".{name}.key"
        pk = key(sha256_file(cdir / PROFILE), sha256_file(cdir / PERSONAS), outcome,
                 outcome_key and (outcome_key, sha256_file(cdir / LABELS)),
                 {n: ctx.get(n) for n in ("labels", "units", "used")}, _code())
        if not (csv_path.exists() and xlsx_path.exists() and pstamp.exists() and pstamp.read_text() == pk):
            pstamp.unlink(missing_ok=True)
            frame = profile_frame(read_json(cdir / PROFILE), cards, ctx, rates_of(method, v), outcome)
            atomic_write_text(csv_path, csv_text(frame))
            atomic_write_bytes(xlsx_path, xlsx_bytes({"Segments": frame}))
            atomic_write_text(pstamp, pk)
        keep_prof |= {csv_path.name, xlsx_path.name, pstamp.name}
        # assignments: one row per customer; rewritten only when the labels, names or identifiers changed
        target = layout.assignments / f"{name}.csv"
        stamp = layout.assignments / f".{name}.key"
        k = key(sha256_file(cdir / LABELS), sha256_file(cdir / PERSONAS), ids_key)
        if not (target.exists() and stamp.exists() and stamp.read_text() == k):
            atomic_write_text(target, csv_text(assignments_frame(pd.read_parquet(cdir / LABELS), cards, ids)))
            atomic_write_text(stamp, k)
        if publish_assignments:
            atomic_copy(target, pub_dir / f"{name}.csv")
            keep_pub.add(f"{name}.csv")
        found[cell["notebook_name"]] = {"profile_csv": f"downloads/profiles/{name}.csv",
                                        "profile_xlsx": f"downloads/profiles/{name}.xlsx",
                                        # named from the results folder on, never as an absolute path
                                        "assignments": f"{run_ref(layout)}/assignments/{name}.csv",
                                        "published": f"downloads/assignments/{name}.csv" if publish_assignments else None}
    for folder, keep in ((prof_dir, keep_prof), (pub_dir, keep_pub)):
        if folder.exists():
            for f in folder.iterdir():
                if f.name not in keep:
                    f.unlink()
    return found



def campaign_list(run_dir: str | Path, segments: list[str], out: str | Path, method: str | None = None,
                  k: int | None = None) -> tuple[int, str]:
    """The customers of one or more segments with every column of the table the run read, plus their
    segment and persona name: a list to act on. Segments by code (S3), number (3) or persona name.
    Returns (rows written, "method k=K")."""
    layout = RunLayout(run_dir)
    if not layout.context.exists():
        raise SegreportError(f"{run_dir}: not a finished run (no {layout.context.name}); run `segreport run` first")
    method, value = chosen_segmentation(layout, method, k)
    grid = get(method).grid
    cdir = layout.cell(method, value, grid)
    if not (cdir / LABELS).exists():
        raise SegreportError(f"{cdir}: this cell has no labels; run `segreport run` for {method} {grid}={value}")
    ctx = layout.read_context()
    cards = read_json(cdir / PERSONAS)
    codes = {f"S{c['segment'] + 1}".lower(): c["segment"] for c in cards}
    codes.update({str(c["segment"] + 1): c["segment"] for c in cards})
    codes.update({str(c.get("name", "")).lower(): c["segment"] for c in cards})
    wanted = set()
    for s in segments:
        if s.strip().lower() not in codes:
            raise SegreportError(f"segment '{s}' is not one of {method} {grid}={value}'s: "
                                 + ", ".join(f"S{c['segment'] + 1} {c.get('name', '')}" for c in cards))
        wanted.add(codes[s.strip().lower()])
    path = Path(ctx["data"]["path"])
    if not path.is_file():
        raise SegreportError(f"{path}: the run's data file is gone; the list needs its rows")
    if sha256_file(path) != ctx["data"]["file_sha256"]:
        raise SegreportError(f"{path}: changed since the run (sha256 differs); rerun `segreport run` or use "
                             "`segreport assign` on the new file")
    df, _ = read_raw(path)
    labels = pd.read_parquet(cdir / LABELS)
    assigned = assignments_frame(labels, cards, None)
    keep = labels["segment"].isin(sorted(wanted)).to_numpy()
    rows = df.reset_index(drop=True).loc[keep].copy()
    rows["segment"] = assigned.loc[keep, "segment"].to_numpy()
    rows["persona"] = assigned.loc[keep, "persona"].to_numpy()
    rows["outlier"] = assigned.loc[keep, "outlier"].to_numpy()
    atomic_write_text(out, csv_text(rows))
    return int(keep.sum()), f"{get(method).display} {grid}={value}"
