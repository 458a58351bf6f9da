"""Drift measures of `segreport track` (segreport/lib/drift.py) and the keep / watch / refit rule, by hand.

Pure logic on small arrays: no run, no pipeline (the tracked run is in tests/test_track.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from segreport import SegreportError
from segreport.core.config import TrackingParams
from segreport.methods import load_params
from segreport.lib.drift import (CATEGORICAL, NUMERIC, UNSEEN_BUCKET, agreement, by_segment, decide, js_distance,
                             measure, psi)
from segreport.stages.track import recommend, sentence

TH = TrackingParams()


def _skewed(n: int, seed: int) -> pd.Series:
    """Balance-like: skewed, mostly small, a long right tail (as the bank's balance)."""
    return pd.Series(np.random.default_rng(seed).lognormal(6, 1.2, n))


# --------------------------------------------------------------------------- the measures


def test_normed_wasserstein_and_ks_by_hand():
    base = pd.Series([0.0, 1.0, 2.0, 3.0])
    m = measure(base, base + 1, NUMERIC)
    assert m["effect"] == pytest.approx(1 / np.std([0, 1, 2, 3], ddof=1))  # every value moved by 1 SD-unit
    assert m["baseline_sd"] == pytest.approx(math.sqrt(5 / 3))
    assert measure(base, base, NUMERIC)["effect"] == 0.0


def test_a_scaled_skewed_column_is_flagged_where_psi_is_not():
    """The issue's case: balance x1.3 moves the median by 30 % but barely moves the baseline's deciles."""
    base, new = _skewed(45_000, 0), _skewed(4_500, 1)
    same = measure(base, new, NUMERIC)
    scaled = measure(base, new * 1.3, NUMERIC)
    assert same["effect"] < 0.05 and not decide(same, TH)["drifted"]
    assert scaled["effect"] >= TH.numeric_threshold and scaled["p_value"] < 1e-10
    assert decide(scaled, TH) == {"threshold": 0.1, "drifted": True, "drift_kinds": ["distribution"],
                                  "ratio": pytest.approx(scaled["effect"] / 0.1)}
    assert scaled["median"] / scaled["baseline_median"] == pytest.approx(1.3 * same["median"] / same["baseline_median"])
    # the old measure alone calls it stable (PSI under 0.1); it stays in the table as a number
    assert scaled["psi"] < 0.1


def test_jensen_shannon_by_hand_and_unseen_levels_as_one_bucket():
    # (1/2, 1/2) against (1, 0): M = (3/4, 1/4)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert js_distance(np.array([50, 50]), np.array([100, 0])) == pytest.approx(math.sqrt((kl_p + kl_q) / 2))
    base = pd.Series(["a"] * 60 + ["b"] * 40)
    new = pd.Series(["a"] * 50 + ["b"] * 30 + ["zz"] * 15 + ["yy"] * 5)
    m = measure(base, new, CATEGORICAL)
    assert m["effect"] == pytest.approx(js_distance(np.array([60, 40, 0]), np.array([50, 30, 20])))
    assert m["unseen_rows"] == 20 and m["unseen_share"] == pytest.approx(0.2)
    assert m["unseen_levels"] == {"zz": 15, "yy": 5} and m["top_level"] == UNSEEN_BUCKET
    assert m["psi"] == pytest.approx(psi([60, 40, 0], [50, 30, 20]))
    assert set(decide(m, TH)["drift_kinds"]) == {"distribution", "unseen"}


def test_missing_cells_are_a_drift_of_their_own_and_left_out_of_the_distance():
    rng = np.random.default_rng(2)
    base = pd.Series(rng.normal(50, 10, 20_000))
    new = pd.Series(rng.normal(50, 10, 4_000))
    miss = np.zeros(len(new), bool)
    miss[rng.choice(len(new), 400, replace=False)] = True
    imputed = new.where(~miss, float(base.median()))  # as normalise_new fills them
    m = measure(base, imputed, NUMERIC, base_missing=0.0, new_missing=miss)
    assert m["missing_share"] == pytest.approx(0.1) and m["missing_p"] < 1e-10
    assert m["effect"] < 0.05  # the median-filled cells are not counted as a shift
    assert decide(m, TH)["drift_kinds"] == ["missing"]
    # the same share missing as at baseline is no drift
    assert not decide(measure(base, imputed, NUMERIC, base_missing=0.1, new_missing=miss), TH)["drifted"]


def test_a_small_snapshot_needs_the_test_too():
    """On 25 customers the effect size is noisy: above the threshold by chance, the K-S test says chance."""
    rng = np.random.default_rng(5)
    base = pd.Series(rng.normal(0, 1, 10_000))
    m = measure(base, pd.Series(rng.normal(0, 1, 25)), NUMERIC)
    assert m["effect"] >= TH.numeric_threshold and m["p_value"] > TH.alpha
    assert not decide(m, TH)["drifted"]
    cat = measure(pd.Series(list("ab") * 5000), pd.Series(list("aab") * 4), CATEGORICAL)
    assert cat["effect"] >= TH.categorical_threshold and cat["p_value"] > TH.alpha and not decide(cat, TH)["drifted"]


def test_thresholds_come_from_params_and_are_validated(tmp_path):
    m = measure(_skewed(20_000, 0), _skewed(4_000, 1) * 1.3, NUMERIC)
    assert decide(m, TH)["drifted"] and not decide(m, TrackingParams(numeric_threshold=0.5))["drifted"]
    p = tmp_path / "params.yml"
    p.write_text("tracking:\n  numeric_threshold: 0.2\n  segment_min_rows: 300\n")
    assert load_params(p).tracking == TrackingParams(numeric_threshold=0.2, segment_min_rows=300)
    p.write_text("tracking:\n  numeric_threshold: -1\n")
    with pytest.raises(SegreportError, match=r"tracking\.numeric_threshold"):
        load_params(p)
    p.write_text("tracking:\n  numeric_treshold: 0.2\n")
    with pytest.raises(SegreportError, match="did you mean 'numeric_threshold'"):
        load_params(p)


def test_drift_within_one_segment_is_found_there_only():
    rng = np.random.default_rng(3)
    n = 3000
    base = pd.DataFrame({"x": rng.normal(0, 1, n), "c": rng.choice(list("abc"), n)})
    new = pd.DataFrame({"x": rng.normal(0, 1, n), "c": rng.choice(list("abc"), n)})
    seg_b, seg_n = rng.integers(0, 3, n), rng.integers(0, 3, n)
    seg_b[:100] = seg_n[:100] = 3  # a small fourth segment
    new.loc[seg_n == 1, "x"] += 0.5  # half an SD, inside segment 1 only
    rows = by_segment(base, seg_b, new, seg_n, 4, {"x": NUMERIC, "c": CATEGORICAL}, {}, {}, min_rows=200)
    flagged = {(r["segment"], r["column"]) for r in rows if r["measured"] and decide(r, TH)["drifted"]}
    assert flagged == {(1, "x")}
    assert [r["measured"] for r in rows if r["segment"] == 3] == [False, False]
    whole = measure(base["x"], new["x"], NUMERIC)
    assert whole["effect"] < next(r["effect"] for r in rows if (r["segment"], r["column"]) == (1, "x"))


def test_agreement_matches_segments_whatever_their_numbers():
    a = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    same = agreement(a, (a + 1) % 3)  # the same segments, numbered otherwise
    assert same["ari"] == pytest.approx(1.0) and same["changed_share"] == 0.0
    b = a.copy()
    b[[0, 3]] = [1, 2]  # two customers change segment
    got = agreement(a, b)
    assert got["changed_share"] == pytest.approx(0.2) and got["ari"] < 1


# --------------------------------------------------------------------------- keep, watch or refit


SEGMENTS = [{"segment": s, "code": f"S{s + 1}", "name": n} for s, n in enumerate(["Young", "Savers"])]
FIT = {"min_segment_size": 20, "far_share": 0.05, "outlier_share": None}
HEALTH = {"far_share": 0.05, "far_p_value": 0.5, "outlier_share": None}


def _sizes():
    return pd.DataFrame({"period": "2026-11", "segment": [0, 1], "customers": [500, 500], "share": [0.5, 0.5],
                         "change": [0.0, 0.0], "p_value": [1.0, 1.0], "beyond_noise": [False, False]})


def _drift(balance_effect: float):
    rows = []
    for col, label, kind, effect in (("balance", "Balance", "numeric", balance_effect), ("job", "Job", "categorical", 0.02)):
        m = {"kind": kind, "effect": effect, "p_value": 1e-9, "missing_share": 0.0, "baseline_missing_share": 0.0,
             "missing_p": 1.0, "unseen_share": 0.0}
        d = decide(m, TH)
        rows.append({"period": "2026-11", "column": col, "label": label, "kind": kind, "psi": 0.03,
                     "measure": "normed Wasserstein" if kind == "numeric" else "Jensen-Shannon distance",
                     "effect": effect, "threshold": d["threshold"], "drifted": d["drifted"],
                     "drift_kinds": ", ".join(d["drift_kinds"]), "missing_share": 0.0,
                     "baseline_missing_share": 0.0, "unseen_share": 0.0, "unseen_rows": 0, "unseen_levels": ""})
    return pd.DataFrame(rows)


def _seg_drift(segment_effect: float):
    return pd.DataFrame([{"period": "2026-11", "segment": 1, "column": "balance", "label": "Balance",
                          "measured": True, "effect": segment_effect, "threshold": 0.1,
                          "drifted": segment_effect >= 0.1}])


def _refit(ari: float):
    return {"rows": 1000, "sampled": False, "ari": ari, "matched_share": 0.9, "changed_share": 0.1,
            "baseline_ari": 0.95, "baseline_changed_share": 0.02}


def test_drift_alone_is_watch_and_a_changed_refit_is_refit():
    keep = recommend("2026-11", _sizes(), _drift(0.03), HEALTH, FIT, SEGMENTS, {}, _seg_drift(0.02), _refit(0.93), TH)
    assert keep["action"] == "keep" and keep["columns"] == [] and keep["segments"] == []
    watch = recommend("2026-11", _sizes(), _drift(0.17), HEALTH, FIT, SEGMENTS, {}, _seg_drift(0.25), _refit(0.93), TH)
    assert watch["action"] == "watch" and watch["columns"] == ["Balance"] and watch["segments"] == ["S2 · Savers"]
    assert not watch["segments_changed"] and watch["reasons"] == []
    assert sentence(watch).startswith("watch: Balance drifted, also within S2, but the segments hold (")
    refit = recommend("2026-11", _sizes(), _drift(0.17), HEALTH, FIT, SEGMENTS, {}, _seg_drift(0.25), _refit(0.60), TH)
    assert refit["action"] == "refit" and refit["segments_changed"]
    assert refit["reasons"][0]["kind"] == "segments" and refit["ari_gap"] == pytest.approx(0.35)
    assert "median ARI of 0.60" in sentence(refit) and "Balance drifted" in sentence(refit)
    # the same refit, but a looser rule
    loose = recommend("2026-11", _sizes(), _drift(0.17), HEALTH, FIT, SEGMENTS, {}, _seg_drift(0.25), _refit(0.60),
                      TrackingParams(ari_drop=0.5))
    assert loose["action"] == "watch"
