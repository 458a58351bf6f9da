"""What the analysis notebooks display: small tables read from a cell's results (aggregates only)."""

from __future__ import annotations

import pandas as pd

from .store import RunLayout, read_json


def metrics_table(metrics: dict) -> pd.DataFrame:
    rows = [("rows", metrics["rows"]), ("fitted rows (outliers excluded)", metrics["fitted_rows"]),
            (metrics["cost_name"], metrics["cost"]), ("LightGBM CV accuracy", metrics["lgbm_accuracy"])]
    for space in ("own", "common"):
        for m in ("silhouette", "davies_bouldin", "calinski_harabasz"):
            rows.append((f"{m} ({space} space)", metrics[space].get(m)))
    return pd.DataFrame(rows, columns=["metric", "value"]).set_index("metric")


def personas_table(run_dir, method: str, k: int) -> pd.DataFrame:
    cards = read_json(RunLayout(run_dir).cell(method, k) / "personas.json")
    return pd.DataFrame([{"segment": c["segment"] + 1, "size": c["size"], "share": round(c["share"], 3),
                          "persona": c["name"]} for c in cards]).set_index("segment")


def shap_table(run_dir, method: str, k: int) -> pd.DataFrame:
    shap = read_json(RunLayout(run_dir).cell(method, k) / "shap.json")["mean_abs_shap"]
    df = pd.DataFrame(shap)
    df.columns = [f"segment {int(c) + 1}" for c in df.columns]
    return df.round(4)
