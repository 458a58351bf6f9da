"""`segreport assign`: new customers get the segments of a finished run (real run, real components)."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from segreport import SegreportError
from segreport.stages.assign import assign, ecod_scores, normalise_new
from segreport.cli import main
from segreport.methods import Params
from segreport.core.schema import ColumnSpec
from segreport.lib.demo import write_demo
from segreport.core.store import read_json

from .conftest import make_workdir, run_inline, snapshot

pytestmark = pytest.mark.slow  # runs the real grid: `pytest -m 'not slow'` skips it

METHODS = ["kmeans", "kprototypes", "llm"]
KS = [2, 3]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One run with all three methods, k=2-3; K-means and K-Prototypes with ECOD outliers, LLM without."""
    wd = make_workdir(tmp_path_factory.mktemp("assign") / "project")
    write_demo(wd / "customers.csv", rows=400, seed=7)
    params = "kprototypes:\n  outliers: ecod\nllm:\n  precision: fp32\nprojection_sample: 100\n"
    if "stability_resamples" in Params.model_fields:  # bootstrap stability is no concern of assign's
        params += "stability_resamples: 0\nnull_references: 0\n"
    (wd / "params.yml").write_text(params)
    run_inline(wd, "run", "-q", "--no-render", "--data", "customers.csv", "--k", "2-3")
    return wd


@pytest.fixture
def wd(project, monkeypatch):
    monkeypatch.chdir(project)  # relative run folder and embedding cache, as the CLI sees them
    return project


RUN = "results/customers"


def _labels(method, k):
    return pd.read_parquet(f"{RUN}/cells/{method}/k{k}/labels.parquet")


def _personas(method, k):
    return {c["segment"]: c["name"] for c in read_json(f"{RUN}/cells/{method}/k{k}/personas.json")}


def _cells(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("method", METHODS)
def test_training_rows_get_the_runs_labels_exactly(wd, method):
    for k in KS:
        out = wd / f"train_{method}_{k}.csv"
        n, facts = assign(RUN, method, k, "customers.csv", out)
        got, lab = pd.read_csv(out), _labels(method, k)
        assert n == len(lab) == 400
        np.testing.assert_array_equal(got["segment"].to_numpy(), lab["segment"].to_numpy())
        np.testing.assert_array_equal(got["outlier"].to_numpy(bool), lab["outlier"].to_numpy())
        np.testing.assert_allclose(got["distance"].to_numpy(), lab["distance"].to_numpy(), rtol=1e-12)
        assert (got["segment_name"] == [f"S{s + 1}" for s in lab["segment"]]).all()
        assert (got["persona"] == lab["segment"].map(_personas(method, k))).all()
        # the input columns come back as they were read
        src = pd.read_csv(wd / "customers.csv", dtype=str)
        pd.testing.assert_frame_equal(pd.read_csv(out, dtype=str)[list(src.columns)], src)
        if method == "llm":
            assert "embedded" not in facts  # every text was seen in training: stored embeddings reused
            assert "outlier" not in facts and not lab["outlier"].any()
        else:
            assert f"{int(lab['outlier'].sum())} outliers" in facts and lab["outlier"].any()


@pytest.mark.parametrize("method", METHODS)
def test_unseen_levels_are_counted_and_rows_labelled(wd, method):
    src = pd.read_csv(wd / "customers.csv", dtype=str).head(20)
    new = src.copy()
    new.loc[[0, 1, 2], "job"] = "astronaut"
    new.loc[3, "housing"] = "Y"  # a spelling of yes: normalised like the training data, not unseen
    new.loc[4, "age"] = None  # imputed with the training median
    new.to_csv(wd / "new.csv", index=False)
    n, facts = assign(RUN, method, 3, "new.csv", wd / f"new_{method}.csv")
    got = pd.read_csv(wd / f"new_{method}.csv")
    assert n == 20
    assert "3 unseen category values (job: 3)" in facts
    assert "1 missing number imputed" in facts
    if method == "llm":
        assert "new text" in facts
    assert got["segment"].between(0, 2).all() and np.isfinite(got["distance"]).all()
    assert set(got["persona"]) <= set(_personas(method, 3).values())
    assert got["outlier"].dtype == bool
    # rows not touched keep their training labels
    lab = _labels(method, 3).head(20)
    same = list(range(5, 20))
    np.testing.assert_array_equal(got["segment"].to_numpy()[same], lab["segment"].to_numpy()[same])
    np.testing.assert_array_equal(got["outlier"].to_numpy()[same], lab["outlier"].to_numpy()[same])
    if method == "kprototypes":  # an unseen level (code -1) matches no prototype: never closer than before
        assert (got["distance"].to_numpy()[:3] >= lab["distance"].to_numpy()[:3]).all()


def test_a_single_new_customer(wd):
    pd.read_csv(wd / "customers.csv", dtype=str).iloc[[7]].to_csv(wd / "one.csv", index=False)
    n, _ = assign(RUN, "kprototypes", 2, "one.csv", wd / "one_out.csv")
    got = pd.read_csv(wd / "one_out.csv")
    assert n == 1 and got["segment"].iloc[0] == _labels("kprototypes", 2)["segment"].iloc[7]


def test_missing_column_exit_2_one_line_nothing_written(wd, capsys):
    pd.read_csv(wd / "customers.csv", dtype=str).drop(columns=["balance"]).head(10).to_csv(wd / "nobal.csv",
                                                                                           index=False)
    before = snapshot(wd / "results")
    code = main(["assign", "--run", RUN, "--method", "kmeans", "--k", "2", "--data", "nobal.csv",
                 "--out", "nobal_out.csv"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "nobal.csv" in err and "'balance'" in err, err
    assert not (wd / "nobal_out.csv").exists()
    assert snapshot(wd / "results") == before


def test_text_in_numeric_column(wd):
    src = pd.read_csv(wd / "customers.csv", dtype=str).head(5)
    src.loc[2, "age"] = "forty"
    src.to_csv(wd / "textage.csv", index=False)
    with pytest.raises(SegreportError, match=r"textage\.csv: column 'age' is numeric but holds text at row\(s\) 4"):
        assign(RUN, "kmeans", 2, "textage.csv", wd / "textage_out.csv")
    assert not (wd / "textage_out.csv").exists()


def test_csv_injection_neutralised_numbers_kept(wd, capsys):
    src = pd.read_csv(wd / "customers.csv", dtype=str).head(6)
    src.loc[0, "job"] = '=HYPERLINK("http://evil.example","click")'
    src.loc[1, "marital"] = "@SUM(1+1)"
    src.loc[2, "balance"] = "-120"
    src.to_csv(wd / "evil.csv", index=False)
    code = main(["assign", "--run", RUN, "--method", "kmeans", "--k", "3", "--data", "evil.csv",
                 "--out", "evil_out.csv"])
    assert code == 0
    assert "wrote 6 labelled rows to evil_out.csv (2 unseen category values" in capsys.readouterr().out
    rows = _cells(wd / "evil_out.csv")
    head = rows[0]
    assert rows[1][head.index("job")] == '\'=HYPERLINK("http://evil.example","click")'
    assert rows[2][head.index("marital")] == "'@SUM(1+1)"
    assert rows[3][head.index("balance")] == "-120"
    assert not any(c.startswith(("=", "+", "@")) for r in rows for c in r)


def test_missing_run_cell_and_method(wd, tmp_path):
    with pytest.raises(SegreportError, match=r"results/nope: no such run folder"):
        assign("results/nope", "kmeans", 2, "customers.csv", tmp_path / "o.csv")
    with pytest.raises(SegreportError, match=r"no finished cell kmeans k=4; run `segreport run --k 4` first "
                                             r"\(finished: k=2, 3\)"):
        assign(RUN, "kmeans", 4, "customers.csv", tmp_path / "o.csv")
    with pytest.raises(SegreportError, match=r"unknown method 'dbscan'"):
        assign(RUN, "dbscan", 2, "customers.csv", tmp_path / "o.csv")
    with pytest.raises(SegreportError, match=r"nope\.csv: file not found"):
        assign(RUN, "kmeans", 2, "nope.csv", tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


# ------------------------------------------------------------------ units (no run needed)


def test_ecod_scores_match_the_fit_bit_for_bit_and_ignore_the_batch():
    from pyod.models.ecod import ECOD

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(0, 5, 300).astype(float), rng.lognormal(size=300), rng.normal(size=300)])
    det = ECOD(contamination=0.1).fit(X)
    s = ecod_scores(det, X)
    np.testing.assert_array_equal(s, det.decision_scores_)
    np.testing.assert_array_equal(s > det.threshold_, det.labels_.astype(bool))
    # a row's score does not depend on the other rows scored with it
    np.testing.assert_array_equal(ecod_scores(det, X[[5]]), det.decision_scores_[[5]])
    far = ecod_scores(det, np.array([[100.0, 1e6, -50.0]]))
    assert np.isfinite(far).all() and far[0] > det.decision_scores_.max()


def test_normalise_new_pools_rare_levels_and_counts_unseen():
    train = pd.DataFrame({"job": ["a", "b", "other", "a"], "flag": ["yes", "no", "no", "yes"],
                          "x": [1.0, 2.0, 3.0, 4.0]})
    schema = [ColumnSpec(name="job", kind="categorical"), ColumnSpec(name="flag", kind="binary"),
              ColumnSpec(name="x", kind="numeric"), ColumnSpec(name="id", kind="identifier", use=False)]
    new = pd.DataFrame({"x": ["1,000", None, "2"], "job": [" b", "zzz", None], "flag": ["TRUE", "0", "maybe"]})
    frame, facts = normalise_new(new, schema, train, "new.csv", pooled={"job"})
    assert list(frame.columns) == ["job", "flag", "x"]  # training order; the unused id column is not needed
    assert frame["job"].tolist() == ["b", "other", "other"]  # 'missing' was no training level either
    assert frame["flag"].tolist() == ["yes", "no", "maybe"]
    assert frame["x"].tolist() == [1000.0, 2.5, 2.0]
    assert facts == {"imputed": 1, "unseen": {"flag": 1}, "pooled": 2}
    frame, facts = normalise_new(new, schema, train, "new.csv")  # not pooled: unseen
    assert frame["job"].tolist() == ["b", "zzz", "missing"] and facts["unseen"] == {"job": 2, "flag": 1}
    with pytest.raises(SegreportError, match=r"new\.csv: column 'x' is numeric but holds text at row\(s\) 4: 'x'"):
        normalise_new(new.assign(x=["1", "2", "x"]), schema, train, "new.csv")
