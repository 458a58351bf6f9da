"""A slice of the real UCI bank data: results a domain expert would expect."""

from __future__ import annotations


import pandas as pd
import pytest

from segreport.stages.cell import run_cell
from segreport.methods import load_params
from segreport.stages.prepare import prepare

pytestmark = pytest.mark.slow  # runs the real grid: `pytest -m 'not slow'` skips it


@pytest.fixture(scope="module", params=[1500, pytest.param(4000, marks=pytest.mark.deep)], ids=lambda n: f"{n}rows")
def bank_run(request, tmp_path_factory):
    """A seeded slice of the bank table through prepare and every cell, in this process: 1,500 rows in the
    README's test command, the 4,000 of earlier rounds with `pytest --deep`."""
    from .conftest import BANK, make_workdir

    if not BANK.exists():
        pytest.skip(f"the real bank data is not here ({BANK}): ../shared is absent")
    wd = make_workdir(tmp_path_factory.mktemp("bank") / "project")
    slice_path = wd / "bank-slice.csv"
    df = pd.read_csv(BANK, sep=";")
    df.sample(n=request.param, random_state=0).to_csv(slice_path, sep=";", index=False)
    params = load_params(None, {"data": str(slice_path), "methods": "kmeans,kprototypes", "k": "3-4",
                                "results": str(wd / "results"), "outcome": "y", "cache_dir": str(wd / "cache"),
                                "stability_resamples": 10, "projection_sample": 500})  # projections: not the subject
    layout, ctx = prepare(params, root=wd, progress=False)
    cells = {(m, k): run_cell(layout.root, m, k) for m in params.methods for k in params.k}
    return layout, ctx, cells


def test_sizes_and_metrics_are_sane(bank_run):
    layout, ctx, cells = bank_run
    n = ctx["data"]["rows"]
    assert n in (1500, 4000) and ctx["data"]["demo"] is None
    for (m, k), metrics in cells.items():
        assert sum(metrics["sizes"]) == n and len(metrics["sizes"]) == k and min(metrics["sizes"]) > n / 100
        assert -1 <= metrics["common"]["silhouette"] <= 1 and metrics["common"]["davies_bouldin"] > 0
        assert metrics["common"]["calinski_harabasz"] > 0 and metrics["cost"] > 0
    assert cells[("kmeans", 4)]["cost"] < cells[("kmeans", 3)]["cost"]  # inertia falls with k
    assert cells[("kmeans", 3)]["outliers"] == n // 10  # ECOD at contamination 0.1


def test_lightgbm_reproduces_kmeans_segments(bank_run):
    _, _, cells = bank_run
    for k in (3, 4):
        assert cells[("kmeans", k)]["lgbm_accuracy"] > 0.9


def test_segments_a_banker_would_recognise(bank_run):
    """Some K-Prototypes or K-means segment gathers the older customers (retirees) or the housing-loan holders."""
    layout, _, _ = bank_run
    frame = pd.read_parquet(layout.table)
    found = []
    for m in ("kmeans", "kprototypes"):
        labels = pd.read_parquet(layout.cell(m, 4) / "labels.parquet")["segment"].to_numpy()
        for s in range(4):
            seg = frame[labels == s]
            found.append(((seg.housing == "yes").mean() > 0.9) or (seg.age.median() > frame.age.median() + 8))
    assert any(found)


def test_outcome_is_never_a_model_input(bank_run):
    layout, ctx, _ = bank_run
    frame = pd.read_parquet(layout.table)
    assert "y" not in frame.columns and "y" not in ctx["used"]["categorical"]
    assert all(s["name"] != "y" or not s["use"] for s in ctx["schema"])


def test_same_seed_same_labels(bank_run):
    layout, _, _ = bank_run
    for m in ("kmeans", "kprototypes"):
        before = (layout.cell(m, 3) / "labels.parquet").read_bytes()
        run_cell(layout.root, m, 3)
        assert (layout.cell(m, 3) / "labels.parquet").read_bytes() == before
