"""The seed article's configuration (params/seed-2023.yml) loads and runs on a slice of the bank data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from segreport.methods import load_params

from .conftest import BANK, LIGHT, ROOT, make_workdir, run_inline


def test_preset_is_the_seed_configuration():
    p = load_params(ROOT / "params" / "seed-2023.yml")
    assert p.k == list(range(2, 10)) and p.seed == 42 and p.outcome == "y"
    assert (p.kmeans.n_init, p.kmeans.max_iter, p.kmeans.contamination, p.kmeans.power_transform) == (10, 100, 0.1, "numeric")
    enc = {c.name: c.encoding for c in p.schema}
    assert enc == {"age": None, "job": "onehot", "marital": "onehot", "education": "ordinal", "default": "onehot",
                   "balance": None, "housing": "onehot", "loan": "onehot"}
    # OrdinalEncoder() defaults, as the article: alphabetical levels, "unknown" coded highest
    assert next(c for c in p.schema if c.name == "education").order == ["primary", "secondary", "tertiary", "unknown"]
    assert p.kprototypes.random_state == 0 and p.kprototypes.init == "Huang"
    assert p.llm.outliers == "ecod" and p.llm.normalize


@pytest.mark.slow
@pytest.mark.parametrize("rows", [500, pytest.param(1500, marks=pytest.mark.deep)])
def test_preset_runs_on_a_bank_slice(tmp_path, rows):
    """The preset on a seeded slice of the bank table: 500 rows in the README's test command (the embedding
    of their texts is most of the test's time), the 1,500 of earlier rounds with `pytest --deep`."""
    if not BANK.exists():
        pytest.skip(f"the real bank data is not here ({BANK}): ../shared is absent")
    wd = make_workdir(tmp_path / "project")
    table = pd.read_csv(BANK, sep=";").sample(rows, random_state=1)
    table.to_csv(wd / "bank.csv", sep=";", index=False)
    # the preset as it is, with the test's lighter bootstrap and null reference (keys added at the end)
    (wd / "preset.yml").write_text((ROOT / "params" / "seed-2023.yml").read_text() + "\n" + LIGHT)
    run_inline(wd, "run", "-q", "--pages-only", "--params", "preset.yml", "--data", "bank.csv", "--k", "5")
    run = wd / "results" / "seed-2023"
    ctx = json.loads((run / "context.json").read_text())
    # one-hot (first level dropped) of job (the 12 levels, or those the slice holds) + marital (3) + 3 binaries,
    # education ordinal, age, balance
    jobs, maritals = table.job.nunique(), table.marital.nunique()
    assert rows < 1500 or jobs == 12
    assert ctx["spaces"]["kmeans"]["dims"] == (jobs - 1) + (maritals - 1) + 1 + 1 + 1 + 1 + 2
    assert "y" not in pd.read_parquet(run / "table.parquet").columns
    km = json.loads((run / "cells" / "kmeans" / "k5" / "metrics.json").read_text())
    assert km["fitted_rows"] == rows * 9 // 10 and km["own_fitted_rows"]["silhouette"] is not None
    llm = json.loads((run / "cells" / "llm" / "k5" / "metrics.json").read_text())
    # ECOD at contamination 0.1 on the embedding: the rows scored above its 90th percentile (on 500 rows, 49)
    assert rows // 10 - 1 <= llm["outliers"] <= rows // 10
    assert "Age: {{ row['age'] | fmt }}, housing loan: {{ row['housing'] }}, Job:" in ctx["inputs"]["llm"]["text"]
    comp = json.loads((run / "comparison" / "comparison.json").read_text())
    assert set(comp["outcome"]["methods"]) == {"kmeans", "kprototypes", "llm"}
    assert comp["extras"]["llm"]["variants"]["words"]["stability_ari"] is not None
    page = (wd / "report" / "_pages" / "comparison.qmd").read_text()  # the site from pages: test_end_to_end
    assert "The verdict" in page and "cannot rank the methods" in page
