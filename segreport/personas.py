"""Segment profiles (aggregates only) and the persona facts the report's templates put into words.

A profile holds, per segment: size and share, numeric mean and median, category
shares, and their lift against the whole population. A persona picks the
segment's most distinctive traits (standardised difference from the population),
at most one per column, and names the segment after the top two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GENERIC_LEVELS = {"unknown", "other", "missing", "yes", "no", "none", "n/a", "true", "false"}


def profile(frame: pd.DataFrame, labels: np.ndarray, numeric: list[str], categorical: list[str],
            min_segment_size: int = 20) -> dict:
    labels = np.asarray(labels)
    n = len(labels)
    pop_num = {c: {"mean": float(frame[c].mean()), "median": float(frame[c].median()),
                   "std": float(frame[c].std(ddof=0))} for c in numeric}
    pop_cat = {c: frame[c].value_counts(normalize=True).sort_index().to_dict() for c in categorical}
    segments = []
    for s in sorted(np.unique(labels)):
        m = labels == s
        size = int(m.sum())
        seg = {"segment": int(s), "size": size, "share": size / n, "suppressed": size < min_segment_size}
        if not seg["suppressed"]:
            sub = frame.loc[m]
            seg["numeric"] = {}
            for c in numeric:
                mean, med = float(sub[c].mean()), float(sub[c].median())
                p = pop_num[c]
                seg["numeric"][c] = {
                    "mean": mean, "median": med, "pop_mean": p["mean"], "pop_median": p["median"],
                    "z": (mean - p["mean"]) / p["std"] if p["std"] > 0 else 0.0,
                    "median_ratio": med / p["median"] if p["median"] > 0 and med > 0 else None,
                }
            seg["categorical"] = {}
            for c in categorical:
                shares = sub[c].value_counts(normalize=True).to_dict()
                seg["categorical"][c] = {
                    str(lv): {"share": float(shares.get(lv, 0.0)), "pop_share": float(ps),
                              "lift": float(shares.get(lv, 0.0) / ps) if ps > 0 else None}
                    for lv, ps in pop_cat[c].items()
                }
        segments.append(seg)
    return {"rows": n, "min_segment_size": min_segment_size, "segments": segments,
            "population": {"numeric": pop_num, "categorical": {c: {str(k): float(v) for k, v in d.items()}
                                                                for c, d in pop_cat.items()}}}


def _short_name(t: dict) -> str:
    if t["kind"] == "numeric":
        return f"{'High' if t['direction'] == 'higher' else 'Low'} {t['label'].lower()}"
    level = t["level"]
    if t["binary"]:
        if level.lower() in ("yes", "true", "1"):
            return t["label"]
        if level.lower() in ("no", "false", "0"):
            return f"No {t['label'].lower()}"
    if level.lower() in GENERIC_LEVELS or not any(ch.isalpha() for ch in level):
        return f"{t['label']}: {level}"
    return level[:1].upper() + level[1:]


def traits(seg: dict, labels: dict[str, str], units: dict[str, str | None], binary: set[str],
           top: int = 4) -> list[dict]:
    """The segment's most distinctive traits, strongest first, one per column."""
    out = []
    for c, v in seg.get("numeric", {}).items():
        if abs(v["z"]) < 0.25:
            continue
        out.append({"kind": "numeric", "column": c, "label": labels[c], "unit": units.get(c),
                    "direction": "higher" if v["z"] > 0 else "lower", "score": abs(v["z"]),
                    "median": v["median"], "pop_median": v["pop_median"], "mean": v["mean"],
                    "ratio": v["median_ratio"]})
    for c, levels in seg.get("categorical", {}).items():
        best = None
        for lv, v in levels.items():
            p, s = v["pop_share"], v["share"]
            if p <= 0 or p >= 1 or s < 0.2 or (v["lift"] or 0) < 1.15:
                continue
            score = (s - p) / np.sqrt(p * (1 - p))
            if best is None or score > best["score"]:
                best = {"kind": "category", "column": c, "label": labels[c], "level": lv, "share": s,
                        "pop_share": p, "lift": v["lift"], "score": float(score), "binary": c in binary}
        if best and best["score"] >= 0.25:
            out.append(best)
    out.sort(key=lambda t: -t["score"])
    out = out[:top]
    for t in out:
        t.setdefault("binary", False)
        t["short"] = _short_name(t)
    return out


def personas(prof: dict, mean_abs_shap: dict | None, labels: dict[str, str], units: dict[str, str | None],
             binary: set[str], top_drivers: int = 3) -> list[dict]:
    """One persona per segment: size, share, name, traits, top SHAP drivers (or suppressed)."""
    cards = []
    for seg in prof["segments"]:
        card = {"segment": seg["segment"], "size": seg["size"], "share": seg["share"],
                "suppressed": seg["suppressed"]}
        if seg["suppressed"]:
            card["name"] = f"Segment {seg['segment'] + 1} (small)"
            card["traits"] = []
            card["drivers"] = []
        else:
            ts = traits(seg, labels, units, binary)
            card["traits"] = ts
            card["name"] = " · ".join(t["short"] for t in ts[:2]) or "Close to the average customer"
            shap_seg = (mean_abs_shap or {}).get(str(seg["segment"])) or (mean_abs_shap or {}).get(seg["segment"]) or {}
            drivers = [d for d in sorted(shap_seg.items(), key=lambda kv: -kv[1])[:top_drivers] if d[1] >= 0.005]
            card["drivers"] = [{"column": c, "label": labels.get(c, c), "mean_abs_shap": v} for c, v in drivers]
        cards.append(card)
    # disambiguate identical names within one segmentation
    seen: dict[str, int] = {}
    for card in cards:
        seen[card["name"]] = seen.get(card["name"], 0) + 1
    for card in cards:
        if seen[card["name"]] > 1 and card["traits"][2:3]:
            card["name"] = f"{card['name']} · {card['traits'][2]['short']}"
    return cards
