"""Runs a whole run on Dask: the feature spaces, the embedding and the grid cells are Dask tasks.

The same contract as `grid.run_grid` (`segreport run --executor dask`): a cell whose
inputs did not change since it last succeeded is reused; every other cell is one
task running `grid._execute`, which executes its notebook in the worker thread's warm
kernel (a subprocess of the Dask worker, reset to a new session before each notebook: see
`grid.warm_kernel`) and returns a status dict — a notebook error is a
"failed" status, not a task error. Only this (parent) process writes done.json and
the manifest, as each task finishes.

Where the cells run:

* ``scheduler=None``: a ``LocalCluster`` of `workers` worker processes, each with one
  "cell" slot and two threads (spawned, never forked; each has a nanny that restarts
  it if it dies), closed at the end.
* ``scheduler="tcp://host:8786"``: the workers of that scheduler. They need
  segreport (and its kernel spec, installed on them at the start) in their Python
  environment, and the project folder and the results folder at the same paths as
  here (a shared file system): each cell reads the run's table and feature spaces
  and writes its results under ``<results>/<run>/cells/``. `workers` is not used
  then: the cluster decides how many cells run at once, and each cell may use the
  cores of its machine divided by the cells that machine runs at once.

One `DaskSession` (one client) serves the whole run. Before the grid, each feature
space a cell needs (encoded, mixed, common) is built once as its own task, and the
embedding is cut into parts of distinct texts (`embed.EmbeddingPlan`), one task
each: a worker loads the sentence model once and keeps it for every part it gets,
and each part is written as a parquet file into the embedding cache, which a rerun
reads instead of embedding again. The projections and the comparison run in this
process.

Tasks take one unit of the workers' "cell" resource where every worker has one (a
LocalCluster's workers have one each, and two threads): one heavy task per worker,
and a spare thread for the LightGBM training tasks that a cell past the scale
threshold sends back to the cluster (`explain.surrogate_dask`). A cluster whose
workers lack the resource runs one task per thread, and its cells train LightGBM
in their own process.

A worker that dies mid-cell (killed, machine lost) does not lose the cell: the
scheduler gives the task to another worker (or to the restarted one). A cell
that has failed twice is recorded as failed, as in the local executor: twice
killed with its worker (``distributed.scheduler.allowed-failures`` = 1 on the
LocalCluster; an existing cluster keeps its own setting, Dask's default 3), or
twice raised (``retries=1``). A notebook that stops on an error is a "failed"
status at once: it would fail the same way again. The kernel of a dead worker
exits by itself (ipykernel polls for its parent).
"""

from __future__ import annotations

import math
import os
import platform
from collections import Counter
from pathlib import Path
from uuid import uuid4

from .. import SegreportError
from ..methods.llm.embed import embed_part
from .grid import _execute, ensure_kernel, record_cell, start_grid
from ..methods import get
from ..core.store import RunLayout, WriteError, cell_name, sweep_partial


class DaskSession:
    """One Dask client for a run: the feature spaces, the embedding parts and the grid cells."""

    def __init__(self, scheduler: str | None, workers: int):
        self.client, self.cluster = _connect(scheduler, max(1, workers))
        try:
            if self.cluster is None:
                self.client.wait_for_workers(1, timeout=120)
            info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except BaseException:
            _close(self.client, self.cluster)
            raise
        self.address = self.client.scheduler.address
        self.n_workers = len(info)
        has_slot = bool(info) and all((w.get("resources") or {}).get("cell", 0) >= 1 for w in info.values())
        self.resources = {"cell": 1} if has_slot else None
        # a cell may send LightGBM training to the cluster only where a thread beside the cells is free, and the
        # scheduler does not queue the training's tasks behind cells (worker-saturation inf, as a LocalCluster here)
        saturation = self.client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION)
        self.spare_thread = has_slot and all(int(w.get("nthreads") or 1) >= 2 for w in info.values()) \
            and math.isinf(saturation)
        self.threads = _threads_per_cell(self.client, max(1, workers), local=self.cluster is not None,
                                         one_per_worker=has_slot)

    def submit(self, fn, *args, key: str, **kwargs):
        return self.client.submit(_said, fn, *args, key=key, resources=self.resources, retries=1, pure=False, **kwargs)

    def submit_jobs(self, jobs: dict, prefix: str) -> dict:
        """jobs: name -> (function, args), each submitted as one task now. Returns future -> name."""
        return {self.submit(fn, *args, key=f"{prefix}-{name}-{uuid4().hex[:8]}"): name
                for name, (fn, args) in jobs.items()}

    def gather(self, futures: dict, progress: bool, desc: str, unit: str = "it", weight=None) -> dict:
        """Wait for the futures (future -> name or item), with a progress bar advanced by `weight(item)`
        (1 by default). Returns item -> result. Interrupted or failed: the rest are cancelled."""
        from distributed import as_completed
        from tqdm.auto import tqdm

        weight = weight or (lambda item: 1)
        out = {}
        with tqdm(total=sum(weight(i) for i in futures.values()), desc=desc, unit=unit, disable=not progress) as bar:
            try:
                for fut in as_completed(list(futures), loop=self.client.loop):
                    item = futures[fut]
                    out[item] = _result(fut)
                    bar.update(weight(item))
            except BaseException:
                self.client.cancel(list(futures), force=True)
                raise
        return out

    def run_parts(self, plan, missing: list[dict], progress: bool, batch_size: int, seed: int) -> None:
        """Embed the missing parts of `plan` as Dask tasks; each writes its own parquet file."""
        # the part's path as this process sees it: a worker's working directory need not be this process's
        futures = {self.submit(embed_part, plan.texts_of(p), plan.model, plan.precision, batch_size,
                               str(Path(p["path"]).resolve()),
                               seed, self.threads, plan.model_dir and str(Path(plan.model_dir).resolve()),
                               key=f"embed-{Path(p['path']).stem}"): i
                   for i, p in enumerate(missing)}
        self.gather(futures, progress, f"embedding ({self.n_workers} Dask workers)", unit="row",
                    weight=lambda i: missing[i]["hi"] - missing[i]["lo"])

    def facts(self) -> dict:
        """What another process of this run needs to use the same cluster as this session (`joined`)."""
        return {"address": self.address, "n_workers": self.n_workers, "resources": self.resources,
                "spare_thread": self.spare_thread, "threads": self.threads}

    @classmethod
    def joined(cls, facts: dict) -> "DaskSession":
        """A session of another process on the cluster `facts` describes: its own client, the same task
        resources and threads (not measured again: a client of a LocalCluster's scheduler would count
        threads as for a remote cluster, and the embedding's bytes must not depend on which process asks)."""
        self = cls.__new__(cls)
        self.client, self.cluster = _connect(facts["address"], 1)
        for name, value in facts.items():
            setattr(self, name, value)
        return self

    def describe(self) -> dict:
        """For the manifest and the report: where the run ran."""
        return {"scheduler": self.address, "local_cluster": self.cluster is not None, "workers": self.n_workers,
                "client": f"{platform.node()}:{os.getpid()}",
                "threads_per_cell": self.threads, "one_task_per_worker": self.resources is not None,
                "lightgbm_on_cluster": self.spare_thread}

    def close(self) -> None:
        _close(self.client, self.cluster)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _WriteFailed:
    """A task's failed write (store.WriteError: a full disk, ...), returned as the task's result: raised on
    the worker, it would be logged there as a 'Compute Failed' traceback on the terminal and the task retried
    on a disk still full. `_result` raises it again here, where the CLI says it in one line."""

    def __init__(self, exc: WriteError):
        self.exc = exc


def _said(fn, *args, **kwargs):
    """Runs a task on a worker (DaskSession.submit): its failed write comes back as a _WriteFailed."""
    try:
        return fn(*args, **kwargs)
    except WriteError as exc:
        return _WriteFailed(exc)


def _result(fut):
    out = fut.result()
    if isinstance(out, _WriteFailed):
        raise out.exc
    return out


def run_grid_dask(layout: RunLayout, ctx: dict, cells: list[tuple[str, int]], workers: int, manifest: dict,
                  progress: bool = True, project: Path | None = None, scheduler: str | None = None,
                  session: DaskSession | None = None) -> dict:
    """Execute the cells not already done as Dask tasks; update the manifest as each finishes."""
    from tqdm.auto import tqdm

    project, analysis, todo, statuses = start_grid(layout, ctx, cells, manifest, project)
    if not todo:
        return statuses

    from distributed import as_completed

    own = session is None
    if own:
        session = DaskSession(scheduler, max(1, min(workers, len(todo))))
    client = session.client
    bar = None
    futures: dict = {}
    interrupted = False
    try:
        try:
            client.run(ensure_kernel)  # the workers' environments: segreport importable, kernel spec present
        except Exception as exc:
            raise SegreportError(f"the Dask workers cannot run segreport cells ({type(exc).__name__}: {exc}); "
                                 "they need segreport installed in their Python environment") from None
        env = {"SEGREPORT_DASK_SCHEDULER": session.address} \
            if (ctx.get("scale") or {}).get("lightgbm") == "dask" and session.spare_thread else None
        run_dir = str(layout.root.resolve())  # workers may not share this process's working directory
        bar = tqdm(total=len(todo), desc="grid cells", unit="cell", disable=not progress)
        for m, k, ck in todo:
            fut = session.submit(_execute, str(project), run_dir, m, k, session.threads, str(analysis), env,
                                 key=f"cell-{cell_name(m, k, get(m).grid).replace('/', '-')}-{ck}")
            futures[fut] = (m, k, ck)
        for fut in as_completed(list(futures), loop=client.loop):  # loop: this client is not the default
            m, k, ck = futures[fut]
            try:
                st = _result(fut)
            except Exception as exc:  # raised twice, or its workers kept dying (KilledWorker); a failed write
                st = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500], "wall_seconds": None}
            record_cell(layout, manifest, m, k, ck, st)
            bar.set_postfix_str(f"{cell_name(m, k, get(m).grid)} {st['status']}")
            bar.update(1)
    except BaseException:
        interrupted = True
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
        if own:
            session.close()
            if interrupted:  # its workers are gone: remove what they were writing (a remote worker may still be)
                sweep_partial(layout.root / "cells")
    return statuses


def _connect(scheduler: str | None, workers: int):
    """(client, cluster): a client of the given scheduler (cluster None), or of a new LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, set_as_default=False), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise SegreportError(f"cannot connect to the Dask scheduler at {scheduler!r}: {exc}") from None
    # OpenMP threads that spin while they wait (the default) starve the other worker on a small machine:
    # LightGBM's Dask training slowed from 2 s to 90 s on 2 cores. Passive waiting costs nothing here.
    # Dask's MALLOC_TRIM_THRESHOLD_=65536 hands freed memory back to the OS at once; torch inference frees and
    # re-allocates all the time, and the page faults cost a third of the embedding's throughput (105 against
    # 142 rows/s on one core): the worker keeps glibc's default
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    # no queuing of root tasks on the scheduler: it counts a cell waiting for the "cell" resource as a busy
    # thread and would hold back the small tasks (LightGBM's data partitions) the spare threads are there for
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                          "distributed.scheduler.worker-saturation": float("inf"),
                          "distributed.scheduler.allowed-failures": 1}):  # a second death fails the cell
        # no dashboard, and the scheduler's HTTP server on a free port: its default, 8787, taken by another
        # cluster (a second run at once) printed a warning on stderr, and bad input is one line
        cluster = LocalCluster(n_workers=workers, threads_per_worker=2, processes=True, dashboard_address=None,
                               scheduler_kwargs={"dashboard_address": ":0"}, resources={"cell": 1})
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


def _threads_per_cell(client, workers: int, local: bool, one_per_worker: bool = False) -> int:
    """Threads (BLAS, numba, LightGBM) each cell may use: the cores of a machine shared by the cells it runs."""
    if local:
        return max(1, (os.cpu_count() or 1) // workers)
    info = client.scheduler_info(n_workers=-1).get("workers", {})
    if not info:
        return 1
    cores = client.run(os.cpu_count)  # per worker address
    slots = Counter()  # concurrent cells per host
    host_cores = {}
    for addr, w in info.items():
        host = w.get("host") or addr
        slots[host] += 1 if one_per_worker else max(1, int(w.get("nthreads") or 1))
        host_cores[host] = cores.get(addr) or 1
    return max(1, min(host_cores[h] // n for h, n in slots.items()))
