"""A customer table segreport has never seen: awkward columns, inferred schema, a full run and report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from bs4 import BeautifulSoup

from segreport.cli import main

from .conftest import make_workdir, run_inline

pytestmark = pytest.mark.slow  # runs the real grid: `pytest -m 'not slow'` skips it


def crm_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tier = rng.choice(["bronze", "silver", "gold"], n, p=[0.5, 0.35, 0.15])
    gold = tier == "gold"
    spend = np.where(gold, rng.gamma(6, 900, n), rng.gamma(2, 250, n))
    df = pd.DataFrame({
        "CustomerID": [f"CU-{i:06d}" for i in range(n)],
        "signup_date": pd.to_datetime("2019-01-01") + pd.to_timedelta(rng.integers(0, 2000, n), unit="D"),
        "annual_spend": [f"€{v:,.2f}" for v in spend],
        "visits": np.where(gold, rng.poisson(30, n), rng.poisson(6, n)).astype(float),
        "city": rng.choice([f"City {i:02d}" for i in range(50)], n),
        "tier": tier,
        "newsletter": np.where(rng.random(n) < np.where(gold, 0.8, 0.3), "Y", "N"),
        "channel": rng.choice(["web", "store", "phone"], n),
        "last_comment": [f"customer said the {w} was fine and asked about delivery times again" for w in
                         rng.choice(["price", "service", "app", "queue"], n)],
    })
    df["signup_date"] = df["signup_date"].dt.strftime("%Y-%m-%d")
    df.loc[rng.choice(n, 25, replace=False), "visits"] = np.nan
    df.loc[rng.choice(n, 15, replace=False), "channel"] = None
    return df


@pytest.fixture(scope="module")
def crm_run(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("crm") / "project")
    crm_table(700, 1).to_csv(wd / "crm.csv", index=False)
    (wd / "p.yml").write_text("stability_resamples: 8\nprojection_sample: 400\nnull_references: 1\nnull_sample: 300\n")
    run_inline(wd, "run", "-q", "--params", "p.yml", "--data", "crm.csv", "--k", "2-3")
    return wd


def test_inspect_explains_each_column(tmp_path, capsys):
    crm_table(300, 2).to_csv(tmp_path / "crm.csv", index=False)
    assert main(["inspect", "--data", str(tmp_path / "crm.csv")]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[2:]}
    assert "identifier" in lines["CustomerID"] and " no " in lines["CustomerID"]
    assert "date" in lines["signup_date"] and "text" in lines["last_comment"]
    assert "numeric" in lines["annual_spend"] and "binary" in lines["newsletter"]
    assert "categorical" in lines["city"] and "yes" in lines["city"]


def test_full_run_and_report_on_an_unseen_table(crm_run):
    wd = crm_run
    ctx = json.loads((wd / "results" / "crm" / "context.json").read_text())
    assert set(ctx["used"]["numeric"]) == {"annual_spend", "visits"}
    assert set(ctx["used"]["categorical"]) == {"city", "tier", "newsletter", "channel"}
    assert ctx["inputs"]["llm"]["source"] == "generated from the schema"
    assert "Annual spend" in ctx["inputs"]["llm"]["text"] and "CustomerID" not in ctx["inputs"]["llm"]["text"]
    index = BeautifulSoup((wd / "_site" / "report" / "index.html").read_text(), "html.parser").get_text()
    assert "Built on generated demo data" not in index
    assert "named like an identifier" in index and "values parse as dates" in index and "long free text" in index
    assert "missing value(s) imputed" in index and "kept as level 'missing'" in index
    personas = BeautifulSoup((wd / "_site" / "report" / "personas.html").read_text(), "html.parser").get_text()
    assert "tier" in personas.lower() or "visits" in personas.lower() or "annual spend" in personas.lower()
    for word in ("balance", "job", "marital", "housing"):
        assert word not in personas.lower()
    llm = (wd / "_site" / "report" / "llm.html").read_text()
    assert "Annual spend:" in llm  # the generated template is shown


def test_assign_new_customers_of_that_table(crm_run, tmp_path, capsys):
    wd = crm_run
    new = crm_table(40, 9)
    new.loc[0, "tier"] = "platinum"
    new.to_csv(tmp_path / "new.csv", index=False)
    capsys.readouterr()
    run_inline(wd, "assign", "--run", "results/crm", "--method", "kmeans", "--k", "3",
               "--data", str(tmp_path / "new.csv"), "--out", str(tmp_path / "labelled.csv"))
    out = pd.read_csv(tmp_path / "labelled.csv")
    assert len(out) == 40 and set(out.segment) <= {0, 1, 2} and out.persona.notna().all()
    assert "unseen" in capsys.readouterr().out
