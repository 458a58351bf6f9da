"""The recommendation for use (issue #24): the commonsense baseline, the bars, the outcome rule chosen on
one half and reported on the other, numbers printed on the side of their thresholds, persona names that
hold for their segment. In-process, on small synthetic tables: each test runs in well under a second."""

from __future__ import annotations

import numpy as np
import pandas as pd

from segreport.lib.personas import personas, profile
from segreport.lib.recommend import outcome_halves, outcome_spread, recommend, rule_equivalent, structure_kind
from segreport.lib.verdict import side, structure_call


def _bank_like(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(18, 90, n).astype(float), "balance": rng.normal(1000, 500, n),
                         "job": rng.choice(["admin.", "services", "retired"], n),
                         "housing": rng.choice(["yes", "no"], n, p=[0.55, 0.45]),
                         "loan": rng.choice(["yes", "no"], n, p=[0.2, 0.8])})


def test_a_two_column_rule_is_found_and_read_as_a_filter():
    f = _bank_like()
    lab = np.where((f.housing == "no") & (f.loan == "no"), 0, 1)
    flip = np.random.default_rng(1).random(len(f)) < 0.01  # 1% noise
    lab = np.where(flip, 1 - lab, lab)
    r = rule_equivalent(f, ["age", "balance"], ["job", "housing", "loan"], lab, seed=3)
    assert r["rule"] == "S1: housing = no and loan = no; S2: everyone else"
    assert 0.9 <= r["agreement"] < 1.0
    assert r["columns"] == ["housing", "loan"]


def test_an_integer_threshold_reads_as_a_filter_and_random_segments_have_no_rule():
    f = _bank_like()
    r = rule_equivalent(f, ["age", "balance"], ["job", "housing", "loan"], (f.age >= 41).astype(int).to_numpy())
    assert r["rule"] == "S1: age <= 40; S2: everyone else" and r["agreement"] == 1.0
    noise = np.random.default_rng(2).integers(0, 3, len(f))
    assert rule_equivalent(f, ["age", "balance"], ["job", "housing", "loan"], noise)["agreement"] < 0.05


def _cell(method, k, simplicity, spread=None, ci=0.01, jac=0.9, sizes=None, rule_ari=0.3, distinct=0.2, se=0.01):
    sizes = sizes or [1000 // k] * k
    out = {"method": method, "k": k, "value": k, "simplicity": simplicity, "n": sum(sizes), "sizes": sizes,
           "jaccards": {s: jac for s in range(k)}, "rule": {"rule": "S1: x = a; S2: everyone else",
                                                            "agreement": rule_ari, "segments": {}},
           "distinct": {"value": distinct, "se": se}}
    if spread is not None:
        out["outcome"] = {"spread": spread, "ci_low": spread - ci, "ci_high": spread + ci, "rows": 500,
                          "report": {"spread": spread, "rows": 500, "population_rate": 0.1, "rates": []}}
    return out


def test_stability_is_a_bar_and_the_outcome_decides():
    cells = [_cell("kmeans", 2, 1, spread=0.05), _cell("kmeans", 3, 1, spread=0.20),
             _cell("llm", 2, 4, spread=0.10, rule_ari=0.976),  # a commonsense split
             _cell("kprototypes", 4, 2, spread=0.30, jac=0.7499)]  # not reproducible: below the bar unrounded
    r = recommend(cells)
    assert (r["method"], r["k"], r["basis"]) == ("kmeans", 3, "outcome")
    assert "kprototypes/4" in r["excluded"] and "0.7499" in r["excluded"]["kprototypes/4"][0]
    roles = {(o["method"], o["k"]): o["role"] for o in r["options"]}
    assert roles[("llm", 2)] == "commonsense split" and roles[("kmeans", 3)] == "recommended"


def test_a_larger_k_must_beat_the_smaller_beyond_its_interval_and_ties_go_to_the_simpler_method():
    cells = [_cell("kmeans", 2, 1, spread=0.195, ci=0.02), _cell("kmeans", 5, 1, spread=0.20, ci=0.02),
             _cell("llm", 3, 4, spread=0.205, ci=0.03)]
    r = recommend(cells)
    assert (r["method"], r["k"]) == ("kmeans", 2)
    cells[0]["outcome"]["ci_high"] = 0.199  # now k = 5 (and the LLM) are beyond k = 2's interval
    assert (recommend(cells)["method"], recommend(cells)["k"]) == ("kmeans", 5)


def test_small_segments_and_commonsense_splits_only_when_nothing_else_qualifies():
    cells = [_cell("kmeans", 3, 1, spread=0.3, sizes=[960, 20, 20]), _cell("llm", 2, 4, spread=0.1, rule_ari=1.0)]
    r = recommend(cells, min_segment_share=0.05)
    assert (r["method"], r["k"], r["commonsense"]) == ("llm", 2, True)
    assert r["rule_equivalent"]["agreement"] == 1.0
    assert "2.0%" in r["excluded"]["kmeans/3"][0]


def test_without_an_outcome_the_most_distinct_within_one_se_then_simpler_then_smaller_k():
    cells = [_cell("kmeans", 4, 1, distinct=0.195), _cell("kmeans", 2, 1, distinct=0.19),
             _cell("kprototypes", 3, 2, distinct=0.20, se=0.01), _cell("llm", 2, 4, distinct=0.12)]
    r = recommend(cells)
    assert (r["method"], r["k"], r["basis"]) == ("kmeans", 2, "distinct")


def test_natural_data_follow_the_neutral_spaces_not_the_outcome():
    cells = [_cell("kmeans", 4, 1, spread=0.05), _cell("kprototypes", 3, 2, spread=0.3)]
    r = recommend(cells, natural_pick={"method": "kmeans", "k": 4})
    assert (r["method"], r["k"], r["basis"]) == ("kmeans", 4, "natural")
    cells[0]["rule"]["agreement"] = 0.95  # natural segments that a filter also gives: used, and the filter said
    r = recommend(cells, natural_pick={"method": "kmeans", "k": 4})
    assert (r["method"], r["k"], r["basis"], r["commonsense"]) == ("kmeans", 4, "natural", True)
    assert structure_kind("clear", True) == "natural" and structure_kind("weak", True) == "reproducible"
    assert structure_kind("clear", False) == "constructive"


def test_nothing_qualifies_gives_no_pick():
    r = recommend([_cell("kmeans", 2, 1, jac=0.6)])
    assert r["method"] is None and r["basis"] == "fallback"


def test_outcome_chosen_on_one_half_reported_on_the_other():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 2, 10000)
    pos = rng.random(10000) < np.where(lab == 0, 0.2, 0.05)
    sel = outcome_halves(10000, 42)
    assert sel.sum() == 5000 and np.array_equal(sel, outcome_halves(10000, 42))
    o = outcome_spread(pos, lab, sel, seed=42)
    assert o["ci_low"] < o["spread"] < o["ci_high"] and abs(o["spread"] - 0.15) < 0.03
    assert o["report"]["rows"] == 5000 and abs(o["report"]["spread"] - 0.15) < 0.03
    assert {r["segment"] for r in o["report"]["rates"]} == {0, 1}


def test_thresholds_are_printed_on_their_side():
    assert side(0.747, 0.75) == "0.747" and side(0.7499, 0.75) == "0.7499" and side(0.81, 0.75) == "0.81"


def test_a_null_without_spread_has_no_z_and_no_hidden_floor():
    st = structure_call({"silhouette": 0.209}, [0.198, 0.198, 0.198], [0.1, 0.11, 0.12])
    assert st["z"] is None and "spread 0" in st["reasons"][0] and "z not computed" in st["reasons"][0]
    assert st["structure"] == "none" and "below the minimum of 0.02" in st["reasons"][0]
    st = structure_call({"silhouette": 0.209}, [0.1980, 0.1982, 0.1981], [0.1, 0.11, 0.12])
    assert "± 0.0001" in st["reasons"][0] and st["structure"] == "none"  # a spread shown, not rounded to 0
    st = structure_call({"silhouette": 0.25}, [0.198, 0.198, 0.198], [0.1, 0.11, 0.12])
    assert st["structure"] == "weak" and st["beats_shuffled"] and st["beats_pca"]


def test_persona_names_hold_for_their_segment_or_state_the_share():
    rng = np.random.default_rng(0)
    n = 3000
    lab = np.repeat([0, 1], n // 2)
    housing = np.where(lab == 1, rng.random(n) < 0.63, rng.random(n) < 0.1)
    f = pd.DataFrame({"housing": np.where(housing, "yes", "no"),
                      "age": np.where(lab == 0, rng.normal(39, 10, n), rng.normal(38.5, 10, n))})
    prof = profile(f, lab, ["age"], ["housing"])
    cards = personas(prof, None, {"housing": "Housing loan", "age": "Age"}, {}, {"housing"})
    share = (f.housing[lab == 1] == "yes").mean()
    assert 0.5 < share < 0.8 and cards[1]["name"] == f"Housing loan ({share:.0%})"
    assert cards[0]["name"] == "No housing loan"  # 90% hold it: no share needed
    assert not any(t["column"] == "age" for c in cards for t in c["traits"])  # a negligible age shift is no trait


def test_natural_methods_are_tried_best_first_and_bounds_on_one_number_are_tightened():
    from segreport.stages.compare import natural_pick
    from segreport.lib.recommend import _tighten

    recommended = {"kmeans": {"k": 5}, "kprototypes": {"k": 5}, "llm": {"k": 3}}
    choices = {m: {"k": r["k"]} for m, r in recommended.items()}
    structure = {"kmeans": {"structure": "clear"}, "kprototypes": {"structure": "clear"}, "llm": {"structure": "weak"}}
    table = [{"method": m, "k": recommended[m]["k"], "measure": "silhouette", "space": sp, "value": v}
             for m, sp, v in (("kmeans", "common", 0.30), ("kmeans", "gower", 0.20), ("kprototypes", "common", 0.32),
                              ("kprototypes", "gower", 0.25), ("llm", "common", 0.5), ("llm", "gower", 0.5))]
    order = natural_pick(recommended, choices, {"winner": None, "table": table}, structure)
    assert [o["method"] for o in order] == ["kprototypes", "kmeans"]  # the LLM's segments are not natural
    assert natural_pick(recommended, choices, {"winner": "kmeans", "table": table}, structure)[0]["method"] == "kmeans"
    cells = [_cell("kmeans", 5, 1, sizes=[960, 10, 10, 10, 10]), _cell("kprototypes", 5, 2, distinct=0.1)]
    assert recommend(cells, natural_pick=[{"method": "kmeans", "k": 5}, {"method": "kprototypes", "k": 5}])["method"] \
        == "kprototypes"
    assert _tighten(["age <= 53", "age <= 26"]) == ["age <= 26"]
    assert _tighten(["age >= 28", "age <= 53", "loan = no"]) == ["age >= 28", "age <= 53", "loan = no"]


def test_the_outcome_is_named_by_its_label_else_by_its_column():
    from segreport.lib.data import load_table

    import tempfile, pathlib  # noqa: E401

    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        f = _bank_like(300)
        f["job"], f["marital"], f["education"], f["default"] = "admin.", "married", "secondary", "no"
        f["y"] = rng.choice(["yes", "no"], 300)
        path = pathlib.Path(d) / "bank.csv"
        f.to_csv(path, sep=";", index=False)
        assert load_table(path).outcome_label == "Subscribed a term deposit"  # the bank preset
        f.rename(columns={"y": "churn"}).drop(columns=["education"]).to_csv(path, sep=";", index=False)
        assert load_table(path, outcome="churn").outcome_label is None
