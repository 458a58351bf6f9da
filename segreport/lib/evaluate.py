"""Validity metrics, agreement between segmentations, clusterboot stability (Hennig 2007), and the
silhouette-only choice of k (`recommend_k`, superseded by `verdict.choose_k`)."""

from __future__ import annotations

import numpy as np

from .data import sample_rows  # scikit-learn is imported by the functions that use it (a reused run needs none)

RECOMMEND_RULE = (
    "highest silhouette in the method's own space over the k grid; a k within 0.01 of the best "
    "and smaller is preferred (fewer segments are easier to act on)"
)


def validity(X: np.ndarray, labels: np.ndarray, silhouette_sample: int, seed: int,
             metric: str = "euclidean") -> dict:
    """Silhouette (exact up to `silhouette_sample` rows, else on a seeded sample), DB and CH."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    n = len(labels)
    if len(np.unique(labels)) < 2:
        return {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None,
                "silhouette_rows": 0, "rows": n}
    rows = sample_rows(n, silhouette_sample, seed, strata=labels)
    sil_labels = labels[rows]
    sil = float(silhouette_score(X[rows], sil_labels, metric=metric)) if len(np.unique(sil_labels)) > 1 else None
    db, ch = dispersion_scores(X, labels)
    return {
        "silhouette": sil,
        "silhouette_rows": int(len(rows)),
        "davies_bouldin": db,
        "calinski_harabasz": ch,
        "rows": int(n),
    }


def dispersion_scores(X: np.ndarray, labels: np.ndarray, block: int = 65_536) -> tuple[float, float]:
    """(Davies-Bouldin, Calinski-Harabasz) as scikit-learn defines them, on every row, in bounded memory.

    Written here, not called from scikit-learn, for memory: `calinski_harabasz_score` copies X to
    float64 and then each segment's rows, and squares their differences (a cell of 1,000,000 rows of
    384 floats peaked at 8 GiB in it); `davies_bouldin_score` copies each segment too. Here two passes
    over blocks of rows (a memory-mapped X is read, never copied whole) accumulate in float64: the
    segments' sums, then each row's distance to its segment's centre: DB's mean distance per segment
    and CH's within-segment dispersion. Same formulas (Davies & Bouldin 1979, Calinski & Harabasz 1974),
    the same values up to float rounding (tested against scikit-learn)."""
    uniq, lab = np.unique(np.asarray(labels), return_inverse=True)
    n, k = len(lab), len(uniq)
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    sums = np.zeros((k, X.shape[1]))
    for lo in range(0, n, block):
        xb, lb = np.asarray(X[lo:lo + block], dtype=np.float64), lab[lo:lo + block]
        for j in np.unique(lb):
            sums[j] += xb[lb == j].sum(axis=0)
    centres = sums / counts[:, None]
    sq_sum, dist_sum = np.zeros(k), np.zeros(k)
    for lo in range(0, n, block):
        xb, lb = np.asarray(X[lo:lo + block], dtype=np.float64), lab[lo:lo + block]
        sq = ((xb - centres[lb]) ** 2).sum(axis=1)
        sq_sum += np.bincount(lb, weights=sq, minlength=k)
        dist_sum += np.bincount(lb, weights=np.sqrt(sq), minlength=k)
    mean = sums.sum(axis=0) / n
    extra = float((counts * ((centres - mean) ** 2).sum(axis=1)).sum())
    intra = float(sq_sum.sum())
    ch = 1.0 if intra == 0.0 else extra * (n - k) / (intra * (k - 1.0))
    spread = dist_sum / counts
    between = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(spread, 0) or np.allclose(between, 0):
        return 0.0, float(ch)
    between[between == 0] = np.inf
    db = float(np.max((spread[:, None] + spread[None, :]) / between, axis=1).mean())
    return db, float(ch)


class FixedRowsSilhouette:
    """The silhouette (Rousseeuw 1987, as scikit-learn defines it) of many labelings of the same rows.

    scikit-learn's `silhouette_score` recomputes every pairwise distance on each call and then
    reduces them row by row in Python; a bootstrap scores a hundred labelings of one fixed set of
    rows, so here the distances (scikit-learn's `pairwise_distances`, the same Euclidean distances
    `silhouette_score` uses) are computed once and each labeling costs one matrix product: the sum
    of each row's distances to every segment. Same definition: a = mean distance to the row's own
    segment (the row itself excluded), b = smallest mean distance to another segment,
    s = (b - a) / max(a, b), 0 for a row alone in its segment; the score is the mean over rows.
    """

    def __init__(self, X: np.ndarray):
        from sklearn.metrics import pairwise_distances

        self.D = pairwise_distances(np.asarray(X, dtype=np.float64))
        self.n = len(self.D)

    def __call__(self, labels: np.ndarray) -> float | None:
        uniq, lab = np.unique(np.asarray(labels), return_inverse=True)
        k = len(uniq)
        if k < 2 or k > self.n - 1:  # undefined (scikit-learn raises)
            return None
        member = np.zeros((self.n, k))
        member[np.arange(self.n), lab] = 1.0
        sums = self.D @ member  # (rows, segments): sum of distances from each row to each segment
        counts = member.sum(axis=0)
        rows = np.arange(self.n)
        own_n = counts[lab]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = sums[rows, lab] / (own_n - 1)
            means = sums / counts
            means[rows, lab] = np.inf
            b = means.min(axis=1)
            s = (b - a) / np.maximum(a, b)
        s[own_n == 1] = 0.0
        return float(np.mean(np.nan_to_num(s)))


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"ari": float(adjusted_rand_score(a, b)), "nmi": float(normalized_mutual_info_score(a, b))}


def recommend_k(sil_by_k: dict[int, float | None], tolerance: float = 0.01) -> dict:
    """The recommended k and the rule that chose it (written into the results)."""
    valid = {k: s for k, s in sil_by_k.items() if s is not None}
    if not valid:
        return {"k": None, "rule": RECOMMEND_RULE, "reason": "no cell finished"}
    best_k = max(valid, key=lambda k: (valid[k], -k))
    chosen = min(k for k, s in valid.items() if s >= valid[best_k] - tolerance)
    reason = (f"k={chosen} has silhouette {valid[chosen]:.3f}"
              + (f", within {tolerance} of the best (k={best_k}, {valid[best_k]:.3f})" if chosen != best_k
                 else ", the highest on the grid"))
    return {"k": int(chosen), "best_silhouette_k": int(best_k), "rule": RECOMMEND_RULE, "reason": reason}


def elbow_k(cost_by_k: dict[int, float]) -> int | None:
    """The elbow of the cost curve: the k farthest from the line joining its ends (kneedle idea)."""
    ks = sorted(cost_by_k)
    if len(ks) < 3:
        return None
    x = np.array(ks, dtype=float)
    y = np.array([cost_by_k[k] for k in ks], dtype=float)
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y.min()) / max(y.max() - y.min(), 1e-12)
    line = yn[0] + (yn[-1] - yn[0]) * xn
    return int(ks[int(np.argmax(line - yn))])


# Hennig (2007), "Cluster-wise assessment of cluster stability", CSDA 52:258-271, and the fpc
# clusterboot documentation: a cluster whose mean bootstrap Jaccard is below 0.6 should not be
# trusted, 0.6-0.75 indicates a pattern, 0.75 or more a valid cluster, 0.85 or more a highly stable
# one; a resample "dissolves" a cluster when its best Jaccard there is below 0.5.
STABILITY_CLASSES = ((0.85, "highly stable"), (0.75, "valid"), (0.6, "pattern"), (-np.inf, "unstable"))
DISSOLVED_BELOW = 0.5
DEFAULT_RESAMPLES = 100


def stability_class(mean_jaccard: float | None) -> str | None:
    """Hennig's class of a segment from its mean bootstrap Jaccard: unstable < 0.6 <= pattern < 0.75
    <= valid < 0.85 <= highly stable (None when the segment never appeared in a resample)."""
    if mean_jaccard is None:
        return None
    return next(name for lo, name in STABILITY_CLASSES if mean_jaccard >= lo)


# Sequential stopping of the refits (docs/methods-and-verdict.md): refits in batches of STOPPING_BATCH;
# at each look before the last a segment is settled when a Student-t interval of its mean Jaccard, at
# STOPPING_ALPHA split (Bonferroni) over the segments and the looks, holds no class threshold; the
# refits stop once every segment is settled. The draws are one seeded stream, so a stopped run's refits
# are the first ones of the fixed run.
STOPPING_BATCH = 20
STOPPING_ALPHA = 0.05
STOPPING_RULE = (
    "refits in batches of {batch}, up to {max}; after {looks_text} refits the refitting stops once every "
    "segment's class (unstable < 0.6 <= pattern < 0.75 <= valid < 0.85 <= highly stable) is settled: a "
    "Student-t interval of its mean Jaccard, at error rate {alpha} divided by the number of segments times "
    "the number of looks ({looks}; Bonferroni), lies wholly within one class band"
)


def stopping_looks(max_resamples: int, batch: int = STOPPING_BATCH) -> list[int]:
    """The refit counts at which a sequential run may stop: each multiple of `batch` below the maximum
    (20, 40, 60, 80 of 100); at the maximum it stops anyway."""
    return list(range(batch, int(max_resamples), batch))


def jaccard_interval(values, alpha: float) -> tuple[float, float] | None:
    """The two-sided Student-t interval (level 1 - alpha) of the mean of `values`; None under two values."""
    from scipy.stats import t  # scipy: only where the refits are stopped sequentially

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    half = float(t.ppf(1 - alpha / 2, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v)))
    m = float(v.mean())
    return m - half, m + half


def settled(jaccards: dict, looks: int, alpha: float = STOPPING_ALPHA) -> tuple[bool, dict]:
    """Whether every segment's stability class is settled, and each segment's interval.

    jaccards: {segment: per-resample Jaccards so far}; looks: how many looks the run may take (the
    Bonferroni divisor with the number of segments). A segment is settled when its Student-t interval
    at level alpha / (segments x looks) has both ends in the same class (`stability_class`), so no class
    threshold lies inside it; one with fewer than two Jaccards is not settled.
    """
    each = alpha / (max(len(jaccards), 1) * max(int(looks), 1))
    intervals, ok = {}, True
    for s, v in jaccards.items():
        ci = jaccard_interval(v, each)
        intervals[s] = None if ci is None else [ci[0], ci[1]]
        if ci is None or stability_class(ci[0]) != stability_class(ci[1]):
            ok = False
    return ok and bool(jaccards), intervals


def bootstrap_stability(refit, labels: np.ndarray, n: int, n_boot: int = DEFAULT_RESAMPLES, seed: int = 0,
                        max_rows: int = 5000, score=None, stopping: str = "fixed", resume: dict | None = None) -> dict:
    """Hennig's clusterboot (2007) on a seeded subsample: ARI to the full fit and per-segment Jaccard.

    refit(rows, base) -> labels predicted for the `base` rows by a model fitted on the rows in
    `rows` (indices into the data). The refit must rerun every fitted step of the method inside the
    resample (outlier detection such as ECOD included: see `whole_method_refit`), else the
    stability of the steps left outside is not measured. For each bootstrap resample of the base
    rows, a segment's Jaccard is its best overlap with a bootstrap segment, measured on the
    resampled points (clusterboot's rule). `score(rows, labels)` optionally scores each refit
    (e.g. silhouette in the common space) so that methods can be compared replicate by replicate.

    stopping: "fixed" refits `n_boot` times; "sequential" stops at a look (`stopping_looks`) once every
    segment's class is `settled`. The resamples are one seeded stream either way, so a sequential run's
    results are those of the fixed run's first refits. resume: an earlier (sequential) result of the same
    call: its refits are taken as they are (their resamples drawn again, not refitted) and the run goes
    on to `n_boot` refits, the fixed run's result.

    Returns resamples (the refits used), rows, ari (per resample), ari_mean, ari_sd, ari_min, and per
    segment (`segments[s]`): jaccards (per resample in which s had points), mean_jaccard,
    dissolutions (resamples with Jaccard < 0.5), recoveries (resamples with Jaccard >= 0.75),
    class (Hennig's thresholds, see `stability_class`), dissolved (mean Jaccard < 0.5) and stable
    (mean Jaccard >= 0.75). With `score`: common_silhouette (per resample, None where the refit
    had one segment) and replicate_score {n, mean, sd (the bootstrap standard error of the score),
    mc_se (sd / sqrt(n), the Monte Carlo error of the mean)}. A sequential or resumed run adds
    `stopping` {rule, max_resamples, batch, looks, alpha (each interval's level), stopped_early,
    intervals {segment: [low, high]} at the last look or the end, confirmed_from (resumed: the refits
    the earlier run had used)}; a fixed run's result is as it always was.
    """
    from sklearn.metrics import adjusted_rand_score

    if stopping not in ("fixed", "sequential"):
        raise ValueError(f"stopping must be 'fixed' or 'sequential', not {stopping!r}")
    rng = np.random.default_rng(seed)
    base = sample_rows(n, max_rows, seed)
    ref = labels[base]
    segs = np.unique(labels)
    looks = stopping_looks(n_boot) if stopping == "sequential" and resume is None else []
    held = int(resume["resamples"]) if resume is not None else 0
    held_jac = {int(s): list(v["jaccards"]) for s, v in (resume or {}).get("segments", {}).items()}
    held_at = {s: 0 for s in held_jac}
    aris, jac, scores = [], {int(s): [] for s in segs}, []
    intervals, used = None, n_boot
    for b in range(n_boot):
        draw = np.sort(rng.choice(len(base), size=len(base), replace=True))
        inb = np.unique(draw)
        r = ref[inb]
        if b < held:  # refitted by the earlier run: its values, in the same order
            aris.append(float(resume["ari"][b]))
            for s in segs:
                if (r == s).any():
                    jac[int(s)].append(float(held_jac[int(s)][held_at[int(s)]]))
                    held_at[int(s)] += 1
            if score is not None:
                scores.append(resume["common_silhouette"][b])
            continue
        pred = refit(base[draw], base)  # labels of every base row under the bootstrap model
        aris.append(float(adjusted_rand_score(ref, pred)))
        p = pred[inb]
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
        if b + 1 in looks:
            done, intervals = settled(jac, len(looks))
            if done:
                used = b + 1
                break
    per = {}
    for s, v in jac.items():
        mean = float(np.mean(v)) if v else None
        per[s] = {"mean_jaccard": mean, "jaccards": [float(x) for x in v],
                  "dissolutions": int(sum(x < DISSOLVED_BELOW for x in v)),
                  "recoveries": int(sum(x >= 0.75 for x in v)), "class": stability_class(mean),
                  "dissolved": bool(v) and mean < DISSOLVED_BELOW, "stable": bool(v) and mean >= 0.75}
    out = {"resamples": used, "rows": int(len(base)), "ari_mean": float(np.mean(aris)),
           "ari_sd": float(np.std(aris)), "ari_min": float(np.min(aris)), "ari": aris, "segments": per}
    if score is not None:
        out["common_silhouette"] = scores
        out["replicate_score"] = replicate_summary(scores)
    if stopping == "sequential" or resume is not None:
        n_looks = len(stopping_looks(n_boot))
        if used == n_boot:  # ran to the end: the intervals of every refit
            intervals = settled(jac, n_looks)[1]
        out["stopping"] = {"rule": "sequential", "max_resamples": int(n_boot), "batch": STOPPING_BATCH,
                           "looks": stopping_looks(n_boot), "alpha": STOPPING_ALPHA / (max(len(jac), 1) * max(n_looks, 1)),
                           "stopped_early": used < n_boot, "intervals": intervals or {},
                           "confirmed_from": held if resume is not None else None}
    return out


def replicate_summary(values) -> dict:
    """n, mean, sd and mc_se of bootstrap replicate values (None values dropped).

    sd is the bootstrap standard error of the statistic (Efron & Tibshirani 1993): the spread of
    the refitted value; mc_se = sd / sqrt(n) is only the Monte Carlo error of the replicates' mean.
    """
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return {"n": 0, "mean": None, "sd": None, "mc_se": None}
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"n": int(len(v)), "mean": float(v.mean()), "sd": sd, "mc_se": sd / np.sqrt(len(v))}


def whole_method_refit(fit, predict, detect_outliers=None, min_rows: int | None = None):
    """A `refit(rows, base)` for `bootstrap_stability` that reruns the whole method in each resample.

    fit(rows) -> model fitted on those rows (indices into the data); predict(model, base) -> labels
    of the base rows; detect_outliers(rows) -> boolean flags over `rows`, refitted on the resample
    (e.g. `ecod_refit(X, contamination)`): the flagged rows are left out of the fit, as in the full
    run, so the outlier step's own variability is part of the measured stability. When fewer than
    `min_rows` rows would remain, every resampled row is fitted.
    """
    def refit(rows, base):
        keep = rows
        if detect_outliers is not None:
            flags = np.asarray(detect_outliers(rows), dtype=bool)
            if (~flags).sum() >= (min_rows or 1):
                keep = rows[~flags]
        return predict(fit(keep), base)

    return refit


def ecod_refit(X: np.ndarray, contamination: float):
    """detect_outliers(rows) for `whole_method_refit`: ECOD fitted on the resampled rows of X.

    ECOD's tail probabilities depend on the empirical distribution it is fitted on, so it is
    refitted inside every resample (not the full-data flags reused).
    """
    from .features import ecod_outliers  # scikit-learn and pyod: only where ECOD is refitted

    def detect(rows):
        flags, _, _ = ecod_outliers(np.asarray(X[rows]), contamination)
        return flags

    return detect
