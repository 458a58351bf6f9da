"""The report's tracking page: what `segreport track` summarised (tracking.json and tracking/*.parquet),
as figures and one page; no number is computed here.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from . import figures as F
from ..methods import REGISTRY, get
from ..core.store import MODEL, RunLayout, atomic_write_text, read_json_or_empty, sha256_file
from ..stages.track import SNAPSHOTS, name_list


def write_page(layout: RunLayout, page: Path, env, fig) -> bool:
    """The page (report/_pages/tracking.qmd) from tracking.json (and its figures), when the run has snapshots
    scored with its current fit; else no tracking page (a stale one is removed). True if it was written."""
    view = page_view(layout, fig)
    if view is None:
        page.unlink(missing_ok=True)
        return False
    env.filters.setdefault("pts", lambda v: Markup("–" if v is None else f"{100 * float(v):+.1f} pts"))
    env.filters.setdefault("f2", lambda v: Markup("–" if v is None else f"{float(v):.2f}"))
    env.filters.setdefault("names", lambda v: Markup(name_list([str(x) for x in v])))
    text = env.get_template("pages/tracking.qmd.j2").render(view)
    atomic_write_text(page, text)
    return True


def page_view(layout: RunLayout, fig) -> dict | None:
    """What the tracking page shows, read from tracking.json and tracking/*.parquet (no new numbers)."""
    t = read_json_or_empty(layout.tracking)
    if not t.get("periods") or not (layout.root / SNAPSHOTS).is_dir():
        return None
    model = layout.cell(t["method"], t["k"], get(t["method"]).grid) / MODEL
    if not model.exists() or sha256_file(model) != t["model_sha256"]:
        warnings.warn(f"{layout.root / 'tracking.json'}: the snapshots were scored with an earlier fit of "
                      f"{t['method']} k={t['k']}; the tracking page is left out until they are tracked again")
        return None
    k = t["k"]
    label = {p["key"]: p["label"] for p in t["periods"]}
    order = [p["label"] for p in t["periods"]]
    segs = {s["segment"]: s for s in t["segments"]}
    sizes = pd.DataFrame(t["sizes"])
    sizes["segment_code"] = sizes["segment"].map(lambda s: segs[s]["code"])
    latest = t["latest"]
    table = []
    for s in t["segments"]:
        rows = {r["period"]: r for r in t["sizes"] if r["segment"] == s["segment"]}
        table.append({**s, "cells": [rows[p["key"]] for p in t["periods"]], "latest": rows[latest]})
    chart_data = sizes.assign(period=sizes["period"].map(label), name=sizes["segment"].map(lambda s: segs[s]["name"]),
                              segment=sizes["segment_code"])[
        ["period", "segment", "name", "customers", "share", "beyond_noise"]]
    view = {"t": t, "titles": {name: m.display for name, m in REGISTRY.items()}, "segments": t["segments"], "periods": t["periods"],
            "snapshots": t["periods"][1:],
            "latest_label": label[latest], "size_rows": table, "label": label,
            "fig_sizes": fig("tracking-sizes", F.shares_over_time(chart_data, order, k),
                             "Each segment's share of customers, baseline and snapshots; solid points: a change "
                             "against the baseline beyond sampling noise (95 %).")}
    # moves between periods
    mig = t["migration"]
    view["transitions"] = [{**tr, "from_label": label[tr["from"]], "to_label": label[tr["to"]]}
                           for tr in mig["transitions"]]
    if mig["transitions"]:
        last = view["transitions"][-1]
        m = pd.read_parquet(layout.tracking_table("migration"))
        m = m[(m["from_period"] == last["from"]) & (m["to_period"] == last["to"])]  # (DataFrame.to_period is a method)
        codes = [s["code"] for s in t["segments"]]
        rows_, cols_ = codes + ["new"], codes + ["left"]
        grid = pd.DataFrame([(a, b) for a in range(-1, k) for b in range(-1, k) if not (a < 0 and b < 0)],
                            columns=["from_segment", "to_segment"])
        grid = grid.merge(m[["from_segment", "to_segment", "customers"]], how="left").fillna({"customers": 0})
        grid["customers"] = grid["customers"].astype(int)
        name = lambda s, none: none if s < 0 else segs[s]["code"]  # noqa: E731
        cells = pd.DataFrame({"from": [name(s, "new") for s in grid.from_segment],
                              "to": [name(s, "left") for s in grid.to_segment],
                              "customers": grid.customers, "dark_from": grid.customers.max() / 2})
        view["fig_migration"] = fig("tracking-migration", F.migration_heatmap(
            cells, rows_, cols_, f"{last['from_label']} to {last['to_label']}"),
            f"Customers by their segment in {last['from_label']} (rows) and in {last['to_label']} (columns); "
            "'new': not in the earlier table, 'left': not in the later one.")
        matrix = []
        for a in list(range(k)) + [-1]:
            row = {"from": segs[a] if a >= 0 else None, "counts": []}
            for b in list(range(k)) + [-1]:
                hit = grid[(grid.from_segment == a) & (grid.to_segment == b)]
                row["counts"].append(None if (a < 0 and b < 0) else int(hit.customers.iloc[0]))
            matrix.append(row)
        view["matrix"] = matrix
        view["last_transition"] = last
    # drift: per column, within each segment; does it change the segments
    d_latest = pd.DataFrame(t["drift"]["latest"])
    th = t.get("thresholds") or {}
    measured = "drifted" in d_latest.columns and d_latest["drifted"].notna().all()
    view["measured"] = measured
    if measured:
        limits = {"numbers": th["numeric_threshold"], "categories": th["categorical_threshold"]}
        view["fig_drift"] = fig("tracking-drift", functools.partial(
            F.drift_bars, d_latest[["label", "measure", "effect", "drifted"]], limits),
            f"Drift of each column in {label[latest]} against the baseline: normed Wasserstein for numbers, "
            f"Jensen-Shannon distance for categories; dashed: the threshold"
            f"{'s' if len(set(limits.values())) > 1 else ''}; red: drifted (its distribution, missing share or "
            "new values).")
        view["drift_rows"] = sorted(t["drift"]["latest"], key=lambda r: -((r["effect"] or 0) / r["threshold"]))
        segs_latest = [r for r in t["drift"].get("segments_latest") or [] if r["period"] == latest]
        cells = pd.DataFrame([{"segment": f"{segs[r['segment']]['code']} · {segs[r['segment']]['name']}",
                               "label": r["label"], "effect": r["effect"], "ratio": r["effect"] / r["threshold"],
                               "text": f"{r['effect']:.2f}", "drifted": bool(r["drifted"])}
                              for r in segs_latest if r["measured"] and r.get("effect") is not None])
        view["fig_segments"] = None  # no segment with enough customers on both sides: the page says so
        if len(cells):
            rows_ = list(dict.fromkeys(cells["segment"]))
            cols_ = list(dict.fromkeys(cells["label"]))
            view["fig_segments"] = fig("tracking-segment-drift", functools.partial(
                F.segment_drift_heatmap, cells, rows_, cols_),
                f"Effect size of each column's drift within each segment, {label[latest]} against the baseline; "
                "bold: drifted.")
        view["segments_unmeasured"] = [
            {**segs[s_], "rows": next(r["rows"] for r in segs_latest if r["segment"] == s_),
             "baseline_rows": next(r["baseline_rows"] for r in segs_latest if r["segment"] == s_)}
            for s_ in sorted({r["segment"] for r in segs_latest if not r["measured"]})]
        view["segments_drifted"] = [w for w in t["recommendation"]["watch"] if w["kind"] == "segment_drift"]
        view["refit"] = (t.get("refit") or {}).get(latest)
    else:  # snapshots tracked before effect sizes were measured
        view["fig_drift"] = fig("tracking-drift", F.psi_bars(d_latest[["label", "psi", "reading"]],
                                                             t["drift"]["thresholds"]["moderate"],
                                                             t["drift"]["thresholds"]["large"]),
                                f"Population stability index of each column in {label[latest]} against the baseline.")
        view["drift_rows"] = sorted(t["drift"]["latest"], key=lambda r: -r["psi"])
    view["th"] = th
    view["drift_by_period"] = t["drift"]["by_period"]
    view["effect_by_period"] = t["drift"].get("effect_by_period") or {}
    view["ignored"] = (t.get("ignored_columns") or {}).get(latest) or []
    # outcome
    if t.get("outcome"):
        rates = {(r["period"], r["segment"]): r for r in t["outcome_rates"]}
        view["outcome_periods"] = [p for p in t["periods"] if p["key"] in t["outcome"]["periods"]]
        view["outcome_rows"] = [{"segment": s, "cells": [rates.get((p["key"], s["segment"])) for p in
                                                         view["outcome_periods"]]} for s in t["segments"]]
        view["outcome_total"] = [rates.get((p["key"], -1)) for p in view["outcome_periods"]]
    view["health"] = [{**h, "label": label[h["period"]]} for h in t["health"]]
    view["rec"] = t["recommendation"]
    return view
