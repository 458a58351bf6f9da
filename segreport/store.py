"""The results catalog: every artifact's name, reader and writer, defined once; atomic writes; cache keys.

Every file a run writes goes through `atomic_output` (a temporary file in the same
folder, fsync, rename), so an interrupted run never leaves a half-written file, and a
failed write leaves no temporary file behind. JSON is written with sorted keys, so
identical results are identical bytes.

The layout of a run (results/<run>/):

    manifest.json  context.json  table.parquet  table.json  outcome.parquet
    spaces/<space>/      info.json, X.npy (or the arrays a method declares), transformer.joblib,
                         outliers.npy, outlier_model.joblib
    projections/         <space>.parquet + <space>.json
    cells/<method>/<value>/   the CELL_FILES below
    comparison/          metrics.parquet, comparison.json
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------- the names, once

LABELS = "labels.parquet"
METRICS = "metrics.json"
PROFILE = "profile.json"
PERSONAS = "personas.json"
SHAP = "shap.json"
SHAP_SAMPLE = "shap_sample.parquet"
STABILITY = "stability.json"
RULES = "rules.json"
MODEL = "model.joblib"
TIMINGS = "timings.json"
DONE = "done.json"
NOTEBOOK = "notebook.ipynb"
KERNEL_LOG = "kernel.log"
SPACE_INFO = "info.json"
TRANSFORMER = "transformer.joblib"
OUTLIERS = "outliers.npy"
OUTLIER_MODEL = "outlier_model.joblib"
# what a finished cell must hold to be reused or assigned from; hashed into the manifest
CELL_HASHED = (LABELS, METRICS)
CELL_REQUIRED = (LABELS, METRICS, PERSONAS, PROFILE, SHAP, MODEL)


def cell_name(method: str, value: int, grid: str = "k") -> str:
    """The name of one grid cell: 'kmeans/k4', or 'hdbscan/min_cluster_size200' for a method whose
    grid is not k. Built here only; folders and manifest keys use it."""
    return f"{method}/{cell_id(value, grid)}"


def cell_id(value: int, grid: str = "k") -> str:
    return f"{grid}{int(value)}"


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed onto `path`,
    on any failure (including a full disk) it is removed. The one writer every artifact uses."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: a served site needs the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep_partial(folder: str | Path) -> int:
    """Remove the temporary files `atomic_output` left under `folder` when its process was killed
    (a killed process cannot clean up); returns how many. Call it only when no writer is running there."""
    n = 0
    for stale in Path(folder).rglob(".*.tmp"):
        stale.unlink(missing_ok=True)
        n += 1
    return n


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
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
    # no pandas index metadata, fixed writer options: identical frames -> identical bytes
    with atomic_output(path) as tmp:
        frame.to_parquet(tmp, index=False, compression="zstd")


def atomic_write_npy(path: str | Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_joblib(path: str | Path, obj: Any) -> None:
    import joblib

    with atomic_output(path) as tmp:
        joblib.dump(obj, tmp)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    import shutil

    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


def read_joblib(path: str | Path) -> Any:
    import joblib

    return joblib.load(path)


def write_artifact(path: str | Path, obj: Any) -> None:
    """Write one artifact with the writer its file name calls for."""
    name = Path(path).name
    if name.endswith(".json"):
        atomic_write_json(path, obj)
    elif name.endswith(".parquet"):
        atomic_write_parquet(path, obj)
    elif name.endswith(".npy"):
        atomic_write_npy(path, obj)
    elif name.endswith(".joblib"):
        atomic_write_joblib(path, obj)
    else:
        atomic_write_bytes(path, obj if isinstance(obj, bytes) else str(obj).encode())


def read_artifact(path: str | Path, mmap: bool = False) -> Any:
    """Read one artifact with the reader its file name calls for (npy memory-mapped on request)."""
    name = Path(path).name
    if name.endswith(".json"):
        return read_json(path)
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    if name.endswith(".npy"):
        return np.load(path, mmap_mode="r" if mmap else None)
    if name.endswith(".joblib"):
        return read_joblib(path)
    return Path(path).read_bytes()


# --------------------------------------------------------------------------- keys


def key(*parts: Any) -> str:
    """A content hash of JSON-able parts: the cache key of a feature space or a grid cell."""
    return hashlib.sha256(to_json(list(parts)).encode()).hexdigest()[:20]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- the layout


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
    def table_info(self) -> Path:
        return self.root / "table.json"

    @property
    def outcome(self) -> Path:
        return self.root / "outcome.parquet"

    @property
    def ids(self) -> Path:
        """The table's identifier column (when it has a clean one): for assignment files, never fitted."""
        return self.root / "ids.parquet"

    @property
    def assignments(self) -> Path:
        """Per (method, k): who is in which segment, a file a campaign list is made from."""
        return self.root / "assignments"

    @property
    def context(self) -> Path:
        return self.root / "context.json"

    def space(self, name: str) -> Path:
        return self.root / "spaces" / name

    def projection(self, space: str) -> Path:
        return self.root / "projections" / f"{space}.parquet"

    def projection_info(self, space: str) -> Path:
        return self.root / "projections" / f"{space}.json"

    def cell(self, method: str, value: int, grid: str = "k") -> Path:
        return self.root / "cells" / cell_name(method, value, grid)

    def cell_file(self, method: str, value: int, name: str, grid: str = "k") -> Path:
        return self.cell(method, value, grid) / name

    def read_cell(self, method: str, value: int, name: str, grid: str = "k") -> Any:
        return read_artifact(self.cell_file(method, value, name, grid))

    def write_cell(self, method: str, value: int, name: str, obj: Any, grid: str = "k") -> None:
        write_artifact(self.cell_file(method, value, name, grid), obj)

    def cell_labels(self, method: str, value: int, grid: str = "k") -> np.ndarray:
        return pd.read_parquet(self.cell_file(method, value, LABELS, grid), columns=["segment"])["segment"].to_numpy()

    @property
    def comparison(self) -> Path:
        return self.root / "comparison"

    @property
    def comparison_json(self) -> Path:
        return self.comparison / "comparison.json"

    @property
    def metrics_table(self) -> Path:
        return self.comparison / "metrics.parquet"
