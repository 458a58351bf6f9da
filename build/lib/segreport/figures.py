"""Altair figures of a run: Vega-Lite JSON for the HTML site, PNG (vl-convert) for the PDF.

Segments are named S1..Sk and coloured from one fixed palette by that name, so a
segment has the same colour in every figure of a method. Scatter plots draw a
seeded sample of rows: coordinates and segment only, never a customer's values.
"""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#17becf"]
METHOD_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#9c755f", "#e15759"]  # in registry order
WIDTH = 560


def seg_name(s: int) -> str:
    return f"S{int(s) + 1}"


def segment_scale(k: int) -> alt.Scale:
    return alt.Scale(domain=[seg_name(i) for i in range(k)], range=[PALETTE[i % len(PALETTE)] for i in range(k)])


def metric_lines(table: pd.DataFrame, y: str, title: str, y_title: str, chosen: int | None = None,
                 color_by: str | None = None, x_title: str = "k (number of segments)",
                 methods: list[str] | None = None) -> alt.Chart:
    """A metric against k (or a method's grid value); `methods`: the display names in colour order."""
    data = table.dropna(subset=[y])[["k", y] + ([color_by] if color_by else [])]
    base = alt.Chart(data).encode(x=alt.X("k:O", title=x_title),
                                  y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(zero=False)))
    if color_by == "method":
        domain = methods or sorted(data["method"].unique())
        enc = {"color": alt.Color("method:N", title="method",
                                  scale=alt.Scale(domain=domain, range=METHOD_PALETTE[:len(domain)]))}
    elif color_by:
        enc = {"color": alt.Color(f"{color_by}:N", title=color_by)}
    else:
        enc = {}
    chart = base.mark_line(point=True).encode(**enc, tooltip=["k", alt.Tooltip(f"{y}:Q", format=".3f")])
    if chosen is not None:
        chart = chart + alt.Chart(pd.DataFrame({"k": [chosen]})).mark_rule(strokeDash=[4, 4], color="#888").encode(x="k:O")
    return chart.properties(title=title, width=WIDTH, height=220)


def projections(coords: dict[str, pd.DataFrame], labels: np.ndarray, k: int, sample: int, seed: int) -> alt.Chart:
    """PCA, t-SNE and MCA panels of one method, coloured by segment, on a seeded sample of points."""
    panels = []
    for title, (frame, x, y) in coords.items():
        df = frame[["row", x, y]].rename(columns={x: "x", y: "y"}).copy()
        if len(df) > sample:
            df = df.sample(n=sample, random_state=seed)
        df = df.sort_values("row")
        df["segment"] = [seg_name(s) for s in labels[df["row"].to_numpy()]]
        df = df.drop(columns="row").round(4)
        panels.append(alt.Chart(df).mark_circle(size=9, opacity=0.6).encode(
            x=alt.X("x:Q", title=None, axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("y:Q", title=None, axis=alt.Axis(labels=False, ticks=False)),
            color=alt.Color("segment:N", scale=segment_scale(k), title="segment"),
        ).properties(title=title, width=175, height=175))
    return alt.hconcat(*panels).resolve_scale(color="shared")


def shap_heatmap(mean_abs_shap: dict, labels: dict[str, str], k: int) -> alt.Chart:
    rows = [{"segment": seg_name(int(s)), "feature": labels.get(f, f), "value": v}
            for s, feats in mean_abs_shap.items() for f, v in feats.items()]
    df = pd.DataFrame(rows)
    order = df.groupby("feature")["value"].mean().sort_values(ascending=False).index.tolist()
    return alt.Chart(df).mark_bar().encode(
        y=alt.Y("feature:N", sort=order, title=None),
        x=alt.X("value:Q", title="mean |SHAP| (log-odds)"),
        color=alt.Color("segment:N", scale=segment_scale(k), title="segment"),
        yOffset=alt.YOffset("segment:N", sort=[seg_name(i) for i in range(k)]),
        tooltip=["segment", "feature", alt.Tooltip("value:Q", format=".3f")],
    ).properties(title="What drives each segment (LightGBM surrogate, SHAP)", width=WIDTH - 120)


def sizes_bar(cards: list[dict], k: int) -> alt.Chart:
    df = pd.DataFrame([{"segment": seg_name(c["segment"]), "share": c["share"], "size": c["size"]} for c in cards])
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("share:Q", axis=alt.Axis(format="%"), title="share of customers"),
        y=alt.Y("segment:N", sort=[seg_name(i) for i in range(k)], title=None),
        color=alt.Color("segment:N", scale=segment_scale(k), legend=None),
        tooltip=["segment", "size", alt.Tooltip("share:Q", format=".1%")],
    ).properties(width=WIDTH - 120, height=18 * k + 20)


def agreement_heatmap(pairs: list[dict]) -> alt.Chart:
    rows = []
    for p in pairs:
        rows.append({"a": p["a"], "b": p["b"], "ari": p["ari"]})
        rows.append({"a": p["b"], "b": p["a"], "ari": p["ari"]})
    df = pd.DataFrame(rows)
    base = alt.Chart(df).encode(x=alt.X("a:N", title=None), y=alt.Y("b:N", title=None))
    return (base.mark_rect().encode(color=alt.Color("ari:Q", scale=alt.Scale(domain=[0, 1], scheme="blues"),
                                                    title="ARI"))
            + base.mark_text(fontSize=13).encode(text=alt.Text("ari:Q", format=".2f"))
            ).properties(width=240, height=200, title="Agreement at each method's chosen k")


def to_spec(chart) -> dict:
    return chart.to_dict()


def to_png(spec: dict, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(spec, scale=scale)


def spec_json_for_html(spec: dict) -> str:
    """JSON safe to place inside a <script> element (no '</script>' breakout)."""
    s = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --------------------------------------------------------------------------- segments over time (track)

READING_COLORS = {"stable": "#59a14f", "moderate": "#f28e2b", "large": "#e15759"}


def shares_over_time(sizes: pd.DataFrame, periods: list[str], k: int) -> alt.Chart:
    """Each segment's share of customers per period (columns: period label, segment code, name, share,
    customers, beyond_noise); filled points mark a change against the baseline beyond sampling noise."""
    base = alt.Chart(sizes).encode(
        x=alt.X("period:N", sort=periods, title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("share:Q", axis=alt.Axis(format="%"), title="share of customers"),
        color=alt.Color("segment:N", scale=segment_scale(k), title="segment"),
        tooltip=["period", "segment", "name", "customers", alt.Tooltip("share:Q", format=".1%"), "beyond_noise"])
    return (base.mark_line() + base.mark_point(size=60, filled=True).encode(
        opacity=alt.condition("datum.beyond_noise", alt.value(1.0), alt.value(0.35)))
            ).properties(width=WIDTH - 120, height=220, title="Segment shares over time")


def migration_heatmap(cells: pd.DataFrame, rows: list[str], cols: list[str], title: str) -> alt.Chart:
    """Customers by (from, to): rows are last period's segments plus new customers, columns this
    period's segments plus those who left."""
    base = alt.Chart(cells).encode(x=alt.X("to:N", sort=cols, title="now in", axis=alt.Axis(labelAngle=0)),
                                   y=alt.Y("from:N", sort=rows, title="before in"))
    return (base.mark_rect().encode(color=alt.Color("customers:Q", scale=alt.Scale(type="sqrt", scheme="blues"),
                                                    legend=None),
                                    tooltip=["from", "to", "customers"])
            + base.mark_text(fontSize=12).encode(
                text=alt.Text("customers:Q", format=","),
                color=alt.condition("datum.customers > datum.dark_from", alt.value("white"), alt.value("black")))
            ).properties(width=WIDTH - 120, height=max(120, 34 * len(rows)), title=title)


def psi_bars(drift: pd.DataFrame, moderate: float, large: float) -> alt.Chart:
    """Population stability index per column (columns: label, psi, reading), with the two thresholds."""
    order = drift.sort_values("psi", ascending=False)["label"].tolist()
    bars = alt.Chart(drift).mark_bar().encode(
        y=alt.Y("label:N", sort=order, title=None),
        x=alt.X("psi:Q", title="population stability index (PSI) against the baseline"),
        color=alt.Color("reading:N", title="shift", scale=alt.Scale(domain=list(READING_COLORS),
                                                                     range=list(READING_COLORS.values()))),
        tooltip=["label", alt.Tooltip("psi:Q", format=".3f"), "reading"])
    rules = alt.Chart(pd.DataFrame({"psi": [moderate, large]})).mark_rule(strokeDash=[4, 4], color="#888").encode(
        x="psi:Q")
    return (bars + rules).properties(width=WIDTH - 160, height=22 * len(drift) + 10,
                                     title="How far each column has moved")
