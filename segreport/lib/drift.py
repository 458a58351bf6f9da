"""Drift of a column between the fitting table (the baseline) and a snapshot, by the column's type.

The measures are those of data-drift monitoring tools (Evidently's defaults for a reference of more
than 1,000 rows), computed with scipy:

- numbers: the Wasserstein distance divided by the baseline's standard deviation ("normed
  Wasserstein": how far, in standard deviations, the values had to move), with a two-sample
  Kolmogorov-Smirnov test; missing cells are left out here and measured on their own;
- categories and yes/no: the Jensen-Shannon distance (base 2, between 0 and 1) of the level shares,
  levels the baseline never had pooled in one bucket, with a chi-square test;
- the share of missing cells (its change, in points, with a two-proportion test) and the share of
  rows with levels the baseline never had, each a drift of its own;
- the population stability index (PSI) over the baseline's deciles or levels, kept as a number.

A column (or a segment's column) is **drifted** when its effect size reaches the threshold *and*
the test rejects "same distribution" at `alpha`: on a large snapshot every test rejects, and the
effect size decides; on a small one the effect size is noisy, and the test keeps chance from
flagging it. The thresholds live in params.yml's `tracking:` block (config.TrackingParams).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

NUMERIC, CATEGORICAL = "numeric", "categorical"
UNSEEN_BUCKET = "(not in the fitting table)"
PSI_FLOOR = 1e-4  # a share of 0 counts as 0.01 % in the PSI (log of 0 otherwise)
MEASURES = {NUMERIC: "normed Wasserstein", CATEGORICAL: "Jensen-Shannon distance"}
TESTS = {NUMERIC: "Kolmogorov-Smirnov", CATEGORICAL: "chi-square"}


def psi(expected, actual) -> float:
    """Population stability index of two count (or share) vectors over the same bins."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    e = np.maximum(e / max(e.sum(), 1.0), PSI_FLOOR)
    a = np.maximum(a / max(a.sum(), 1.0), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def decile_edges(values: np.ndarray) -> np.ndarray:
    """The baseline's decile cut points (ties merged): bins (-inf, e1], (e1, e2], ..., (e_last, inf)."""
    return np.unique(np.quantile(np.asarray(values, dtype=float), np.linspace(0.1, 0.9, 9)))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, np.asarray(values, dtype=float), side="left"),
                       minlength=len(edges) + 1)


def normed_wasserstein(base: np.ndarray, new: np.ndarray, scale: float) -> float:
    """Wasserstein distance of two samples of numbers, in units of `scale` (the baseline's SD)."""
    from scipy.stats import wasserstein_distance

    if len(base) == 0 or len(new) == 0:
        return float("nan")
    return float(wasserstein_distance(base, new) / scale) if scale > 0 else 0.0


def ks_p(base: np.ndarray, new: np.ndarray) -> float:
    from scipy.stats import ks_2samp

    if len(base) == 0 or len(new) == 0:
        return float("nan")
    return float(ks_2samp(base, new).pvalue)


def level_counts(base: pd.Series, new: pd.Series) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Counts over the baseline's levels plus one bucket of levels it never had; those levels' counts."""
    b, n = base.astype(str), new.astype(str)
    levels = sorted(b.unique())
    cb, cn = b.value_counts(), n.value_counts()
    unseen = cn[~cn.index.isin(levels)].sort_values(ascending=False)
    e = np.array([cb.get(lv, 0) for lv in levels] + [0], dtype=float)
    a = np.array([cn.get(lv, 0) for lv in levels] + [int(unseen.sum())], dtype=float)
    return levels + [UNSEEN_BUCKET], e, a, {str(lv): int(c) for lv, c in unseen.items()}


def js_distance(e: np.ndarray, a: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2: 0 = same shares, 1 = no level in common) of two count vectors."""
    from scipy.spatial.distance import jensenshannon

    if e.sum() == 0 or a.sum() == 0:
        return float("nan")
    return float(jensenshannon(e / e.sum(), a / a.sum(), base=2))


def chi2_p(e: np.ndarray, a: np.ndarray) -> float:
    """p-value of the chi-square test that both count vectors come from one distribution."""
    from scipy.stats import chi2_contingency

    table = np.vstack([e, a])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or e.sum() == 0 or a.sum() == 0:
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def share_change_p(n0: int, x0: int, n1: int, x1: int) -> float:
    """Two-sided two-proportion z-test p-value (x0 of n0 against x1 of n1)."""
    from scipy.stats import norm

    if n0 == 0 or n1 == 0:
        return 1.0
    pooled = (x0 + x1) / (n0 + n1)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    if se == 0:
        return 1.0
    return float(2 * norm.sf(abs((x1 / n1 - x0 / n0) / se)))


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def measure(base: pd.Series, new: pd.Series, kind: str, base_missing: float = 0.0,
            new_missing: np.ndarray | None = None, scale: float | None = None) -> dict:
    """Effect size, test and side facts of one column: `base` the baseline's values (as fitted),
    `new` the snapshot's normalised values, `new_missing` which of them were missing in the file
    (numbers: left out of the distance), `base_missing` the baseline's missing share, `scale` the SD
    the Wasserstein distance is divided by (default: `base`'s)."""
    n1 = len(new)
    miss = np.zeros(n1, bool) if new_missing is None else np.asarray(new_missing, bool)
    out = {"kind": kind, "rows": int(n1), "baseline_rows": int(len(base)),
           "baseline_missing_share": float(base_missing), "missing_share": float(miss.mean()) if n1 else 0.0}
    out["missing_p"] = share_change_p(len(base), int(round(base_missing * len(base))), n1, int(miss.sum()))
    if kind == NUMERIC:
        b = base.to_numpy(float)
        v = new.to_numpy(float)[~miss]
        sd = float(np.std(b, ddof=1)) if scale is None and len(b) > 1 else float(scale or 0.0)
        edges = decile_edges(b) if len(b) else np.array([])
        out.update(effect=normed_wasserstein(b, v, sd), p_value=ks_p(b, v),
                   psi=psi(bin_counts(b, edges), bin_counts(v, edges)) if len(v) and len(b) else None,
                   baseline_median=_num(np.median(b)) if len(b) else None,
                   median=_num(np.median(v)) if len(v) else None, baseline_sd=sd,
                   unseen_share=0.0, unseen_rows=0, unseen_levels={})
    else:
        names, e, a, unseen = level_counts(base, new)
        se, sa = e / max(e.sum(), 1), a / max(a.sum(), 1)
        top = int(np.argmax(np.abs(sa - se)))
        out.update(effect=js_distance(e, a), p_value=chi2_p(e, a), psi=psi(e, a),
                   top_level=names[top], top_baseline_share=float(se[top]), top_share=float(sa[top]),
                   unseen_rows=int(a[-1]), unseen_share=float(a[-1] / max(a.sum(), 1)),
                   unseen_levels=dict(list(unseen.items())[:10]))
    out["effect"] = _num(out["effect"])
    out["p_value"] = _num(out["p_value"])
    return out


def decide(m: dict, th) -> dict:
    """Which drifts a measured column shows, under thresholds `th` (config.TrackingParams):
    distribution (effect >= threshold of its type and test p < alpha), missing (share changed by at
    least missing_threshold, p < alpha), unseen (at least unseen_threshold of the rows)."""
    limit = th.numeric_threshold if m["kind"] == NUMERIC else th.categorical_threshold
    dist = (m["effect"] is not None and m["effect"] >= limit
            and m["p_value"] is not None and m["p_value"] < th.alpha)
    missing = (abs(m["missing_share"] - m["baseline_missing_share"]) >= th.missing_threshold
               and m["missing_p"] < th.alpha)
    unseen = m.get("unseen_share", 0.0) >= th.unseen_threshold
    kinds = [name for name, hit in (("distribution", dist), ("missing", missing), ("unseen", unseen)) if hit]
    return {"threshold": limit, "drifted": bool(kinds), "drift_kinds": kinds,
            "ratio": (m["effect"] / limit) if m["effect"] is not None else None}


def measure_table(base: pd.DataFrame, new: pd.DataFrame, kinds: dict[str, str], base_missing: dict[str, float],
                  new_missing: dict[str, np.ndarray]) -> list[dict]:
    """`measure` for every column of the baseline."""
    return [{"column": c, **measure(base[c], new[c], kinds[c], base_missing.get(c, 0.0), new_missing.get(c))}
            for c in base.columns]


def by_segment(base: pd.DataFrame, base_seg: np.ndarray, new: pd.DataFrame, new_seg: np.ndarray, k: int,
               kinds: dict[str, str], base_missing: dict[str, float], new_missing: dict[str, np.ndarray],
               min_rows: int) -> list[dict]:
    """The same measures within each segment that has at least `min_rows` customers in both tables
    (numbers scaled by the whole baseline's SD, so that cells read on one scale; the missing share set
    against the whole baseline's, the fitted table keeping no record of which cells were missing);
    smaller segments get a row with `measured` False."""
    sd = {c: float(np.std(base[c].to_numpy(float), ddof=1)) for c in base.columns if kinds[c] == NUMERIC}
    rows = []
    for s in range(k):
        bm, nm = base_seg == s, new_seg == s
        nb, nn = int(bm.sum()), int(nm.sum())
        if nb < min_rows or nn < min_rows:
            rows += [{"segment": s, "column": c, "measured": False, "rows": nn, "baseline_rows": nb}
                     for c in base.columns]
            continue
        for c in base.columns:
            miss = new_missing.get(c)
            m = measure(base[c][bm], new[c][nm], kinds[c], base_missing.get(c, 0.0), None if miss is None else miss[nm],
                        sd.get(c))
            rows.append({"segment": s, "column": c, "measured": True, **m})
    return rows


# --------------------------------------------------------------------------- do the segments change?


def matched_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Share of rows in matched segments after pairing a's segments with b's one to one (Hungarian
    method on the contingency table), and the pairs."""
    from scipy.optimize import linear_sum_assignment

    la, ia = np.unique(a, return_inverse=True)
    lb, ib = np.unique(b, return_inverse=True)
    table = np.zeros((len(la), len(lb)), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)
    r, c = linear_sum_assignment(-table)
    return float(table[r, c].sum() / max(len(a), 1)), [(int(la[i]), int(lb[j])) for i, j in zip(r, c)]


def agreement(saved: np.ndarray, refit: np.ndarray) -> dict:
    """ARI between a saved assignment and a refit's, the matched share, and who would change segment."""
    from sklearn.metrics import adjusted_rand_score

    matched, pairs = matched_agreement(saved, refit)
    return {"ari": float(adjusted_rand_score(saved, refit)), "matched_share": matched,
            "changed_share": 1.0 - matched, "pairs": pairs, "rows": int(len(saved))}
