"""CSV cells a spreadsheet opens without running anything: formulas neutralised, numbers kept.

Below the stages and the report alike: `assign` writes its CSV with it, the report's downloads theirs.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def csv_safe(v):
    """Neutralise spreadsheet formulas: cells starting with = + - @ get a leading apostrophe; a number
    written as text (-1, +3.5) stays a number."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") and not _NUMBER.match(v):
        return "'" + v
    return v
