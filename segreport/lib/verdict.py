"""The verdict: one k rule for every method, a null reference, neutral spaces, one recommendation.

Pure functions over numbers the grid cells already hold (bootstrap Jaccards, ARI, replicate
silhouettes) plus callables that rerun a method's pipeline, so the stages can wire them in:

- `choose_k`: every segment valid under clusterboot (Hennig 2007: mean Jaccard >= 0.75), then the
  best silhouette within one bootstrap standard error (and the gap statistic's 1-SE rule where it is
  given, Tibshirani, Walther & Hastie 2001), then the more stable, then the smaller k; an optimum
  at the edge of the grid is flagged, never silently recommended.
- `gap_term` / `gap_statistic`: the gap statistic with the principal-axes uniform reference.
- `null_reference` / `structure_call`: the same pipeline on column-shuffled tables (independence)
  and on a principal-axes uniform reference (correlations kept, no clusters): is the observed
  silhouette beyond what a table without segments gives?
- `gower_matrix` / `gower_silhouette`: silhouette under Gower's (1971) distance, a space that is no
  method's own.
- `fair_verdict`: a winner only where one method wins in every neutral space and on stability.
- `recommendation`: one (method, k) per run with its structure call and the reasons.

The `reasons` strings hold computed facts only; the report's other words live in the templates.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .evaluate import STABILITY_CLASSES, stability_class
from .data import sample_rows

VALID_JACCARD = 0.75  # Hennig: a segment with mean bootstrap Jaccard >= 0.75 is valid
CHOOSE_K_RULE = (
    "every segment's mean bootstrap Jaccard >= 0.75 (valid in Hennig's clusterboot); among those k, "
    "silhouette within one bootstrap standard error of the best (and, where computed, gap statistic "
    "within one s of its maximum); then the more stable (mean ARI within 0.02 counts as equal); then "
    "the smaller k"
)


# --------------------------------------------------------------------------------------------
# choice of k


def _segment_jaccards(entry: dict) -> dict:
    """{segment: mean Jaccard} from bootstrap_stability's `segments` or a plain {segment: value}."""
    segs = entry.get("segments") or entry.get("jaccard") or {}
    out = {}
    for s, v in segs.items():
        out[int(s)] = v.get("mean_jaccard") if isinstance(v, dict) else v
    return out


def _silhouette_se(entry: dict) -> float | None:
    """The silhouette's bootstrap standard error: given, or the SD of the replicate silhouettes."""
    if entry.get("silhouette_se") is not None:
        return float(entry["silhouette_se"])
    rep = entry.get("silhouette_replicates")
    if rep is None and isinstance(entry.get("replicate_score"), dict):
        return entry["replicate_score"].get("sd")
    if rep is not None:
        v = np.asarray([x for x in rep if x is not None], dtype=float)
        return float(np.std(v, ddof=1)) if len(v) > 1 else None
    return None


def side(value: float, threshold: float, digits: int = 2) -> str:
    """`value` printed with enough digits to show on which side of `threshold` it lies (0.747, not 0.75,
    against 0.75): compared unrounded, printed so the reader sees the same."""
    for d in range(digits, 8):
        txt = f"{value:.{d}f}"
        r = float(txt)
        if (r < threshold) == (value < threshold) and (r != threshold or value == threshold):
            return txt
    return repr(value)


def _fmt_k(ks) -> str:
    ks = list(ks)
    return ", ".join(str(k) for k in ks) if ks else "none"


def choose_k(per_k: dict, min_jaccard: float = VALID_JACCARD, grid: list[int] | None = None,
             use_gap: bool = True, stability_tolerance: float = 0.02) -> dict:
    """The same k rule for every method (see CHOOSE_K_RULE), with the pick of each criterion.

    per_k: {k: entry}; an entry holds
      segments      bootstrap_stability's `segments` (or {segment: mean Jaccard})
      ari_mean, ari_sd   bootstrap ARI to the full fit
      silhouette    the silhouette the method is judged by (same space for every k)
      silhouette_se its bootstrap standard error, or silhouette_replicates (values) or
                    replicate_score (bootstrap_stability's summary; its sd is the SE)
      gap, gap_s    optional: the gap statistic and its s_k (see gap_term)
    grid: the k values tried (default: the keys of per_k); the edges are its min and max.

    Returns k (None when no k qualifies), qualifying, failing {k: [{segment, mean_jaccard, class}]},
    candidates (qualifying k that pass the silhouette/gap 1-SE rules), picks {silhouette (best
    over every k), silhouette_qualifying, gap (Tibshirani's smallest k with Gap(k) >= Gap(k+1) -
    s_k+1), stability (highest mean ARI)}, fallback_k (the most stable partition when none
    qualifies: highest lowest-segment Jaccard), edge (the recommended k is an edge of the grid),
    edge_reason, edge_criteria, rule, reasons, table (per k: min_jaccard, ari_mean, silhouette, se,
    gap, gap_s, qualifies).
    """
    ks = sorted(int(k) for k in per_k)
    entries = {int(k): v for k, v in per_k.items()}
    grid = sorted(grid) if grid else ks
    lo_edge, hi_edge = grid[0], grid[-1]
    reasons: list[str] = []
    table, failing, qualifying = [], {}, []
    for k in ks:
        e = entries[k]
        jac = _segment_jaccards(e)
        vals = [v for v in jac.values() if v is not None]
        bad = [{"segment": s, "mean_jaccard": v, "class": stability_class(v)}
               for s, v in sorted(jac.items()) if v is None or v < min_jaccard]
        ok = bool(vals) and not bad and e.get("silhouette") is not None
        if ok:
            qualifying.append(k)
        elif bad:
            failing[k] = bad
        table.append({"k": k, "min_jaccard": min(vals) if vals else None, "ari_mean": e.get("ari_mean"),
                      "refits": e.get("refits"),
                      "silhouette": e.get("silhouette"), "silhouette_se": _silhouette_se(e),
                      "gap": e.get("gap"), "gap_s": e.get("gap_s"), "qualifies": ok})
    rows = {r["k"]: r for r in table}
    sil = {k: rows[k]["silhouette"] for k in ks if rows[k]["silhouette"] is not None}
    ari = {k: rows[k]["ari_mean"] for k in ks if rows[k]["ari_mean"] is not None}
    picks = {"silhouette": max(sil, key=lambda k: (sil[k], -k)) if sil else None,
             "silhouette_qualifying": None, "gap": None,
             "stability": max(ari, key=lambda k: (ari[k], -k)) if ari else None}
    gap_ok = use_gap and all(entries[k].get("gap") is not None and entries[k].get("gap_s") is not None for k in ks)
    if gap_ok:
        picks["gap"] = _gap_pick({k: float(entries[k]["gap"]) for k in ks},
                                 {k: float(entries[k]["gap_s"]) for k in ks})
    for k, bad in failing.items():
        worst = ", ".join(f"segment {b['segment'] + 1}: {side(b['mean_jaccard'], min_jaccard)}"
                          if b["mean_jaccard"] is not None
                          else f"segment {b['segment'] + 1}: never seen" for b in bad)
        reasons.append(f"k = {k} fails the stability bar (mean Jaccard < {min_jaccard}): {worst}")
    out = {"k": None, "qualifying": qualifying, "failing": failing, "candidates": [], "picks": picks,
           "fallback_k": None, "edge": False, "edge_reason": None, "edge_criteria": [], "rule": CHOOSE_K_RULE,
           "reasons": reasons, "table": table, "grid": grid}
    # criteria whose optimum sits on the upper edge of the grid: it may improve past it
    for name in ("silhouette", "gap"):
        if picks[name] is not None and picks[name] == hi_edge and len(grid) > 1:
            out["edge_criteria"].append(name)
            reasons.append(f"{name} is best at k = {hi_edge}, the largest k tried: it may improve further "
                           f"(widen the grid)")
    if not qualifying:
        fb = _most_stable_k(rows, ari)
        out["fallback_k"] = fb
        if fb is not None:
            reasons.append(f"no k has every segment at a mean Jaccard of {min_jaccard:.2f} or more; the most "
                           f"stable partition is k = {fb} (lowest segment Jaccard {rows[fb]['min_jaccard']:.2f}, "
                           f"mean ARI {rows[fb]['ari_mean']:.2f})")
        return out
    best = max(qualifying, key=lambda k: (sil[k], -k))
    picks["silhouette_qualifying"] = best
    se = rows[best]["silhouette_se"]
    if se is None:
        se = 0.0
        reasons.append("no bootstrap standard error of the silhouette: only the best k itself is within it")
    cand = [k for k in qualifying if sil[k] >= sil[best] - se]
    reasons.append(f"qualifying k: {_fmt_k(qualifying)}; best silhouette among them {sil[best]:.3f} at k = {best} "
                   f"(bootstrap SE {se:.3f}); within one SE: {_fmt_k(cand)}")
    if gap_ok:
        gmax = max(ks, key=lambda k: (entries[k]["gap"], -k))
        gap_set = [k for k in ks if entries[k]["gap"] >= entries[gmax]["gap"] - entries[gmax]["gap_s"]]
        both = [k for k in cand if k in gap_set]
        if both:
            if both != cand:
                reasons.append(f"gap statistic within one s of its maximum (k = {gmax}) at k = {_fmt_k(gap_set)}: "
                               f"keeps {_fmt_k(both)}")
            cand = both
        else:
            reasons.append(f"the gap statistic (within one s of its maximum at k = {_fmt_k(gap_set)}) agrees "
                           f"with no silhouette candidate: the silhouette rule decides")
    out["candidates"] = cand
    top = max(ari.get(k, -np.inf) for k in cand)
    stable = [k for k in cand if ari.get(k, -np.inf) >= top - stability_tolerance]
    k = min(stable)
    out["k"] = k
    if len(cand) > 1:
        reasons.append(f"among {_fmt_k(cand)}, k = {k} is " + (
            "the most stable" if len(stable) == 1 else
            f"the smallest of the most stable ({_fmt_k(stable)}, mean ARI within {stability_tolerance})")
            + f" (mean ARI {ari.get(k, float('nan')):.3f})")
    reasons.append(f"k = {k}: silhouette {sil[k]:.3f}, mean ARI {ari.get(k, float('nan')):.3f}, lowest segment "
                   f"Jaccard {rows[k]['min_jaccard']:.2f}")
    if k == hi_edge and len(grid) > 1:
        out["edge"] = True
        out["edge_reason"] = f"k = {k} is the largest k tried: widen the grid"
    elif k == lo_edge and lo_edge > 2 and len(grid) > 1:
        out["edge"] = True
        out["edge_reason"] = f"k = {k} is the smallest k tried: widen the grid"
    if out["edge"]:
        reasons.append(out["edge_reason"])
    return out


def _most_stable_k(rows: dict, ari: dict) -> int | None:
    ks = [k for k, r in rows.items() if r["min_jaccard"] is not None]
    if not ks:
        return min(ari, key=lambda k: (-ari[k], k)) if ari else None
    return min(ks, key=lambda k: (-rows[k]["min_jaccard"], -(rows[k]["ari_mean"] or 0.0), k))


def _gap_pick(gap: dict, s: dict) -> int:
    """Tibshirani et al. (2001): the smallest k with Gap(k) >= Gap(k') - s_k', k' the next k on the
    grid; the largest k when none does."""
    ks = sorted(gap)
    for a, b in zip(ks, ks[1:]):
        if gap[a] >= gap[b] - s[b]:
            return a
    return ks[-1]


# --------------------------------------------------------------------------------------------
# gap statistic (Tibshirani, Walther & Hastie 2001)


def pca_reference(X: np.ndarray, seed: int | np.random.Generator) -> np.ndarray:
    """A uniform reference over the box aligned with X's principal axes (Tibshirani et al. 2001, (b)).

    Centre X, rotate it onto its principal axes (X V from the SVD), draw uniformly over each
    axis' range, rotate back and un-centre. The reference keeps the data's orientation and extent
    (its correlations) but has no clusters: a single blob is not mistaken for structure.
    """
    rng = np.random.default_rng(seed)
    X = np.asarray(X, dtype=np.float64)
    mu = X.mean(axis=0)
    Xc = X - mu
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    P = Xc @ vt.T
    Z = rng.uniform(P.min(axis=0), P.max(axis=0), size=P.shape)
    return Z @ vt + mu


def within_dispersion(X: np.ndarray, labels: np.ndarray) -> float:
    """W_k: the pooled within-segment sum of squared distances to the segment mean
    (= sum over segments of D_r / 2 n_r in Tibshirani et al.'s notation)."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    w = 0.0
    for s in np.unique(labels):
        m = X[labels == s]
        w += float(((m - m.mean(axis=0)) ** 2).sum())
    return w


def gap_term(X: np.ndarray, k: int, fit, references: int = 10, seed: int = 0, sample: int = 2000,
             labels: np.ndarray | None = None) -> dict:
    """Gap(k) and s_k for one k, so each grid cell can compute its own term.

    fit(X, k, seed) -> labels clusters a matrix with the method (the same settings as the cell).
    The `sample` rows and the `references` principal-axes references are drawn from `seed` only,
    so every k sees the same ones: the terms of different cells make one gap curve. `labels`
    (of the sampled rows) skips refitting the observed sample.
    Gap(k) = mean_b log W*_kb - log W_k; s_k = sd_b(log W*_kb) * sqrt(1 + 1/B).
    Returns k, rows, references, log_w, log_w_ref (per reference), gap, gap_s.
    """
    X = np.asarray(X, dtype=np.float64)
    rows = sample_rows(len(X), sample, seed)
    Xs = X[rows]
    lab = fit(Xs, k, seed) if labels is None else np.asarray(labels)
    log_w = math.log(max(within_dispersion(Xs, lab), 1e-300))
    refs = []
    for b in range(references):
        R = pca_reference(Xs, np.random.default_rng([seed, b]))
        refs.append(math.log(max(within_dispersion(R, fit(R, k, seed)), 1e-300)))
    refs_a = np.asarray(refs)
    sd = float(refs_a.std(ddof=0))
    return {"k": int(k), "rows": int(len(rows)), "references": int(references), "log_w": log_w,
            "log_w_ref": [float(x) for x in refs], "gap": float(refs_a.mean() - log_w),
            "gap_s": sd * math.sqrt(1 + 1 / references)}


def gap_statistic(X: np.ndarray, fit, ks: list[int], references: int = 10, seed: int = 0,
                  sample: int = 2000, labels_by_k: dict | None = None) -> dict:
    """The gap statistic over a grid of k (Tibshirani et al. 2001) with the principal-axes reference.

    Returns gap {k}, gap_s {k}, terms {k: gap_term(...)} and k: the smallest k with
    Gap(k) >= Gap(k+1) - s_k+1 (k+1: the next k on the grid). On 2,000 rows with 10 references a
    K-means term costs about as much as 11 K-means fits of the sample.
    """
    terms = {int(k): gap_term(X, k, fit, references, seed, sample, (labels_by_k or {}).get(k)) for k in ks}
    gap = {k: t["gap"] for k, t in terms.items()}
    s = {k: t["gap_s"] for k, t in terms.items()}
    return {"gap": gap, "gap_s": s, "k": _gap_pick(gap, s), "terms": terms}


# --------------------------------------------------------------------------------------------
# null reference


def shuffle_columns(data, seed: int | np.random.Generator):
    """Each column permuted independently: the marginals kept, every association between columns
    (and so every segment) destroyed. A DataFrame stays a DataFrame (index reset)."""
    rng = np.random.default_rng(seed)
    if isinstance(data, pd.DataFrame):
        return pd.DataFrame({c: data[c].to_numpy()[rng.permutation(len(data))] for c in data.columns})
    X = np.asarray(data)
    return np.column_stack([X[rng.permutation(len(X)), j] for j in range(X.shape[1])])


def reference_frame(frame: pd.DataFrame, numeric: list[str], categorical: list[str],
                    seed: int | np.random.Generator) -> pd.DataFrame:
    """A correlation-preserving table without segments, in the original columns.

    The table is put in the common space (Yeo-Johnson power-transformed, standardised numerics +
    one-hot categories / sqrt 2), a principal-axes uniform reference is drawn there
    (`pca_reference`), and it is read back: numerics by the inverse power transform (clipped to the
    observed transformed range, integers kept integers), each category as the level with the
    largest indicator. Every method can then run its own pipeline on it (K-Prototypes, the LLM's
    row texts), where a matrix reference would fit only the Euclidean methods.
    """
    from sklearn.preprocessing import PowerTransformer

    parts = []
    pt = None
    if numeric:
        raw = frame[numeric].to_numpy(np.float64)
        pt = PowerTransformer(method="yeo-johnson", standardize=True).fit(raw)
        Z = pt.transform(raw)
        parts.append(Z)
    levels = {}
    for c in categorical:
        lv = sorted(frame[c].astype(str).unique().tolist())
        levels[c] = lv
        codes = pd.Categorical(frame[c].astype(str), categories=lv).codes
        parts.append(np.eye(len(lv))[codes] / np.sqrt(2))
    X = np.hstack(parts)
    R = pca_reference(X, seed)
    out = {}
    j = 0
    if numeric:
        Zr = np.clip(R[:, :len(numeric)], Z.min(axis=0), Z.max(axis=0))
        back = pt.inverse_transform(Zr)
        for i, c in enumerate(numeric):
            col = back[:, i]
            orig = frame[c].to_numpy(np.float64)
            col = np.clip(col, orig.min(), orig.max())
            if np.all(np.mod(orig, 1) == 0):
                col = np.round(col)
            out[c] = col
        j = len(numeric)
    for c in categorical:
        n_lv = len(levels[c])
        out[c] = np.asarray(levels[c], dtype=object)[R[:, j:j + n_lv].argmax(axis=1)]
        j += n_lv
    return pd.DataFrame(out)[[c for c in frame.columns if c in out]]


def _summary(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": None, "sd": None, "p95": None, "n": 0}
    same = bool(np.all(v == v[0]))  # identical values: a spread of exactly 0, not a rounding residue
    return {"mean": float(v[0]) if same else float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 and not same else 0.0,
            "p95": float(np.quantile(v, 0.95)), "n": int(len(v))}


def null_reference(fit_score, data, ks: list[int], reference: str = "shuffle", n_null: int = 5, seed: int = 0,
                   sample: int = 2000, numeric: list[str] | None = None, categorical: list[str] | None = None,
                   observed: bool = True) -> dict:
    """The method's pipeline rerun on tables without segments: a null distribution per k.

    fit_score(data, k, seed) -> {"silhouette": float, "ari": float} reruns the whole method on
    `data` (encoding, outlier step, fit, silhouette in its judged space, bootstrap ARI stability)
    exactly as the cell does, on whatever rows it is given.
    reference: "shuffle" (each column permuted independently: no association at all) or "pca"
    (a principal-axes uniform reference: correlations kept, no clusters; `reference_frame` for a
    DataFrame, which needs `numeric` and `categorical`, `pca_reference` for a matrix).
    One seeded sample of `sample` rows is drawn first; null b uses seed (seed, b). With `observed`,
    the same fit_score also runs on the unshuffled sample, so observed and null are measured on
    the same number of rows (silhouette and ARI both depend on it).

    Returns reference, n_null, rows, and ks {k: {silhouette [per null], ari [per null],
    silhouette_summary {mean, sd, p95, n}, ari_summary {...}, observed {silhouette, ari}}}.
    """
    if reference not in ("shuffle", "pca"):
        raise ValueError(f"reference must be 'shuffle' or 'pca', got {reference!r}")
    n = len(data)
    rows = sample_rows(n, sample, seed)
    base = data.iloc[rows].reset_index(drop=True) if isinstance(data, pd.DataFrame) else np.asarray(data)[rows]
    nulls = []
    for b in range(n_null):
        rng = np.random.default_rng([seed, b])
        if reference == "shuffle":
            nulls.append(shuffle_columns(base, rng))
        elif isinstance(base, pd.DataFrame):
            if numeric is None or categorical is None:
                raise ValueError("a 'pca' reference for a table needs its numeric and categorical columns")
            nulls.append(reference_frame(base, numeric, categorical, rng))
        else:
            nulls.append(pca_reference(base, rng))
    out = {"reference": reference, "n_null": n_null, "rows": int(len(rows)), "ks": {}}
    for k in ks:
        res = [fit_score(d, k, seed) for d in nulls]
        entry = {"silhouette": [r.get("silhouette") for r in res], "ari": [r.get("ari") for r in res]}
        entry["silhouette_summary"] = _summary(entry["silhouette"])
        entry["ari_summary"] = _summary(entry["ari"])
        if observed:
            entry["observed"] = fit_score(base, k, seed)
        out["ks"][int(k)] = entry
    return out


def _as_null(null) -> dict:
    if null is None:
        return None
    if isinstance(null, dict):
        return {"silhouette": list(null.get("silhouette") or []), "ari": list(null.get("ari") or [])}
    return {"silhouette": list(null), "ari": []}


def _spread_txt(s: dict) -> str:
    """mean ± sd, or the mean and a spread of 0 said in words (never a floor in its place)."""
    if s["sd"] <= 0:
        return f"{s['mean']:.3f} (spread 0: every table gave it)"
    return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] >= 0.0005 else f"{s['mean']:.3f} ± {s['sd']:.1g}"


def structure_call(observed, null_shuffled, null_pca=None, z_min: float = 2.0, clear_effect: float = 0.10,
                   min_effect: float = 0.02) -> dict:
    """Is the observed silhouette beyond what tables without segments give? "none" | "weak" | "clear".

    observed: {"silhouette", "ari"} (or the silhouette alone) at one k; null_shuffled / null_pca:
    null_reference(...)["ks"][k] (or lists of null silhouettes), measured with the same pipeline on
    the same number of rows. The measure is the silhouette:
      effect = observed - mean of the shuffled null (silhouette units);
      z = effect / sd of the null; not computed (None, and not printed) when the nulls' spread is 0;
      "none"  when observed <= the null's 95th percentile, or effect < min_effect (a stated minimum,
              so that near-identical nulls do not turn a trivial gain into structure), or z < z_min;
      "clear" when effect >= clear_effect and observed also beats the correlation-preserving
              reference (above its 95th percentile, z >= z_min there): a single correlated blob
              is not called structure;
      "weak"  otherwise (beyond the independence null, but small or not beyond the PCA reference).
    The stability (mean ARI) against the null is reported, not used: a split of one elongated
    blob is as reproducible as a real one.
    Returns structure, effect, z, measure, thresholds, shuffled {mean, sd, p95, n}, pca {...} and
    effect_pca, z_pca where given, ari {observed, null_mean}, reasons.
    """
    obs = observed.get("silhouette") if isinstance(observed, dict) else observed
    obs_ari = observed.get("ari") if isinstance(observed, dict) else None
    sh, pc = _as_null(null_shuffled), _as_null(null_pca)
    s = _summary(sh["silhouette"])
    out = {"measure": "silhouette", "thresholds": {"z_min": z_min, "clear_effect": clear_effect,
                                                    "min_effect": min_effect, "null_quantile": 0.95},
           "observed": obs, "shuffled": s, "pca": None, "effect": None, "z": None, "effect_pca": None,
           "z_pca": None, "reasons": []}
    reasons = out["reasons"]
    if obs is None or s["n"] == 0:
        out["structure"] = "none"
        reasons.append("no observed silhouette or no null to compare it with")
        return out
    effect = obs - s["mean"]
    z = effect / s["sd"] if s["sd"] > 0 else None
    out.update(effect=float(effect), z=None if z is None else float(z))
    a = _summary(sh["ari"])
    out["ari"] = {"observed": obs_ari, "null_mean": a["mean"]}
    null_txt = (f"silhouette {obs:.3f} vs {_spread_txt(s)} on {s['n']} column-shuffled tables "
                f"(95th percentile {s['p95']:.3f}; " + (f"z = {z:.1f})" if z is not None else
                                                       "z not computed: the tables' spread is 0)"))
    beats_shuffled = obs > s["p95"] and effect >= min_effect and (z is None or z >= z_min)
    out["beats_shuffled"] = bool(beats_shuffled)
    out["beats_pca"] = False
    if not beats_shuffled:
        out["structure"] = "none"
        why = "" if obs <= s["p95"] or (z is not None and z < z_min) else \
            f"; the effect {effect:.3f} is below the minimum of {min_effect:.2f}"
        reasons.append(f"no structure beyond chance: {null_txt}{why}")
    else:
        out["structure"] = "weak"
        reasons.append(f"beyond the independence null: {null_txt}")
        beats_pca = False
        if pc is not None and pc["silhouette"]:
            p = _summary(pc["silhouette"])
            out["pca"] = p
            e2 = obs - p["mean"]
            z2 = e2 / p["sd"] if p["sd"] > 0 else None
            out.update(effect_pca=float(e2), z_pca=None if z2 is None else float(z2))
            beats_pca = obs > p["p95"] and e2 >= min_effect and (z2 is None or z2 >= z_min)
            out["beats_pca"] = bool(beats_pca)
            reasons.append(f"{'beyond' if beats_pca else 'not beyond'} the correlation-preserving reference: "
                           f"silhouette {_spread_txt(p)} there (95th percentile {p['p95']:.3f}; "
                           + (f"z = {z2:.1f})" if z2 is not None else "z not computed: the tables' spread is 0)"))
        else:
            reasons.append("no correlation-preserving reference computed: at most weak")
        if effect >= clear_effect and beats_pca:
            out["structure"] = "clear"
        elif effect < clear_effect:
            reasons.append(f"effect {effect:.3f} silhouette above the null is below {clear_effect:.2f}: weak")
    if obs_ari is not None and a["mean"] is not None:
        reasons.append(f"stability: mean ARI {obs_ari:.2f} vs {a['mean']:.2f} on the shuffled tables")
    return out


# --------------------------------------------------------------------------------------------
# Gower distance (Gower 1971)
# numpy rather than the `gower` package: its last release is from 2022, it adds a dependency for
# twenty lines, and a silhouette needs only a sample-by-sample matrix.


def gower_matrix(frame: pd.DataFrame, numeric: list[str], categorical: list[str],
                 ranges: dict[str, float] | None = None, other: pd.DataFrame | None = None) -> np.ndarray:
    """Gower's (1971) dissimilarity between the rows of `frame` (and `other`, default frame itself).

    d(i, j) = sum_c w_ijc d_ijc / sum_c w_ijc with d = |x_i - x_j| / range_c for a numeric column
    (range over `ranges`, default the column's range in `frame`; a constant column gives 0) and
    d = 1 if the categories differ else 0; w_ijc = 0 where either value is missing.
    """
    other = frame if other is None else other
    n, m = len(frame), len(other)
    num = np.zeros((n, m))
    den = np.zeros((n, m))
    for c in numeric:
        a = frame[c].to_numpy(np.float64)
        b = other[c].to_numpy(np.float64)
        r = (ranges or {}).get(c)
        if r is None:
            r = float(np.nanmax(a) - np.nanmin(a))
        d = np.abs(a[:, None] - b[None, :])
        ok = ~np.isnan(d)
        if r > 0:
            num += np.where(ok, d / r, 0.0)
        den += ok
    for c in categorical:
        codes, uniq = pd.factorize(pd.concat([frame[c], other[c]], ignore_index=True).astype(object))
        a, b = codes[:n], codes[n:]
        ok = (a[:, None] >= 0) & (b[None, :] >= 0)
        num += ((a[:, None] != b[None, :]) & ok)
        den += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def gower_silhouette(frame: pd.DataFrame, numeric: list[str], categorical: list[str], labels: np.ndarray,
                     sample: int = 2000, seed: int = 0) -> float | None:
    """Silhouette under Gower distance on a seeded sample of rows stratified by segment.

    Numeric ranges come from the whole table, so the sample is measured on the population's scale.
    None when the sample holds fewer than two segments.
    """
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    rows = sample_rows(len(labels), sample, seed, strata=labels)
    lab = labels[rows]
    if len(np.unique(lab)) < 2:
        return None
    ranges = {c: float(frame[c].max() - frame[c].min()) for c in numeric}
    D = gower_matrix(frame.iloc[rows].reset_index(drop=True), numeric, categorical, ranges)
    np.fill_diagonal(D, 0.0)
    return float(silhouette_score(D, lab, metric="precomputed"))


# --------------------------------------------------------------------------------------------
# fair comparison and the recommendation


def fair_verdict(scores: dict, spaces: list[str] | None = None, simplicity: list[str] | None = None,
                 stability_tolerance: float = 0.02, sure: float = 0.95) -> dict:
    """A winner only where one method wins in every neutral space and on stability.

    scores: {method: {
        k            its recommended k
        silhouette   {space: value at k}, e.g. common, gower (and own where comparable)
        equal_k      {k: {space: value}} optional: the same spaces at shared k values
        ari_mean, ari_sd   bootstrap stability at k
        replicates   {space: [per resample]} optional: silhouettes of the bootstrap refits, paired
                     across methods (same resampled rows, same seed)}}
    spaces: the neutral spaces to judge in (default: those every method has at its k).
    simplicity: methods from simplest to most complex (default: the order of `scores`).

    A space is won by the method with the highest silhouette; where paired replicates exist, it
    must also be ahead of each other method in >= `sure` of the paired resamples. "How sure"
    (how_sure) counts those resamples: it measures bootstrap refit noise within one space, not
    which space is right. Without a winner, the recommendation goes to the most stable method
    (mean ARI within `stability_tolerance` counts as equal), then the simpler one.

    Returns winner (method or None), recommend (the winner, else by_stability), by_stability (the
    most stable method, then the simplest, then the smaller k), reasons, wins {criterion: method or
    None}, how_sure {space: {other: {ahead, of}}}, table (rows: method, k, measure, space, value,
    best).
    """
    methods = list(scores)
    if not methods:
        return {"winner": None, "recommend": None, "reasons": ["no method finished"], "wins": {},
                "how_sure": {}, "table": []}
    simplicity = list(simplicity or methods)
    rank = {m: (simplicity.index(m) if m in simplicity else len(simplicity)) for m in methods}
    if spaces is None:
        spaces = [s for s in scores[methods[0]].get("silhouette", {})
                  if all(scores[m].get("silhouette", {}).get(s) is not None for m in methods)]
    reasons, table, wins, how_sure, leaders = [], [], {}, {}, {}
    for sp in spaces:
        vals = {m: scores[m]["silhouette"].get(sp) for m in methods}
        best = max(methods, key=lambda m: (vals[m], -rank[m]))
        leaders[sp] = best
        won = best
        reps = {m: (scores[m].get("replicates") or {}).get(sp) for m in methods}
        if len(methods) > 1 and all(reps[m] for m in methods):
            how_sure[sp] = {}
            for o in methods:
                if o == best:
                    continue
                pairs = [(a, b) for a, b in zip(reps[best], reps[o]) if a is not None and b is not None]
                ahead = sum(1 for a, b in pairs if a > b)
                how_sure[sp][o] = {"leader": best, "ahead": ahead, "of": len(pairs)}
                if not pairs or ahead < sure * len(pairs):
                    won = None
        wins[f"{sp} at recommended k"] = won if len(methods) > 1 else best
        for m in methods:
            table.append({"method": m, "k": scores[m]["k"], "measure": "silhouette", "space": sp,
                          "value": vals[m], "best": m == best})
        others = ", ".join(f"{m} {vals[m]:.3f}" for m in methods if m != best)
        reasons.append(f"{sp} space, each at its own k: {best} highest ({vals[best]:.3f}"
                       + (f" vs {others})" if others else ")")
                       + ("" if won or len(methods) < 2 else "; not ahead in enough paired resamples "
                          f"(bootstrap refit noise, {sure:.0%} needed)"))
    shared = set.intersection(*[set(int(k) for k in (scores[m].get("equal_k") or {})) for m in methods]) \
        if all(scores[m].get("equal_k") for m in methods) else set()
    for k in sorted(shared):
        for sp in spaces:
            vals = {m: scores[m]["equal_k"].get(k, scores[m]["equal_k"].get(str(k), {})).get(sp) for m in methods}
            if any(v is None for v in vals.values()):
                continue
            best = max(methods, key=lambda m: (vals[m], -rank[m]))
            wins[f"{sp} at k = {k}"] = best
            for m in methods:
                table.append({"method": m, "k": k, "measure": "silhouette", "space": sp, "value": vals[m],
                              "best": m == best})
    ari = {m: scores[m].get("ari_mean") for m in methods}
    if all(v is not None for v in ari.values()):
        most = max(methods, key=lambda m: (ari[m], -rank[m]))
        wins["stability"] = most
        for m in methods:
            table.append({"method": m, "k": scores[m]["k"], "measure": "stability (mean ARI)", "space": None,
                          "value": ari[m], "sd": scores[m].get("ari_sd"), "best": m == most})
        reasons.append("stability (mean bootstrap ARI): " + ", ".join(
            f"{m} {ari[m]:.3f}" for m in sorted(methods, key=lambda m: -ari[m])))
    else:
        wins["stability"] = None
    equal_k_wins = {c: w for c, w in wins.items() if " at k = " in c}
    disagree = sorted({w for w in equal_k_wins.values()})
    if len(disagree) > 1:
        reasons.append("at equal k the best method changes: " + "; ".join(f"{c}: {w}" for c, w in equal_k_wins.items()))
    winners = set(wins.values())
    winner = None
    if len(methods) > 1 and spaces and len(winners) == 1 and None not in winners:
        winner = winners.pop()
        reasons.append(f"{winner} is best in every neutral space ({', '.join(spaces)}), at equal k and on stability")
    else:
        reasons.append("no method is better on this data: the neutral spaces, equal k and stability do not "
                       "all name the same method")
    pool = methods
    if all(v is not None for v in ari.values()):
        top = max(ari.values())
        pool = [m for m in methods if ari[m] >= top - stability_tolerance]
    by_stability = min(pool, key=lambda m: (rank[m], scores[m]["k"]))
    rec = winner or by_stability
    if not winner and len(methods) > 1:
        reasons.append(f"recommended by stability, then simplicity: {rec}"
                       + (f" (mean ARI {ari[rec]:.3f}" + (f"; as stable within {stability_tolerance}: "
                          f"{', '.join(pool)})" if len(pool) > 1 else ")") if ari.get(rec) is not None else ""))
    return {"winner": winner, "recommend": rec, "by_stability": by_stability, "reasons": reasons, "wins": wins,
            "how_sure": how_sure, "table": table, "spaces": spaces, "leaders": leaders}


def winner_possible(verdict: dict | None) -> bool:
    """Whether fair_verdict could name a winner with other bootstrap numbers: only where what no refit
    changes (the highest silhouette in each neutral space at each method's k, and at each equal k) names
    one method. Where it names two, the paired replicates cannot make a winner, and nothing they say
    changes the recommendation."""
    if not verdict:
        return True
    fixed = set((verdict.get("leaders") or {}).values())
    fixed |= {w for c, w in (verdict.get("wins") or {}).items() if " at k = " in c and w is not None}
    return len(fixed) <= 1


CLOSE_MARGIN = 0.02  # of mean Jaccard: an interval this near the bar is a close call
CLOSE_ALPHA = 0.01  # the error rate of the intervals verdict_reads puts on a chosen cell's bootstrap numbers


def _ari_half(c: dict, alpha: float) -> float:
    """Half the width of a cell's mean-ARI Student-t interval: 0 for a cell that ran every refit."""
    from scipy.stats import t

    n = int(c.get("refits") or 0)
    if not c.get("stopped_early"):
        return 0.0
    if n < 2:
        return float("inf")
    return float(t.ppf(1 - alpha / 2, n - 1) * float(c.get("ari_sd") or 0.0) / np.sqrt(n))


def _share_holds(ahead: int, n: int, level: float, alpha: float) -> bool:
    """Whether the Clopper-Pearson interval (1 - alpha) of a share `ahead` of `n` holds `level`."""
    from scipy.stats import binomtest

    if n == 0:
        return True
    ci = binomtest(ahead, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    return ci.low <= level <= ci.high


def verdict_reads(cell: dict, rivals: list, tolerance: float = 0.02, sure: float = 0.95,
                  alpha: float = CLOSE_ALPHA, replicates: bool = True) -> bool:
    """Whether fair_verdict's reading of a method's chosen cell, stopped early, could change once its refits
    are taken on to the full count: its mean ARI (ari_mean, ari_sd over `refits`) within the width of the
    two cells' intervals (level 1 - alpha) of another chosen cell's, which decides the more stable, or of
    the edge of `tolerance`, which decides who is as stable; or, for the paired replicate silhouettes
    (`replicates`, per refit), the Clopper-Pearson interval of the share one of the two is ahead in holds
    `sure` (whether a neutral space is won; `replicates` False: not read, no winner being possible). A rival
    missing (None) or a cell without these numbers: it could (the cell is confirmed, as before this test)."""
    if cell.get("ari_mean") is None or cell.get("refits") is None:
        return True
    for o in rivals:
        if o is None or o.get("ari_mean") is None:
            return True
        width = _ari_half(cell, alpha) + _ari_half(o, alpha)
        d = abs(float(cell["ari_mean"]) - float(o["ari_mean"]))
        if d <= width or abs(d - tolerance) <= width:
            return True
        mine, theirs = cell.get("replicates"), o.get("replicates")
        if replicates and mine and theirs:
            pairs = [(a, b) for a, b in zip(mine, theirs) if a is not None and b is not None]
            ahead, behind = sum(a > b for a, b in pairs), sum(b > a for a, b in pairs)
            if _share_holds(ahead, len(pairs), sure, alpha) or _share_holds(behind, len(pairs), sure, alpha):
                return True
    return False


def close_calls(cells: list[dict], choices: dict, min_jaccard: float = VALID_JACCARD,
                margin: float = CLOSE_MARGIN, winner_possible: bool = True) -> list[tuple[str, int]]:
    """The cells stopped early (sequential refits) whose bootstrap numbers the recommendation reads
    where they come near a threshold or a rival: to be refitted to the full count before it is made.

    cells: one per finished cell: method, value, k, stopped_early, intervals {segment: [low, high]}
    (its mean Jaccards' intervals at the look where it stopped), silhouette (common space), se (its
    bootstrap SE); choices: {method: choose_k(...)} on those cells' current numbers.

    A cell stopped early is a close call when
    - some segment's interval comes within `margin` of the bar `min_jaccard` (whether every segment
      is valid decides both choose_k and the recommendation for use);
    - choose_k compares it by a bootstrap number: where two or more k qualify, the k within the
      silhouette window when there are several (their mean ARI breaks the tie), and the k whose
      silhouette lies within one SE of the window's edge with the best one (its SE sets that edge);
      where none qualifies, the k whose lowest segment Jaccard lies within `margin` plus its interval's
      width of the highest, with the highest (the most stable partition is the fallback);
    - it is a method's chosen k, more than one method ran, and the fair verdict's reading of it could
      change with the full count (`verdict_reads`): its mean ARI's interval reaches another chosen
      cell's (which is the most stable) or the edge of the stability tolerance, or the interval of the
      share of paired replicate silhouettes one is ahead in holds `sure` (read only where
      `winner_possible`: see the function of that name);
    - the recommendation for use reads its SE: the cells with every segment valid whose silhouette
      lies within one SE of the tie window's edge, with the most distinct (its SE sets that edge).
    Returns sorted (method, value) pairs.
    """
    early = {(c["method"], int(c["value"])): c for c in cells if c.get("stopped_early")}
    if not early:
        return []
    out = set()
    by_k = {(c["method"], int(c["k"])): c for c in cells}

    def weakest_width(c):  # the width of the interval of the segment with the lowest mean Jaccard
        jac = {str(s): v for s, v in (c.get("jaccards") or {}).items() if v is not None}
        iv = (c.get("intervals") or {}).get(min(jac, key=jac.get)) if jac else None
        return (iv[1] - iv[0]) if iv else 1.0

    for key, c in early.items():
        for iv in (c.get("intervals") or {}).values():
            if iv is None or (iv[0] - margin < min_jaccard < iv[1] + margin):
                out.add(key)
    chosen_k = {m: (ch.get("k") if ch.get("k") is not None else ch.get("fallback_k")) for m, ch in choices.items()}
    for method, ch in choices.items():
        rows = {int(r["k"]): r for r in ch.get("table") or []}
        qualifying = ch.get("qualifying") or []
        read = set()
        if len(qualifying) > 1:
            if len(ch.get("candidates") or []) > 1:  # their mean ARI breaks the tie
                read |= set(ch["candidates"])
            best = (ch.get("picks") or {}).get("silhouette_qualifying")
            if best in rows:  # another k near the window's edge: the best's SE decides whether it is inside
                se = rows[best].get("silhouette_se") or 0.0
                edge = rows[best]["silhouette"] - se
                near = {k for k in qualifying if k != best and abs(rows[k]["silhouette"] - edge) <= se}
                if near:
                    read |= near | {best}
        elif not qualifying and rows:
            lows = {k: r["min_jaccard"] for k, r in rows.items() if r.get("min_jaccard") is not None}
            if lows:
                top = max(lows, key=lambda k: (lows[k], -k))
                near = {k for k, v in lows.items() if k != top and by_k.get((method, k)) is not None
                        and v >= lows[top] - margin - weakest_width(by_k[(method, k)])}
                if near:
                    read |= near | {top}
        chosen = chosen_k[method]
        if chosen is not None and len(choices) > 1:
            mine = by_k.get((method, int(chosen)))
            rivals = [by_k.get((m, int(k))) for m, k in chosen_k.items() if m != method and k is not None]
            if mine is None or verdict_reads(mine, rivals, replicates=winner_possible):
                read.add(chosen)
        for k in read:
            c = by_k.get((method, int(k)))
            if c is not None and (c["method"], int(c["value"])) in early:
                out.add((c["method"], int(c["value"])))
    pool = [c for c in cells if c.get("jaccards") and all(v is not None and v >= min_jaccard
                                                           for v in c["jaccards"].values())
            and c.get("silhouette") is not None]
    if len(pool) > 1:
        top = max(pool, key=lambda c: c["silhouette"])
        se = top.get("se") or 0.0
        edge = top["silhouette"] - se
        near = [c for c in pool if c is not top and abs(c["silhouette"] - edge) <= se]
        for c in ([top] + near) if near else []:
            if (c["method"], int(c["value"])) in early:
                out.add((c["method"], int(c["value"])))
    return sorted(out)


def recommendation(choices: dict, verdict: dict, structure: dict) -> dict:
    """One recommendation per run: which method, which k, how much structure, and why.

    choices: {method: choose_k(...)}; verdict: fair_verdict(...) on the methods at their chosen
    k; structure: {method: structure_call(...)} at that k (or one structure_call for all).
    The method is the verdict's winner, else its recommendation by stability and simplicity; when
    the structure is "none" the most stable partition is still named, labelled as such. When that
    method has no k whose every segment is valid, its most stable k is named, labelled as such.
    Returns method, k, structure, label ("recommended" | "most stable partition, no structure
    beyond chance" | "most stable partition, not every segment valid"), edge, reasons.
    """
    method = verdict.get("winner") or verdict.get("recommend")
    st_all = structure if "structure" not in structure else {m: structure for m in choices}
    reasons = []
    if method is None:
        return {"method": None, "k": None, "structure": None, "label": None, "edge": False,
                "reasons": ["no method finished"]}
    st = st_all.get(method) or {}
    call = st.get("structure")
    if call == "none" and verdict.get("winner"):
        # a win among partitions of noise means nothing: fall back to the most stable, simplest
        method = verdict.get("by_stability") or method
        st = st_all.get(method) or {}
        call = st.get("structure")
    ch = choices[method]
    k = ch.get("k")
    label = "recommended"
    if k is None:
        k = ch.get("fallback_k")
        label = "most stable partition, not every segment valid"
    if call == "none":
        label = "most stable partition, no structure beyond chance"
    reasons.append(f"{method} at k = {k}" + (f" ({label})" if label != "recommended" else ""))
    reasons += verdict.get("reasons", [])  # which method, and why
    reasons += st.get("reasons", [])  # how much structure, against which nulls
    reasons += ch.get("reasons", [])  # which k, and why
    return {"method": method, "k": k, "structure": call, "label": label, "edge": bool(ch.get("edge")),
            "edge_reason": ch.get("edge_reason"), "reasons": reasons}


__all__ = ["choose_k", "gap_term", "gap_statistic", "pca_reference", "within_dispersion", "shuffle_columns",
           "reference_frame", "null_reference", "structure_call", "gower_matrix", "gower_silhouette",
           "fair_verdict", "recommendation", "close_calls", "verdict_reads", "winner_possible", "STABILITY_CLASSES"]
