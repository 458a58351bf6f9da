"""The embedded default data: a generated bank-like customer table.

Rows are drawn from a handful of life-stage archetypes (students, young workers,
families, professionals, entrepreneurs, retirees), so jobs go with education and
balance, retirees are older, students young and single, and balances are heavy
tailed and can be negative. Deterministic for a seed. The columns match the
seed's 8 (age, job, marital, education, default, balance, housing, loan).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import SegreportError
from ..core.store import atomic_write_bytes, atomic_write_json

DEMO_MARKER_SUFFIX = ".demo.json"

# archetype: weight, age (mean, sd, lo, hi), job probs, marital probs, education probs,
# log-balance (mu, sigma), share negative, P(default), P(housing), P(loan)
_ARCHETYPES = {
    "student": dict(w=0.05, age=(23, 3, 18, 32), job={"student": 0.85, "unemployed": 0.1, "services": 0.05},
                    marital={"single": 0.95, "married": 0.05}, edu={"secondary": 0.45, "tertiary": 0.5, "unknown": 0.05},
                    bal=(5.5, 1.2), neg=0.08, default=0.005, housing=0.05, loan=0.03),
    "young_worker": dict(w=0.2, age=(29, 4, 20, 40), job={"blue-collar": 0.35, "services": 0.25, "technician": 0.2,
                                                          "admin.": 0.15, "housemaid": 0.05},
                         marital={"single": 0.7, "married": 0.25, "divorced": 0.05},
                         edu={"secondary": 0.75, "primary": 0.1, "tertiary": 0.12, "unknown": 0.03},
                         bal=(5.8, 1.3), neg=0.15, default=0.03, housing=0.55, loan=0.25),
    "family": dict(w=0.3, age=(42, 7, 28, 60), job={"blue-collar": 0.4, "technician": 0.2, "admin.": 0.15,
                                                    "services": 0.15, "housemaid": 0.05, "unemployed": 0.05},
                   marital={"married": 0.85, "divorced": 0.1, "single": 0.05},
                   edu={"secondary": 0.6, "primary": 0.3, "tertiary": 0.05, "unknown": 0.05},
                   bal=(6.3, 1.3), neg=0.1, default=0.02, housing=0.8, loan=0.2),
    "professional": dict(w=0.22, age=(40, 8, 25, 62), job={"management": 0.7, "technician": 0.15, "admin.": 0.1,
                                                           "self-employed": 0.05},
                         marital={"married": 0.6, "single": 0.3, "divorced": 0.1},
                         edu={"tertiary": 0.85, "secondary": 0.13, "unknown": 0.02},
                         bal=(7.4, 1.2), neg=0.04, default=0.005, housing=0.45, loan=0.12),
    "entrepreneur": dict(w=0.08, age=(45, 9, 25, 70), job={"entrepreneur": 0.6, "self-employed": 0.4},
                         marital={"married": 0.75, "single": 0.15, "divorced": 0.1},
                         edu={"tertiary": 0.45, "secondary": 0.4, "primary": 0.1, "unknown": 0.05},
                         bal=(7.0, 1.8), neg=0.18, default=0.06, housing=0.55, loan=0.35),
    "retiree": dict(w=0.15, age=(68, 7, 55, 95), job={"retired": 0.92, "housemaid": 0.05, "unknown": 0.03},
                    marital={"married": 0.65, "divorced": 0.15, "single": 0.2},
                    edu={"primary": 0.45, "secondary": 0.35, "tertiary": 0.12, "unknown": 0.08},
                    bal=(7.6, 1.1), neg=0.02, default=0.005, housing=0.15, loan=0.05),
}


def _choice(rng: np.random.Generator, probs: dict, n: int) -> np.ndarray:
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=float)
    return np.array(keys, dtype=object)[rng.choice(len(keys), size=n, p=p / p.sum())]


def _draw(rng: np.random.Generator, a: dict, n: int) -> pd.DataFrame:
    """n customers of one archetype (the draws in this order make the demo table; do not reorder)."""
    mean, sd, lo, hi = a["age"]
    age = np.clip(np.round(rng.normal(mean, sd, n)), lo, hi).astype(int)
    mu, sigma = a["bal"]
    mag = np.round(rng.lognormal(mu, sigma, n) - 50).astype(int)
    neg = rng.random(n) < a["neg"]
    balance = np.where(neg, -np.round(rng.lognormal(5.5, 1.0, n)).astype(int), mag)
    return pd.DataFrame({
        "age": age,
        "job": _choice(rng, a["job"], n),
        "marital": _choice(rng, a["marital"], n),
        "education": _choice(rng, a["edu"], n),
        "default": np.where(rng.random(n) < a["default"] + 0.05 * neg, "yes", "no"),
        "balance": balance,
        "housing": np.where(rng.random(n) < a["housing"], "yes", "no"),
        "loan": np.where(rng.random(n) < a["loan"], "yes", "no"),
    })


def _generate(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The demo table and each row's archetype (life stage)."""
    rng = np.random.default_rng(seed)
    names = list(_ARCHETYPES)
    w = np.array([_ARCHETYPES[a]["w"] for a in names])
    which = rng.choice(len(names), size=rows, p=w / w.sum())
    parts = []
    for i, name in enumerate(names):
        n = int((which == i).sum())
        if n == 0:
            continue
        part = _draw(rng, _ARCHETYPES[name], n)
        part.index = np.flatnonzero(which == i)
        parts.append(part)
    return pd.concat(parts).sort_index().reset_index(drop=True), np.array(names, dtype=object)[which]


def generate(rows: int = 5000, seed: int = 0) -> pd.DataFrame:
    """A bank-like table of `rows` customers; the same seed gives the same table."""
    return _generate(rows, seed)[0]


def write_demo(out: str | Path, rows: int = 5000, seed: int = 0) -> Path:
    """Write the demo table as CSV plus a marker file that lets a run say 'demo data'."""
    out = Path(out)
    data = generate(rows, seed).to_csv(index=False).encode()
    atomic_write_bytes(out, data)
    import hashlib

    atomic_write_json(Path(str(out) + DEMO_MARKER_SUFFIX),
                      {"generator": "segreport.lib.demo", "rows": rows, "seed": seed,
                       "sha256": hashlib.sha256(data).hexdigest()})
    return out


def is_demo(path: str | Path, sha256: str) -> dict | None:
    """The generator's facts if `path` is untouched demo data, else None."""
    marker = Path(str(path) + DEMO_MARKER_SUFFIX)
    if not marker.exists():
        return None
    try:
        facts = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return facts if facts.get("sha256") == sha256 else None


# --------------------------------------------------------------------------- snapshots over time

# the life stage a customer moves on to (retirees stay retirees)
NEXT_STAGE = {"student": "young_worker", "young_worker": "family", "family": "retiree",
              "professional": "entrepreneur", "entrepreneur": "retiree"}
NEW_JOB = "freelancer"  # a job level the fitting table never had; some newcomers have it


def generate_snapshots(rows: int = 5000, seed: int = 0, snapshots: int = 3,
                       drift: float = 0.3) -> tuple[list[pd.DataFrame], dict]:
    """The demo customers over time, with `customer_id`, and what was planted in each step.

    Frame 0 is the fitting table: the demo table of (rows, seed) with `customer_id` 1..rows in
    front. Each later frame is the previous one a period on, with drift `d`:

    - a share d/3 of the customers who have a next life stage (NEXT_STAGE) move to it: every
      attribute is drawn anew from the new stage's archetype;
    - a share d/5 of the customers leave; d/4 x rows new customers arrive (ids continue), drawn
      from the same archetype mix, a share d/3 of them with the job 'freelancer' (never seen in
      the fitting table);
    - everyone who stays is a year older; every balance is the customer's base balance times
      (1 + d) to the power of the period; a share d/2 of the blue-collar workers become
      technicians.

    Returns (frames, planted): planted['steps'][t-1] lists the ids that left, arrived and moved
    in step t, and the shifts applied. Deterministic for (rows, seed, snapshots, drift).
    """
    if not 0 <= drift <= 1:
        raise SegreportError(f"--drift {drift}: must be between 0 and 1")
    base, stage = _generate(rows, seed)
    rng = np.random.default_rng([seed, 20261])  # a stream of its own: the fitting table is the demo table
    factor = 1.0 + drift
    cur = base.copy()
    cur.insert(0, "customer_id", np.arange(1, rows + 1))
    cur["_stage"] = stage
    cur["_balance"] = cur["balance"].astype(float)  # the base balance, before the period's factor
    next_id = rows + 1
    frames = [cur.drop(columns=["_stage", "_balance"]).reset_index(drop=True)]
    steps = []
    for t in range(1, snapshots + 1):
        cur = cur.copy()
        n = len(cur)
        # who leaves
        left = rng.random(n) < drift / 5
        left_ids = cur.loc[left, "customer_id"].tolist()
        cur = cur.loc[~left].reset_index(drop=True)
        n = len(cur)
        # who moves on to the next life stage
        can = cur["_stage"].isin(list(NEXT_STAGE)).to_numpy()
        moves = can & (rng.random(n) < drift / 3)
        moved_to: dict[str, int] = {}
        was = cur["_stage"].to_numpy().copy()  # one step per period: a student who moves becomes a young worker
        for old, new in NEXT_STAGE.items():
            idx = np.flatnonzero(moves & (was == old))
            if not len(idx):
                continue
            drawn = _draw(rng, _ARCHETYPES[new], len(idx))
            for c in drawn.columns:
                cur.loc[idx, c] = drawn[c].to_numpy()
            cur.loc[idx, "_balance"] = drawn["balance"].to_numpy().astype(float)
            cur.loc[idx, "_stage"] = new
            moved_to[new] = moved_to.get(new, 0) + len(idx)
        moved_ids = cur.loc[moves, "customer_id"].tolist()
        # everyone who stays is a year older; some blue-collar workers retrain as technicians
        cur.loc[~moves, "age"] = cur.loc[~moves, "age"].astype(int) + 1
        blue = np.flatnonzero((cur["job"] == "blue-collar").to_numpy() & ~moves & (rng.random(n) < drift / 2))
        cur.loc[blue, "job"] = "technician"
        # newcomers from the same mix; some with a job the fitting table never had
        n_new = int(round(drift / 4 * rows))
        new, new_stage = _generate(n_new, int(rng.integers(2**31))) if n_new else (base.iloc[:0].copy(), [])
        new = new.reset_index(drop=True)
        gig = rng.random(len(new)) < drift / 3
        new.loc[gig, "job"] = NEW_JOB
        new.insert(0, "customer_id", np.arange(next_id, next_id + len(new)))
        new["_stage"] = new_stage
        new["_balance"] = new["balance"].astype(float)
        next_id += len(new)
        cur = pd.concat([cur, new], ignore_index=True)
        cur["balance"] = np.round(cur["_balance"] * factor ** t).astype(int)
        cur["age"] = cur["age"].astype(int)
        frames.append(cur.drop(columns=["_stage", "_balance"]).reset_index(drop=True))
        steps.append({"snapshot": t, "rows": int(len(cur)), "left": [int(i) for i in left_ids],
                      "new": new["customer_id"].astype(int).tolist(), "moved": [int(i) for i in moved_ids],
                      "moved_to": moved_to, "age_shift_years": t, "balance_factor": round(factor ** t, 6),
                      "blue_collar_to_technician": int(len(blue)),
                      "unseen": {"job": {NEW_JOB: int(gig.sum())}}})
    planted = {"generator": "segreport.lib.demo.generate_snapshots", "rows": rows, "seed": seed,
               "snapshots": snapshots, "drift": drift, "id_column": "customer_id", "steps": steps}
    return frames, planted


def write_snapshots(out: str | Path, rows: int = 5000, seed: int = 0, snapshots: int = 3,
                    drift: float = 0.3) -> list[Path]:
    """data/snap.csv -> data/snap-0.csv (fitting table), data/snap-1.csv .. snap-N.csv, data/snap.planted.json."""
    out = Path(out)
    frames, planted = generate_snapshots(rows, seed, snapshots, drift)
    stem = out.with_suffix("")
    paths = [Path(f"{stem}-{t}{out.suffix or '.csv'}") for t in range(len(frames))]
    for t, (frame, path) in enumerate(zip(frames, paths)):
        if t:
            planted["steps"][t - 1]["file"] = path.name
        atomic_write_bytes(path, frame.to_csv(index=False).encode())
    planted["fitting_table"] = paths[0].name
    atomic_write_json(Path(f"{stem}.planted.json"), planted)
    return paths
