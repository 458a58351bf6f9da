"""What the analysis notebooks display: small tables read from a cell's results (aggregates only)."""

from __future__ import annotations

import pandas as pd

from .methods import get
from .store import PERSONAS, SHAP, RunLayout


def metrics_table(metrics: dict) -> pd.DataFrame:
    rows = [("rows", metrics["rows"]), ("segments", metrics["k"]),
            ("fitted rows (outliers excluded)", metrics["fitted_rows"]),
            (metrics["cost_name"], metrics["cost"]), ("LightGBM CV accuracy", metrics["lgbm_accuracy"])]
    for space in ("own", "common"):
        for m in ("silhouette", "davies_bouldin", "calinski_harabasz"):
            rows.append((f"{m} ({space} space)", metrics[space].get(m)))
    return pd.DataFrame(rows, columns=["metric", "value"]).set_index("metric")


def personas_table(run_dir, method: str, value: int) -> pd.DataFrame:
    cards = RunLayout(run_dir).read_cell(method, value, PERSONAS, get(method).grid)
    return pd.DataFrame([{"segment": c["segment"] + 1, "size": c["size"], "share": round(c["share"], 3),
                          "persona": c["name"]} for c in cards]).set_index("segment")


def shap_table(run_dir, method: str, value: int) -> pd.DataFrame:
    shap = RunLayout(run_dir).read_cell(method, value, SHAP, get(method).grid)["mean_abs_shap"]
    df = pd.DataFrame(shap)
    df.columns = [f"segment {int(c) + 1}" for c in df.columns]
    return df.round(4)
