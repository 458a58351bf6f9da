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

from .store import atomic_write_bytes, atomic_write_json

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


def generate(rows: int = 5000, seed: int = 0) -> pd.DataFrame:
    """A bank-like table of `rows` customers; the same seed gives the same table."""
    rng = np.random.default_rng(seed)
    names = list(_ARCHETYPES)
    w = np.array([_ARCHETYPES[a]["w"] for a in names])
    which = rng.choice(len(names), size=rows, p=w / w.sum())
    parts = []
    for i, name in enumerate(names):
        n = int((which == i).sum())
        if n == 0:
            continue
        a = _ARCHETYPES[name]
        mean, sd, lo, hi = a["age"]
        age = np.clip(np.round(rng.normal(mean, sd, n)), lo, hi).astype(int)
        mu, sigma = a["bal"]
        mag = np.round(rng.lognormal(mu, sigma, n) - 50).astype(int)
        neg = rng.random(n) < a["neg"]
        balance = np.where(neg, -np.round(rng.lognormal(5.5, 1.0, n)).astype(int), mag)
        part = pd.DataFrame({
            "age": age,
            "job": _choice(rng, a["job"], n),
            "marital": _choice(rng, a["marital"], n),
            "education": _choice(rng, a["edu"], n),
            "default": np.where(rng.random(n) < a["default"] + 0.05 * neg, "yes", "no"),
            "balance": balance,
            "housing": np.where(rng.random(n) < a["housing"], "yes", "no"),
            "loan": np.where(rng.random(n) < a["loan"], "yes", "no"),
        }, index=np.flatnonzero(which == i))
        parts.append(part)
    return pd.concat(parts).sort_index().reset_index(drop=True)


def write_demo(out: str | Path, rows: int = 5000, seed: int = 0) -> Path:
    """Write the demo table as CSV plus a marker file that lets a run say 'demo data'."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = generate(rows, seed).to_csv(index=False).encode()
    atomic_write_bytes(out, data)
    import hashlib

    atomic_write_json(Path(str(out) + DEMO_MARKER_SUFFIX),
                      {"generator": "segreport.demo", "rows": rows, "seed": seed,
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
