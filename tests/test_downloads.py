"""The outcome (detected, rated with intervals) and the files a stakeholder acts with."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from segreport.stages.compare import segment_rates
from segreport.lib.data import detect_outcome, load_table
from segreport.report.downloads import assignments_frame, csv_text, profile_frame, rounded, xlsx_bytes
from segreport.lib.personas import personas, profile

from .conftest import make_workdir, run_inline


@pytest.mark.parametrize("name", ["y", "Churn", "churned", "Exited", "target", "is_converted", "response",
                                  "subscribed", "label", "purchased"])
def test_an_outcome_is_detected_by_its_name(name):
    df = pd.DataFrame({"age": range(10), "job": list("abcdeabcde"), name: ["yes", "no"] * 5})
    assert detect_outcome(df) == name


def test_no_outcome_where_the_name_or_the_values_do_not_say_so():
    df = pd.DataFrame({"age": range(10), "default": ["yes", "no"] * 5, "housing": ["yes", "no"] * 5})
    assert detect_outcome(df) is None  # yes/no columns named like inputs
    df = pd.DataFrame({"age": range(10), "target": list("abcabcabca")})
    assert detect_outcome(df) is None  # three values: not a flag
    df = pd.DataFrame({"age": range(10), "churn": ["yes", "no"] * 5, "response": ["yes", "no"] * 5})
    assert detect_outcome(df) is None  # two candidates: none is guessed
    # a column an explicit schema uses as an input is never taken
    from segreport.core.schema import ColumnSpec
    df = pd.DataFrame({"age": range(10), "churn": ["yes", "no"] * 5})
    assert detect_outcome(df, [ColumnSpec(name="churn", kind="binary")]) is None


def test_a_detected_outcome_is_never_fitted_and_none_turns_it_off(tmp_path):
    df = pd.DataFrame({"age": np.arange(40) % 17 + 20, "job": list("abcd") * 10, "balance": np.arange(40) * 10.0,
                       "Churn": ["Yes", "No", "No", "No"] * 10})
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    t = load_table(path)
    assert t.outcome_name == "Churn" and t.outcome_source == "detected"
    assert "Churn" not in t.frame.columns and list(t.outcome.unique()) == ["yes", "no"]
    assert next(d for d in t.decisions if d["column"] == "Churn")["used"] is False
    off = load_table(path, outcome="none")
    assert off.outcome is None and "Churn" in off.frame.columns


def test_segment_rates_match_scipys_wilson_interval_and_flag_real_differences():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    p = np.where(labels == 0, 0.1, np.where(labels == 1, 0.16, 0.4))
    pos = (rng.random(len(labels)) < p).astype(float)
    rates = segment_rates(pos, labels)
    base = pos.mean()
    for r in rates:
        m = labels == r["segment"]
        ci = binomtest(int(pos[m].sum()), int(m.sum())).proportion_ci(method="wilson")
        assert r["ci_low"] == pytest.approx(ci.low) and r["ci_high"] == pytest.approx(ci.high)
        assert r["lift"] == pytest.approx(pos[m].mean() / base)
    assert rates[2]["differs"] and rates[2]["lift"] > 2
    assert not rates[1]["differs"]  # about 16% vs about 17%: within noise at n=300


def _profiled(seed=0):
    rng = np.random.default_rng(seed)
    n = 300
    frame = pd.DataFrame({"age": rng.integers(20, 70, n).astype(float), "balance": rng.gamma(1.5, 900, n),
                          "job": rng.choice(["admin.", "=cmd", "services"], n), "housing": rng.choice(["yes", "no"], n)})
    labels = (frame.balance > 1500).astype(int).to_numpy() + (frame.age > 50).astype(int).to_numpy()
    prof = profile(frame, labels, ["age", "balance"], ["job", "housing"], min_segment_size=20)
    lab = {"age": "Age", "balance": "Balance", "job": "Job", "housing": "Housing loan"}
    units = {"age": "years", "balance": "EUR"}
    cards = personas(prof, None, lab, units, {"housing"})
    ctx = {"labels": lab, "units": units,
           "used": {"numeric": ["age", "balance"], "categorical": ["job", "housing"], "binary": ["housing"]}}
    return frame, labels, prof, cards, ctx


def test_the_profile_table_is_rounded_for_people_and_matches_the_profile():
    frame, labels, prof, cards, ctx = _profiled()
    pos = (frame.balance.to_numpy() > 2000).astype(float)
    rates = segment_rates(pos, labels)
    out = profile_frame(prof, cards, ctx, rates, {"column": "y", "positive": "yes", "population_rate": pos.mean()})
    assert list(out["Segment"]) == ["S1", "S2", "S3", "All"]
    assert out["Customers"].iloc[:-1].sum() == len(frame) == out["Customers"].iloc[-1]
    s2 = frame.balance[labels == 1].median()
    assert out.loc[1, "Balance median (EUR)"] == round(s2)
    assert out.loc[3, "Age median (years)"] == rounded(frame.age.median())
    assert out.loc[1, "y = yes (%)"] == rounded(100 * rates[1]["rate"])
    assert out.loc[3, "Housing loan (% yes)"] == rounded(100 * (frame.housing == "yes").mean())
    text = csv_text(out)
    guarded = csv_text(pd.DataFrame({"job": ["=cmd", "-1", "@x", "admin."]}))
    assert guarded.splitlines()[1:] == ["'=cmd", "-1", "'@x", "admin."]  # formulas neutralised, numbers kept
    decimals = [x.split(".")[1] for x in text.replace(",", " ").split() if "." in x and x.replace(".", "").isdigit()]
    assert decimals and all(len(d) <= 2 for d in decimals)  # no 17-digit floats


def test_the_spreadsheet_is_readable_and_byte_reproducible():
    _, _, prof, cards, ctx = _profiled()
    frame = profile_frame(prof, cards, ctx)
    a, b = xlsx_bytes({"Segments": frame}), xlsx_bytes({"Segments": frame})
    assert a == b
    # the same bytes at any time: the document's dates are fixed (openpyxl stamps the saving time)
    core = zipfile.ZipFile(io.BytesIO(a)).read("docProps/core.xml").decode()
    assert re.findall(r"<dcterms:(?:created|modified)[^>]*>([^<]*)<", core) == ["2000-01-01T00:00:00Z"] * 2
    back = pd.read_excel(io.BytesIO(a), sheet_name="Segments")
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)


def test_assignments_name_each_customer_by_row_or_identifier():
    labels = pd.DataFrame({"row": np.arange(4), "segment": [1, 0, 1, 2], "outlier": [False, True, False, False]})
    cards = [{"segment": 0, "name": "Retired"}, {"segment": 1, "name": "High balance"}, {"segment": 2, "name": "x"}]
    out = assignments_frame(labels, cards, None)
    assert list(out.columns) == ["row", "segment", "persona", "outlier"]
    assert list(out["row"]) == [1, 2, 3, 4] and list(out["segment"]) == ["S2", "S1", "S2", "S3"]
    assert list(out["outlier"]) == ["no", "yes", "no", "no"] and out.loc[0, "persona"] == "High balance"
    ids = pd.DataFrame({"customer_id": ["c9", "c7", "c5", "c3"]})
    assert list(assignments_frame(labels, cards, ids).columns) == ["customer_id", "segment", "persona", "outlier"]


@pytest.mark.slow
def test_a_run_writes_profiles_assignments_and_a_campaign_list(tmp_path, capsys):
    wd = make_workdir(tmp_path / "project")
    from segreport.lib.demo import generate

    df = generate(300, seed=4)
    df.insert(0, "customer_id", [f"C{i:04d}" for i in range(len(df))])
    df["subscribed"] = np.where((df.balance > df.balance.median()) & (df.age > 40), "yes", "no")
    df.to_csv(wd / "c.csv", index=False)
    run_inline(wd, "run", "-q", "--data", "c.csv", "--methods", "kmeans", "--k", "3")
    run = wd / "results" / "c"
    ctx = json.loads((run / "context.json").read_text())
    assert ctx["data"]["outcome"] == "subscribed" and ctx["data"]["outcome_source"] == "detected"
    assign = pd.read_csv(run / "assignments" / "kmeans-k3.csv")
    assert list(assign.columns) == ["customer_id", "segment", "persona", "outlier"] and len(assign) == 300
    prof = pd.read_csv(wd / "_site" / "report" / "downloads" / "profiles" / "kmeans-k3.csv")
    assert "subscribed = yes (%)" in prof.columns and prof["Customers"].iloc[-1] == 300
    assert (wd / "_site" / "report" / "downloads" / "profiles" / "kmeans-k3.xlsx").exists()
    assert not (wd / "_site" / "report" / "downloads" / "assignments").exists()  # no customer rows published
    overview = (wd / "report" / "_pages" / "index.qmd").read_text()
    assert "subscribed" in overview and "because of its name" in overview and "segreport list" in overview
    capsys.readouterr()
    run_inline(wd, "list", "--run", "results/c", "--segment", "S1", "--out", "s1.csv")
    said = capsys.readouterr()
    s1 = pd.read_csv(wd / "s1.csv")
    assert len(s1) == (assign.segment == "S1").sum() and set(s1.segment) == {"S1"}
    assert "wrote" in said.out and list(s1.columns[:2]) == ["customer_id", "age"]
    assert pd.api.types.is_numeric_dtype(s1["balance"])  # negative balances stay numbers, not "'-120"
    assert set(s1.customer_id) == set(assign.customer_id[assign.segment == "S1"])
    run_inline(wd, "list", "--run", "results/c", "--segment", "S9", "--out", "x.csv", code=2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "S9" in err and not (wd / "x.csv").exists()
