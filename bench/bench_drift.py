"""Calibration of `segreport track` on the bank data: what it flags without drift, and with planted drift.

A finished run on the bank's train.csv (45,211 customers) is copied to a scratch folder, and each
snapshot below is tracked into the copy with `segreport.stages.track.track` (its history emptied before
each, so every snapshot is judged alone against the fitting table):

- no drift: test.csv as it is (4,521 customers; note that the UCI file is a 10 % sample of train.csv)
  and random halves of train.csv (`--splits`, default 20): the false alarm rate is the share of
  halves with any column, or any segment's column, flagged, and with a recommendation other than keep;
- planted drifts on test.csv: balance x1.1 and x1.3, balance + 0.25 of its SD, job 'management' +5 and
  +15 points (customers of other jobs, drawn at random, moved to it), a new job level on 5 % of
  customers, balance missing for 10 % more customers, and balance x1.5 inside one segment only (the
  largest segment of test.csv under the saved segmentation).

Prints, per snapshot, the columns and segments flagged (with their effect sizes), the refit's ARI
against the baseline refit's, the recommendation and track's time. Thresholds: the run's
`tracking:` block, or `--params FILE`'s.

Make the run once (about a minute and a half on 2 shared cores with these light parameters), then bench it::

    printf 'stability_resamples: 5\\nnull_references: 0\\nrender: false\\nkmeans:\\n  n_init: 3\\n' > light.yml
    .venv/bin/python -m segreport run --params light.yml --data ../shared/data/bank-marketing/train.csv \\
        --run bank --methods kmeans --k 3-4 --outcome y
    .venv/bin/python bench/bench_drift.py --run results/bank --data ../shared/data/bank-marketing
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segreport.stages.assign import score_frame  # noqa: E402
from segreport.core.store import RunLayout, chosen_segmentation, read_json  # noqa: E402
from segreport.stages.track import sentence, track  # noqa: E402


def planted(test: pd.DataFrame, train: pd.DataFrame, seg: np.ndarray, seed: int) -> dict[str, pd.DataFrame]:
    """test.csv with one drift planted each (values as read_raw gives them: strings)."""
    rng = np.random.default_rng(seed)
    bal = test["balance"].astype(float)
    sd = float(train["balance"].astype(float).std())
    out = {}

    def with_(col, values):
        df = test.copy()
        df[col] = values
        return df

    out["balance x1.1"] = with_("balance", (bal * 1.1).round().astype(int).astype(str))
    out["balance x1.3"] = with_("balance", (bal * 1.3).round().astype(int).astype(str))
    out["balance +0.25 SD"] = with_("balance", (bal + 0.25 * sd).round().astype(int).astype(str))
    for pts in (5, 15):
        job = test["job"].copy()
        others = np.flatnonzero((job != "management").to_numpy())
        job.iloc[rng.choice(others, int(round(pts / 100 * len(job))), replace=False)] = "management"
        out[f"job management +{pts} pts"] = with_("job", job)
    job = test["job"].copy()
    job.iloc[rng.choice(len(job), int(round(0.05 * len(job))), replace=False)] = "gig worker"
    out["job new level (5%)"] = with_("job", job)
    b = test["balance"].astype(object).copy()
    b.iloc[rng.choice(len(b), int(round(0.10 * len(b))), replace=False)] = np.nan
    out["balance 10% missing"] = with_("balance", b)
    big = int(np.bincount(seg).argmax())
    inside = np.where(seg == big, bal * 1.5, bal)
    out[f"balance x1.5 in S{big + 1} only"] = with_("balance", pd.Series(inside).round().astype(int).astype(str))
    return out


def reset(run: Path) -> None:
    for name in ("snapshots", "tracking"):
        shutil.rmtree(run / name, ignore_errors=True)
    (run / "tracking.json").unlink(missing_ok=True)


def one(run: Path, df: pd.DataFrame, scratch: Path, name: str, tracking) -> dict:
    reset(run)
    path = scratch / "snapshot.csv"
    df.to_csv(path, index=False)
    t0 = time.perf_counter()
    track(run, path, as_of="2026-11", tracking=tracking)
    seconds = time.perf_counter() - t0
    t = read_json(run / "tracking.json")
    rec = t["recommendation"]
    cols = [f"{r['label']} {r['effect'] or float('nan'):.3f}" + (f" [{r['drift_kinds']}]" if r["drift_kinds"] != "distribution" else "")
            for r in sorted(t["drift"]["latest"], key=lambda r: -((r["effect"] or 0) / r["threshold"])) if r["drifted"]]
    segs: dict[str, list[str]] = {}
    for r in t["drift"]["segments_latest"]:
        if r["measured"] and r["drifted"]:
            kinds = f" [{r['drift_kinds']}]" if r["drift_kinds"] != "distribution" else ""
            segs.setdefault(f"S{r['segment'] + 1}", []).append(f"{r['label']} {r['effect']:.2f}{kinds}")
    ref = t["refit"][t["latest"]]
    eff = {r["column"]: r["effect"] for r in t["drift"]["latest"]}
    return {"snapshot": name, "rows": len(df),
            "balance / job effect": f"{eff.get('balance', float('nan')):.3f} / {eff.get('job', float('nan')):.3f}",
            "columns flagged": "; ".join(cols) or "none",
            "segments flagged": "; ".join(f"{s}: {', '.join(v)}" for s, v in segs.items()) or "none",
            "refit ARI (baseline)": f"{ref['ari']:.2f} ({ref['baseline_ari']:.2f})",
            "changed": f"{ref['changed_share']:.1%}", "recommendation": rec["action"], "seconds": round(seconds, 1),
            "_why": sentence(rec),
            "_any": bool(cols or segs), "_cols": bool(cols), "_segs": bool(segs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished run on the bank's train.csv (results/<run>)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bank-marketing"),
                    help="folder with train.csv and test.csv")
    ap.add_argument("--splits", type=int, default=20, help="random halves of train.csv tracked (no drift)")
    ap.add_argument("--samples", type=int, default=20,
                    help="random samples of train.csv as large as test.csv tracked (no drift)")
    ap.add_argument("--params", help="a params file whose tracking: block to use (default: the run's)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from segreport.methods import load_params

    tracking = load_params(a.params).tracking if a.params else None
    src = Path(a.run)
    ctx = read_json(src / "context.json")
    with tempfile.TemporaryDirectory(prefix="bench_drift.") as tmp:
        scratch = Path(tmp)
        run = scratch / src.name
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("snapshots", "tracking", "tracking.json"))
        read = lambda p: pd.read_csv(p, sep=";", dtype=str, keep_default_na=False, na_values=[""])  # noqa: E731
        train, test = read(Path(a.data) / "train.csv"), read(Path(a.data) / "test.csv")
        method, k = chosen_segmentation(RunLayout(run))
        seg = score_frame(run, method, k, test)["segment"].to_numpy()
        print(f"run {src} ({ctx['data']['rows']:,} customers), tracked segmentation {method} k={k}; "
              f"thresholds: {read_json(src / 'context.json')['params'].get('tracking') or 'defaults'}"
              if tracking is None else f"thresholds: {tracking.model_dump()}")
        rows = [one(run, test, scratch, "test.csv unchanged", tracking)]
        for name, df in planted(test, train, seg, a.seed).items():
            rows.append(one(run, df, scratch, name, tracking))
        table = pd.DataFrame(rows)
        rng = np.random.default_rng(a.seed)
        halves = []
        for i in range(a.splits):
            pick = np.sort(rng.choice(len(train), len(train) // 2, replace=False))
            halves.append(one(run, train.iloc[pick].reset_index(drop=True), scratch, f"half {i + 1}", tracking))
        h = pd.DataFrame(halves)
        small = []
        for i in range(a.samples):
            pick = np.sort(rng.choice(len(train), len(test), replace=False))
            small.append(one(run, train.iloc[pick].reset_index(drop=True), scratch, f"sample {i + 1}", tracking))
        sm = pd.DataFrame(small)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 90)
    show = [c for c in table.columns if not c.startswith("_")]
    print(table[show].to_markdown(index=False))
    print()
    for _, r in table.iterrows():
        print(f"{r['snapshot']}: {r['_why']}")
    print()
    for what, h in ((f"{a.splits} random halves of train.csv ({len(train) // 2:,} customers each)", h),
                    (f"{a.samples} random samples of train.csv ({len(test):,} customers each)", sm)):
        if not len(h):
            continue
        aris = h["refit ARI (baseline)"].str.split().str[0].astype(float)
        print(f"no drift, {what}: a column flagged in {h['_cols'].mean():.0%}, a segment's column in "
              f"{h['_segs'].mean():.0%}, recommendation other than keep in {(h['recommendation'] != 'keep').mean():.0%} "
              f"({', '.join(f'{n} {v}' for v, n in h['recommendation'].value_counts().items())}); refit ARI "
              f"{aris.min():.2f} to {aris.max():.2f}; track {h['seconds'].median():.1f} s median")
        for _, r in h[h["_any"] | (h["recommendation"] != "keep")].iterrows():
            print(f"  {r['snapshot']}: columns: {r['columns flagged']} | segments: {r['segments flagged']} | "
                  f"{r['_why']}")


if __name__ == "__main__":
    main()
