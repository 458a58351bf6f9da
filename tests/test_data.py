from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segreport import SegreportError
from segreport.core.schema import ColumnSpec
from segreport.lib.data import infer_schema, load_table, read_raw, to_binary, to_number
from segreport.lib.demo import generate, is_demo, write_demo


def test_bank_file_is_read_with_detected_delimiter(bank_path):
    df, info = read_raw(bank_path)
    assert info["delimiter"] == ";" and len(df) == 45211 and df.shape[1] == 17
    assert df.loc[0, "job"] == "management"  # quotes stripped
    t = load_table(bank_path)
    assert [c.name for c in t.used] == ["age", "job", "marital", "education", "default", "balance", "housing", "loan"]
    assert t.frame["balance"].min() == -8019 and t.frame["balance"].max() == 102127
    assert t.file_sha256 == "d1513ec63b385506f7cfce9f2c5caa9fe99e7ba4e8c3fa264b3aaf0f849ed32d"


def test_parquet_reads_like_csv(tmp_path):
    df = generate(200, seed=3)
    df.to_parquet(tmp_path / "d.parquet")
    df.to_csv(tmp_path / "d.csv", index=False)
    a, b = load_table(tmp_path / "d.parquet"), load_table(tmp_path / "d.csv")
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.fingerprint() == b.fingerprint()


def test_numbers_stored_as_text():
    s = pd.Series(["1,240", "€ 3,100.50", "(12)", "7%", " 42 ", None])
    out = to_number(s)
    assert out.tolist()[:5] == [1240.0, 3100.5, -12.0, 7.0, 42.0] and np.isnan(out.iloc[5])


@pytest.mark.parametrize("values", [["yes", "no"], ["Y", "N"], ["true", "False"], ["1", "0"], [1, 0]])
def test_boolean_spellings(values):
    out = to_binary(pd.Series(values * 3))
    assert set(out) == {"yes", "no"}


def test_schema_inference_on_awkward_table():
    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "row_no": np.arange(1, n + 1),
        "signup_date": pd.date_range("2020-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
        "notes": [f"called on a rainy day about the offer number {i} and said maybe later" for i in range(n)],
        "spend": [f"€{v:,.2f}" for v in rng.gamma(2, 500, n)],
        "region": rng.choice([f"region-{i}" for i in range(50)], n),
        "churned": rng.choice(["Y", "N"], n),
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "constant": "x",
        "empty": [None] * n,
    })
    specs, decisions = infer_schema(df)
    kinds = {s.name: s.kind for s in specs}
    used = {s.name for s in specs if s.use}
    assert kinds == {"customer_id": "identifier", "row_no": "identifier", "signup_date": "date", "notes": "text",
                     "spend": "numeric", "region": "categorical", "churned": "binary", "plan": "categorical",
                     "constant": "categorical", "empty": "text"}
    assert used == {"spend", "region", "churned", "plan"}
    assert all(d["reason"] for d in decisions)


def test_missing_values_and_pooling(tmp_path):
    df = generate(500, seed=4)
    df["balance"] = df["balance"].astype(float)
    df.loc[:9, "balance"] = np.nan
    df.loc[:4, "job"] = None
    df.to_csv(tmp_path / "m.csv", index=False)
    t = load_table(tmp_path / "m.csv")
    assert not t.frame.isna().any().any()
    assert "missing" in set(t.frame["job"])
    assert any("imputed" in n for n in t.notes) and any("kept as level 'missing'" in n for n in t.notes)


def test_schema_in_params_wins(tmp_path):
    df = generate(100, seed=5)
    df.to_csv(tmp_path / "s.csv", index=False)
    schema = [ColumnSpec(name="age", kind="numeric"), ColumnSpec(name="job", kind="categorical")]
    t = load_table(tmp_path / "s.csv", schema)
    assert list(t.frame.columns) == ["age", "job"]


def test_demo_is_deterministic_and_structured(tmp_path):
    a, b = generate(3000, seed=7), generate(3000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate(3000, seed=8))
    retired, students = a[a.job == "retired"], a[a.job == "student"]
    assert retired.age.median() > a.age.median() + 15
    assert (students.marital == "single").mean() > 0.85 and students.age.median() < 28
    mgmt = a[a.job == "management"]
    assert (mgmt.education == "tertiary").mean() > 0.7 and mgmt.balance.median() > a.balance.median()
    assert (a.balance < 0).any() and a.balance.max() > 20 * a.balance.median()
    path = write_demo(tmp_path / "demo.csv", rows=100, seed=1)
    t = load_table(path)
    assert is_demo(path, t.file_sha256) and not is_demo(path, "0" * 64)


cells = st.one_of(st.integers(-10**6, 10**6).map(str), st.sampled_from(["a", "b", "c", "yes", "no", "é", ""]),
                  st.text(alphabet="abcxyz ,;\"'", max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cells, cells, cells), min_size=2, max_size=25),
       sep=st.sampled_from([",", ";", "\t", "|"]))
def test_reader_never_crashes_obscurely(tmp_path, rows, sep):
    """Any small table either loads with typed columns or fails with a one-line SegreportError."""
    df = pd.DataFrame(rows, columns=["a", "b", "c"])
    p = tmp_path / "h.csv"
    df.to_csv(p, sep=sep, index=False)
    try:
        t = load_table(p)
    except SegreportError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)
        return
    assert len(t.frame) == len(df)
    for spec in t.used:
        col = t.frame[spec.name]
        assert not col.isna().any()
        if spec.kind == "numeric":
            assert col.dtype == float and np.isfinite(col).all()


def test_the_columns_a_schema_leaves_out_are_listed_with_why():
    """The report's Data section names the file's columns that were not used, and why (issue #26)."""
    from segreport.lib.data import left_out_columns

    df = pd.DataFrame(columns=["age", "job", "duration", "poutcome", "note"])
    got = left_out_columns(df, [{"column": "age"}, {"column": "job"}], preset=True)
    assert [g["column"] for g in got] == ["duration", "poutcome", "note"]
    assert "gives the outcome away" in got[0]["reason"] and "predictor of the outcome" in got[1]["reason"]
    assert got[2]["reason"] == "not in the schema"
    assert [g["reason"] for g in left_out_columns(df, [{"column": "age"}], preset=False)] == ["not in the schema"] * 4
