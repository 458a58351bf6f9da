"""Sequential stopping of the clusterboot refits: the rule (`evaluate.settled`) on crafted Jaccards, a
sequential run against a fixed one on planted tables (the same classes, its refits the first ones of the
fixed run, fewer of them where the segments are clear-cut), `fixed` as the code before it, a stopped run
taken on to the full count (`resume`) equal to the fixed run, and the close calls that the comparison
confirms (`verdict.close_calls`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from segreport.lib.evaluate import (DEFAULT_RESAMPLES, DISSOLVED_BELOW, bootstrap_stability, replicate_summary,
                                sample_rows, settled, stability_class, stopping_looks)
from segreport.methods.kmeans import KMeansSegmenter
from segreport.lib.verdict import close_calls, verdict_reads, winner_possible


def _clusterboot_before(refit, labels, n, n_boot=DEFAULT_RESAMPLES, seed=0, max_rows=5000, score=None):
    """evaluate.bootstrap_stability as it was before sequential stopping (commit 4c616db), verbatim but
    for its name and docstring: `stopping="fixed"` must give its result, byte for byte."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    base = sample_rows(n, max_rows, seed)
    ref = labels[base]
    segs = np.unique(labels)
    aris, jac, scores = [], {int(s): [] for s in segs}, []
    for b in range(n_boot):
        draw = np.sort(rng.choice(len(base), size=len(base), replace=True))
        pred = refit(base[draw], base)  # labels of every base row under the bootstrap model
        aris.append(float(adjusted_rand_score(ref, pred)))
        inb = np.unique(draw)
        r, p = ref[inb], pred[inb]
        for s in segs:
            a = r == s
            if not a.any():
                continue
            best = 0.0
            for t in np.unique(p[a]):
                bmask = p == t
                best = max(best, float((a & bmask).sum() / (a | bmask).sum()))
            jac[int(s)].append(best)
        if score is not None:
            scores.append(score(base, pred))
    per = {}
    for s, v in jac.items():
        mean = float(np.mean(v)) if v else None
        per[s] = {"mean_jaccard": mean, "jaccards": [float(x) for x in v],
                  "dissolutions": int(sum(x < DISSOLVED_BELOW for x in v)),
                  "recoveries": int(sum(x >= 0.75 for x in v)), "class": stability_class(mean),
                  "dissolved": bool(v) and mean < DISSOLVED_BELOW, "stable": bool(v) and mean >= 0.75}
    out = {"resamples": n_boot, "rows": int(len(base)), "ari_mean": float(np.mean(aris)),
           "ari_sd": float(np.std(aris)), "ari_min": float(np.min(aris)), "ari": aris, "segments": per}
    if score is not None:
        out["common_silhouette"] = scores
        out["replicate_score"] = replicate_summary(scores)
    return out


def _setup(X, k, seed=0):
    """labels, refit and score of K-means at k on X (the refit counted)."""
    labels = KMeansSegmenter(k, n_init=2, random_state=seed).fit(X).labels_
    calls = []

    def refit(rows, base):
        calls.append(len(rows))
        return KMeansSegmenter(k, n_init=2, random_state=seed).fit(X[rows]).predict(X[base])

    def score(base, pred):  # a number per refit, so that the replicates are compared too
        return float(np.bincount(pred, minlength=k).max()) / len(pred)

    return labels, refit, score, calls


@pytest.fixture(scope="module")
def clear():
    """A planted table with clear-cut segments: three well separated blobs of unequal size."""
    X, _ = make_blobs(n_samples=[250, 150, 100], centers=[[0, 0], [8, 0], [0, 8]], cluster_std=1.0, random_state=4)
    return X


@pytest.fixture(scope="module")
def blurred():
    """Segments that resampling does not reproduce: k = 4 on uniform noise."""
    return np.random.default_rng(5).uniform(size=(300, 3))


def _dump(result) -> str:
    return json.dumps(result, sort_keys=True)


@pytest.mark.parametrize("table,k", [("clear", 3), ("blurred", 4)])
def test_fixed_is_the_code_before_byte_for_byte(table, k, request):
    X = request.getfixturevalue(table)
    labels, refit, score, _ = _setup(X, k)
    before = _clusterboot_before(refit, labels, len(X), 100, 7, 400, score)
    assert _dump(bootstrap_stability(refit, labels, len(X), 100, 7, 400, score, stopping="fixed")) == _dump(before)
    assert _dump(bootstrap_stability(refit, labels, len(X), 100, 7, 400, score)) == _dump(before)  # the default


def test_a_sequential_run_is_a_prefix_of_the_fixed_one_with_the_same_classes_and_fewer_refits(clear):
    labels, refit, score, calls = _setup(clear, 3)
    fixed = bootstrap_stability(refit, labels, len(clear), 100, 7, 400, score, stopping="fixed")
    calls.clear()
    seq = bootstrap_stability(refit, labels, len(clear), 100, 7, 400, score, stopping="sequential")
    n = seq["resamples"]
    assert n in stopping_looks(100) and n < 100 and len(calls) == n, n  # clear-cut: it stops at a look
    assert seq["stopping"]["stopped_early"] and seq["stopping"]["looks"] == [20, 40, 60, 80]
    assert seq["ari"] == fixed["ari"][:n] and seq["common_silhouette"] == fixed["common_silhouette"][:n]
    for s, v in seq["segments"].items():
        assert v["jaccards"] == fixed["segments"][s]["jaccards"][:len(v["jaccards"])]
        assert v["class"] == fixed["segments"][s]["class"]
        lo, hi = seq["stopping"]["intervals"][s]
        assert stability_class(lo) == stability_class(hi) == v["class"]


def test_a_run_that_does_not_settle_goes_to_the_full_count_and_equals_the_fixed_one(blurred):
    labels, refit, score, _ = _setup(blurred, 4)
    fixed = bootstrap_stability(refit, labels, len(blurred), 100, 3, 300, score, stopping="fixed")
    seq = bootstrap_stability(refit, labels, len(blurred), 100, 3, 300, score, stopping="sequential")
    if seq["resamples"] == 100:
        assert not seq["stopping"]["stopped_early"]
        assert _dump({k: v for k, v in seq.items() if k != "stopping"}) == _dump(fixed)
    else:  # stopped: then only where every class was already the fixed run's
        assert all(v["class"] == fixed["segments"][s]["class"] for s, v in seq["segments"].items())
    means = [v["mean_jaccard"] for v in fixed["segments"].values()]
    assert any(0.45 < m < 0.95 for m in means), means  # the table is not clear-cut


def test_a_stopped_run_taken_on_to_the_full_count_is_the_fixed_run(clear):
    labels, refit, score, calls = _setup(clear, 3)
    fixed = bootstrap_stability(refit, labels, len(clear), 100, 7, 400, score, stopping="fixed")
    seq = json.loads(_dump(bootstrap_stability(refit, labels, len(clear), 100, 7, 400, score, stopping="sequential")))
    calls.clear()
    done = bootstrap_stability(refit, labels, len(clear), 100, 7, 400, score, resume=seq)
    assert len(calls) == 100 - seq["resamples"]  # the earlier refits are not done again
    assert done["stopping"]["confirmed_from"] == seq["resamples"] and not done["stopping"]["stopped_early"]
    assert _dump({k: v for k, v in done.items() if k != "stopping"}) == _dump(fixed)


def test_the_rule_settles_clear_jaccards():
    rng = np.random.default_rng(0)
    jac = {0: list(np.clip(rng.normal(0.96, 0.02, 20), 0, 1)), 1: list(np.clip(rng.normal(0.92, 0.02, 20), 0, 1)),
           2: list(np.clip(rng.normal(0.45, 0.04, 20), 0, 1))}
    ok, iv = settled(jac, looks=4)
    assert ok
    assert [stability_class(iv[s][0]) for s in (0, 1, 2)] == ["highly stable", "highly stable", "unstable"]
    assert settled({0: [1.0] * 20, 1: [1.0] * 20}, looks=4)[0]  # no spread: a point, settled


def test_the_rule_does_not_settle_near_a_threshold():
    rng = np.random.default_rng(1)
    near = list(np.clip(rng.normal(0.76, 0.05, 40), 0, 1))  # valid by its mean, the interval holds 0.75
    ok, iv = settled({0: [0.97] * 19 + [0.95], 1: near}, looks=4)
    assert not ok and iv[1][0] < 0.75 < iv[1][1]
    assert not settled({0: [0.9]}, looks=4)[0]  # one Jaccard: no interval
    assert not settled({0: [], 1: [0.9] * 20}, looks=4)[0]  # a segment never seen


def test_the_rule_divides_the_error_rate_over_segments_and_looks():
    """Jaccards whose 95% interval clears 0.75 but whose Bonferroni one (0.05 / (3 x 4)) does not."""
    from scipy.stats import t

    v = np.array([0.71, 0.89] * 10)
    sd, n = v.std(ddof=1), len(v)
    assert v.mean() - t.ppf(0.975, n - 1) * sd / np.sqrt(n) > 0.75  # one look, one segment: settled
    assert settled({0: list(v)}, looks=1)[0]
    assert v.mean() - t.ppf(1 - 0.05 / 24, n - 1) * sd / np.sqrt(n) < 0.75
    assert not settled({0: list(v), 1: [0.95] * 20, 2: [0.95] * 20}, looks=4)[0]


def _cell(method, k, lo_hi, stopped=True, sil=0.3, se=0.01, jac=None):
    iv = {str(s): list(x) for s, x in enumerate(lo_hi)}
    return {"method": method, "value": k, "k": k, "stopped_early": stopped, "intervals": iv,
            "jaccards": jac or {s: (x[0] + x[1]) / 2 for s, x in enumerate(lo_hi)}, "silhouette": sil, "se": se}


def _choice(table, qualifying, k, candidates=None, best=None):
    return {"k": k, "fallback_k": None if k is not None else table[0]["k"], "qualifying": qualifying,
            "candidates": candidates or ([k] if k is not None else []), "table": table,
            "picks": {"silhouette_qualifying": best if best is not None else k}}


def _row(k, min_jac, sil=0.3, se=0.01):
    return {"k": k, "min_jaccard": min_jac, "silhouette": sil, "silhouette_se": se}


def test_close_calls_are_cells_stopped_early_near_the_bar():
    cells = [_cell("kmeans", 2, [(0.90, 0.97), (0.88, 0.95)], sil=0.40),
             _cell("kmeans", 3, [(0.76, 0.84), (0.90, 0.97), (0.88, 0.99)], sil=0.20),  # 0.76: near 0.75
             _cell("kmeans", 4, [(0.40, 0.55)] * 4, sil=0.10)]
    choices = {"kmeans": _choice([_row(2, 0.9, 0.40), _row(3, 0.8, 0.20), _row(4, 0.47, 0.10)], [2, 3], 2)}
    assert close_calls(cells, choices) == [("kmeans", 3)]
    cells[1]["stopped_early"] = False  # it ran every refit: nothing to confirm
    assert close_calls(cells, choices) == []


def test_close_calls_include_the_cells_a_choice_compares_by_their_bootstrap_numbers():
    # k 2 and 3 both qualify and their silhouettes are within one SE: the mean ARI decides between them
    cells = [_cell("kmeans", 2, [(0.90, 0.97)] * 2, sil=0.30), _cell("kmeans", 3, [(0.88, 0.99)] * 3, sil=0.295),
             _cell("kmeans", 4, [(0.40, 0.55)] * 4, sil=0.10)]
    table = [_row(2, 0.9, 0.30), _row(3, 0.88, 0.295), _row(4, 0.47, 0.10)]
    choices = {"kmeans": _choice(table, [2, 3], 2, candidates=[2, 3], best=2)}
    assert close_calls(cells, choices) == [("kmeans", 2), ("kmeans", 3)]
    # a second method: each method's chosen cell is compared by the fair verdict (mean ARI, replicates)
    cells2 = [_cell("kprototypes", 5, [(0.86, 0.99)] * 5, sil=0.05)]
    choices["kprototypes"] = _choice([_row(5, 0.9, 0.05)], [5], 5)
    assert ("kprototypes", 5) in close_calls(cells + cells2, choices)
    # alone with one clear-cut qualifying k, far from the bar and from every rival: no close call
    solo = {"kmeans": _choice([_row(2, 0.9, 0.30), _row(4, 0.47, 0.10)], [2], 2)}
    assert close_calls([cells[0], cells[2]], solo) == []
    # ... unless the recommendation for use compares it: two cells pass the bar, within one SE of each other
    rival = _cell("kmeans", 5, [(0.86, 0.99)] * 5, stopped=False, sil=0.295)
    assert close_calls([cells[0], cells[2], rival], solo) == [("kmeans", 2)]


def test_a_chosen_cell_is_confirmed_only_where_the_fair_verdict_could_read_it_otherwise():
    rng = np.random.default_rng(5)
    table = [_row(2, 0.9, 0.30)]
    choices = {"kmeans": _choice(table, [2], 2), "llm": _choice([_row(3, 0.9, 0.2)], [3], 3)}

    def cell(method, k, ari, sd, refits, reps, stopped=True):
        return {**_cell(method, k, [(0.95, 0.99)] * k, stopped=stopped), "ari_mean": ari, "ari_sd": sd,
                "refits": refits, "replicates": list(reps)}

    # far apart on stability (0.97 against 0.80 from 20 refits) and the replicates ahead in half the pairs:
    # 80 more refits cannot change which is more stable, who is as stable, or whether a space is won
    mixed = rng.normal(size=20)
    a = cell("kmeans", 2, 0.97, 0.02, 20, mixed)
    b = cell("llm", 3, 0.80, 0.05, 100, -mixed, stopped=False)
    assert verdict_reads(a, [b]) is False and close_calls([a, b], choices) == []
    # mean ARIs within the intervals' widths of each other: which is the more stable could change
    near = cell("kmeans", 2, 0.82, 0.05, 20, mixed)
    assert verdict_reads(near, [b]) and close_calls([near, b], choices) == [("kmeans", 2)]
    # ... or of the 0.02 tolerance that decides who counts as stable
    edge = cell("kmeans", 2, 0.823, 0.005, 20, mixed)
    assert verdict_reads(edge, [b])
    # ahead in 19 of 20 paired replicates: whether it is ahead in 95% of them could change
    ahead = cell("kmeans", 2, 0.97, 0.02, 20, np.r_[np.ones(19), -1.0])
    assert verdict_reads(ahead, [cell("llm", 3, 0.80, 0.05, 100, np.zeros(20), stopped=False)])
    # without the numbers (older cells) it is confirmed as before
    assert verdict_reads(_cell("kmeans", 2, [(0.9, 0.99)] * 2), [b])


def test_a_winner_is_possible_only_where_what_no_refit_changes_names_one_method():
    # the highest silhouettes in the neutral spaces at each method's k, and at each equal k
    one = {"leaders": {"common": "kmeans", "gower": "kmeans"}, "wins": {"common at k = 3": "kmeans",
                                                                          "stability": "llm"}}
    assert winner_possible(one)  # stability (mean ARI) may still change: a winner is possible
    two = {"leaders": {"common": "kprototypes", "gower": "llm"}, "wins": {}}
    assert not winner_possible(two)
    at_k = {"leaders": {"common": "kmeans"}, "wins": {"gower at k = 2": "llm"}}
    assert not winner_possible(at_k)
    assert winner_possible(None)  # no verdict: nothing is ruled out


def _three_groups(rows: int):
    """Customers in three clear-cut groups (ages, balances and jobs far apart)."""
    import pandas as pd

    rng = np.random.default_rng(11)
    g = rng.choice(3, size=rows, p=[0.5, 0.3, 0.2])
    jobs = np.array(["admin.", "retired", "technician"])
    return pd.DataFrame({"age": np.round(np.array([30, 50, 70])[g] + rng.normal(0, 2, rows)),
                         "balance": np.round(np.array([100, 5000, 20000])[g] + rng.normal(0, 200, rows)),
                         "job": np.where(rng.random(rows) < 0.95, jobs[g], jobs[(g + 1) % 3]),
                         "housing": np.where(g == 1, "yes", "no")})


@pytest.mark.slow
def test_a_run_records_its_refits_and_confirms_close_calls_to_what_the_full_count_gives(tmp_path, monkeypatch):
    """Two runs of the same small table, 40 refits at most (one look, at 20): sequential, every cell that
    stopped early made a close call, against fixed. The cells' metrics record the refits; each confirmed
    cell's stability is the fixed run's, so the choices, the verdict and the recommendation are the fixed
    run's too; the pages show the refits and the rule; a rerun reuses the comparison byte for byte."""
    from segreport.stages import compare

    from .conftest import make_workdir, run_inline

    real = compare.close_calls
    monkeypatch.setattr(compare, "close_calls", lambda cells, choices, **kw: sorted(
        set(real(cells, choices, **kw)) | {(c["method"], c["value"]) for c in cells if c["stopped_early"]}))
    runs = {}
    for mode in ("sequential", "fixed"):
        wd = make_workdir(tmp_path / mode)
        (wd / "params.yml").write_text(f"stability_resamples: 40\nstability_stopping: {mode}\nnull_references: 0\n"
                                       "projection_sample: 100\nexplain_rows: 200\nlgbm_folds: 2\nshap_sample: 50\n")
        _three_groups(300).to_csv(wd / "t.csv", index=False)
        run_inline(wd, "run", "-q", "--pages-only", "--data", "t.csv", "--methods", "kmeans", "--k", "2-3",
                   "--workers", "1")
        runs[mode] = wd / "results" / "t"
    seq, fixed = runs["sequential"], runs["fixed"]
    refits = {k: json.loads((seq / "cells" / "kmeans" / f"k{k}" / "metrics.json").read_text())["refits"]
              for k in (2, 3)}
    assert set(refits.values()) <= {20, 40} and 20 in refits.values(), refits  # some cell stopped at the look
    comp = json.loads((seq / "comparison" / "comparison.json").read_text())
    want = json.loads((fixed / "comparison" / "comparison.json").read_text())
    assert comp["refits"]["confirmed"] == sum(1 for v in refits.values() if v == 20)
    assert comp["refits"]["used"] == comp["refits"]["of"] == 80 and want["refits"]["rule"] is None
    for k, n in refits.items():
        if n == 20:
            held = json.loads((seq / "comparison" / f"confirm-kmeans-k{k}.json").read_text())["value"]
            full = json.loads((fixed / "cells" / "kmeans" / f"k{k}" / "stability.json").read_text())
            assert {a: b for a, b in held.items() if a != "stopping"} == full
    for part in ("choices", "verdict", "recommended"):
        assert comp[part] == want[part], part
    import pandas as pd

    table, full = (pd.read_parquet(r / "comparison" / "metrics.parquet") for r in (seq, fixed))
    assert table.refits.tolist() == full.refits.tolist() == [40, 40]  # the confirmed numbers, as the fixed run's
    assert table.stability_ari.tolist() == full.stability_ari.tolist()
    assert {a: b for a, b in comp["recommendation"].items()} == want["recommendation"]
    page = (tmp_path / "sequential" / "report" / "_pages" / "kmeans.qmd").read_text()
    assert "| refits |" in page and "refitting stops once every segment" in page and "of 300 customers" in page
    appendix = (tmp_path / "sequential" / "report" / "_pages" / "appendix.qmd").read_text()
    assert "80 of 80 refits in all" in appendix
    before = (seq / "comparison" / "comparison.json").read_bytes()
    run_inline(tmp_path / "sequential", "run", "-q", "--pages-only", "--data", "t.csv", "--methods", "kmeans",
               "--k", "2-3", "--workers", "1")
    assert (seq / "comparison" / "comparison.json").read_bytes() == before
