"""The recommendation for use (issue #24): which (method, k) a marketer should use, and the options beside it.

- `rule_equivalent`: the commonsense baseline, the best rule of at most two customer columns (a depth-2
  decision tree on the original columns, read as a filter) and its agreement (ARI) with the segments;
  at ARI >= 0.9 a segmentation is a *commonsense split*: a filter does the same.
- `outcome_halves` / `outcome_spread`: how far apart the segments' outcome rates are, measured on one
  seeded half of the customers (with a bootstrap interval) and reported on the other, so that the lift
  shown is not flattered by the choice.
- `structure_kind`: natural / reproducible / constructive (Dolnicar, Grün & Leisch 2018, ch. 7).
- `recommend`: the rule (RECOMMEND_RULE): stability and segment size are bars, not scores; among the
  candidates, the outcome's separation (or the segments' distinctness) decides, ties to the simpler
  method (each method's `simplicity`), then the smaller k.

Only the comparison runs this module (it is not among the grid cells' modules): changing it recomputes
the comparison, never a cell.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .data import sample_rows
from .verdict import VALID_JACCARD, side

# --------------------------------------------------------------------------------------------
# commonsense baseline: the best rule of at most two customer columns

COMMONSENSE_ARI = 0.9  # a rule of <= 2 columns this close to the segments makes them a commonsense split
MIN_SEGMENT_SHARE = 0.05  # every segment of a recommendable segmentation holds at least this share
RULE_SAMPLE = 20_000  # the tree is fitted on at most this many seeded rows, and scored on every row
SIMPLICITY_DEFAULT = 99


def _rule_matrix(frame: pd.DataFrame, numeric: list[str], categorical: list[str]):
    """The original columns as a tree reads them: numerics as they are (missing: the median), each
    category as one indicator per level. Returns the matrix and, per feature, (column, level or None)."""
    parts, feats = [], []
    for c in numeric:
        v = pd.to_numeric(frame[c], errors="coerce").astype(float)
        parts.append(v.fillna(v.median() if v.notna().any() else 0.0).to_numpy())
        feats.append((c, None))
    for c in categorical:
        s = frame[c].astype(str)
        for lv in sorted(s.unique().tolist()):
            parts.append((s == lv).to_numpy(np.float64))
            feats.append((c, lv))
    X = np.column_stack(parts) if parts else np.zeros((len(frame), 0))
    return X, feats


def _condition(feat, threshold: float, left: bool, levels: dict, integer: dict) -> str:
    col, lv = feat
    if lv is None:
        if integer.get(col):
            cut = math.floor(threshold)
            return f"{col} <= {cut}" if left else f"{col} >= {cut + 1}"
        return f"{col} <= {threshold:.4g}" if left else f"{col} > {threshold:.4g}"
    if left:  # the indicator is 0: any other level
        others = [x for x in levels[col] if x != lv]
        return f"{col} = {others[0]}" if len(others) == 1 else f"{col} ≠ {lv}"
    return f"{col} = {lv}"


def _tighten(conds: list[str]) -> list[str]:
    """Two bounds on one number in one path keep the tighter ("age <= 53 and age <= 26": age <= 26)."""
    import re

    keep: dict[tuple, tuple] = {}
    out = []
    for c in conds:
        m = re.match(r"^(\S+) (<=|>=|>) (-?[\d.e+-]+)$", c)
        if not m:
            out.append(c)
            continue
        col, op, v = m.group(1), m.group(2), float(m.group(3))
        side_ = "upper" if op == "<=" else "lower"
        prev = keep.get((col, side_))
        if prev is None:
            keep[(col, side_)] = (v, c, len(out))
            out.append(c)
        elif (side_ == "upper" and v < prev[0]) or (side_ == "lower" and v > prev[0]):
            out[prev[2]] = c
            keep[(col, side_)] = (v, c, prev[2])
    return out


def rule_equivalent(frame: pd.DataFrame, numeric: list[str], categorical: list[str], labels: np.ndarray,
                    seed: int = 0, sample: int = RULE_SAMPLE, max_depth: int = 2) -> dict | None:
    """The best rule of at most `max_depth` customer columns: a depth-2 decision tree (scikit-learn's
    CART, Gini) on the original columns (categories as one indicator per level), read as a filter, and
    its agreement (ARI) with the segments.

    The tree is fitted on a seeded sample of `sample` rows and its agreement measured on every row.
    Leaves of a split that name the same segment are merged, so the rule is as short as the tree allows.
    Returns rule (one text: "S1: housing = no and loan = no; S2: everyone else"), segments {segment:
    text}, agreement (ARI of the tree's segments with the method's), columns (those the rule reads),
    rows (fitted on), or None when the table has no usable column or the labels one segment.
    """
    from sklearn.metrics import adjusted_rand_score
    from sklearn.tree import DecisionTreeClassifier

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    X, feats = _rule_matrix(frame, numeric, categorical)
    if X.shape[1] == 0:
        return None
    rows = sample_rows(len(labels), sample, seed)
    # a leaf holds at least 1% of the rows: a filter for a handful of customers is noise, not a rule
    tree = DecisionTreeClassifier(max_depth=max_depth, random_state=seed,
                                  min_samples_leaf=max(1, len(rows) // 100)).fit(X[rows], labels[rows])
    pred = tree.predict(X)
    agreement = float(adjusted_rand_score(labels, pred))
    t = tree.tree_
    classes = tree.classes_
    levels = {c: sorted(frame[c].astype(str).unique().tolist()) for c in categorical}
    integer = {c: bool(np.all(np.mod(pd.to_numeric(frame[c], errors="coerce").dropna(), 1) == 0)) for c in numeric}

    def walk(node, path):
        """[(segment, [conditions])] for the leaves under node, siblings naming one segment merged."""
        if t.children_left[node] == -1:
            return [(int(classes[int(np.argmax(t.value[node][0]))]), path)]
        f, thr = feats[t.feature[node]], float(t.threshold[node])
        left = walk(t.children_left[node], path + [_condition(f, thr, True, levels, integer)])
        right = walk(t.children_right[node], path + [_condition(f, thr, False, levels, integer)])
        if len(left) == 1 and len(right) == 1 and left[0][0] == right[0][0]:
            return [(left[0][0], path)]
        return left + right

    leaves = [(s, _tighten(conds)) for s, conds in walk(0, [])]
    by_seg: dict[int, list[list[str]]] = {}
    for s, conds in leaves:
        by_seg.setdefault(s, []).append(conds)
    # the segment reached by the most leaves is described as "everyone else"
    rest = max(by_seg, key=lambda s: (len(by_seg[s]), sum(len(c) for c in by_seg[s]), s)) if len(by_seg) > 1 else None
    texts = {}
    for s in sorted(by_seg):
        if s == rest:
            texts[s] = "everyone else"
        else:
            alts = [" and ".join(c) for c in by_seg[s]]
            texts[s] = " or ".join(f"({a})" if len(alts) > 1 and " and " in a else a for a in alts)
    missing = [int(s) for s in np.unique(labels) if int(s) not in texts]
    for s in missing:  # a segment no leaf of the tree names: the rule does not give it at all
        texts[s] = "no rule of two columns gives it"
    rule = "; ".join(f"S{s + 1}: {texts[s]}" for s in sorted(texts))
    used = sorted({c.split(" ")[0] for _, conds in leaves for c in conds})
    return {"rule": rule, "segments": {int(s): v for s, v in texts.items()}, "agreement": agreement,
            "columns": used, "rows": int(len(rows)), "depth": int(tree.get_depth()),
            "unreached": missing}


# --------------------------------------------------------------------------------------------
# the outcome: how well a segmentation separates it, chosen on one half and reported on the other


def outcome_halves(n: int, seed: int) -> np.ndarray:
    """A seeded split of the customers into two halves: True = the selection half."""
    rng = np.random.default_rng([seed, 24])
    sel = np.zeros(n, dtype=bool)
    sel[rng.permutation(n)[: n // 2]] = True
    return sel


def _rates(pos: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    segs = np.unique(labels)
    size = np.array([(labels == s).sum() for s in segs], dtype=float)
    hits = np.array([pos[labels == s].sum() for s in segs], dtype=float)
    return segs, size, hits


def outcome_spread(positive: np.ndarray, labels: np.ndarray, select: np.ndarray, seed: int = 0,
                   resamples: int = 400, level: float = 0.95) -> dict:
    """How far apart the segments' outcome rates are (spread = highest rate - lowest, in rate points),
    on the selection half with a bootstrap interval (customers resampled within each segment), and on
    the other half (report) where the chosen segmentation's rates are shown, unflattered by the choice.
    Returns spread (selection half), ci_low, ci_high, report {spread, population_rate, rows, rates
    [{segment, rate, size, lift}]}, rows."""
    pos = np.asarray(positive, dtype=float)
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 2024])
    segs, size, hits = _rates(pos[select], labels[select])
    ok = size > 0
    rate = np.where(ok, hits / np.maximum(size, 1), np.nan)
    spread = float(np.nanmax(rate) - np.nanmin(rate)) if ok.sum() > 1 else 0.0
    boot = rng.binomial(size[None, :].astype(int).repeat(resamples, 0), np.nan_to_num(rate)[None, :]) / \
        np.maximum(size, 1)[None, :]
    boot = boot[:, ok]
    bs = boot.max(axis=1) - boot.min(axis=1)
    a = (1 - level) / 2
    rep = ~select
    rsegs, rsize, rhits = _rates(pos[rep], labels[rep])
    base = float(pos[rep].mean()) if rep.any() else float("nan")
    rrate = rhits / np.maximum(rsize, 1)
    return {"spread": spread, "ci_low": float(np.quantile(bs, a)), "ci_high": float(np.quantile(bs, 1 - a)),
            "rows": int(select.sum()),
            "report": {"spread": float(rrate.max() - rrate.min()) if len(rrate) > 1 else 0.0,
                       "population_rate": base, "rows": int(rep.sum()),
                       "rates": [{"segment": int(s), "rate": float(r), "size": int(z),
                                  "lift": float(r / base) if base > 0 else None}
                                 for s, r, z in zip(rsegs, rrate, rsize)]}}


# --------------------------------------------------------------------------------------------
# structure in practitioners' words (Dolnicar, Grün & Leisch 2018, ch. 7)

STRUCTURE_WORDS = {
    "natural": "natural: the segments are beyond both tables without segments by the margin used for "
               "'clear', and every segment is reproduced under resampling",
    "reproducible": "reproducible: every segment is found again under resampling, but the data do not hold "
                    "natural segments; the segments are created, and chosen for their use",
    "constructive": "constructive: not every segment is found again under resampling; the segments are a "
                    "way to cut the customers, to be used with care",
}


def structure_kind(call: str | None, all_valid: bool) -> str:
    """natural (a "clear" structure call and every segment valid) | reproducible (every segment valid,
    not natural) | constructive (not every segment valid)."""
    if not all_valid:
        return "constructive"
    return "natural" if call == "clear" else "reproducible"


# --------------------------------------------------------------------------------------------
# the recommendation for use

RECOMMEND_RULE = (
    "candidates: every segment reproducible (mean bootstrap Jaccard >= 0.75, compared unrounded) and at "
    "least {share} of the customers, and not a commonsense split (a rule of at most two columns reproducing "
    "the segments at ARI >= 0.9) unless nothing else qualifies. Where the data hold natural segments, the "
    "method that recovers them best in the neutral spaces. Otherwise, with an outcome: the candidate whose "
    "segments separate it most (spread of the outcome's rate between segments, measured on a seeded half "
    "of the customers with a 95% bootstrap interval; a candidate within the best one's interval counts as "
    "tied), and the rates shown are measured on the other half; without an outcome: the most distinct "
    "segments on the customer columns (silhouette in the common space, within one bootstrap standard "
    "error of the best counts as tied). Ties go to the simpler method, then the smaller k. Stability is a "
    "bar, not a score that ranks."
)


def _bars(c: dict, min_jaccard: float, min_share: float) -> list[str]:
    """Why a cell is not a candidate ([] = it is one)."""
    why = []
    jac = c.get("jaccards") or {}
    if not jac or any(v is None for v in jac.values()):
        why.append("stability not measured")
    else:
        bad = {s: v for s, v in jac.items() if v < min_jaccard}
        if bad:
            s, v = min(bad.items(), key=lambda x: x[1])
            why.append(f"segment {int(s) + 1} not reproducible (mean Jaccard {side(v, min_jaccard)} < {min_jaccard})")
    sizes = c.get("sizes") or []
    if sizes and c.get("n"):
        share = min(sizes) / c["n"]
        if share < min_share:
            why.append(f"smallest segment {share:.1%} of the customers (< {min_share:.0%})")
    return why


def recommend(cells: list[dict], natural_pick: dict | None = None, min_jaccard: float = VALID_JACCARD,
              min_segment_share: float = MIN_SEGMENT_SHARE, commonsense_ari: float = COMMONSENSE_ARI,
              max_options: int = 5) -> dict:
    """The (method, k) to use, by RECOMMEND_RULE, and up to `max_options` options beside it.

    cells: one per finished (method, k): method, k, value, simplicity (rank: lower = simpler), n,
      sizes, jaccards {segment: mean Jaccard}, rule (rule_equivalent(...) or None), outcome
      (outcome_spread(...) or None), distinct {value, se} (silhouette in the common space and its
      bootstrap SE).
    natural_pick: {method, k} (or a list of them, best first) where the data hold natural segments (the
      method that recovers them best in the neutral spaces, chosen by the caller); the first that passes
      the bars is used.
    Returns method, k, value, basis ("natural" | "outcome" | "distinct" | "fallback"), commonsense
    (bool: the pick is a commonsense split), rule_equivalent ({rule, agreement} or None), candidates
    [(method, k)], excluded {"method/k": [why]}, options [cell summaries with a role], reasons, rule.
    """
    rule_text = RECOMMEND_RULE.format(share=f"{min_segment_share:.0%}")
    reasons: list[str] = []
    excluded, passing = {}, []
    for c in cells:
        why = _bars(c, min_jaccard, min_segment_share)
        c["commonsense"] = bool(c.get("rule") and c["rule"]["agreement"] >= commonsense_ari)
        if why:
            excluded[f"{c['method']}/{c['k']}"] = why
        else:
            passing.append(c)
    pool = [c for c in passing if not c["commonsense"]]
    split = [c for c in passing if c["commonsense"]]
    only_splits = not pool and bool(split)
    if only_splits:
        pool = split
        reasons.append("every segmentation that passes the bars is a commonsense split: the best of them is named, "
                       "with its rule")
    elif split:
        reasons.append("left out as commonsense splits (a rule of at most two columns reproduces them at ARI >= "
                       f"{commonsense_ari}): " + ", ".join(f"{c['method']} k = {c['k']} (ARI "
                                                             f"{c['rule']['agreement']:.3f})" for c in split))
    out = {"method": None, "k": None, "value": None, "basis": None, "commonsense": False, "rule_equivalent": None,
           "candidates": [[c["method"], c["k"]] for c in pool], "excluded": excluded, "options": [],
           "reasons": reasons, "rule": rule_text, "min_segment_share": min_segment_share,
           "commonsense_ari": commonsense_ari, "only_commonsense": only_splits}
    if not pool:
        reasons.append("no segmentation has every segment reproducible and at least "
                       f"{min_segment_share:.0%} of the customers")
        out["basis"] = "fallback"
        return out
    simple = lambda c: (c.get("simplicity", SIMPLICITY_DEFAULT), c["k"])  # noqa: E731
    has_outcome = all(c.get("outcome") for c in pool)
    pick, basis, score = None, None, None
    if natural_pick:  # natural segments are used as found, a filter that gives them or not (said below)
        order = natural_pick if isinstance(natural_pick, list) else [natural_pick]
        pick = next((c for want in order for c in passing if c["method"] == want["method"] and c["k"] == want["k"]),
                    None)
        if pick is not None:
            basis = "natural"
            reasons.append(f"natural segments: {pick['method']} at k = {pick['k']} recovers them best in the "
                           "neutral spaces")
    if pick is None and has_outcome:
        basis = "outcome"
        score = lambda c: c["outcome"]["spread"]  # noqa: E731
        top = max(pool, key=lambda c: (score(c), -c.get("simplicity", SIMPLICITY_DEFAULT), -c["k"]))
        tied = [c for c in pool if c["outcome"]["ci_high"] >= score(top)]
        pick = min(tied, key=simple)
        reasons.append(f"best outcome separation on the selection half: {top['method']} k = {top['k']}, spread "
                       f"{score(top):.1%} (95% interval {top['outcome']['ci_low']:.1%}–{top['outcome']['ci_high']:.1%})")
        if len(tied) > 1:
            reasons.append("within that separation's reach (its value inside their own interval): " + ", ".join(
                f"{c['method']} k = {c['k']} ({score(c):.1%})" for c in sorted(tied, key=simple))
                + f"; the simpler method, then the smaller k: {pick['method']} k = {pick['k']}")
        rep = pick["outcome"]["report"]
        reasons.append(f"{pick['method']} k = {pick['k']} on the other half ({rep['rows']:,} customers, not used to "
                       f"choose): spread {rep['spread']:.1%}")
    elif pick is None:
        basis = "distinct"
        score = lambda c: (c.get("distinct") or {}).get("value") if (c.get("distinct") or {}).get("value") is not None else -np.inf  # noqa: E731
        top = max(pool, key=lambda c: (score(c), -c.get("simplicity", SIMPLICITY_DEFAULT), -c["k"]))
        se = (top.get("distinct") or {}).get("se") or 0.0
        tied = [c for c in pool if score(c) >= score(top) - se]
        pick = min(tied, key=simple)
        reasons.append(f"most distinct segments (silhouette in the common space): {top['method']} k = {top['k']} "
                       f"({score(top):.3f}, bootstrap SE {se:.3f})")
        if len(tied) > 1:
            reasons.append("within one SE: " + ", ".join(f"{c['method']} k = {c['k']} ({score(c):.3f})"
                                                        for c in sorted(tied, key=simple))
                           + f"; the simpler method, then the smaller k: {pick['method']} k = {pick['k']}")
    out["why"] = list(reasons)
    out["outcome"] = pick.get("outcome")
    out.update(method=pick["method"], k=pick["k"], value=pick.get("value"), basis=basis,
               commonsense=pick["commonsense"],
               rule_equivalent=({"rule": pick["rule"]["rule"], "agreement": pick["rule"]["agreement"],
                                 "segments": pick["rule"]["segments"]} if pick.get("rule") else None))
    if pick["commonsense"]:
        reasons.append(f"{pick['method']} k = {pick['k']} is a commonsense split: {pick['rule']['rule']} "
                       f"(ARI {pick['rule']['agreement']:.3f})")
    # the options beside it: the commonsense split, the best at a larger k, then the next best
    rank = (lambda c: -c["outcome"]["spread"]) if basis == "outcome" or (basis == "natural" and has_outcome) else \
        (lambda c: -((c.get("distinct") or {}).get("value") or -np.inf))
    chosen = [(pick, "recommended")]
    seen = {(pick["method"], pick["k"])}

    def add(c, role):
        if c is not None and (c["method"], c["k"]) not in seen and len(chosen) < max_options:
            chosen.append((c, role))
            seen.add((c["method"], c["k"]))

    if split:  # the most useful of them, by the same measure as the candidates
        add(min(split, key=lambda c: (rank(c), simple(c))), "commonsense split")
    larger = [c for c in passing if c["k"] > pick["k"] and not c["commonsense"]]
    if larger:
        add(min(larger, key=lambda c: (rank(c), simple(c))), "best at a larger k")
    for c in sorted(passing, key=lambda c: (rank(c), simple(c))):
        add(c, "also reproducible")
    out["options"] = [_option(c, role, min_jaccard) for c, role in chosen]
    return out


def _option(c: dict, role: str, min_jaccard: float) -> dict:
    jac = c.get("jaccards") or {}
    o = c.get("outcome")
    return {"method": c["method"], "k": c["k"], "value": c.get("value"), "role": role, "sizes": c.get("sizes"),
            "min_share": (min(c["sizes"]) / c["n"]) if c.get("sizes") and c.get("n") else None,
            "weakest_jaccard": min(jac.values()) if jac and all(v is not None for v in jac.values()) else None,
            "commonsense": bool(c.get("commonsense")),
            "rule_equivalent": ({"rule": c["rule"]["rule"], "agreement": c["rule"]["agreement"],
                                 "unreached": c["rule"].get("unreached", [])} if c.get("rule") else None),
            "outcome": ({"spread": o["spread"], "ci_low": o["ci_low"], "ci_high": o["ci_high"],
                         "report_spread": o["report"]["spread"]} if o else None),
            "distinct": (c.get("distinct") or {}).get("value")}


__all__ = ["rule_equivalent", "outcome_halves", "outcome_spread", "structure_kind", "recommend",
            "RECOMMEND_RULE", "STRUCTURE_WORDS", "COMMONSENSE_ARI", "MIN_SEGMENT_SHARE"]
