"""Other ways to cut the clusterboot refits, replayed on a finished run: how many refits, how many classes kept?

    .venv/bin/python bench/bench_stopping_rules.py results/train

Reads each cell's `stability.json` (the per-resample Jaccards of every segment) and replays, over the
cells that ran the full count, stopping rules the sequential rule could add at its looks (20, 40, 60, 80):

- `sequential`: the rule in use (`evaluate.settled`): every segment's Bonferroni t-interval holds no
  class threshold;
- `narrow W`: as `sequential`, but a segment whose interval is narrower than +-W also counts as settled;
- `futility`: as `sequential`, but a segment also counts as settled when the interval it would have at
  the full count (its spread so far, the full count's t quantile) would still hold a threshold: more
  refits would not settle it.

A stopped cell's classes are those of its mean Jaccards at the stop; each is compared with the class of
the full count's mean. Cells the run stopped early count with the refits they used and their classes as
they are (a rule that only adds stops cannot refit them more). Measures nothing: replays recorded numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import t

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segreport.lib.evaluate import (STABILITY_CLASSES, STOPPING_ALPHA, settled, stability_class,  # noqa: E402
                                    stopping_looks)

THRESHOLDS = [lo for lo, _ in STABILITY_CLASSES if np.isfinite(lo)]


def settled_by(rule: str, width: float, jac: dict, b: int, n_looks: int, full: int) -> bool:
    done, intervals = settled({s: v[:b] for s, v in jac.items()}, n_looks)  # the rule in use
    if done or rule == "sequential":
        return done
    each = STOPPING_ALPHA / (len(jac) * n_looks)  # each interval's error rate, as `settled` splits it
    for s, iv in intervals.items():
        if iv is None:
            return False
        lo, hi = iv
        if stability_class(lo) == stability_class(hi):
            continue
        if rule == "narrow" and (hi - lo) / 2 <= width:
            continue
        if rule == "futility":
            v = np.asarray(jac[s][:b], dtype=float)
            half = float(t.ppf(1 - each / 2, full - 1) * np.std(v, ddof=1) / np.sqrt(full))
            if any(v.mean() - half < th < v.mean() + half for th in THRESHOLDS):
                continue
        return False
    return True


def replay(run: Path, rule: str, width: float = 0.0) -> tuple[int, int, int, int]:
    """(refits used, refits of the full count, classes kept, segments) over the run's cells."""
    used = total = kept = segments = 0
    for f in sorted(run.glob("cells/*/*/stability.json")):
        st = json.loads(f.read_text())
        full = int((st.get("stopping") or {}).get("max_resamples") or st["resamples"])
        jac = {s: v["jaccards"] for s, v in st["segments"].items()}
        total += full
        segments += len(jac)
        if st["resamples"] < full:  # stopped early by the run itself
            used += st["resamples"]
            kept += len(jac)
            continue
        looks = stopping_looks(full)
        stop = next((b for b in looks if settled_by(rule, width, jac, b, len(looks), full)), full)
        used += stop
        kept += sum(stability_class(np.mean(v[:stop])) == stability_class(np.mean(v)) for v in jac.values())
    return used, total, kept, segments


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run's folder, e.g. results/train")
    args = ap.parse_args(argv)
    for rule, width in (("sequential", 0.0), ("narrow", 0.03), ("narrow", 0.05), ("futility", 0.0)):
        used, total, kept, segments = replay(args.run, rule, width)
        name = f"{rule} {width:g}" if rule == "narrow" else rule
        print(f"{name:<12} refits {used:5d} of {total:5d} ({used / total:5.1%})   classes as the full count "
              f"{kept:4d} of {segments:4d} ({kept / segments:5.1%})")


if __name__ == "__main__":
    main()
