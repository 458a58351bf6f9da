"""The results layout on disk, the manifest, atomic writes and cache keys.

Every file a run writes goes through an atomic write (temporary file in the same
folder, fsync, rename), so an interrupted run never leaves a half-written file;
JSON is written with sorted keys so identical results are identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return _jsonable(float(o))
    if isinstance(o, float):
        return None if math.isnan(o) or math.isinf(o) else o
    if isinstance(o, np.ndarray):
        return [_jsonable(x) for x in o.tolist()]
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(x) for x in o]
    if isinstance(o, Path):
        return str(o)
    return o


def to_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_or_empty(path: str | Path) -> dict:
    """A JSON file's contents, or {} where it is missing or unreadable (a stale or interrupted write)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def atomic_write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # no pandas index metadata, fixed writer options: identical frames -> identical bytes
        frame.to_parquet(tmp, index=False, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_npy(path: str | Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def key(*parts: Any) -> str:
    """A content hash of JSON-able parts: the cache key of a feature space or a grid cell."""
    return hashlib.sha256(to_json(list(parts)).encode()).hexdigest()[:20]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunLayout:
    """Where each result of a run lives: results/<run>/..."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def table(self) -> Path:
        return self.root / "table.parquet"

    @property
    def context(self) -> Path:
        return self.root / "context.json"

    def space(self, name: str) -> Path:
        return self.root / "spaces" / name

    def projection(self, space: str) -> Path:
        return self.root / "projections" / f"{space}.parquet"

    def cell(self, method: str, k: int) -> Path:
        return self.root / "cells" / method / f"k{k}"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison"
