"""`segreport track`: snapshots scored with a run's segmentation, followed over time.

Unit tests of the statistics (PSI, size test, migration) against hand-computed values; then one
real run (papermill, K-means k=3) on the demo's fitting table, three planted snapshots tracked
through the CLI, and the planted moves and drift found again; the page in the HTML site and PDF.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segreport import SegreportError
from segreport.stages.assign import score_frame
from segreport.cli import main
from segreport.lib.demo import NEW_JOB, generate, generate_snapshots, write_demo, write_snapshots
from segreport.core.store import RunLayout, atomic_write_json, chosen_segmentation, read_json
from segreport.stages.track import bin_counts, column_drift, decile_edges, migration, parse_as_of, psi, psi_reading, size_test

from .conftest import ROOT, make_workdir, run_inline, snapshot

# --------------------------------------------------------------------------- statistics, by hand


def test_psi_matches_the_formula_and_reads_as_usual():
    e, a = np.array([50, 30, 20]), np.array([40, 30, 30])
    by_hand = (0.4 - 0.5) * math.log(0.4 / 0.5) + 0 + (0.3 - 0.2) * math.log(0.3 / 0.2)
    assert psi(e, a) == pytest.approx(by_hand)
    assert psi(e, e * 3) == pytest.approx(0.0)
    assert psi(e, a) == pytest.approx(psi(a, e))  # symmetric
    # an empty bin counts as 0.01 %, not log(0)
    assert psi([100, 0], [90, 10]) == pytest.approx((0.9 - 1) * math.log(0.9) + (0.1 - 1e-4) * math.log(0.1 / 1e-4))
    assert [psi_reading(v) for v in (0.05, 0.1, 0.25, 0.26)] == ["stable", "moderate", "moderate", "large"]


def test_numeric_drift_uses_the_baselines_deciles():
    rng = np.random.default_rng(0)
    train = pd.Series(rng.normal(0, 1, 20_000))
    edges = decile_edges(train.to_numpy())
    assert len(edges) == 9
    np.testing.assert_allclose(bin_counts(train.to_numpy(), edges) / len(train), 0.1, atol=1e-3)
    same, _ = column_drift(train, pd.Series(rng.normal(0, 1, 5000)), "numeric")
    shifted, bins = column_drift(train, pd.Series(rng.normal(1, 1, 5000)), "numeric")
    assert same["psi"] < 0.02 and shifted["psi"] > 0.25
    assert list(bins["order"]) == list(range(10)) and bins["baseline_share"].sum() == pytest.approx(1)
    assert shifted["median"] == pytest.approx(1, abs=0.1)


def test_categorical_drift_counts_unseen_levels():
    train = pd.Series(["a"] * 60 + ["b"] * 40)
    new = pd.Series(["a"] * 50 + ["b"] * 30 + ["zz"] * 15 + ["yy"] * 5)
    d, bins = column_drift(train, new, "categorical")
    assert d["unseen_rows"] == 20 and d["unseen_levels"] == {"zz": 15, "yy": 5}
    by_hand = psi([60, 40, 0], [50, 30, 20])
    assert d["psi"] == pytest.approx(by_hand)
    assert d["top_level"] == "(not in the fitting table)" and d["top_share"] == pytest.approx(0.2)
    assert list(bins["bin"]) == ["a", "b", "(not in the fitting table)"]


def test_size_test_is_the_two_proportion_z_test():
    t = size_test(1000, 200, 1000, 260)
    pooled = 460 / 2000
    z = (0.26 - 0.2) / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert t["z"] == pytest.approx(z) and t["change"] == pytest.approx(0.06)
    assert t["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert t["beyond_noise"]
    assert not size_test(1000, 200, 1000, 210)["beyond_noise"]


def test_migration_counts_moves_new_and_departed():
    prev = pd.DataFrame({"id": ["a", "b", "c", "d"], "segment": [0, 0, 1, 1]})
    cur = pd.DataFrame({"id": ["a", "b", "c", "e", "f"], "segment": [0, 1, 1, 0, 0]})
    m = migration(prev, cur)
    got = {(r.from_segment, r.to_segment): r.customers for r in m.itertuples()}
    assert got == {(0, 0): 1, (0, 1): 1, (1, 1): 1, (1, -1): 1, (-1, 0): 2}


def test_as_of_and_its_label():
    assert parse_as_of("2026-11") == ("2026-11", "November 2026")
    assert parse_as_of("2026-02-28") == ("2026-02-28", "28 February 2026")
    for bad in ("2026-13", "Nov 2026", "2026-02-30", "26-11"):
        with pytest.raises(SegreportError, match="--as-of"):
            parse_as_of(bad)


def test_chosen_segmentation_reads_the_recommendation(tmp_path):
    layout = RunLayout(tmp_path)
    comp = {"recommended": {"kmeans": {"k": 4}, "llm": {"k": 5}}}
    atomic_write_json(layout.comparison / "comparison.json", comp)
    assert chosen_segmentation(layout) == ("kmeans", 4)
    assert chosen_segmentation(layout, "llm") == ("llm", 5)
    assert chosen_segmentation(layout, "llm", 7) == ("llm", 7)
    atomic_write_json(layout.comparison / "comparison.json", {**comp, "recommendation": {"method": "llm", "k": 5}})
    assert chosen_segmentation(layout) == ("llm", 5)


# --------------------------------------------------------------------------- the demo's snapshots


def test_base_demo_data_is_unchanged(tmp_path):
    # sha256 of `segreport demo-data` (5000 rows, seed 0) before snapshots were added to the generator
    write_demo(tmp_path / "demo.csv")
    digest = hashlib.sha256((tmp_path / "demo.csv").read_bytes()).hexdigest()
    assert digest == "7e2171a9cb9586e17f5298e2b1412f53ed739115693138196ed155a1fc3b3c47"


def test_snapshots_plant_what_they_say():
    frames, planted = generate_snapshots(rows=1000, seed=3, snapshots=2, drift=0.3)
    pd.testing.assert_frame_equal(frames[0].drop(columns="customer_id"), generate(1000, 3))
    for t, step in enumerate(planted["steps"], start=1):
        before, now = set(frames[t - 1].customer_id), set(frames[t].customer_id)
        assert set(step["left"]) == before - now and set(step["new"]) == now - before
        assert len(step["moved"]) > 0.05 * len(before) and set(step["moved"]) <= before & now
        arrived = frames[t][frames[t].customer_id.isin(step["new"])]
        assert (arrived.job == NEW_JOB).sum() == step["unseen"]["job"][NEW_JOB] > 0
        stay = frames[t - 1].set_index("customer_id").loc[sorted(before & now - set(step["moved"]))]
        assert (frames[t].set_index("customer_id").loc[stay.index, "age"] == stay["age"] + 1).all()
    again, _ = generate_snapshots(rows=1000, seed=3, snapshots=2, drift=0.3)
    pd.testing.assert_frame_equal(frames[2], again[2])


# --------------------------------------------------------------------------- a real run, tracked

RUN = "results/fit"
MONTHS = ["2026-09", "2026-10", "2026-11"]


def _with_outcome(path: Path) -> None:
    """A planted outcome: yes exactly for customers without a housing loan."""
    df = pd.read_csv(path)
    df["y"] = np.where(df["housing"] == "no", "yes", "no")
    df.to_csv(path, index=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("track") / "project")
    shutil.copy(ROOT / "_quarto-tracking.yml", wd / "_quarto-tracking.yml")
    paths = write_snapshots(wd / "data" / "snap.csv", rows=800, seed=1, snapshots=3, drift=0.3)
    for p in paths:
        _with_outcome(p)
    (wd / "params.yml").write_text("stability_resamples: 2\nprojection_sample: 100\nshap_sample: 100\n"
                                   "explain_rows: 400\nsilhouette_sample: 800\n")
    # the run is tracking's input, not its subject: its cell computed in this process
    run_inline(wd, "run", "-q", "--data", "data/snap-0.csv", "--run", "fit", "--methods", "kmeans", "--k", "3",
               "--workers", "1", "--outcome", "y")
    return wd


@pytest.fixture
def wd(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


@pytest.mark.slow
def test_a_run_without_snapshots_has_no_tracking_page(wd):
    from pypdf import PdfReader

    assert not (wd / "_site" / "report" / "tracking.html").exists()
    assert "Segments over time" not in "".join(p.extract_text() for p in PdfReader(wd / "_site" / "report.pdf").pages)


@pytest.mark.slow
def test_tracking_finds_the_planted_moves_and_drift(wd, capsys):
    planted = read_json(wd / "data" / "snap.planted.json")
    for i, month in enumerate(MONTHS, start=1):
        assert main(["track", "--run", RUN, "--data", f"data/snap-{i}.csv", "--as-of", month, "-q"]) == 0
    out = capsys.readouterr().out
    assert "November 2026" in out and "kmeans k=3" in out
    t = read_json(wd / RUN / "tracking.json")
    assert [p["label"] for p in t["periods"]] == ["Baseline", "September 2026", "October 2026", "November 2026"]
    assert t["migration"]["id_column"] == "customer_id"
    fit_seg = pd.read_parquet(wd / RUN / "cells/kmeans/k3/labels.parquet")["segment"].to_numpy()
    prev = pd.DataFrame({"id": pd.read_csv(wd / "data/snap-0.csv")["customer_id"].to_numpy(), "segment": fit_seg})
    for tr, step, month in zip(t["migration"]["transitions"], planted["steps"], MONTHS):
        # customers who left and arrived: found exactly as planted
        assert tr["departed"] == len(step["left"]) and tr["new"] == len(step["new"])
        # moves: planted life-stage changes move segment; customers left alone do not
        lab = pd.read_parquet(wd / RUN / "snapshots" / month / "labels.parquet")
        cur = pd.DataFrame({"id": lab["id"].astype(int), "segment": lab["segment"]})
        both = prev.merge(cur, on="id", suffixes=("_0", "_1"))
        changed = both.segment_0 != both.segment_1
        mover = both.id.isin(step["moved"])
        assert tr["moved"] == int(changed.sum())
        assert changed[mover].mean() > 0.4, changed[mover].mean()
        assert changed[~mover].mean() < 0.05, changed[~mover].mean()
        prev = cur
        # the unseen job level, counted exactly
        snap = read_json(wd / RUN / "snapshots" / month / "snapshot.json")
        job = next(d for d in snap["drift"] if d["column"] == "job")
        assert job["unseen_levels"].get(NEW_JOB) == int((pd.read_csv(wd / f"data/snap-{MONTHS.index(month) + 1}.csv")
                                                         ["job"] == NEW_JOB).sum())
    # drift grows with the planted balance and age shifts; untouched columns stay stable
    psi_of = t["drift"]["by_period"]
    bal = [psi_of[m]["balance"] for m in MONTHS]
    age = [psi_of[m]["age"] for m in MONTHS]
    assert bal == sorted(bal) and bal[-1] > 0.25 and bal[0] < 0.1
    assert age == sorted(age) and age[-1] > 0.1
    assert all(psi_of[m]["default"] < 0.1 for m in MONTHS)
    # effect sizes: balance (a factor 1.3 each month) and age (a year older) drift, growing; default does not
    eff = t["drift"]["effect_by_period"]
    assert [eff[m]["balance"] for m in MONTHS] == sorted(eff[m]["balance"] for m in MONTHS)
    assert eff["2026-11"]["balance"] > 0.5 and eff["2026-11"]["age"] > 0.1
    assert all(eff[m]["default"] < 0.05 for m in MONTHS)
    latest = {d["column"]: d for d in t["drift"]["latest"]}
    assert latest["balance"]["drifted"] and not latest["default"]["drifted"]
    job = latest["job"]  # the new job level: a drift of its own from 1 % of customers (here under it)
    assert job["unseen_rows"] > 0 and job["unseen_share"] == pytest.approx(job["unseen_rows"] / t["periods"][-1]["rows"])
    assert ("unseen" in job["drift_kinds"]) == (job["unseen_share"] >= 0.01)
    # within segments, and whether the segments change: a refit on November agrees far less with the saved
    # assignment than a refit of the baseline does (planted life-stage moves change the segments)
    assert any(r["measured"] and r["drifted"] and r["column"] == "balance" for r in t["drift"]["segments_latest"])
    ref = t["refit"]["2026-11"]
    assert ref["rows"] == t["periods"][-1]["rows"] and not ref["sampled"]
    assert ref["draws"] == 5 and ref["ari"] < ref["baseline_ari"] - 0.15, ref
    # the recommendation: re-fit in November because the segments change, naming balance among the drifts
    rec = t["recommendation"]
    assert rec["period"] == "2026-11" and rec["action"] == "refit" and rec["segments_changed"]
    assert rec["reasons"][0]["kind"] == "segments" and "Balance" in rec["columns"]
    assert "re-fit the segmentation" in out and "Balance" in out.split("November 2026")[-1]
    # the outcome per segment, as planted (yes exactly without a housing loan)
    rates = pd.DataFrame(t["outcome_rates"])
    lab = pd.read_parquet(wd / RUN / "snapshots/2026-11/labels.parquet")
    src = pd.read_csv(wd / "data/snap-3.csv")
    expect = (src["housing"] == "no").groupby(lab["segment"]).mean()
    got = rates[rates.period == "2026-11"].set_index("segment")["rate"]
    for s, v in expect.items():
        assert got[s] == pytest.approx(v)
    assert t["outcome"]["positive"] == "yes"


@pytest.mark.slow
def test_the_same_snapshot_again_changes_nothing(wd):
    before = snapshot(wd / RUN)
    assert main(["track", "--run", RUN, "--data", "data/snap-2.csv", "--as-of", "2026-10", "-q"]) == 0
    assert snapshot(wd / RUN) == before


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--data", "data/nope.csv", "--as-of", "2027-01"], "data/nope.csv: file not found"),
    (["--data", "data/no_age.csv", "--as-of", "2027-01"], "'age'"),
    (["--data", "data/snap-1.csv", "--method", "llm", "--k", "3"], "method 'llm' is not part of this run"),
    (["--data", "data/snap-1.csv", "--method", "kmeans", "--k", "7"], "no finished cell kmeans k=7"),
    (["--data", "data/snap-1.csv", "--as-of", "2026-13"], "month 13"),
    (["--data", "data/snap-1.csv", "--as-of", "2026-10"], "already holds"),
    (["--data", "data/snap-1.csv", "--id", "client", "--as-of", "2027-01"], "'client'"),
    (["--data", "data/empty.csv", "--as-of", "2027-01"], "data/empty.csv: has a header but no rows"),
    (["--data", "data/text_balance.csv", "--as-of", "2027-01"], "data/text_balance.csv: column 'balance' is numeric"),
    (["--data", "data/numbers_job.csv", "--as-of", "2027-01"], "data/numbers_job.csv: column 'job' holds none of"),
    (["--data", "data/maybe_y.csv", "--as-of", "2027-01"], "data/maybe_y.csv: column 'y' (the run's outcome) holds "
                                                           "'maybe'"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(wd, capsys, args, message):
    snap = pd.read_csv(wd / "data/snap-1.csv")
    snap.drop(columns="age").to_csv(wd / "data/no_age.csv", index=False)
    snap.head(0).to_csv(wd / "data/empty.csv", index=False)
    snap.assign(balance=snap["balance"].astype(str).where(snap.index != 5, "plenty")).to_csv(
        wd / "data/text_balance.csv", index=False)
    snap.assign(job=np.arange(len(snap))).to_csv(wd / "data/numbers_job.csv", index=False)
    snap.assign(y=snap["y"].where(snap.index != 7, "maybe")).to_csv(wd / "data/maybe_y.csv", index=False)
    before = snapshot(wd / RUN)
    assert main(["track", "--run", RUN, "-q"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert snapshot(wd / RUN) == before


@pytest.mark.slow
def test_dask_parts_give_the_same_bytes_as_the_local_path(wd, capsys):
    """The same snapshot tracked on a LocalCluster, in two row parts, into a copy of the run."""
    shutil.copytree(wd / RUN, wd / "results/fit-dask", ignore=shutil.ignore_patterns("snapshots", "tracking*"))
    assert main(["track", "--run", "results/fit-dask", "--data", "data/snap-3.csv", "--as-of", "2026-11",
                 "--executor", "dask", "--workers", "2", "-q"]) == 0
    assert "(2 Dask parts)" in capsys.readouterr().out
    for name in ("labels.parquet", "drift.parquet", "snapshot.json"):
        local = (wd / RUN / "snapshots/2026-11" / name).read_bytes()
        assert (wd / "results/fit-dask/snapshots/2026-11" / name).read_bytes() == local, name
    # and what the parts stored is assign's answer, row for row
    whole = score_frame(RUN, "kmeans", 3, pd.read_csv(wd / "data/snap-3.csv", dtype=str))
    lab = pd.read_parquet(wd / "results/fit-dask/snapshots/2026-11/labels.parquet")
    np.testing.assert_array_equal(lab["segment"].to_numpy(), whole["segment"].to_numpy())
    np.testing.assert_array_equal(lab["distance"].to_numpy(), whole["distance"].to_numpy())


@pytest.mark.slow
def test_a_new_column_is_listed_and_ignored_and_thresholds_come_from_params(wd, capsys):
    """Into a copy of the run: a snapshot with a column the run never saw; then the same file again under a
    params file with other thresholds, which re-judges the stored measures without scoring anything."""
    shutil.copytree(wd / RUN, wd / "results/fit-extra", ignore=shutil.ignore_patterns("snapshots", "tracking*"))
    snap = pd.read_csv(wd / "data/snap-1.csv")
    snap.assign(loyalty_points=np.arange(len(snap)) % 7).to_csv(wd / "data/extra.csv", index=False)
    assert main(["track", "--run", "results/fit-extra", "--data", "data/extra.csv", "--as-of", "2026-09", "-q"]) == 0
    out = capsys.readouterr().out
    assert "columns the run never used, ignored: loyalty_points" in out
    meta = read_json(wd / "results/fit-extra/snapshots/2026-09/snapshot.json")
    assert meta["ignored_columns"] == ["loyalty_points"]
    t = read_json(wd / "results/fit-extra/tracking.json")
    assert t["thresholds"]["numeric_threshold"] == 0.1
    assert any(d["drifted"] for d in t["drift"]["latest"] if d["column"] == "balance")
    (wd / "loose.yml").write_text("tracking:\n  numeric_threshold: 5\n  categorical_threshold: 0.9\n"
                                  "  unseen_threshold: 0.9\n  missing_threshold: 0.9\n  ari_drop: 1\n")
    before = snapshot(wd / "results/fit-extra/snapshots")
    assert main(["track", "--run", "results/fit-extra", "--data", "data/extra.csv", "--as-of", "2026-09", "-q",
                 "--params", "loose.yml"]) == 0
    assert "already tracked" in capsys.readouterr().out
    assert snapshot(wd / "results/fit-extra/snapshots") == before  # nothing scored again
    t = read_json(wd / "results/fit-extra/tracking.json")
    assert t["thresholds"]["numeric_threshold"] == 5 and not any(d["drifted"] for d in t["drift"]["latest"])
    assert t["recommendation"]["columns"] == []


@pytest.mark.slow
def test_the_page_is_in_the_site_and_the_pdf(wd):
    from bs4 import BeautifulSoup
    from pypdf import PdfReader

    assert main(["render", "--run", "fit"]) == 0
    html = (wd / "_site" / "report" / "tracking.html").read_text()
    soup = BeautifulSoup(html, "html.parser")
    text = soup.get_text(" ")
    t = read_json(wd / RUN / "tracking.json")
    assert "Re-fit the segmentation" in text and "November 2026" in text
    personas = read_json(wd / RUN / "cells/kmeans/k3/personas.json")
    assert all(p["name"] in text for p in personas)
    last = t["migration"]["transitions"][-1]
    assert f"{last['departed']:,}" in text and f"{last['new']:,}" in text
    assert len(soup.select("figure.vega-figure")) == 4  # sizes, moves, drift, drift within segments
    assert "Drift within each segment" in text and "adjusted Rand index" in text
    nav = [a.get_text() for a in BeautifulSoup((wd / "_site/report/index.html").read_text(), "html.parser")
           .select("nav.sidebar a")]
    assert nav.index("Segments over time") == nav.index("Comparison of methods") + 1
    pdf = "".join(p.extract_text() for p in PdfReader(wd / "_site" / "report.pdf").pages)
    assert "Segments over time" in pdf and "Re-fit the segmentation" in pdf
    # no numbers of its own: every share on the page is one of tracking.json's
    shares = {f"{100 * r['share']:.1f}%" for r in t["sizes"]}
    table = soup.find("h2", string="Segment sizes").find_next("table")
    cells = [td.get_text() for td in table.select("td")]
    assert shares <= {c.split("(")[-1].rstrip(")") for c in cells if "(" in c}
