"""`segreport run`: prepare → grid → compare → render, the one place that sequences the stages,
with the manifest kept consistent throughout, and the run folder locked (store.RunLock) from the
first write to the last."""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from . import SegreportError
from .stages.compare import compare
from .core.config import params_to_dict
from .stages.dask_grid import DaskSession, run_grid_dask
from .methods.llm.embed import release_models
from .stages.grid import failed_cells, require_some, run_grid, write_manifest
from .methods import Params, get
from .stages.prepare import prepare
from .report.render import render
from .core.store import RunLayout, RunLock, WriteError, cell_name, read_json, sweep_partial


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(params: Params, progress: bool = True, root: Path = Path("."), build_site: bool = True,
        wait: bool = True) -> str:
    """`wait`: where another run is writing the same run folder, wait for it (saying so once); else
    stop at once with a SegreportError naming it."""
    workers = params.workers or (os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        def lock(layout):  # taken once the input is validated, before the first write into the run folder
            stack.enter_context(_claim(layout.root, wait))

        if params.executor != "dask":
            return _run(params, progress, root, build_site, workers, None, lock)
        with DaskSession(params.scheduler, workers) as session:  # one cluster for spaces, embedding and cells
            return _run(params, progress, root, build_site, workers, session, stack.enter_context, wait)


def _claim(folder: Path, wait: bool) -> RunLock:
    """The run folder's lock, then a killed run's temporary files swept: no other run (nor `track`)
    writes here now."""
    held = RunLock(folder).acquire(wait=wait)
    sweep_partial(folder, deep=False)  # files, and the folders of store.atomic_folder (tracking/)
    for sub in ("spaces", "projections", "cells", "comparison", "snapshots", "tracking"):
        sweep_partial(folder / sub)
    return held


def prepare_apart(params: Params, root: Path, progress: bool, session, keep, wait: bool) -> tuple[RunLayout, dict]:
    """`prepare` in a spawned process of its own, on the same Dask cluster (`--executor dask`).

    Preparing leaves this process holding what it imported and freed (PyTorch, the sentence model,
    one row text per row, the table's strings): at 1,000,000 rows the CLI kept 1.1 GiB through the
    whole grid, and a heap Python has fragmented cannot be given back. The child's goes with it.
    The child takes the run folder's lock once the input is validated and hands the locked file
    descriptor over (`flock` belongs to the open file, so the lock stays held when the child ends);
    `keep` enters it into this run's exit stack. A SegreportError in the child is raised here, the
    same one line; this process interrupted or ending stops the child.
    """
    import multiprocessing as mp
    import warnings
    from multiprocessing.reduction import recv_handle

    spawn = mp.get_context("spawn")  # this process runs the Dask scheduler's threads: never fork it
    here, there = spawn.Pipe()
    child = spawn.Process(target=_prepare_child, name="segreport-prepare",  # not daemonic: it may start processes
                          args=(there, params, str(root), progress, session.facts(), wait, list(warnings.filters)))
    child.start()
    there.close()
    answered = False
    try:
        while True:
            try:
                what, *rest = here.recv()
            except EOFError:
                child.join(5)
                raise RuntimeError(f"the prepare process ended without a result (exit code {child.exitcode})") from None
            if what == "lock":
                keep(RunLock.adopt(Path(rest[0]), recv_handle(here)))
                here.send("held")
                continue
            answered = True
            if what == "error":
                raise rest[0]
            return RunLayout(rest[0]), rest[1]
    finally:
        here.close()
        if answered:  # it ends by itself now
            child.join(30)
        if child.is_alive():  # interrupted here, or stuck
            child.terminate()
            child.join()


def _prepare_child(conn, params: Params, root: str, progress: bool, facts: dict, wait: bool, filters: list) -> None:
    import threading
    import warnings

    from multiprocessing.reduction import send_handle

    warnings.filters[:] = filters  # the CLI's (FutureWarnings not shown)
    parent = os.getppid()

    def orphaned():  # the CLI killed: stop now, and with it this process's copy of the lock
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()

    def lock(layout):
        held = _claim(layout.root, wait)
        conn.send(("lock", str(layout.root)))
        send_handle(conn, held.fd, parent)
        conn.recv()  # held by the CLI now; this copy of the descriptor closes when this process ends

    try:
        with DaskSession.joined(facts) as session:
            layout, ctx = prepare(params, root=Path(root), progress=progress, session=session, lock=lock)
        conn.send(("done", str(layout.root), ctx))
    except BaseException as exc:  # noqa: BLE001  (raised again in the CLI)
        if not isinstance(exc, (SegreportError, KeyboardInterrupt, WriteError)):  # those are one line
            traceback.print_exc()
        try:
            conn.send(("error", exc))
        except Exception:  # not picklable: its words
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _release(session=None) -> None:
    release_models()  # imports nothing: the models this process loaded, if any, go
    if session is not None:
        # the Dask workers built the spaces and embedded the parts; they run the cells next: their models
        # and the heap those tasks freed go back to the OS (seen at 1,000,000 rows: one worker 0.68 -> 0.34 GiB)
        session.client.run(release_models)


def _run(params: Params, progress: bool, root: Path, build_site: bool, workers: int, session, lock=None,
         wait: bool = True) -> str:
    """`lock`: with a session, the run's exit stack's `enter_context` (see prepare_apart); else called with
    the layout once the input is validated."""
    t0 = time.perf_counter()
    started = _now()
    if session is None:
        layout, ctx = prepare(params, root=root, progress=progress, session=None, lock=lock)
    else:
        layout, ctx = prepare_apart(params, root, progress, session, lock, wait)
    _release(session)  # the embedding's models: not needed by the grid, whose workers need the memory
    old = {}
    if layout.manifest.exists():
        try:
            old = read_json(layout.manifest)
        except ValueError:
            old = {}
    manifest = {
        "segreport": ctx["segreport"], "status": "running", "started": started,
        "params": params_to_dict(params), "data": {k: ctx["data"][k] for k in
                                                    ("path", "file_sha256", "fingerprint", "rows", "demo")},
        "versions": ctx["versions"], "spaces": ctx["spaces"], "projections": ctx["projections"],
        "methods": ctx["methods"], "skipped": ctx["skipped"], "grid": ctx["grid"],
        "scale": ctx["scale"], "executor": {"name": params.executor, **(session.describe() if session else {})},
        "cells": {n: s for n, s in old.get("cells", {}).items()},
        "timings": {"prepare": ctx["prepare_seconds"]},
    }
    cells = [(m, v) for m in ctx["methods"] for v in ctx["grid"][m]]
    try:
        t1 = time.perf_counter()
        if params.executor == "dask":
            statuses = run_grid_dask(layout, ctx, cells, workers, manifest, progress=progress, project=root,
                                     session=session)
        else:
            statuses = run_grid(layout, ctx, cells, workers, manifest, progress=progress, project=root)
        manifest["timings"]["grid"] = round(time.perf_counter() - t1, 3)
        current = {cell_name(m, v, get(m).grid) for m, v in cells}
        run_statuses = {n: s for n, s in statuses.items() if n in current}
        require_some(run_statuses)
        t2 = time.perf_counter()
        comparison, reused = compare(layout, ctx, run_statuses)
        _release()  # the null reference's and the experiments' embedding models
        manifest["timings"]["compare"] = round(time.perf_counter() - t2, 3)
        manifest["comparison"] = {"reused": reused}
        manifest["recommended"] = {m: r["k"] for m, r in comparison["recommended"].items()}
        manifest["recommended_value"] = {m: r["value"] for m, r in comparison["recommended"].items()}
        failed = failed_cells(run_statuses)
        manifest["status"] = "done" if not failed else "done with failed cells"
        manifest["failed"] = failed
        manifest["finished"] = _now()
        manifest["timings"]["analysis"] = round(time.perf_counter() - t0, 3)
        write_manifest(layout, manifest)
    except BaseException as exc:
        manifest["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {type(exc).__name__}"
        try:
            write_manifest(layout, manifest)
        except OSError:  # a full disk: the manifest on disk stays the last one written whole
            pass
        raise
    summary = [f"results: {layout.root} ({len(cells) - len(failed)}/{len(cells)} cells done, "
               f"analysis {manifest['timings']['analysis']:.1f} s)"]
    if failed:
        summary.append(f"failed cells: {', '.join(failed)} (see their notebooks)")
    rec = comparison.get("recommendation") or {}
    each = ", ".join(f"{m} {k}" for m, k in manifest["recommended"].items())
    if rec.get("method") and rec.get("k") is not None:  # the Overview's decision first, then each method's own k
        summary.append(f"recommendation: {rec.get('display') or get(rec['method']).display}, k = {rec['k']}"
                       + (f" ({rec['label']})" if rec.get("label") and rec["label"] != "recommended" else "")
                       + f"; each method's own k: {each}")
    else:
        summary.append("recommended k: " + each)
    for m, why in ctx["skipped"].items():
        summary.append(f"left out: {get(m).display} ({why})")
    if params.render:
        t3 = time.perf_counter()
        out = render(params, layout=layout, project=root, build_site=build_site, reuse=True)
        manifest["timings"]["render"] = round(time.perf_counter() - t3, 3)
        manifest["render"] = {"reused": bool(out.get("reused"))}
        write_manifest(layout, manifest)
        if out.get("html"):
            summary.append(f"report: {out['html']}" + (f" and {out['pdf']}" if out.get("pdf") else ""))
    return "\n".join(summary)
