"""Segment profiles (aggregates only) and the persona facts the report's templates put into words.

A profile holds, per segment: size and share, outlier share, numeric quartiles, mean and
robust effects against the population (median shift in population IQRs, Cliff's delta against
the rest), and category shares against the population and the rest. A persona lists the
segment's most distinctive traits by one robust effect for every kind of column (Cliff's delta of
the segment against the rest: for a category level's 0/1 indicator it is the difference in share),
at most one per column, and is named only after traits that hold for the typical member: a
category level held by at least half of the segment (below 80% the name states the share:
"Housing loan (63%)"), a numeric column whose segment median lies on the named side of the
population's median. A number is listed as a trait only at the effect that may name it. A level over-represented but held by a minority
reads "more X than average (p% vs q%)" and never gives the name.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluate import stability_class

GENERIC_LEVELS = {"unknown", "other", "missing", "yes", "no", "none", "n/a", "true", "false"}
NAME_MIN_SHARE = 0.5  # a segment is named after a level only when at least half of it holds it
NAME_HOLDS_SHARE = 0.8  # a name below this share says it: "Housing loan (63%)", so no filter contradicts it
MIN_EFFECT = 0.147  # |Cliff's delta| below this is negligible (Romano et al. 2006)
NAME_MIN_EFFECT = 0.33  # a number names a segment only from a medium effect on (Romano et al.): a median
# one year below the average is a trait worth listing, not what the segment is
CURRENCIES = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "€": "€", "$": "$", "£": "£"}


def _cliff_delta(ranks: np.ndarray, member: np.ndarray) -> float:
    """Cliff's delta P(X > Y) - P(X < Y) of the segment (X) against the rest (Y), from the column's
    mid-ranks over all rows (the Mann-Whitney U of the segment, rescaled to [-1, 1])."""
    n1 = int(member.sum())
    n2 = len(member) - n1
    if n1 == 0 or n2 == 0:
        return 0.0
    u = float(ranks[member].sum()) - n1 * (n1 + 1) / 2
    return 2 * u / (n1 * n2) - 1


def profile(frame: pd.DataFrame, labels: np.ndarray, numeric: list[str], categorical: list[str],
            min_segment_size: int = 20, outliers: np.ndarray | None = None) -> dict:
    """Per segment: size, share, outlier count and share (`outliers`: the flags of the rows the
    method left out of its fit, counted, not hidden), numeric quartiles and effects, category
    shares. Segments smaller than `min_segment_size` are suppressed (size only)."""
    labels = np.asarray(labels)
    n = len(labels)
    flags = None if outliers is None else np.asarray(outliers, dtype=bool)
    pop_num = {}
    ranks = {}
    for c in numeric:
        x = frame[c].to_numpy(np.float64)
        q1, med, q3 = (float(v) for v in np.quantile(x, [0.25, 0.5, 0.75]))
        pop_num[c] = {"mean": float(x.mean()), "median": med, "std": float(x.std(ddof=0)),
                      "q25": q1, "q75": q3, "iqr": q3 - q1}
        ranks[c] = pd.Series(x).rank(method="average").to_numpy()
    pop_cat = {c: frame[c].value_counts(normalize=True).sort_index().to_dict() for c in categorical}
    segments = []
    for s in sorted(np.unique(labels)):
        m = labels == s
        size = int(m.sum())
        seg = {"segment": int(s), "size": size, "share": size / n, "suppressed": size < min_segment_size}
        if flags is not None:
            seg["outliers"] = int(flags[m].sum())
            seg["outlier_share"] = float(flags[m].mean()) if size else 0.0
        if not seg["suppressed"]:
            sub = frame.loc[m]
            rest = n - size
            seg["numeric"] = {}
            for c in numeric:
                x = sub[c].to_numpy(np.float64)
                q1, med, q3 = (float(v) for v in np.quantile(x, [0.25, 0.5, 0.75]))
                mean = float(x.mean())
                p = pop_num[c]
                seg["numeric"][c] = {
                    "mean": mean, "median": med, "q25": q1, "q75": q3,
                    "pop_mean": p["mean"], "pop_median": p["median"], "pop_q25": p["q25"], "pop_q75": p["q75"],
                    "z": (mean - p["mean"]) / p["std"] if p["std"] > 0 else 0.0,
                    "median_ratio": med / p["median"] if p["median"] > 0 and med > 0 else None,
                    "median_shift_iqr": (med - p["median"]) / p["iqr"] if p["iqr"] > 0 else None,
                    "cliff_delta": _cliff_delta(ranks[c], m),
                }
            seg["categorical"] = {}
            for c in categorical:
                counts = sub[c].value_counts().to_dict()
                seg["categorical"][c] = {}
                for lv, ps in pop_cat[c].items():
                    share = counts.get(lv, 0) / size
                    rest_share = (ps * n - counts.get(lv, 0)) / rest if rest else 0.0
                    seg["categorical"][c][str(lv)] = {
                        "share": float(share), "pop_share": float(ps), "rest_share": float(rest_share),
                        "lift": float(share / ps) if ps > 0 else None,
                        "effect": float(share - rest_share)}  # Cliff's delta of the level's 0/1 indicator
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


def format_value(v: float, unit: str | None) -> str:
    """A number with its unit for a persona: money as money (EUR 1240 -> "€1,240"), else "41 years"."""
    if v is None or not np.isfinite(v):
        return "n/a"
    num = f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:,.3g}"
    sym = CURRENCIES.get(unit.strip().upper()) if unit else None
    if sym:
        return f"-{sym}{num.lstrip('-')}" if v < 0 else f"{sym}{num}"
    return f"{num} {unit}" if unit else num


def _level_phrase(t: dict) -> str:
    level = t["level"]
    if t["binary"] and level.lower() in ("yes", "true", "1"):
        return f"with {t['label'].lower()}"
    if t["binary"] and level.lower() in ("no", "false", "0"):
        return f"without {t['label'].lower()}"
    if level.lower() in GENERIC_LEVELS or not any(ch.isalpha() for ch in level):
        return f"'{level}' {t['label'].lower()}"
    return level


def _numeric_phrase(t: dict, v: dict) -> str:
    """Described by medians; where the medians tie, by the quartile that moved most."""
    unit = t["unit"]
    which, seg, pop = "median", v["median"], v["pop_median"]
    if seg == pop:
        moves = [(abs(v["q75"] - v["pop_q75"]), "upper quartile", v["q75"], v["pop_q75"]),
                 (abs(v["q25"] - v["pop_q25"]), "lower quartile", v["q25"], v["pop_q25"])]
        _, which, seg, pop = max(moves, key=lambda x: x[0])
    return (f"{t['direction']} {t['label'].lower()}: {which} {format_value(seg, unit)} "
            f"vs {format_value(pop, unit)} overall")


def traits(seg: dict, labels: dict[str, str], units: dict[str, str | None], binary: set[str],
           top: int = 4, name_min_share: float = NAME_MIN_SHARE, min_effect: float = MIN_EFFECT) -> list[dict]:
    """The segment's most distinctive traits, strongest first, one per column, ranked by |effect|:
    Cliff's delta of the segment against the rest (numeric), or the level's share in the segment
    minus its share in the rest (the same delta for a 0/1 indicator). Each trait says whether it may
    name the segment (`nameable`) and carries a `phrase` of computed facts. Traits that may name
    the segment but rank below `top` are kept after the top ones (a name is always shown with
    the trait it comes from)."""
    out = []
    for c, v in seg.get("numeric", {}).items():
        d = v.get("cliff_delta")
        # a number is listed as setting the segment apart only at the effect that may name it (a median
        # one year below the average is not what sets a segment apart)
        if d is None or abs(d) < max(min_effect, NAME_MIN_EFFECT):
            continue
        direction = "higher" if d > 0 else "lower"
        t = {"kind": "numeric", "column": c, "label": labels.get(c, c), "unit": units.get(c),
             "direction": direction, "score": abs(d), "effect": d,
             "effect_measure": "Cliff's delta, segment vs rest", "median_shift_iqr": v.get("median_shift_iqr"),
             "median": v["median"], "pop_median": v["pop_median"], "mean": v["mean"], "ratio": v["median_ratio"],
             # "High X" holds for the typical member only if the segment's median is on that side
             "nameable": abs(d) >= NAME_MIN_EFFECT and (
                 (v["median"] > v["pop_median"]) if d > 0 else (v["median"] < v["pop_median"])),
             "binary": False}
        t["phrase"] = _numeric_phrase(t, v)
        out.append(t)
    for c, levels in seg.get("categorical", {}).items():
        best = None
        for lv, v in levels.items():
            p, share = v["pop_share"], v["share"]
            eff = v.get("effect", share - p)
            if p <= 0 or p >= 1 or eff < min_effect:
                continue
            if best is None or eff > best["score"]:
                best = {"kind": "category", "column": c, "label": labels.get(c, c), "level": lv, "share": share,
                        "pop_share": p, "rest_share": v.get("rest_share"), "lift": v["lift"], "score": float(eff),
                        "effect": float(eff), "effect_measure": "share in segment minus share in the rest",
                        "binary": c in binary, "nameable": share >= name_min_share}
        if best:
            words = _level_phrase(best)
            best["phrase"] = (f"{best['share']:.0%} {words} (vs {best['pop_share']:.0%} overall)" if best["nameable"]
                              else f"more {words} than average ({best['share']:.0%} vs {best['pop_share']:.0%})")
            out.append(best)
    out.sort(key=lambda t: -t["score"])
    shown = out[:top]
    namers = [t for t in out if t["nameable"]][:2]
    shown += [t for t in namers if t not in shown]
    for t in shown:
        t["short"] = _short_name(t)
        if t["kind"] == "category" and t["share"] < NAME_HOLDS_SHARE:
            t["short"] = f"{t['short']} ({t['share']:.0%})"  # the name states the share it holds for
    return shown


def _seg_stability(stability, segment: int) -> float | None:
    if stability is None:
        return None
    segs = stability.get("segments", stability) if isinstance(stability, dict) else {}
    v = segs.get(segment, segs.get(str(segment)))
    return v.get("mean_jaccard") if isinstance(v, dict) else v


def personas(prof: dict, mean_abs_shap: dict | None, labels: dict[str, str], units: dict[str, str | None],
             binary: set[str], top_drivers: int = 3, *, stability: dict | None = None,
             name_min_share: float = NAME_MIN_SHARE) -> list[dict]:
    """One persona per segment: size, share, name, traits, top SHAP drivers (or suppressed).

    The name joins the two strongest nameable traits (see module doc); a segment without one is
    "No majority trait" when it has only minority traits, "Close to the average customer" when it
    has no trait at all.
    stability: bootstrap_stability's output (or {segment: mean Jaccard}): each card then carries
    stability (mean Jaccard), stability_class (Hennig: unstable < 0.6 <= pattern < 0.75 <= valid <
    0.85 <= highly stable) and unstable (class "unstable"). The profile's outlier count and share
    (profile(..., outliers=flags)) are copied onto the card.
    """
    cards = []
    for seg in prof["segments"]:
        card = {"segment": seg["segment"], "size": seg["size"], "share": seg["share"],
                "suppressed": seg["suppressed"]}
        if "outlier_share" in seg:
            card["outliers"] = seg["outliers"]
            card["outlier_share"] = seg["outlier_share"]
        if stability is not None:
            j = _seg_stability(stability, seg["segment"])
            card["stability"] = j
            card["stability_class"] = stability_class(j)
            card["unstable"] = card["stability_class"] == "unstable"
        if seg["suppressed"]:
            card["name"] = f"Segment {seg['segment'] + 1} (small)"
            card["traits"] = []
            card["drivers"] = []
        else:
            ts = traits(seg, labels, units, binary, name_min_share=name_min_share)
            card["traits"] = ts
            namers = [t for t in ts if t["nameable"]]
            card["name"] = (" · ".join(t["short"] for t in namers[:2]) if namers
                            else "No majority trait" if ts else "Close to the average customer")
            shap_seg = (mean_abs_shap or {}).get(str(seg["segment"])) or (mean_abs_shap or {}).get(seg["segment"]) or {}
            drivers = [d for d in sorted(shap_seg.items(), key=lambda kv: -kv[1])[:top_drivers] if d[1] >= 0.005]
            card["drivers"] = [{"column": c, "label": labels.get(c, c), "mean_abs_shap": v} for c, v in drivers]
        cards.append(card)
    # disambiguate identical names within one segmentation, with a third nameable trait only
    seen: dict[str, int] = {}
    for card in cards:
        seen[card["name"]] = seen.get(card["name"], 0) + 1
    for card in cards:
        third = [t for t in card["traits"] if t["nameable"]][2:3]
        if seen[card["name"]] > 1 and third:
            card["name"] = f"{card['name']} · {third[0]['short']}"
    return cards
