"""How the report writes a number, defined once: the pages' `num` filter and the notebooks' tables."""

from __future__ import annotations

import numpy as np


def num(v, digits: int | None = None) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    v = float(v)
    if digits is not None:
        return f"{v:,.{digits}f}"
    if v.is_integer() and abs(v) < 1e12:
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:,.2f}"
    return f"{v:.3f}"
