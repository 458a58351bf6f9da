"""The verdict's pieces on small synthetic data: k choice, null reference, Gower, fair comparison,
honest personas, the rule tree, encodings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_score

from segreport.lib.evaluate import bootstrap_stability, stability_class, whole_method_refit
from segreport.lib.explain import _tree_frame, majority_baseline, predict_rules, rule_tree, shap_direction
from segreport.lib.personas import format_value, personas, profile
from segreport.lib.verdict import (choose_k, fair_verdict, gap_term, gower_matrix, gower_silhouette, null_reference,
                               pca_reference, recommendation, reference_frame, shuffle_columns, structure_call)

KS = [2, 3, 4, 5, 6]


def _kmeans(X, k, seed):
    return KMeans(k, n_init=3, random_state=seed).fit(X)


def _cell(X, k, seed=0, resamples=12):
    """What a grid cell holds for one k: bootstrap stability and the silhouette with its SE."""
    labels = _kmeans(X, k, seed).labels_
    refit = whole_method_refit(lambda rows: _kmeans(X[rows], k, seed), lambda m, base: m.predict(X[base]))
    st = bootstrap_stability(refit, labels, len(X), resamples, seed, len(X),
                             score=lambda base, pred: float(silhouette_score(X[base], pred)))
    return {"segments": st["segments"], "ari_mean": st["ari_mean"], "ari_sd": st["ari_sd"],
            "silhouette": float(silhouette_score(X, labels)), "replicate_score": st["replicate_score"]}


def _fit_score(X, k, seed):
    e = _cell(np.asarray(X, dtype=float), k, seed, resamples=4)
    return {"silhouette": e["silhouette"], "ari": e["ari_mean"]}


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=[150, 100, 80, 60], n_features=4, cluster_std=1.0, center_box=(-8, 8),
                      random_state=3)
    return X, y


@pytest.fixture(scope="module")
def blob_cells(blobs):
    X, _ = blobs
    cells = {k: _cell(X, k) for k in KS}
    for k in KS:  # each cell computes its own gap term; the same references for every k
        g = gap_term(X, k, lambda Z, kk, s: _kmeans(Z, kk, s).labels_, references=5, seed=0)
        cells[k].update(gap=g["gap"], gap_s=g["gap_s"])
    return cells


def test_planted_four_segments_choose_four_with_clear_structure(blobs, blob_cells):
    X, y = blobs
    choice = choose_k(blob_cells, grid=KS)
    assert choice["k"] == 4 and not choice["edge"]
    assert choice["picks"]["gap"] == 4 and 4 in choice["qualifying"]
    assert any("k = 4" in r for r in choice["reasons"])
    sh = null_reference(_fit_score, X, [4], "shuffle", n_null=4, seed=1)
    pc = null_reference(_fit_score, X, [4], "pca", n_null=4, seed=1)
    obs = sh["ks"][4]["observed"]
    assert obs["silhouette"] == pytest.approx(blob_cells[4]["silhouette"])
    call = structure_call(obs, sh["ks"][4], pc["ks"][4])
    assert call["structure"] == "clear", call["reasons"]
    assert call["effect"] > 0.1 and call["z_pca"] >= 2
    # without the correlation-preserving reference the call is at most weak
    assert structure_call(obs, sh["ks"][4])["structure"] == "weak"


def test_column_shuffled_table_has_no_structure(blobs):
    X, _ = blobs
    Xs = shuffle_columns(X, 11)
    assert np.allclose(np.sort(Xs, axis=0), np.sort(X, axis=0))  # marginals kept
    k = 3
    sh = null_reference(_fit_score, Xs, [k], "shuffle", n_null=5, seed=2)
    pc = null_reference(_fit_score, Xs, [k], "pca", n_null=5, seed=2)
    call = structure_call(sh["ks"][k]["observed"], sh["ks"][k], pc["ks"][k])
    assert call["structure"] == "none", call["reasons"]
    assert "no structure beyond chance" in call["reasons"][0]


def test_optimum_on_the_grid_edge_is_flagged():
    per_k = {k: {"segments": {s: {"mean_jaccard": 0.95} for s in range(k)}, "ari_mean": 0.97,
                 "silhouette": 0.10 + 0.02 * k, "silhouette_se": 0.001} for k in range(2, 9)}
    choice = choose_k(per_k)
    assert choice["k"] == 8 and choice["edge"]
    assert choice["edge_reason"] == "k = 8 is the largest k tried: widen the grid"
    assert "silhouette" in choice["edge_criteria"] and choice["edge_reason"] in choice["reasons"]
    # with k = 9 tried and worse, 8 is no longer the edge
    per_k[9] = dict(per_k[8], silhouette=0.2, segments={s: {"mean_jaccard": 0.95} for s in range(9)})
    assert choose_k(per_k)["k"] == 8 and not choose_k(per_k)["edge"]


def test_unstable_k_never_qualifies_and_stability_breaks_ties():
    seg = lambda *j: {s: {"mean_jaccard": v} for s, v in enumerate(j)}  # noqa: E731
    per_k = {2: {"segments": seg(0.9, 0.9), "ari_mean": 0.90, "silhouette": 0.30, "silhouette_se": 0.02},
             3: {"segments": seg(0.9, 0.95, 0.9), "ari_mean": 0.96, "silhouette": 0.31, "silhouette_se": 0.02},
             4: {"segments": seg(0.9, 0.9, 0.9, 0.55), "ari_mean": 0.80, "silhouette": 0.40, "silhouette_se": 0.02}}
    choice = choose_k(per_k)
    assert choice["failing"] == {4: [{"segment": 3, "mean_jaccard": 0.55, "class": "unstable"}]}
    assert choice["candidates"] == [2, 3] and choice["k"] == 3  # within one SE; 3 is more stable
    assert choice["picks"]["silhouette"] == 4 and choice["picks"]["stability"] == 3
    none = choose_k({k: dict(v, segments=seg(*([0.5] * k))) for k, v in per_k.items()})
    assert none["k"] is None and none["fallback_k"] is not None


def test_gap_reference_keeps_the_principal_axes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 2)) @ np.array([[3.0, 2.0], [0.0, 0.5]])
    R = pca_reference(X, 1)
    assert abs(np.corrcoef(R.T)[0, 1] - np.corrcoef(X.T)[0, 1]) < 0.05
    assert not np.allclose(R, X)


def _gower_brute(frame, numeric, categorical):
    n = len(frame)
    rng_ = {c: frame[c].max() - frame[c].min() for c in numeric}
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            parts = [abs(frame[c].iloc[i] - frame[c].iloc[j]) / rng_[c] for c in numeric]
            parts += [float(frame[c].iloc[i] != frame[c].iloc[j]) for c in categorical]
            D[i, j] = sum(parts) / len(parts)
    return D


def _silhouette_brute(D, labels):
    s = []
    for i in range(len(labels)):
        own = [D[i, j] for j in range(len(labels)) if labels[j] == labels[i] and j != i]
        a = np.mean(own) if own else 0.0
        b = min(np.mean([D[i, j] for j in range(len(labels)) if labels[j] == c])
                for c in set(labels) if c != labels[i])
        s.append(0.0 if not own else (b - a) / max(a, b))
    return float(np.mean(s))


def test_gower_silhouette_equals_brute_force():
    frame = pd.DataFrame({"age": [23, 25, 31, 60, 64, 70, 45, 33], "balance": [0, 120, 80, 5000, 4200, 3900, 900, 50],
                          "job": ["student", "student", "admin.", "retired", "retired", "retired", "admin.", "admin."],
                          "loan": ["no", "yes", "no", "no", "no", "yes", "yes", "no"]})
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    D = gower_matrix(frame, ["age", "balance"], ["job", "loan"])
    assert np.allclose(D, _gower_brute(frame, ["age", "balance"], ["job", "loan"]))
    got = gower_silhouette(frame, ["age", "balance"], ["job", "loan"], labels, sample=100, seed=0)
    assert got == pytest.approx(_silhouette_brute(D, labels))


def test_fair_verdict_declares_no_winner_when_spaces_disagree():
    reps = lambda v: [v + 0.001 * i for i in range(10)]  # noqa: E731
    scores = {"kmeans": {"k": 4, "silhouette": {"common": 0.30, "gower": 0.20}, "ari_mean": 0.95,
                         "replicates": {"common": reps(0.30)}},
              "kprototypes": {"k": 4, "silhouette": {"common": 0.25, "gower": 0.28}, "ari_mean": 0.96,
                              "replicates": {"common": reps(0.25)}}}
    v = fair_verdict(scores, simplicity=["kmeans", "kprototypes"])
    assert v["winner"] is None and "no method is better on this data" in " ".join(v["reasons"])
    assert v["wins"]["common at recommended k"] == "kmeans" and v["wins"]["gower at recommended k"] == "kprototypes"
    assert v["how_sure"]["common"]["kprototypes"] == {"leader": "kmeans", "ahead": 10, "of": 10}
    assert v["recommend"] == "kmeans"  # as stable within 0.02, and simpler
    scores["kmeans"]["silhouette"]["gower"] = 0.35
    scores["kmeans"]["ari_mean"] = 0.99
    assert fair_verdict(scores)["winner"] == "kmeans"


def test_recommendation_names_the_most_stable_partition_when_there_is_no_structure():
    choices = {"kmeans": {"k": None, "fallback_k": 3, "edge": False, "reasons": []},
               "kprototypes": {"k": 5, "fallback_k": None, "edge": False, "reasons": []}}
    verdict = {"winner": "kprototypes", "recommend": "kprototypes", "by_stability": "kmeans", "reasons": []}
    none = {"structure": "none", "reasons": ["no structure beyond chance"]}
    rec = recommendation(choices, verdict, {"kmeans": none, "kprototypes": none})
    assert (rec["method"], rec["k"], rec["structure"]) == ("kmeans", 3, "none")
    assert rec["label"] == "most stable partition, no structure beyond chance"
    clear = {"structure": "clear", "reasons": []}
    rec = recommendation(choices, verdict, {"kmeans": clear, "kprototypes": clear})
    assert (rec["method"], rec["k"], rec["label"]) == ("kprototypes", 5, "recommended")


def test_reference_frame_keeps_columns_and_correlation():
    rng = np.random.default_rng(0)
    age = rng.integers(20, 80, 800).astype(float)
    frame = pd.DataFrame({"age": age, "balance": np.exp(age / 20 + rng.normal(0, 0.3, 800)),
                          "job": np.where(age > 60, "retired", rng.choice(["admin.", "services"], 800))})
    ref = reference_frame(frame, ["age", "balance"], ["job"], 0)
    assert list(ref.columns) == ["age", "balance", "job"] and len(ref) == 800
    assert set(ref.job) <= set(frame.job) and (ref.age % 1 == 0).all()
    assert ref.age.between(20, 79).all()
    assert np.corrcoef(ref.age, np.log(ref.balance))[0, 1] > 0.5  # the correlation survives


def test_bootstrap_records_clusterboot_facts(blob_cells):
    seg = blob_cells[4]["segments"][0]
    assert len(seg["jaccards"]) == 12 and seg["class"] == "highly stable" and seg["dissolutions"] == 0
    noisy = blob_cells[6]["segments"]
    assert any(s["class"] != "highly stable" for s in noisy.values())
    for s in noisy.values():
        assert s["dissolutions"] == sum(j < 0.5 for j in s["jaccards"])
        assert s["class"] == stability_class(np.mean(s["jaccards"]))
    rs = blob_cells[4]["replicate_score"]
    assert rs["n"] == 12 and rs["mc_se"] == pytest.approx(rs["sd"] / np.sqrt(12))
    assert [stability_class(v) for v in (0.59, 0.6, 0.74, 0.75, 0.849, 0.85)] == \
        ["unstable", "pattern", "pattern", "valid", "valid", "highly stable"]


def test_ecod_is_refitted_inside_each_resample():
    calls = []
    X = np.random.default_rng(0).normal(size=(300, 3))

    def detect(rows):
        calls.append(len(rows))
        flags = np.zeros(len(rows), bool)
        flags[:5] = True
        return flags

    refit = whole_method_refit(lambda rows: _kmeans(X[rows], 2, 0), lambda m, b: m.predict(X[b]), detect)
    labels = _kmeans(X, 2, 0).labels_
    bootstrap_stability(refit, labels, len(X), 3, 0, len(X))
    assert calls == [300, 300, 300]


def _bank_like(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    seg = rng.choice(3, n, p=[0.4, 0.35, 0.25])
    frame = pd.DataFrame({
        "age": np.round(np.where(seg == 2, rng.normal(66, 5, n), rng.normal(38, 8, n))),
        "balance": np.round(np.where(seg == 1, rng.lognormal(8, 0.5, n), rng.lognormal(5, 1, n))),
        # segment 2: 35% retired (a minority), segment 1: 80% management (a majority)
        "job": np.where(seg == 2, rng.choice(["retired", "admin.", "services"], n, p=[0.35, 0.35, 0.3]),
                        np.where(seg == 1, rng.choice(["management", "admin."], n, p=[0.8, 0.2]),
                                 rng.choice(["admin.", "services", "management"], n, p=[0.5, 0.4, 0.1]))),
        "housing": np.where(seg == 0, rng.choice(["yes", "no"], n, p=[0.9, 0.1]), rng.choice(["yes", "no"], n)),
    })
    return frame, seg


def test_a_minority_level_never_names_a_segment():
    frame, seg = _bank_like()
    outliers = np.zeros(len(seg), bool)
    outliers[np.flatnonzero(seg == 1)[:30]] = True
    prof = profile(frame, seg, ["age", "balance"], ["job", "housing"], outliers=outliers)
    labels = {"age": "Age", "balance": "Balance", "job": "Job", "housing": "Housing loan"}
    stab = {"segments": {0: {"mean_jaccard": 0.9}, 1: {"mean_jaccard": 0.55}, 2: {"mean_jaccard": 0.8}}}
    cards = personas(prof, None, labels, {"age": "years", "balance": "EUR"}, {"housing"}, stability=stab)
    retired = next(t for t in cards[2]["traits"] if t["column"] == "job")
    assert retired["level"] == "retired" and not retired["nameable"]
    assert retired["phrase"].startswith("more retired than average (")
    assert "Retired" not in cards[2]["name"] and cards[2]["name"].startswith("High age")
    mgmt = next(t for t in cards[1]["traits"] if t["column"] == "job")
    assert mgmt["nameable"] and "Management" in cards[1]["name"]
    for card in cards:  # every name comes from traits held by the typical member
        for t in card["traits"]:
            if t["short"] in card["name"].split(" · "):
                assert t["nameable"] and (t["kind"] == "numeric" or t["share"] >= 0.5)
    # a segment whose only distinctive trait is held by a minority gets no name from it
    rng = np.random.default_rng(5)
    two = np.repeat([0, 1], 400)
    jobs = ["retired", "admin.", "services"]
    small = pd.DataFrame({"age": rng.normal(40, 9, 800),
                          "job": np.where(two == 1, rng.choice(jobs, 800, p=[0.4, 0.3, 0.3]),
                                          rng.choice(jobs, 800, p=[0.05, 0.5, 0.45]))})
    only = personas(profile(small, two, ["age"], ["job"]), None, {"age": "Age", "job": "Job"}, {}, set())
    p, q = (small.job[two == 1] == "retired").mean(), (small.job == "retired").mean()
    assert [t["phrase"] for t in only[1]["traits"]] == [f"more retired than average ({p:.0%} vs {q:.0%})"]
    assert only[1]["name"] == "No majority trait"
    bal = next(t for t in cards[1]["traits"] if t["column"] == "balance")
    assert bal["effect_measure"].startswith("Cliff's delta") and "median €" in bal["phrase"]
    assert cards[1]["outliers"] == 30 and cards[1]["outlier_share"] == pytest.approx(30 / (seg == 1).sum())
    assert cards[1]["stability_class"] == "unstable" and cards[1]["unstable"]
    assert cards[2]["stability_class"] == "valid" and not cards[2]["unstable"]
    assert format_value(1240.4, "EUR") == "€1,240" and format_value(-35, "USD") == "-$35"
    assert format_value(41, "years") == "41 years"


def test_rule_tree_rules_reproduce_its_predictions():
    frame, seg = _bank_like(n=1500, seed=1)
    res = rule_tree(frame, seg, ["job", "housing"], max_depth=3, seed=0)
    X, _ = _tree_frame(frame, ["job", "housing"])
    assert (predict_rules(res["rules"], frame) == res["model"].predict(X)).all()
    assert res["baseline"] == majority_baseline(seg) and res["accuracy"] > res["baseline"]["accuracy"]
    assert res["simple_rules"] == (res["accuracy"] >= 0.9)
    texts = " ".join(r["text"] for r in res["rules"])
    assert "age < " in texts or "age >= " in texts
    assert "job_" not in texts and "=retired" not in texts  # category names, not dummy columns
    for r in res["rules"]:
        for c in r["conditions"]:
            if c["op"] in ("<", ">="):
                assert c["value"] == round(c["value"], 6)  # readable thresholds


def test_shap_direction_reads_the_sign():
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"age": rng.uniform(20, 80, n), "job": rng.choice(["a", "b"], n)})
    seg = (np.arange(n) % 2).astype(int)
    sample = pd.DataFrame({"row": np.arange(n), "segment": seg,
                           "shap_age": np.where(seg == 0, 1, -1) * (frame.age - 50) / 30 + rng.normal(0, 0.05, n),
                           "shap_job": np.where(frame.job == "a", 0.3, -0.2)})
    d = shap_direction(sample, frame, ["age"], ["job"])
    assert d[0]["age"]["direction"] == "higher" and d[1]["age"]["direction"] == "lower"
    assert d[0]["job"]["towards"] == ["a"] and d[0]["job"]["away"] == ["b"]


def test_nominal_columns_are_one_hot_unless_ordered():
    from segreport.core.schema import ColumnSpec
    from segreport.lib.data import Table
    from segreport.lib.features import fit_encoded

    frame = pd.DataFrame({"age": [30.0, 40, 50, 60], "job": ["a", "b", "c", "a"], "edu": ["p", "s", "t", "p"],
                          "loan": ["yes", "no", "no", "yes"]})
    schema = [ColumnSpec(name="age", kind="numeric"), ColumnSpec(name="job", kind="categorical"),
              ColumnSpec(name="edu", kind="categorical", order=["p", "s", "t"]),
              ColumnSpec(name="loan", kind="binary")]
    _, _, names = fit_encoded(Table(frame, schema, "t", ""))
    assert sorted(names) == sorted(["age", "edu", "job_b", "job_c", "loan_yes"])
    schema[1] = ColumnSpec(name="job", kind="categorical", encoding="ordinal")
    _, _, names = fit_encoded(Table(frame, schema, "t", ""))
    assert "job" in names and "job_b" not in names
