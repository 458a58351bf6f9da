"""Altair figures of a run: Vega-Lite JSON for the HTML site, PNG (vl-convert) for the PDF.

Segments are named S1..Sk and coloured from one fixed palette by that name, so a
segment has the same colour in every figure of a method. Scatter plots draw a
seeded sample of rows: coordinates and segment only, never a customer's values.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..lib.personas import format_value


class _Altair:
    """altair, imported on first use: a render whose figures are all reused (render.FigureWriter)
    never loads it."""

    def __getattr__(self, name: str):
        import altair

        globals()["alt"] = altair  # from now on the module itself
        return getattr(altair, name)


alt = _Altair()

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#17becf"]
METHOD_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#9c755f", "#e15759"]  # in registry order
WIDTH = 560


def seg_name(s: int) -> str:
    return f"S{int(s) + 1}"


def segment_scale(k: int, names: dict | None = None) -> alt.Scale:
    return alt.Scale(domain=[seg_label(i, names) for i in range(k)], range=[PALETTE[i % len(PALETTE)] for i in range(k)])


def seg_label(s: int, names: dict | None = None, width: int | None = None) -> str:
    """A segment as a chart shows it: its code ("S3"). The persona name ("High balance · Retired") is in
    the tooltip and in the key the report writes under each figure (render.FigureWriter), so a long name
    is never cut and a chart stays narrow enough for a phone. `names`, `width`: kept for callers."""
    return seg_name(s)


def seg_tooltip_name(s: int, names: dict | None = None) -> str:
    """The persona name a chart's tooltip shows for a segment (its code where it has none)."""
    return (names or {}).get(int(s)) or seg_name(s)


def persona_names(cards: list[dict] | None) -> dict[int, str]:
    return {int(c["segment"]): str(c.get("name") or "") for c in (cards or [])}


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


def projections(coords: dict[str, tuple[pd.DataFrame, str, str, str, str]], labels: np.ndarray, k: int,
                sample: int, seed: int, names: dict | None = None) -> alt.Chart:
    """PCA, t-SNE and MCA panels of one method, coloured by persona, on a seeded sample of points.
    coords: title -> (frame, x column, y column, x axis title, y axis title)."""
    panels = []
    for title, (frame, x, y, x_title, y_title) in coords.items():
        df = frame[["row", x, y]].rename(columns={x: "x", y: "y"}).copy()
        if len(df) > sample:
            df = df.sample(n=sample, random_state=seed)
        df = df.sort_values("row")
        segs = labels[df["row"].to_numpy()]
        df["segment"] = [seg_label(s, names) for s in segs]
        df["name"] = [seg_tooltip_name(s, names) for s in segs]
        df = df.drop(columns="row").round(3)
        panels.append(alt.Chart(df).mark_circle(size=10, opacity=0.55).encode(
            x=alt.X("x:Q", title=x_title, axis=alt.Axis(tickCount=5, labelFontSize=10)),
            y=alt.Y("y:Q", title=y_title, axis=alt.Axis(tickCount=5, labelFontSize=10)),
            color=alt.Color("segment:N", scale=segment_scale(k, names), title="segment",
                            legend=alt.Legend(orient="right", labelLimit=260)),
            tooltip=[alt.Tooltip("segment:N", title="segment"), alt.Tooltip("name:N", title="persona")],
        ).properties(title=title, width=250, height=230))
    return alt.concat(*panels, columns=2).resolve_scale(color="shared")


def shap_heatmap(mean_abs_shap: dict, labels: dict[str, str], k: int, names: dict | None = None,
                 top: int = 10) -> alt.Chart:
    """Columns (rows of the grid, the `top` strongest) by segment: mean |SHAP| of the surrogate, as colour
    and number. A heatmap, so its size follows k and the number of columns, not their product."""
    rows = [{"segment": seg_label(int(s), names), "name": seg_tooltip_name(int(s), names), "feature": labels.get(f, f),
             "value": v}
            for s, feats in mean_abs_shap.items() for f, v in feats.items()]
    df = pd.DataFrame(rows)
    order = df.groupby("feature")["value"].mean().sort_values(ascending=False).index.tolist()[:top]
    df = df[df.feature.isin(order)]
    seg_order = [seg_label(i, names) for i in range(k)]
    base = alt.Chart(df).encode(
        y=alt.Y("feature:N", sort=order, title=None, axis=alt.Axis(labelLimit=180)),
        x=alt.X("segment:N", sort=seg_order, title=None, axis=alt.Axis(labelAngle=0, orient="top")))
    cell = max(40, min(64, 480 // max(k, 1)))
    return (base.mark_rect().encode(
                color=alt.Color("value:Q", scale=alt.Scale(scheme="oranges"), title="log-odds",
                                legend=alt.Legend(orient="bottom", gradientLength=160)),
                tooltip=["segment", alt.Tooltip("name:N", title="persona"), "feature",
                         alt.Tooltip("value:Q", format=".3f", title="mean |SHAP| (log-odds)")])
            + base.mark_text(fontSize=10).encode(
                text=alt.Text("value:Q", format=".2f"),
                color=alt.condition(f"datum.value > {0.6 * float(df['value'].max()):.6f}", alt.value("white"),
                                    alt.value("black")))
            ).properties(title="What drives membership of each segment (mean |SHAP|, log-odds)",
                         width=cell * k, height=22 * len(order))


def sizes_bar(cards: list[dict], k: int) -> alt.Chart:
    names = persona_names(cards)
    df = pd.DataFrame([{"segment": seg_label(c["segment"], names), "name": seg_tooltip_name(c["segment"], names),
                        "share": c["share"], "size": c["size"]} for c in cards])
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("share:Q", axis=alt.Axis(format="%"), title="share of customers"),
        y=alt.Y("segment:N", sort=[seg_label(i, names) for i in range(k)], title=None,
                axis=alt.Axis(labelLimit=280)),
        color=alt.Color("segment:N", scale=segment_scale(k, names), legend=None),
        tooltip=["segment", alt.Tooltip("name:N", title="persona"), alt.Tooltip("size:Q", title="customers", format=","),
                 alt.Tooltip("share:Q", format=".1%")],
    ).properties(width=WIDTH - 240, height=22 * k + 20)


def outcome_bars(cards: list[dict], k: int, outcome_label: str, population_rate: float) -> alt.Chart:
    """The outcome's rate per segment with its 95% interval, against the whole table's rate (dashed)."""
    names = persona_names(cards)
    rows = [{"segment": seg_label(c["segment"], names), "name": seg_tooltip_name(c["segment"], names),
             "rate": c["outcome"]["rate"],
             "low": c["outcome"]["ci_low"], "high": c["outcome"]["ci_high"], "customers": c["size"]}
            for c in cards if c.get("outcome")]
    df = pd.DataFrame(rows)
    order = [seg_label(i, names) for i in range(k)]
    y = alt.Y("segment:N", sort=order, title=None, axis=alt.Axis(labelLimit=280))
    bars = alt.Chart(df).mark_bar(opacity=0.85).encode(
        x=alt.X("rate:Q", axis=alt.Axis(format="%"), title=outcome_label),
        y=y, color=alt.Color("segment:N", scale=segment_scale(k, names), legend=None),
        tooltip=["segment", alt.Tooltip("name:N", title="persona"), alt.Tooltip("rate:Q", format=".1%", title=outcome_label),
                 alt.Tooltip("low:Q", format=".1%", title="95% interval from"),
                 alt.Tooltip("high:Q", format=".1%", title="to"), alt.Tooltip("customers:Q", format=",")])
    err = alt.Chart(df).mark_rule(color="#333").encode(x="low:Q", x2="high:Q", y=y)
    avg = alt.Chart(pd.DataFrame({"rate": [population_rate]})).mark_rule(strokeDash=[4, 4], color="#555").encode(
        x="rate:Q")
    return (bars + err + avg).properties(width=WIDTH - 240, height=22 * k + 20,
                                         title=f"{outcome_label} per segment (dashed: all customers)")


def profile_heatmap(profile: dict, names: dict, labels: dict[str, str], units: dict, k: int,
                    max_levels: int = 14, binary: set | None = None) -> alt.Chart:
    """Segment against all customers, per column: colour = how far the segment sits from the rest
    (numbers: Cliff's delta; a category level: its share in the segment minus in the rest, both -1..1),
    text = the segment's median or share. Category levels shown: those that differ most somewhere."""
    rows = []
    segs = [s for s in profile["segments"] if not s["suppressed"]]
    for seg in segs:
        lab = seg_label(seg["segment"], names)
        for c, v in seg["numeric"].items():
            rows.append({"segment": lab, "row": f"{labels.get(c, c)} (median)", "effect": v["cliff_delta"],
                         "text": format_value(v["median"], units.get(c)), "kind": 0})
    levels = []
    for c in (segs[0]["categorical"] if segs else {}):
        for lv in segs[0]["categorical"][c]:
            if c in (binary or ()) and lv.lower() in ("no", "false", "0"):
                continue  # a yes/no column by its share of yes
            spread = max(abs(s["categorical"][c][lv]["effect"]) for s in segs)
            levels.append((spread, c, lv))
    for _, c, lv in sorted(levels, key=lambda t: -t[0])[:max_levels]:
        for seg in segs:
            x = seg["categorical"][c][lv]
            rows.append({"segment": seg_label(seg["segment"], names), "row": f"{labels.get(c, c)}: {lv}",
                         "effect": x["effect"], "text": f"{x['share']:.0%}", "kind": 1})
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df.sort_values("kind", kind="stable")["row"]))
    seg_order = [seg_label(i, names) for i in range(k)]
    base = alt.Chart(df).encode(
        y=alt.Y("row:N", sort=order, title=None, axis=alt.Axis(labelLimit=200)),
        x=alt.X("segment:N", sort=seg_order, title=None, axis=alt.Axis(labelAngle=0, orient="top")))
    cell = max(40, min(64, 480 // max(k, 1)))
    return (base.mark_rect().encode(
                color=alt.Color("effect:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True),
                                title="vs the rest", legend=alt.Legend(orient="bottom", gradientLength=160)),
                tooltip=["segment", "row", alt.Tooltip("text:N", title="segment"),
                         alt.Tooltip("effect:Q", format="+.2f", title="difference (-1..1)")])
            + base.mark_text(fontSize=10).encode(
                text="text:N", color=alt.condition("abs(datum.effect) > 0.55", alt.value("white"), alt.value("black")))
            ).properties(title="Each segment against the rest of the customers", width=cell * k,
                         height=18 * len(order))


def distributions(profile: dict, names: dict, labels: dict[str, str], units: dict, k: int) -> alt.Chart:
    """Per numeric column, each segment's middle half (quartiles) and median beside all customers'."""
    rows = []
    pop = profile["population"]["numeric"]
    for c, p in pop.items():
        rows.append({"column": _unit_title(labels.get(c, c), units.get(c)), "segment": "All customers",
                     "q25": p["q25"], "median": p["median"], "q75": p["q75"]})
        for seg in profile["segments"]:
            if seg["suppressed"]:
                continue
            v = seg["numeric"][c]
            rows.append({"column": _unit_title(labels.get(c, c), units.get(c)),
                         "segment": seg_label(seg["segment"], names),
                         "q25": v["q25"], "median": v["median"], "q75": v["q75"]})
    df = pd.DataFrame(rows)
    order = ["All customers"] + [seg_label(i, names) for i in range(k)]
    domain = order
    colors = ["#999999"] + [PALETTE[i % len(PALETTE)] for i in range(k)]
    y = alt.Y("segment:N", sort=order, title=None, axis=alt.Axis(labelLimit=120))
    box = alt.Chart().mark_bar(height=10, opacity=0.7).encode(
        x=alt.X("q25:Q", title=None), x2="q75:Q", y=y,
        color=alt.Color("segment:N", scale=alt.Scale(domain=domain, range=colors), legend=None),
        tooltip=["segment", alt.Tooltip("q25:Q", format=",.0f", title="lower quartile"),
                 alt.Tooltip("median:Q", format=",.0f"), alt.Tooltip("q75:Q", format=",.0f", title="upper quartile")])
    med = alt.Chart().mark_tick(color="black", thickness=2, size=14).encode(x="median:Q", y=y)
    return alt.layer(box, med, data=df).properties(width=230, height=16 * (k + 1)).facet(
        facet=alt.Facet("column:N", title=None, header=alt.Header(labelFontSize=12, labelFontWeight="bold")),
        columns=2).resolve_scale(x="independent").properties(
        title="Middle half of each segment (bar: lower to upper quartile; tick: median)")


def _unit_title(label: str, unit: str | None) -> str:
    return f"{label} ({unit})" if unit else label


def agreement_heatmap(pairs: list[dict]) -> alt.Chart:
    """ARI between the methods at their chosen k, both ways round; the diagonal is a method against itself
    (1 by definition), drawn so the grid reads as a full matrix."""
    rows = []
    for p in pairs:
        rows.append({"a": p["a"], "b": p["b"], "ari": p["ari"]})
        rows.append({"a": p["b"], "b": p["a"], "ari": p["ari"]})
    for name in dict.fromkeys([p["a"] for p in pairs] + [p["b"] for p in pairs]):
        rows.append({"a": name, "b": name, "ari": 1.0})
    df = pd.DataFrame(rows)
    base = alt.Chart(df).encode(x=alt.X("a:N", title=None, axis=alt.Axis(labelAngle=0, labelLimit=90)),
                                y=alt.Y("b:N", title=None))
    return (base.mark_rect().encode(color=alt.Color("ari:Q", scale=alt.Scale(domain=[0, 1], scheme="blues"),
                                                    title="ARI"))
            + base.mark_text(fontSize=13).encode(
                text=alt.Text("ari:Q", format=".2f"),
                color=alt.condition("datum.ari > 0.6", alt.value("white"), alt.value("black")))
            ).properties(width=92 * df["a"].nunique(), height=46 * df["a"].nunique(),
                         title="Agreement at each method's chosen k")


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


def drift_bars(drift: pd.DataFrame, thresholds: dict[str, float]) -> alt.Chart:
    """Each column's drift effect size (columns: label, measure, effect, drifted), with the threshold of
    each measure as a dashed line."""
    data = drift.assign(flag=np.where(drift["drifted"], "drifted", "within threshold"))
    order = data.sort_values("effect", ascending=False)["label"].tolist()
    bars = alt.Chart(data).mark_bar().encode(
        y=alt.Y("label:N", sort=order, title=None),
        x=alt.X("effect:Q", title="effect size against the baseline (normed Wasserstein or Jensen-Shannon)"),
        color=alt.Color("flag:N", title=None, scale=alt.Scale(domain=["within threshold", "drifted"],
                                                              range=["#9fb8d0", "#e15759"])),
        tooltip=["label", "measure", alt.Tooltip("effect:Q", format=".3f"), "flag"])
    rules = alt.Chart(pd.DataFrame({"effect": sorted(set(thresholds.values()))})).mark_rule(
        strokeDash=[4, 4], color="#888").encode(x="effect:Q")
    return (bars + rules).properties(width=WIDTH - 160, height=22 * len(drift) + 10,
                                     title="How far each column has moved")


def segment_drift_heatmap(cells: pd.DataFrame, rows: list[str], cols: list[str]) -> alt.Chart:
    """Segments (rows) x columns: the effect size of each column's drift within the segment (columns:
    segment, label, effect, ratio = effect / threshold, text, drifted); a segment too small to measure
    has no cells."""
    base = alt.Chart(cells).encode(x=alt.X("label:N", sort=cols, title=None, axis=alt.Axis(labelAngle=-30)),
                                   y=alt.Y("segment:N", sort=rows, title=None))
    return (base.mark_rect().encode(
                color=alt.Color("ratio:Q", title="effect / threshold",
                                scale=alt.Scale(domain=[0, 2], clamp=True, scheme="orangered")),
                tooltip=["segment", "label", alt.Tooltip("effect:Q", format=".3f"), "drifted"])
            + base.mark_text(fontSize=11).encode(
                text="text:N", color=alt.condition("datum.ratio > 1.2", alt.value("white"), alt.value("black"))
            ).transform_filter("!datum.drifted")
            + base.mark_text(fontSize=11, fontWeight="bold").encode(
                text="text:N", color=alt.condition("datum.ratio > 1.2", alt.value("white"), alt.value("black"))
            ).transform_filter("datum.drifted")
            ).properties(width=WIDTH - 160, height=max(90, 30 * len(rows)),
                         title="Drift within each segment")
