"""Validity metrics, agreement between segmentations, and the choice of k."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score,
                             normalized_mutual_info_score, silhouette_score)

from .features import sample_rows

RECOMMEND_RULE = (
    "highest silhouette in the method's own space over the k grid; a k within 0.01 of the best "
    "and smaller is preferred (fewer segments are easier to act on)"
)


def validity(X: np.ndarray, labels: np.ndarray, silhouette_sample: int, seed: int,
             metric: str = "euclidean") -> dict:
    """Silhouette (exact up to `silhouette_sample` rows, else on a seeded sample), DB and CH."""
    labels = np.asarray(labels)
    n = len(labels)
    if len(np.unique(labels)) < 2:
        return {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None,
                "silhouette_rows": 0, "rows": n}
    rows = sample_rows(n, silhouette_sample, seed, strata=labels)
    sil_labels = labels[rows]
    sil = float(silhouette_score(X[rows], sil_labels, metric=metric)) if len(np.unique(sil_labels)) > 1 else None
    return {
        "silhouette": sil,
        "silhouette_rows": int(len(rows)),
        "davies_bouldin": float(davies_bouldin_score(X, labels)),
        "calinski_harabasz": float(calinski_harabasz_score(X, labels)),
        "rows": int(n),
    }


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
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


def bootstrap_stability(refit, labels: np.ndarray, n: int, n_boot: int, seed: int, max_rows: int,
                        score=None) -> dict:
    """Hennig's clusterboot on a seeded subsample: ARI to the full fit and per-segment Jaccard.

    refit(rows) -> labels predicted for the `base` rows by a model fitted on the rows in `rows`
    (indices into the data). For each bootstrap resample of the base rows, a segment's Jaccard is
    its best overlap with a bootstrap segment, measured on the resampled points; a segment whose
    mean Jaccard is below 0.5 "dissolves" (Hennig 2007), 0.75 or more is stable. `score(rows,
    labels)` optionally scores each refit (e.g. silhouette in the common space) so that methods can
    be compared replicate by replicate.
    """
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
    per = {s: {"mean_jaccard": float(np.mean(v)) if v else None,
               "dissolved": bool(v) and float(np.mean(v)) < 0.5, "stable": bool(v) and float(np.mean(v)) >= 0.75}
           for s, v in jac.items()}
    out = {"resamples": n_boot, "rows": int(len(base)), "ari_mean": float(np.mean(aris)),
           "ari_sd": float(np.std(aris)), "ari_min": float(np.min(aris)), "ari": aris, "segments": per}
    if score is not None:
        out["common_silhouette"] = scores
    return out
