"""The results catalog: every artifact's name, reader and writer, defined once; atomic writes; cache keys.

Every file a run writes goes through `atomic_output` (a temporary file in the same
folder, fsync, rename), and every folder written whole (the site, a snapshot, an exported
model) through `atomic_folder` (a temporary folder beside it, one rename), so an interrupted
run never leaves a half-written file, and a failed write leaves no temporary file behind.
The records the stages hand each other (context.json, comparison.json, each cell's
metrics.json) are pydantic models (`Context`, `Comparison`, `CellMetrics`), read and written
by `RunLayout` (`read_context`, `write_context`, ...): a damaged or wrong-typed record is said
in one line naming the file (RecordError), and a record is written as the same bytes as the
plain JSON writer would write its fields.
A failed write is raised naming the file: NoSpaceError for a full disk or quota (numpy's
errno-less short write included, where the disk has no room left), WriteError otherwise; the
CLI says either in one line, exit status 4. JSON is written with sorted keys, so identical
results are identical bytes.

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
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import SegreportError

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
SPACE_X = "X.npy"  # a feature space's matrix (a method may declare more arrays: <name>.npy)
CONTEXT = "context.json"
MANIFEST = "manifest.json"
COMPARISON = "comparison.json"
METRICS_TABLE = "metrics.parquet"
SITE_RECORD = "site.json"  # in the run folder: the key of the site last built from it, and its files
TRACKING = "tracking.json"
SNAPSHOT = "snapshot.json"
DRIFT = "drift.parquet"
OUTCOME = "outcome.parquet"
EXPORT_RECORD = "export.json"  # an exported embedding model's facts, written last into its folder


def embedding_part(folder: str | Path, precision: str, digest: str) -> Path:
    """One part of the embedding cache: the embeddings of a run of distinct texts (embed.EmbeddingPlan)."""
    return Path(folder) / f"part-{precision}-{digest}.parquet"


def gate_verdict(cache_dir: str | Path, digest: str) -> Path:
    """The fidelity gate's verdict for one (model, CPU, threads, versions) (embed_fast.verdict_file)."""
    return Path(cache_dir) / "gate" / f"verdict-{digest}.json"
# what a finished cell must hold to be reused or assigned from; hashed into the manifest
CELL_HASHED = (LABELS, METRICS)
CELL_REQUIRED = (LABELS, METRICS, PERSONAS, PROFILE, SHAP, MODEL)
# what a finished cell's done.json records (size + sha256) and a rerun verifies before reusing the cell
CELL_VERIFIED = (LABELS, METRICS, PROFILE, PERSONAS, SHAP, SHAP_SAMPLE, STABILITY, RULES, MODEL)
# the records of how a cell ran (the executed notebook the report publishes, the seconds per stage): verified
# the same way (done.json's `records`), kept out of `files`, on which the comparison's and the site's keys
# depend (their bytes differ on every run). kernel.log is neither: the kernel appends to it, nothing reads it.
CELL_RECORDS = (NOTEBOOK, TIMINGS)
LOCK = ".lock"


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


class WriteError(OSError):
    """A file could not be written (a read-only or forbidden folder, an I/O error, a short write on a disk
    with room left): the CLI says so in one line naming the file, exit status 4. NoSpaceError is the
    full disk's kind."""

    def __init__(self, path: str | Path, code: int | None = None, reason: str = ""):
        self.path = Path(path)
        self.reason = reason or (os.strerror(code) if code else "write failed")
        super().__init__(code, self.reason)

    def __str__(self) -> str:
        return f"could not write {self.path.name} in {shown(self.path.parent)} ({self.reason})"

    def __reduce__(self):  # raised in a worker process: rebuilt in the parent from its path
        return (type(self), (str(self.path), self.errno, self.reason))

    def moved(self, src: str | Path, dst: str | Path) -> "WriteError":
        """The same error naming the file where it was going: `path` below the temporary folder `src`
        (see atomic_folder) said as below `dst`."""
        try:
            rel = self.path.relative_to(src)
        except ValueError:
            return self
        return type(self)(Path(dst) / rel, self.errno, self.reason)


class NoSpaceError(WriteError):
    """The disk (or the quota) filled up while writing `path`. The CLI says so in one line, exit status 4."""

    def __init__(self, path: str | Path, code: int | None = errno.ENOSPC, reason: str = ""):
        code = code or errno.ENOSPC
        super().__init__(path, code, os.strerror(code))

    def __str__(self) -> str:
        return f"no space left on device in {shown(self.path.parent)} while writing {self.path.name}"

    @classmethod
    def from_text(cls, text: str, fallback: str | Path) -> "NoSpaceError":
        """The error a worker or kernel reported as text (its str), or one naming `fallback`."""
        m = re.search(r"no space left on device in (.+?) while writing (\S+)", text or "")
        return cls(Path(m.group(1)) / m.group(2)) if m else cls(fallback)


_NO_SPACE_TEXT = re.compile(r"no space left on device|disk quota exceeded|errno 28\b|errno 122\b", re.I)
# numpy's `tofile` (np.save into a file) reports a short write without an errno: "N requested and M written"
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")
FULL_MARGIN = 1 << 20  # a short write on a disk with less than this beyond what was missing: a full disk


def no_space(exc: BaseException | str | None) -> bool:
    """Whether an exception (or an error reported as text) is a full disk or an exceeded quota."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return bool(exc) and bool(_NO_SPACE_TEXT.search(str(exc)))  # pyarrow's IO errors carry it in the text


def disk_full(folder: str | Path, missing: int = 0) -> bool:
    """Whether the file system of `folder` has no room for `missing` more bytes (give or take FULL_MARGIN)."""
    try:
        return shutil.disk_usage(folder).free < missing + FULL_MARGIN
    except OSError:
        return False


def write_failure(exc: BaseException, path: str | Path) -> WriteError:
    """How a failed write of `path` is said: a full disk or quota (NoSpaceError), a short write where the
    disk has no room left (also NoSpaceError: numpy's carries no errno), else a WriteError naming the
    file and the reason. Call it before the partly written file is removed: its bytes count as used."""
    if isinstance(exc, WriteError):
        return exc
    if no_space(exc):
        return NoSpaceError(path, getattr(exc, "errno", None) or errno.ENOSPC)
    m = _SHORT_WRITE.search(str(exc))
    if m:
        missing = int(m.group(1)) - int(m.group(2))
        if disk_full(Path(path).parent, missing):
            return NoSpaceError(path)
        return WriteError(path, None, f"short write: {m.group(2)} of {m.group(1)} bytes written")
    if isinstance(exc, OSError):
        return WriteError(path, exc.errno, exc.strerror or str(exc) or type(exc).__name__)
    return WriteError(path, None, f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def writing(path: str | Path):
    """Any OSError raised inside said as a failed write of `path` (write_failure): for a file written in
    place, where no temporary file is needed (inside a temporary folder, a log)."""
    try:
        yield
    except OSError as exc:
        raise write_failure(exc, path) from exc


def make_folder(path: str | Path) -> Path:
    """`path` made with its parents (where missing); a full disk or another failure said naming it."""
    path = Path(path)
    with writing(path / "."):
        path.mkdir(parents=True, exist_ok=True)
    return path


def shown(path: str | Path) -> str:
    """A path as messages show it: relative to the working folder where it lies below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed onto `path`,
    on any failure (including a full disk) it is removed. The one writer every artifact uses.
    An OSError while writing is raised as NoSpaceError (a full disk or quota, or a short write where
    the disk has no room left) or WriteError, naming `path` (write_failure). The temporary name holds
    this process's id, so `sweep_orphans` can tell a dead writer's leftovers in a shared folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise write_failure(exc, path) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: a served site needs the usual file mode
        os.replace(tmp, path)
    except BaseException as exc:
        said = write_failure(exc, path) if isinstance(exc, OSError) else None  # before the partial file goes
        Path(tmp).unlink(missing_ok=True)
        if said is not None and said is not exc:
            raise said from exc
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path, replace: bool = True):
    """Yields a temporary folder beside `path` to write a whole folder into (a snapshot, the site, an
    exported model); on success it replaces `path` in one rename (an existing folder is moved aside
    first and removed after), on any failure it is removed. A failed write inside, said naming its file
    below the temporary folder (WriteError, NoSpaceError), is said naming it below `path`.

    `replace=False`, for a folder of a cache that several processes may fill at once with the same
    content (an exported model): where `path` exists by then, another process finished it first, and it
    is kept (the temporary folder is removed)."""
    path = Path(path)
    make_folder(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700: the folder gets the usual mode, as a file does
    except OSError as exc:
        raise write_failure(exc, path / ".") from exc
    try:
        yield tmp
        old = None
        if not replace:
            try:
                os.rename(tmp, path)  # a non-empty folder at `path` refuses it: the other process's stays
            except OSError:
                if not path.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            return
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        said = None
        if isinstance(exc, OSError):
            said = write_failure(exc, Path(exc.filename) if getattr(exc, "filename", None) else path / ".")
            said = said.moved(tmp, path)
        shutil.rmtree(tmp, ignore_errors=True)
        if said is not None and said is not exc:
            raise said from exc
        raise


def sweep_partial(folder: str | Path, deep: bool = True) -> int:
    """Remove the temporary files (and folders) `atomic_output` and `atomic_folder` left under `folder`
    (directly in it where not `deep`) when their process was killed (a killed process cannot clean up);
    returns how many. Call it only when no writer is running there."""
    n = 0
    found = Path(folder).rglob(".*.tmp") if deep else Path(folder).glob(".*.tmp")
    for stale in sorted(found, key=lambda p: -len(p.parts)):
        if stale.is_dir() and not stale.is_symlink():  # an atomic_folder's
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(folder: str | Path, min_age: float = 600.0) -> int:
    """In a folder several runs share (the embedding cache): remove the temporary files whose writer
    is gone (its process id, from the name, runs no more here) and that are older than `min_age`
    seconds (a writer on another host of a shared folder is never that slow to write one part)."""
    n, now = 0, time.time()
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)
        try:
            pid = int(parts[1])
            old = now - tmp.stat().st_mtime > min_age
        except (ValueError, IndexError, OSError):
            continue
        if old and not _alive(pid):
            tmp.unlink(missing_ok=True)
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
    """np.save straight into the temporary file: no in-memory copy of the bytes (a million 384-float
    rows would be held twice more, 3 GB, by a buffer and its bytes)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def atomic_write_joblib(path: str | Path, obj: Any) -> None:
    import joblib

    with atomic_output(path) as tmp:
        joblib.dump(obj, tmp)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


def copy_tree(src: str | Path, dst: str | Path, skip: tuple[str, ...] = ()) -> None:
    """The files under `src` copied below `dst` (a folder being written: inside an atomic_folder), with
    their times; names matching a pattern of `skip` left out. A failed copy is said naming its file
    (shutil.copytree would go on and raise them all at the end, naming none the CLI can say)."""
    import fnmatch

    src, dst = Path(src), Path(dst)
    left_out = lambda name: any(fnmatch.fnmatch(name, p) for p in skip)  # noqa: E731
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not left_out(d))
        here = dst / Path(root).relative_to(src)
        make_folder(here)
        for name in sorted(files):
            if not left_out(name):
                with writing(here / name):
                    shutil.copy2(Path(root) / name, here / name)


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


# --------------------------------------------------------------------------- typed records

# a number as written: an int stays an int, a float a float (a `float` field would write 3 as 3.0)
Number = Union[int, float]


class RecordError(SegreportError):
    """A record (context.json, comparison.json, a cell's metrics.json) that is not JSON, or not of its
    model: said in one line naming the file."""


class Record(BaseModel):
    """A JSON record of a run, typed: the fields every stage relies on are declared (strictly: a wrong
    type is an error, never converted), anything else a stage or a method adds is kept as it is. Written
    with `to_json` (sorted keys, NaN as null): the bytes the plain writer writes of the same dict.

    It also answers `record["name"]`, `record.get("name")` and `"name" in record` for the call sites
    (and templates) that read it as the dict it was."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)
    what: ClassVar[str] = "record"

    @classmethod
    def of(cls, obj: Any) -> "Record":
        """`obj` (a dict as a stage builds it, numpy numbers and all, or a record) as this record."""
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, Record):
            obj = obj.dump()
        return cls.model_validate(_jsonable(obj))

    @classmethod
    def parse(cls, text: str, path: str | Path) -> "Record":
        """The record in `text` (read from `path`); RecordError naming `path` where it is not one."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordError(f"{shown(path)}: not a valid {cls.what} (not JSON: {getattr(exc, 'msg', exc)}); "
                              "rerun `segreport run`") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the record"
            more = f" and {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
            raise RecordError(f"{shown(path)}: not a valid {cls.what} ({where}: {first['msg'].lower()}{more}); "
                              "rerun `segreport run`") from None

    @classmethod
    def read(cls, path: str | Path) -> "Record":
        return cls.parse(Path(path).read_text(encoding="utf-8"), path)

    def dump(self) -> dict:
        """The record as the dict it was built from: the fields it was given, under their JSON names."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def to_json(self) -> str:
        return to_json(self.dump())

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    # ------------------------------------------------------------ read as the dict it was

    def _field(self, name: str) -> str | None:
        for field, info in type(self).model_fields.items():
            if name == (info.alias or field):
                return field if field in self.model_fields_set else None
        return None

    def __getitem__(self, name: str) -> Any:
        field = self._field(name)
        if field is not None:
            return getattr(self, field)
        if self.model_extra and name in self.model_extra:
            return self.model_extra[name]
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self._field(name) is not None or name in (self.model_extra or {}))

    def keys(self):
        return self.dump().keys()


class Context(Record):
    """context.json: what `prepare` found and built, which every later stage reads."""

    what: ClassVar[str] = "run context"
    params: dict[str, Any]
    methods: list[str]
    grid: dict[str, list[int]]
    data: dict[str, Any]
    schema_: list[dict[str, Any]] = Field(alias="schema")
    used: dict[str, list[str]]
    labels: dict[str, Any]
    units: dict[str, Any]
    spaces: dict[str, dict[str, Any]]
    projections: dict[str, Any]
    versions: dict[str, Any]
    segreport: str
    skipped: Optional[dict[str, Any]] = None
    scale: Optional[dict[str, Any]] = None
    inputs: Optional[dict[str, Any]] = None
    prepare_seconds: Optional[Number] = None


class CellMetrics(Record):
    """A grid cell's metrics.json: its segments' sizes and every score the comparison and the pages read
    (a method's own facts, `Method.model_facts`, beside them)."""

    what: ClassVar[str] = "cell's metrics"
    method: str
    grid: str
    value: int
    k: int
    seed: int
    rows: int
    fitted_rows: int
    outliers: int
    sizes: list[int]
    cost: Optional[Number]
    cost_name: str
    own: dict[str, Any]
    common: dict[str, Any]
    gower: dict[str, Any]
    own_fitted_rows: Optional[dict[str, Any]]
    rules: dict[str, Any]
    majority_baseline: Optional[Number]
    stability: Optional[dict[str, Any]]
    lgbm_accuracy: Optional[Number]
    lgbm_folds: Optional[int] = None
    lgbm_cv_rows: Optional[int] = None
    lgbm_engine: Optional[str] = None
    lgbm_validation: Optional[str] = None
    lgbm_holdout_rows: Optional[int] = None
    shap_rows: Optional[int] = None
    refits: Optional[int] = None  # clusterboot refits this cell ran (sequential stopping: 20 to stability_resamples)
    algorithm: str


class Comparison(Record):
    """comparison/comparison.json: the recommended grid value per method, the agreement between methods,
    the verdict in the neutral spaces and the one recommendation."""

    what: ClassVar[str] = "comparison"
    recommended: dict[str, dict[str, Any]]
    # what `compare` always writes; optional for the commands that read only the recommendation of a run
    recommendation: Optional[dict[str, Any]] = None
    choices: Optional[dict[str, Any]] = None
    agreement: Optional[list[dict[str, Any]]] = None
    agreement_chosen: Optional[list[dict[str, Any]]] = None
    outcome: Optional[dict[str, Any]] = None
    verdict: Optional[dict[str, Any]] = None
    nulls: Optional[dict[str, Any]] = None
    structure: Optional[dict[str, Any]] = None
    extras: Optional[dict[str, Any]] = None
    refits: Optional[dict[str, Any]] = None  # the refits the grid ran, the cells stopped early and those confirmed


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


# --------------------------------------------------------------------------- verification


def file_record(path: str | Path) -> dict:
    """What a reuse checks a file against: its size and sha256, taken when it was written."""
    return {"size": os.stat(path).st_size, "sha256": sha256_file(path)}


def damage(path: str | Path, record: dict | None) -> str | None:
    """Why `path` is not the file `record` describes ('missing', 'size differs ...', 'hash differs'),
    or None where it is intact. The size is checked first: a cut file costs no hashing."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    record = record or {}
    if record.get("size") is not None and size != record["size"]:
        return f"size differs: {size} bytes, not {record['size']}"
    if record.get("sha256") and sha256_file(path) != record["sha256"]:
        return "hash differs"
    return None


def verify(folder: str | Path, records: dict) -> tuple[Path, str] | None:
    """The first file of `records` ({name: record} under `folder`) that is damaged, with why; else None."""
    for name in sorted(records):
        why = damage(Path(folder) / name, records[name])
        if why:
            return Path(folder) / name, why
    return None


def say_damaged(path: str | Path, why: str, action: str) -> None:
    """The one line a reuse prints for a damaged file before it rebuilds what the file belongs to."""
    what = f"{shown(path)} is missing" if why == "missing" else f"{shown(path)} is damaged ({why})"
    print(f"segreport: {what}: {action}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run folder's lock


class RunLock:
    """`fcntl.flock` on <run>/.lock, held for a run's life: one run writes a run folder at a time.

    The kernel drops the lock when its process ends, however it ends, so a killed run's lock is
    never stale; the holder's pid, host and start time are written into the file for the message
    another run prints, and cleared on release (a record still there names a run that was killed).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.fd: int | None = None

    @staticmethod
    def _describe(record: dict) -> str:
        import platform

        where = "" if record.get("host") in (None, platform.node()) else f" on {record['host']}"
        return f"pid {record.get('pid', '?')}{where}, started {record.get('started', '?')}"

    def _record(self, fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self, wait: bool = True) -> "RunLock":
        import fcntl

        make_folder(self.folder)
        with writing(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                msg = (f"{shown(self.folder)} is being written by another segreport run "
                       f"({self._describe(self._record(fd))})")
                if not wait:
                    raise SegreportError(msg + "; run again when it has finished, or without --no-wait") from None
                print(f"segreport: {msg}; waiting for it to finish", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            previous = self._record(fd)
            if previous.get("pid"):
                print(f"segreport: {shown(self.folder)}: the run that was writing it ({self._describe(previous)}) "
                      "was stopped without finishing; taking over its lock", file=sys.stderr, flush=True)
            self._sign(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    @classmethod
    def adopt(cls, folder: str | Path, fd: int) -> "RunLock":
        """The lock another process of this run took (`acquire`) and handed over as `fd`: held here from
        now on, its record naming this process."""
        held = cls(folder)
        held.fd = fd
        cls._sign(fd, held.path)
        return held

    @staticmethod
    def _sign(fd: int, path: Path) -> None:
        """The holder's record: this process, for the message another run prints."""
        import platform
        from datetime import datetime, timezone

        mine = {"pid": os.getpid(), "host": platform.node(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with writing(path):  # a full disk can refuse even these few bytes
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(mine).encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self.fd, 0)  # a clean end: the next run finds no record of a stopped run
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------- the layout


class RunLayout:
    """Where each result of a run lives: results/<run>/..."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def table(self) -> Path:
        return self.root / "table.parquet"

    @property
    def table_info(self) -> Path:
        return self.root / "table.json"

    @property
    def outcome(self) -> Path:
        return self.root / OUTCOME

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
        return self.root / CONTEXT

    def read_context(self) -> Context:
        return Context.read(self.context)

    def write_context(self, ctx: dict | Context) -> Context:
        rec = Context.of(ctx)
        rec.write(self.context)
        return rec

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

    def read_metrics(self, method: str, value: int, grid: str = "k") -> CellMetrics:
        return CellMetrics.read(self.cell_file(method, value, METRICS, grid))

    def write_metrics(self, method: str, value: int, metrics: dict | CellMetrics, grid: str = "k") -> CellMetrics:
        rec = CellMetrics.of(metrics)
        rec.write(self.cell_file(method, value, METRICS, grid))
        return rec

    def space_matrix(self, name: str) -> Path:
        """A feature space's matrix (X.npy)."""
        return self.space(name) / SPACE_X

    def space_array(self, name: str, array: str) -> Path:
        """One of the arrays a feature space is saved as (<array>.npy: X, or those its method declares)."""
        return self.space(name) / f"{array}.npy"

    def space_transformer(self, name: str) -> Path:
        return self.space(name) / TRANSFORMER

    def cell_labels(self, method: str, value: int, grid: str = "k") -> np.ndarray:
        return pd.read_parquet(self.cell_file(method, value, LABELS, grid), columns=["segment"])["segment"].to_numpy()

    @property
    def comparison(self) -> Path:
        return self.root / "comparison"

    @property
    def comparison_json(self) -> Path:
        return self.comparison / COMPARISON

    def read_comparison(self) -> Comparison:
        return Comparison.read(self.comparison_json)

    def write_comparison(self, comparison: dict | Comparison) -> Comparison:
        rec = Comparison.of(comparison)
        rec.write(self.comparison_json)
        return rec

    def comparison_part(self, name: str) -> Path:
        """A part of the comparison kept under the key of its own inputs (compare._memo): <name>.json."""
        return self.comparison / f"{name}.json"

    @property
    def metrics_table(self) -> Path:
        return self.comparison / METRICS_TABLE

    @property
    def site_record(self) -> Path:
        return self.root / SITE_RECORD

    @property
    def tracking(self) -> Path:
        """tracking.json: the snapshots' history summarised (segreport track)."""
        return self.root / TRACKING

    @property
    def tracking_tables(self) -> Path:
        """tracking/: the summary's tables, <name>.parquet (written whole: atomic_folder)."""
        return self.root / "tracking"

    def tracking_table(self, name: str) -> Path:
        return self.tracking_tables / f"{name}.parquet"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"


# --------------------------------------------------------------------------- the chosen segmentation


def chosen_segmentation(layout: RunLayout, method: str | None = None, k: int | None = None) -> tuple[str, int]:
    """The (method, k) a command acts on (`track`, `list`): as given, else comparison.json's "recommendation", else its first
    "recommended" method and that method's k. A method without k takes the method's recommended k."""
    if method is not None and k is not None:
        return method, int(k)
    path = layout.comparison_json
    if not path.exists():
        raise SegreportError(f"{path}: missing, so the recommended segmentation is unknown; "
                             "give --method and --k, or finish the run with `segreport run`")
    comp = layout.read_comparison()  # a damaged one: RecordError, one line naming it
    recommended = comp.get("recommended") or {}
    if method is None:
        rec = comp.get("recommendation")
        if isinstance(rec, dict) and rec.get("method") and rec.get("k") is not None:
            value = int(rec.get("value", rec["k"]))  # the cell: k, or a method's own grid value
            if k is None or int(k) == value:
                return str(rec["method"]), value
        if k is not None:
            raise SegreportError(f"--k {k} without --method: name the method too (--method kmeans, ...)")
        done = [m for m, r in recommended.items() if (r or {}).get("k") is not None]
        if not done:
            raise SegreportError(f"{path}: no method has a recommended k; give --method and --k")
        method = done[0]
    rec = recommended.get(method) or {}
    if rec.get("k") is None:
        raise SegreportError(f"{path}: no recommended k for method '{method}'; give --k")
    return method, int(rec.get("value", rec["k"]))
