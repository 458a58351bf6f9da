"""Runs the grid on Dask: one papermill-executed notebook per (method, k), each a Dask task.

The same contract as `grid.run_grid` (`segreport run --executor dask`): a cell whose
inputs did not change since it last succeeded is reused; every other cell is one
task running `grid._execute`, which executes its notebook in a fresh kernel (a
subprocess of the Dask worker) and returns a status dict — a notebook error is a
"failed" status, not a task error. Only this (parent) process writes done.json and
the manifest, as each task finishes.

Where the cells run:

* ``scheduler=None``: a ``LocalCluster`` of `workers` worker processes with one
  thread each (spawned, never forked; each has a nanny that restarts it if it dies),
  closed at the end.
* ``scheduler="tcp://host:8786"``: the workers of that scheduler. They need
  segreport (and its kernel spec, installed on them at the start) in their Python
  environment, and the project folder and the results folder at the same paths as
  here (a shared file system): each cell reads the run's table and feature spaces
  and writes its results under ``<results>/<run>/cells/``. `workers` is not used
  then: the cluster decides how many cells run at once, and each cell may use the
  cores of its machine divided by the cells that machine runs at once.

The feature spaces and projections are built in this process before the grid
(`pipeline.prepare`), for both executors; the workers only run the cells.

A worker that dies mid-cell (killed, machine lost) does not lose the cell: the
scheduler gives the task to another worker (or to the restarted one), up to
``distributed.scheduler.allowed-failures`` deaths (Dask's default 3), after which
the cell is recorded as failed with ``KilledWorker``. The kernel of the dead worker
exits by itself (ipykernel polls for its parent). A task that raises is retried
once (``retries=1``), then recorded as failed.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from . import SegreportError
from .grid import _execute, ensure_kernel, record_cell, start_grid
from .store import RunLayout


def run_grid_dask(layout: RunLayout, ctx: dict, cells: list[tuple[str, int]], workers: int, manifest: dict,
                  progress: bool = True, project: Path | None = None, scheduler: str | None = None) -> dict:
    """Execute the cells not already done as Dask tasks; update the manifest as each finishes."""
    from tqdm.auto import tqdm

    project, analysis, todo, statuses = start_grid(layout, ctx, cells, manifest, project)
    if not todo:
        return statuses

    from distributed import as_completed

    workers = max(1, min(workers, len(todo)))
    client, cluster = _connect(scheduler, workers)
    bar = None
    futures: dict = {}
    try:
        threads = _threads_per_cell(client, workers, local=cluster is not None)
        try:
            client.run(ensure_kernel)  # the workers' environments: segreport importable, kernel spec present
        except Exception as exc:
            raise SegreportError(f"the Dask workers cannot run segreport cells ({type(exc).__name__}: {exc}); "
                                 "they need segreport installed in their Python environment") from None
        run_dir = str(layout.root.resolve())  # workers may not share this process's working directory
        bar = tqdm(total=len(todo), desc="grid cells", unit="cell", disable=not progress)
        for m, k, ck in todo:
            fut = client.submit(_execute, str(project), run_dir, m, k, threads, str(analysis),
                                key=f"cell-{m}-k{k}-{ck}", retries=1, pure=False)
            futures[fut] = (m, k, ck)
        for fut in as_completed(list(futures), loop=client.loop):  # loop: this client is not the default
            m, k, ck = futures[fut]
            try:
                st = fut.result()
            except Exception as exc:  # raised twice, or its workers kept dying (KilledWorker)
                st = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500], "wall_seconds": None}
            record_cell(layout, manifest, m, k, ck, st)
            bar.set_postfix_str(f"{m}/k{k} {st['status']}")
            bar.update(1)
    except BaseException:
        # interrupted: drop the tasks; finished cells are on disk, unfinished ones rerun next time. Closing a
        # LocalCluster stops its workers (and so their kernels); a remote worker finishes the cell it is running.
        if futures:
            try:
                client.cancel(list(futures), force=True)
            except Exception:
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
        _close(client, cluster)
    return statuses


def _connect(scheduler: str | None, workers: int):
    """(client, cluster): a client of the given scheduler (cluster None), or of a new LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, set_as_default=False), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise SegreportError(f"cannot connect to the Dask scheduler at {scheduler!r}: {exc}") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        return Client(cluster, set_as_default=False), cluster
    except BaseException:
        cluster.close()
        raise


def _close(client, cluster) -> None:
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _threads_per_cell(client, workers: int, local: bool) -> int:
    """Threads (BLAS, numba, LightGBM) each cell may use: the cores of a machine shared by the cells it runs."""
    if local:
        return max(1, (os.cpu_count() or 1) // workers)
    info = client.scheduler_info().get("workers", {})
    if not info:
        return 1
    cores = client.run(os.cpu_count)  # per worker address
    slots = Counter()  # concurrent cells per host
    host_cores = {}
    for addr, w in info.items():
        host = w.get("host") or addr
        slots[host] += max(1, int(w.get("nthreads") or 1))
        host_cores[host] = cores.get(addr) or 1
    return max(1, min(host_cores[h] // n for h, n in slots.items()))
