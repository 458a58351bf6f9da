"""Runs the grid: one papermill-executed notebook per (method, k), in a pool of worker processes.

Every cell runs the one analysis notebook, analysis/segment.ipynb (`method` and `value` its papermill
parameters), headed by its method's words and holding its method's own cells (`method_notebook`).

A cell whose inputs (feature space, parameters, k, seed, code version) did not
change since it last succeeded is reused. Each cell's notebook is written next to
its results; a failing cell is recorded with its error and does not stop the
others. Only this (parent) process writes the manifest.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing as mp
import os
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from .. import SegreportError, __version__
from ..methods import get
from ..core.resources import ANALYSIS, SEGMENT
from ..core.store import (CELL_HASHED, CELL_RECORDS, CELL_VERIFIED, DONE, KERNEL_LOG, NOTEBOOK, NoSpaceError,
                    RunLayout, atomic_output, atomic_write_json, cell_name, file_record, key, make_folder, no_space,
                    read_json_or_empty, say_damaged, sha256_file, sweep_partial, verify, writing)

KERNEL = "segreport"
PACKAGE = Path(__file__).resolve().parent.parent
# the modules a grid cell runs (besides its method's module): a change elsewhere (the renderer,
# the CLI, ...) does not invalidate the cells
CELL_MODULES = ("stages/cell.py", "lib/evaluate.py", "lib/explain.py", "lib/personas.py", "lib/features.py", "core/store.py", "core/schema.py",
                "core/config.py", "lib/data.py", "stages/prepare.py", "report/notebook.py", "core/number_format.py", "lib/verdict.py",
                "methods/__init__.py", "methods/base.py")


def ensure_kernel() -> str:
    """The project's own kernel spec (this interpreter), installed into the environment if absent."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="segreport (project environment)", prefix=sys.prefix)
    return KERNEL


def analysis_dir(ctx: dict) -> Path:
    """The folder of the analysis notebook (segment.ipynb): the package's own, or the one params name."""
    name = ctx["params"].get("analysis")
    return Path(name).resolve() if name else Path(ANALYSIS)


@lru_cache(maxsize=None)
def code_hash(method: str) -> str:
    """sha256 of the source a cell of `method` runs (CELL_MODULES + the method's module and the
    modules it imports from methods/): a cell computed by other code is not reused."""
    import inspect

    h = hashlib.sha256()
    own = Path(inspect.getsourcefile(type(get(method)))).resolve()
    files = {PACKAGE / f for f in CELL_MODULES} | {own} | set((PACKAGE / "methods").rglob("*.py"))
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cell_key(ctx: dict, method: str, value: int) -> str:
    p = ctx["params"]
    explain = {n: p.get(n) for n in ("silhouette_sample", "shap_sample", "lgbm_folds", "min_segment_size",
                                     "explain_rows", "stability_resamples", "stability_stopping",
                                     "stability_sample")}
    scale = {n: v for n, v in (ctx.get("scale") or {}).items() if n not in ("rows", "threshold")}
    return key(__version__, method, value, p["seed"], p[method], ctx["spaces"][method]["key"],
               ctx["spaces"]["common"]["key"], explain, scale, notebook_hash(ctx, method), code_hash(method))


def notebook_hash(ctx: dict, method: str) -> str:
    """The analysis notebook's sha256 (what its method adds to it is in the method's module: code_hash)."""
    path = analysis_dir(ctx) / SEGMENT
    if not path.exists():
        raise SegreportError(f"{path}: analysis notebook not found")
    return sha256_file(path)[:16]


METHOD_CELLS = "method-cells"  # the tag of the cell of segment.ipynb after which a method's own cells go


def method_notebook(analysis: str | Path, method: str):
    """analysis/segment.ipynb as `method`'s cells run it: the placeholders of its markdown cells and of its
    parameters cell ({{ title }}, {{ intro }}, ...: Method.notebook_words) filled in, and the method's own
    cells (Method.notebook_cells) after the cell tagged `method-cells`."""
    import jinja2
    import nbformat  # Jupyter's notebook format: loaded where a cell runs, not by a rerun that reuses every cell

    m = get(method)
    nb = nbformat.read(Path(analysis) / SEGMENT, as_version=4)
    words = m.notebook_words()
    for cell in nb.cells:
        if cell.cell_type == "markdown" or "parameters" in cell.metadata.get("tags", []):
            cell.source = jinja2.Template(cell.source, undefined=jinja2.StrictUndefined).render(**words)
    own = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
           for kind, src in m.notebook_cells()]
    if own:
        at = next((i + 1 for i, c in enumerate(nb.cells) if METHOD_CELLS in c.metadata.get("tags", [])),
                  len(nb.cells))
        nb.cells[at:at] = own
    return nb


def _input_path(notebook: Path, analysis: str) -> None:
    """papermill records an in-memory notebook as its input_path: the executed notebook names the analysis
    notebook instead (nbformat writes it as papermill does)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    nb.metadata.setdefault("papermill", {})["input_path"] = str(Path(analysis) / SEGMENT)
    with writing(notebook):
        nbformat.write(nb, str(notebook))


# Warm Jupyter kernels, reused by the cells a worker process runs: starting a kernel and importing
# segreport's libraries into it took ~6 s of each ~30 s cell. A process keeps as many as it runs cells at
# once (one in a pool worker or a Dask worker with one cell slot, whichever of its threads runs the cell;
# one per concurrent cell on a cluster without slots): an idle kernel is taken by the next cell, so no
# second kernel sits idle beside the busy one holding the memory of its last cell (seen at 1,000,000 rows:
# 1.2-1.4 GiB each). Before each notebook the kernel is reset to a new session (IPython's
# `reset(new_session=True)`: empty namespace, execution count back to 1), so a notebook sees nothing of
# the one before; imported modules stay, which is the point. A kernel that died is replaced; so is one
# started for another project folder or environment.
_IDLE: list[dict] = []
_IDLE_LOCK = threading.Lock()
RESET = "get_ipython().reset(new_session=True)"


def _shutdown(kernel) -> None:
    try:
        kernel["km"].shutdown_kernel(now=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _reset(km) -> bool:
    """Reset a live kernel to a new session; False if it does not answer (then it is replaced)."""
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive(RESET, store_history=False, timeout=60)
        return reply["content"].get("status") == "ok"
    except Exception:  # noqa: BLE001 - a kernel that cannot be reset is started anew
        return False
    finally:
        kc.stop_channels()


@contextmanager
def warm_kernel(project: str, log_path: Path):
    """A kernel of this process for `project` and the current environment, reset to a new session, for the
    length of one cell; an idle one where there is one, else started (its OS-level stderr to `log_path`).
    Afterwards it is idle again, for the next cell of any thread."""
    key = (project, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("SEGREPORT_", "OMP_",
                                                                                        "OPENBLAS_", "MKL_",
                                                                                        "NUMBA_", "PYTHONHASH")))))
    kernel = None
    while kernel is None:
        with _IDLE_LOCK:
            if not _IDLE:
                break
            kernel = _IDLE.pop()
        if not (kernel["key"] == key and kernel["km"].is_alive() and _reset(kernel["km"])):
            _shutdown(kernel)  # dead, unanswering, or for other settings
            kernel = None
    if kernel is None:
        kernel = {"key": key, "km": _start_kernel(project, log_path)}
    try:
        yield kernel["km"]
    finally:
        with _IDLE_LOCK:
            _IDLE.append(kernel)


def _start_kernel(project: str, log_path: Path, tries: int = 3):
    """A new kernel that answered. The parent picks the kernel's five ports and the kernel binds them a
    moment later; in between, another process can take one (seen on a Dask worker at 1,000,000 rows:
    'ZMQError: Address already in use', and the cell failed after papermill's 60 s wait). A kernel that
    dies before answering is started again on new ports, up to `tries` times."""
    from jupyter_client.manager import KernelManager

    for attempt in range(tries):  # the last try returns whatever it started
        km = KernelManager(kernel_name=KERNEL)
        with writing(log_path):
            log = open(log_path, "ab")
        with log:  # the kernel's own chatter (C libraries, warnings at exit): not the terminal
            km.start_kernel(cwd=project, stderr=log)
        _STARTED.append(km)
        kc = km.client()
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
            return km
        except RuntimeError:
            if km.is_alive() or attempt == tries - 1:
                return km  # alive but slow, or the last try: papermill waits for it and says why it failed
            _shutdown({"km": km})
        finally:
            kc.stop_channels()
    return km


_STARTED: list = []  # every kernel this process started: shut down when it exits


@atexit.register
def _close_kernels() -> None:
    while _STARTED:
        _shutdown({"km": _STARTED.pop()})


def _execute(project: str, run_dir: str, method: str, k: int, threads: int, analysis: str,
             env: dict | None = None) -> dict:
    """Worker: execute analysis/segment.ipynb for `method` at one grid value `k` (`method_notebook`) with
    papermill, in this worker's warm
    kernel (`warm_kernel`). `env`: extra variables for its kernel (the Dask executor passes its scheduler's
    address for LightGBM's Dask interface)."""
    import papermill as pm

    os.environ.pop("SEGREPORT_DASK_SCHEDULER", None)  # a worker process runs many cells: no leftovers
    os.environ.update(env or {})
    for var in ("SEGREPORT_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONHASHSEED"] = "0"
    out_dir = make_folder(RunLayout(run_dir).cell(method, k, get(method).grid))
    for stale in out_dir.glob(".*.tmp"):  # left by a run killed mid-cell (a killed process cannot clean up)
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    status = {"status": "done", "error": None}
    try:
        # the executed notebook is kept even when the cell fails: it shows where and why
        with atomic_output(out_dir / NOTEBOOK) as tmp:
            try:
                with warm_kernel(project, out_dir / KERNEL_LOG) as km:
                    # the temporary name ends in .tmp (see store.sweep_partial): papermill's warning about it is noise
                    warnings.filterwarnings("ignore", message="The specified file .* does not end in one of",
                                            category=UserWarning)
                    pm.execute_notebook(method_notebook(analysis, method), str(tmp),
                                        parameters={"run_dir": str(Path(run_dir).resolve()), "method": method,
                                                    "value": int(k)},
                                        kernel_name=KERNEL, cwd=project, progress_bar=False, log_output=False, km=km)
            except pm.PapermillExecutionError as exc:
                status = {"status": "failed", "error": f"{exc.ename}: {exc.evalue}".strip()[:500]}
            except Exception as exc:  # kernel died, could not start, ...
                status = {"status": "failed", "error": f"{type(exc).__name__}: {exc}".strip()[:500]}
            if no_space(status["error"]):
                status["no_space"] = True
                raise _NoNotebook  # a full disk: no half-written notebook is kept
            if tmp.stat().st_size == 0:
                raise _NoNotebook
            _input_path(tmp, analysis)
    except _NoNotebook:
        pass
    except NoSpaceError as exc:  # the notebook itself could not be written
        status = {"status": "failed", "error": str(exc), "no_space": True}
    status["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return status


class _NoNotebook(Exception):
    """papermill wrote nothing (the kernel never started): there is no notebook to keep."""


def damaged_cell(cdir: Path, done: dict, previous: dict) -> tuple[Path, str] | None:
    """The first file of a finished cell that is not what its done.json recorded (size and sha256;
    for a cell finished before done.json held them, the manifest's sha256 of labels and metrics)."""
    records = done.get("files")
    if records is None:
        records = {f: {"sha256": h} for f, h in (previous.get("hashes") or {}).items()}
        records.update({f: records.get(f, {}) for f in CELL_HASHED})
    return verify(cdir, {**records, **(done.get("records") or {})})


def cells_to_run(layout: RunLayout, ctx: dict, cells: list[tuple[str, int]], manifest: dict):
    """Mark the cells whose inputs did not change since they succeeded, and whose files are intact,
    as reused; return the rest as (method, k, key), and the manifest's cell statuses. A cell with a
    damaged file is said so in one line and run again. Shared by every executor."""
    todo, statuses = [], manifest.setdefault("cells", {})
    for method, k in cells:
        grid = get(method).grid
        name = cell_name(method, k, grid)
        ck = cell_key(ctx, method, k)
        cdir = layout.cell(method, k, grid)
        done = read_json_or_empty(cdir / DONE)
        if done.get("key") == ck:
            prev = statuses.get(name, {})
            bad = damaged_cell(cdir, done, prev)
            if bad is None:
                statuses[name] = {**prev, "status": "done", "reused": True, "key": ck, "error": None,
                                  "notebook": str(cdir / NOTEBOOK)}
                statuses[name].setdefault("wall_seconds", done.get("wall_seconds"))
                continue
            say_damaged(*bad, "recomputing that cell")
            (cdir / DONE).unlink(missing_ok=True)
        todo.append((method, k, ck))
    write_manifest(layout, manifest)
    return todo, statuses


def start_grid(layout: RunLayout, ctx: dict, cells: list[tuple[str, int]], manifest: dict,
               project: Path | None):
    """What every executor does first: the folders, the cells left to run, and the kernel spec (where
    a cell is left to run: a rerun that reuses every cell starts no Jupyter machinery)."""
    sweep_partial(layout.root / "cells")  # a killed run's half-written files
    todo, statuses = cells_to_run(layout, ctx, cells, manifest)
    if todo:
        ensure_kernel()
    return (project or Path.cwd()).resolve(), analysis_dir(ctx), longest_first(todo, statuses), statuses


def longest_first(todo: list[tuple[str, int, str]], statuses: dict) -> list[tuple[str, int, str]]:
    """The cells in the order the workers should take them: the longest first (LPT scheduling), so that
    the run does not end waiting on one long cell that started last. A cell's length is guessed from its
    method's cells of earlier runs (their mean wall time, in the manifest), then from its grid value (a
    larger k costs more); with no history, by grid value alone. Only the order changes, never a result."""
    past: dict[str, list[float]] = {}
    for name, st in statuses.items():
        if st.get("wall_seconds"):
            past.setdefault(name.split("/")[0], []).append(float(st["wall_seconds"]))
    mean = {m: sum(w) / len(w) for m, w in past.items()}
    return sorted(todo, key=lambda c: (mean.get(c[0], 0.0), c[1]), reverse=True)


def run_grid(layout: RunLayout, ctx: dict, cells: list[tuple[str, int]], workers: int, manifest: dict,
             progress: bool = True, project: Path | None = None) -> dict:
    """Execute the cells not already done; update the manifest as each finishes."""
    project, analysis, todo, statuses = start_grid(layout, ctx, cells, manifest, project)
    if not todo:
        return statuses
    from tqdm.auto import tqdm

    workers = max(1, min(workers, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar = tqdm(total=len(todo), desc="grid cells", unit="cell", disable=not progress)
    ctx_mp = mp.get_context("spawn")  # the parent may hold torch threads: never fork it
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx_mp)
    futures = {pool.submit(_execute, str(project), str(layout.root), m, k, threads, str(analysis)): (m, k, ck)
               for m, k, ck in todo}
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                m, k, ck = futures[fut]
                name = cell_name(m, k, get(m).grid)
                try:
                    st = fut.result()
                except Exception as exc:  # the worker process itself died
                    st = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "wall_seconds": None}
                record_cell(layout, manifest, m, k, ck, st)
                bar.set_postfix_str(f"{name} {st['status']}")
                bar.update(1)
    except BaseException:
        # interrupted: stop the workers now; finished cells are on disk, unfinished ones rerun next time
        procs = list(getattr(pool, "_processes", {}).values())
        for proc in procs:
            proc.terminate()
        for proc in procs:  # a terminated worker leaves its cell's temporary files: remove them once it is gone
            proc.join(timeout=10)
        pool.shutdown(wait=False, cancel_futures=True)
        # let the executor's manager thread finish closing its wake-up pipe now: on Python 3.11, at exit,
        # concurrent.futures wakes every such thread without its lock, and one closing the pipe meanwhile
        # prints "Exception ignored ... Bad file descriptor" after the run's one-line error (seen once in
        # test_a_full_disk_is_one_line_status_4...)
        manager = getattr(pool, "_executor_manager_thread", None)
        if manager is not None:
            manager.join(timeout=10)
        sweep_partial(layout.root / "cells")
        raise
    pool.shutdown(wait=True)
    bar.close()
    return statuses


def record_cell(layout: RunLayout, manifest: dict, method: str, k: int, ck: str, st: dict) -> dict:
    """Record one cell the grid just ran (any executor): done.json if it succeeded, its status in the manifest."""
    grid = get(method).grid
    cdir = layout.cell(method, k, grid)
    if st.pop("no_space", False) or (st["status"] != "done" and no_space(st.get("error"))):
        # a full disk is no fault of the cell: stop the run (the CLI says where, exit status 4)
        raise NoSpaceError.from_text(st.get("error") or "", cdir / NOTEBOOK)
    st.update(key=ck, reused=False, notebook=str(cdir / NOTEBOOK))
    if st["status"] == "done":
        files = {f: file_record(cdir / f) for f in CELL_VERIFIED if (cdir / f).exists()}
        st["hashes"] = {f: files[f]["sha256"] if f in files else sha256_file(cdir / f) for f in CELL_HASHED}
        records = {f: file_record(cdir / f) for f in CELL_RECORDS if (cdir / f).exists()}
        atomic_write_json(cdir / DONE, {"key": ck, "wall_seconds": st["wall_seconds"], "files": files,
                                        "records": records})
    manifest.setdefault("cells", {})[cell_name(method, k, grid)] = st
    write_manifest(layout, manifest)
    return st


def write_manifest(layout: RunLayout, manifest: dict) -> None:
    manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(layout.manifest, manifest)


def failed_cells(statuses: dict) -> list[str]:
    return sorted(n for n, s in statuses.items() if s.get("status") != "done")


def require_some(statuses: dict) -> None:
    if statuses and all(s.get("status") != "done" for s in statuses.values()):
        first = next(iter(statuses.items()))
        raise SegreportError(f"every grid cell failed; first: {first[0]}: {first[1].get('error')} "
                             f"(see {first[1].get('notebook')})")
