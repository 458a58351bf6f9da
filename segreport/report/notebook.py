"""What the analysis notebooks display: small tables and one chart read from a cell's results (aggregates only).

The notebooks are records: their numbers are formatted as the report formats them, the values a
record ran with are restated plainly, no warning box clutters them, and no local path is shown.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from . import figures as F
from ..methods import get
from ..core.number_format import num
from ..core.store import PERSONAS, SHAP, RunLayout


def quiet() -> None:
    """No warning boxes in a record: tqdm's 'IProgress not found' (no widgets in a papermill kernel) and
    libraries' deprecation notices say nothing about the analysis."""
    try:
        from tqdm import TqdmWarning

        warnings.filterwarnings("ignore", category=TqdmWarning)
    except ImportError:  # pragma: no cover
        pass
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


quiet()


def _table(rows: list[tuple[str, str]], label: str = "value"):
    df = pd.DataFrame(rows, columns=["", label]).set_index("")
    df.index.name = None
    return df.style.set_properties(**{"text-align": "right"})


def parameters(run_dir, method: str, value) -> "pd.io.formats.style.Styler":
    """The values this record ran with (papermill's injected cell), said plainly: no local path."""
    m = get(method)
    ctx = RunLayout(run_dir).read_context()
    data = ctx.get("data") or {}
    rows = [("method", f"{m.display} ({method})"), (m.grid_label, num(value)),
            ("run", Path(run_dir).name), ("customers", num(data.get("rows"))),
            ("seed", str(ctx.get("params", {}).get("seed", "")))]
    return _table(rows)


def metrics_table(metrics: dict):
    rows = [("rows", metrics["rows"]), ("segments", metrics["k"]),
            ("fitted rows (outliers excluded)", metrics["fitted_rows"]),
            (metrics["cost_name"], metrics["cost"]), ("LightGBM CV accuracy", metrics["lgbm_accuracy"])]
    for space in ("own", "common"):
        for m in ("silhouette", "davies_bouldin", "calinski_harabasz"):
            rows.append((f"{m.replace('_', '-')} ({space} space)", metrics[space].get(m)))
    fmt = [(name, f"{100 * v:.1f}%" if name.startswith("LightGBM") and v is not None
            else ("–" if v is None else num(v))) for name, v in rows]
    return _table(fmt)


def chart(run_dir, method: str, value, metrics: dict):
    """Segment sizes beside the cell's scores (silhouette in both spaces, LightGBM accuracy, stability),
    as a PNG: it shows wherever the notebook is opened, offline included."""
    import altair as alt

    cards = RunLayout(run_dir).read_cell(method, value, PERSONAS, get(method).grid)
    sizes = F.sizes_bar(cards, metrics["k"]).properties(width=300, title="Segment sizes")
    stab = (metrics.get("stability") or {}).get("ari_mean")
    scores = [("silhouette (own space)", metrics["own"].get("silhouette")),
              ("silhouette (common space)", metrics["common"].get("silhouette")),
              ("LightGBM CV accuracy", metrics.get("lgbm_accuracy")), ("stability (mean ARI)", stab)]
    df = pd.DataFrame([{"score": n, "value": float(v)} for n, v in scores if v is not None])
    bars = alt.Chart(df).mark_bar(color="#2c5d8f").encode(
        x=alt.X("value:Q", scale=alt.Scale(domain=[min(0.0, df.value.min()), 1]), title=None),
        y=alt.Y("score:N", sort=None, title=None))
    text = bars.mark_text(align="left", dx=3).encode(text=alt.Text("value:Q", format=".3f"))
    both = alt.hconcat(sizes, (bars + text).properties(width=220, height=18 * len(df) + 20,
                                                       title="Scores (higher is better)"))
    alt = (f"Segment sizes of {get(method).display} at k = {metrics['k']}, beside its scores: "
           + "; ".join(f"{r.score} {r.value:.3f}" for r in df.itertuples()))
    return Figure(F.to_png(F.to_spec(both), scale=1.5), alt)


class Figure:
    """A PNG with its alternative text: shown as an <img alt=...> in HTML (nbconvert's lab template gives a
    bare PNG output no alt, and warns for each), as the PNG itself elsewhere."""

    def __init__(self, png: bytes, alt: str):
        self.png, self.alt = png, alt

    def _repr_mimebundle_(self, include=None, exclude=None):
        import base64
        import html

        b64 = base64.b64encode(self.png).decode()
        return {"image/png": b64, "text/plain": self.alt,
                "text/html": f'<img src="data:image/png;base64,{b64}" alt="{html.escape(self.alt)}">'}


def personas_table(run_dir, method: str, value: int) -> pd.DataFrame:
    cards = RunLayout(run_dir).read_cell(method, value, PERSONAS, get(method).grid)
    return pd.DataFrame([{"segment": c["segment"] + 1, "customers": num(c["size"]), "share": f"{100 * c['share']:.1f}%",
                          "persona": c["name"]} for c in cards]).set_index("segment")


def shap_table(run_dir, method: str, value: int):
    shap = RunLayout(run_dir).read_cell(method, value, SHAP, get(method).grid)["mean_abs_shap"]
    df = pd.DataFrame(shap)
    df.columns = [f"segment {int(c) + 1}" for c in df.columns]
    return df.style.format("{:.3f}")
