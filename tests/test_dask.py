"""The Dask executor (`segreport run --executor dask`): the same bytes as the local executor, and a run
that survives one of its workers being killed mid-cell."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from segreport.lib.demo import write_demo
from segreport.methods.llm.embed import part_meta

from .conftest import make_workdir, run_inline, segreport, segreport_together

pytestmark = pytest.mark.slow  # runs the real grid: `pytest -m 'not slow'` skips it

pytest.importorskip("distributed")

PARAMS = ("stability_resamples: 5\nprojection_sample: 200\nllm: {part_rows: 64, compare_numbers: false}\n"
          "null_references: 1\nnull_sample: 200\n")
RUN = ["run", "-q", "--no-render", "--params", "p.yml", "--data", "data/demo.csv", "--methods",
       "kmeans,kprototypes,llm", "--k", "3", "--workers", "2"]
CELLS = [(m, 3) for m in ("kmeans", "kprototypes", "llm")]  # one k per method: a second adds no path
KILL_CELLS = [(m, k) for m in ("kmeans", "kprototypes") for k in (2, 3)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One LocalCluster for the module, started as `--executor dask` starts it (segreport's DaskSession: two
    worker processes with a cell slot and two threads each, a nanny each). Its workers and their warm kernels
    serve every test that sends work to a running cluster (`--scheduler`); a run that starts a cluster of its
    own, the user's default, is tested twice (test_dask_matches_local_executor, bad input). Its processes start
    in an empty folder of their own, as the workers of a remote scheduler would: a task that writes a path
    relative to its working directory instead of the run's folder shows there."""
    from segreport.stages.dask_grid import DaskSession

    start = tmp_path_factory.mktemp("workers-cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(start)
        session = DaskSession(None, 2)
    session.start = start
    with session:
        yield session


def nothing_written_where_the_workers_started(cluster) -> None:
    # (a worker the nanny restarts starts in this process's working directory of the moment)
    assert not any(cluster.start.iterdir()), sorted(str(p) for p in cluster.start.rglob("*"))


def small_project(path: Path, seed: int) -> Path:
    wd = make_workdir(path)
    write_demo(wd / "data" / "demo.csv", rows=300, seed=seed)
    (wd / "p.yml").write_text(PARAMS)
    return wd


def test_dask_matches_local_executor(tmp_path, cluster):
    on_dask = small_project(tmp_path / "dask", seed=11)
    local = make_workdir(tmp_path / "local")
    shutil.copytree(on_dask / "data", local / "data")
    shutil.copy(on_dask / "p.yml", local / "p.yml")

    # both at once (their results are compared; neither reads the other's folder): a Dask cluster of the run's
    # own, and the local process pool
    segreport_together((on_dask, (*RUN, "--executor", "dask")), (local, tuple(RUN)))

    runs = {wd: wd / "results" / "demo" for wd in (on_dask, local)}
    manifest = json.loads((runs[on_dask] / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["params"]["executor"] == "dask"

    # the feature spaces were built by the workers, as tasks; the embedding's parts too, the model loaded
    # once in each worker however many parts it embedded
    client = manifest["executor"]["client"]
    assert all(manifest["spaces"][s]["built_by"] != client for s in ("kmeans", "kprototypes", "common"))
    emb = manifest["spaces"]["llm"]["embedding"]
    assert emb["parts"] == emb["parts_embedded"] == 5  # 300 distinct texts in parts of 64
    assert client not in emb["embedded_by"] and len(emb["embedded_by"]) >= 1
    metas = [part_meta(f) for f in (on_dask / ".segreport-cache" / "embeddings").glob("part-*.parquet")]
    per_worker = Counter(f"{m['host']}:{m['pid']}" for m in metas)
    assert max(per_worker.values()) >= 2 and all(m["model_loads_in_process"] == 1 for m in metas), metas
    for m, k in CELLS:
        st = manifest["cells"][f"{m}/k{k}"]
        assert st["status"] == "done" and not st["reused"] and st["wall_seconds"] > 0
        for f in ("labels.parquet", "metrics.json"):
            a, b = (runs[wd] / "cells" / m / f"k{k}" / f for wd in (on_dask, local))
            assert a.read_bytes() == b.read_bytes(), f"{m}/k{k}/{f} differs between the executors"
        assert (runs[on_dask] / "cells" / m / f"k{k}" / "done.json").exists()
        assert (runs[on_dask] / "cells" / m / f"k{k}" / "notebook.ipynb").exists()

    # the executor is no input of a cell: the Dask executor (here on the module's running cluster) reuses what
    # the local one computed
    segreport(local, *RUN, "--executor", "dask", "--scheduler", cluster.address)
    manifest = json.loads((runs[local] / "manifest.json").read_text())
    assert all(manifest["cells"][f"{m}/k{k}"]["reused"] for m, k in CELLS)


def test_a_killed_worker_does_not_lose_its_cell(workdir, cluster):
    from segreport.methods import Params
    from segreport.stages.dask_grid import run_grid_dask
    from segreport.stages.prepare import prepare

    write_demo(workdir / "data" / "demo.csv", rows=300, seed=12)
    params = Params(data="data/demo.csv", methods=["kmeans", "kprototypes"], k="2-3", stability_resamples=5,
                    projection_sample=200, render=False, workers=2, executor="dask")
    layout, ctx = prepare(params, root=workdir, progress=False)

    client = cluster.client
    killed: dict = {}

    def kill_a_busy_worker(pids: list[int], deadline: float) -> None:
        # a worker is busy with a cell while its notebook's kernel (a child process) is alive
        while time.monotonic() < deadline and not killed:
            for pid in pids:
                try:
                    kernels = [c for c in psutil.Process(pid).children(recursive=True)
                               if "ipykernel" in " ".join(c.cmdline())]
                except psutil.Error:
                    continue
                if kernels:
                    time.sleep(1.0)  # mid-notebook
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, kernels=[p.pid for p in kernels])
                    return
            time.sleep(0.2)

    try:
        pids = list(client.run(os.getpid).values())
        assert len(pids) == 2
        assert all(client.run(lambda: __import__("multiprocessing").current_process().daemon).values())
        killer = threading.Thread(target=kill_a_busy_worker, args=(pids, time.monotonic() + 120), daemon=True)
        killer.start()
        manifest: dict = {"cells": {}}
        statuses = run_grid_dask(layout, ctx, KILL_CELLS, 2, manifest, progress=False, project=workdir,
                                 scheduler=cluster.address)
        killer.join(timeout=5)
        assert killed, "no worker was killed: the cells never started a kernel?"

        # every cell finished, and the manifest on disk says so
        assert {n: s["status"] for n, s in statuses.items()} == {f"{m}/k{k}": "done" for m, k in KILL_CELLS}
        on_disk = json.loads(layout.manifest.read_text())
        assert all(on_disk["cells"][f"{m}/k{k}"]["status"] == "done" for m, k in KILL_CELLS)
        for m, k in KILL_CELLS:
            assert (layout.cell(m, k) / "done.json").exists() and (layout.cell(m, k) / "labels.parquet").exists()

        # the dead worker's cell was given to a worker again (the scheduler's own record of it)
        log = client.run_on_scheduler(lambda dask_scheduler: [(str(t.key), t.finish)
                                                              for t in dask_scheduler.transition_log])
        runs = Counter(key for key, finish in log if key.startswith("cell-") and finish == "processing")
        assert max(runs.values()) >= 2, runs

        # the nanny restarted the killed worker; the killed worker's kernel shut itself down
        client.wait_for_workers(2, timeout=60)
        assert killed["pid"] not in client.run(os.getpid).values()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            alive = [p for p in killed["kernels"] if _running(p)]
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, f"orphaned kernels of the killed worker still run: {alive}"
        nothing_written_where_the_workers_started(cluster)
    finally:
        client.wait_for_workers(2, timeout=60)  # the module's cluster whole again for the tests after this one


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_past_the_scale_threshold_the_report_says_which_path_ran(tmp_path, cluster):
    wd = small_project(tmp_path, seed=13)
    segreport(wd, "run", "-q", "--params", "p.yml", "--data", "data/demo.csv", "--methods", "kmeans,llm", "--k", "3",
              "--workers", "2", "--executor", "dask", "--scheduler", cluster.address, "--scale-threshold", "200",
              "--pages-only")  # the pages say which path ran; the site built from pages: test_end_to_end
    run = wd / "results" / "demo"
    nothing_written_where_the_workers_started(cluster)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["scale"]["scalable"] and manifest["executor"]["lightgbm_on_cluster"]
    for m in ("kmeans", "llm"):
        metrics = json.loads((run / "cells" / m / "k3" / "metrics.json").read_text())
        assert metrics["algorithm"] == "MiniBatchKMeans"
        assert metrics["lgbm_engine"] == "lightgbm.dask" and metrics["lgbm_validation"] == "holdout"
        assert metrics["lgbm_holdout_rows"] + metrics["lgbm_cv_rows"] == 300 and metrics["lgbm_accuracy"] > 0.5
        page = (wd / "report" / "_pages" / f"{m}.qmd").read_text()
        assert "took the **scalable path**" in page and "MiniBatchKMeans (mini-batches of 8,192 rows" in page
        assert f"trained with its Dask interface on {metrics['lgbm_cv_rows']} rows" in page
        at = cluster.address.replace(":", "\\:").replace("/", "\\/").replace(".", "\\.")  # markdown-escaped
        assert f"Cells ran on Dask (the cluster at {at} of 2 workers)" in page
    # below the threshold, the same table takes the exact path and the page says so (the local executor's
    # grid is not this test's subject: its cell runs in this process)
    run_inline(wd, "run", "-q", "--params", "p.yml", "--data", "data/demo.csv", "--methods", "kmeans", "--k", "3",
               "--workers", "2", "--pages-only")
    metrics = json.loads((run / "cells" / "kmeans" / "k3" / "metrics.json").read_text())
    assert metrics["algorithm"] == "KMeans (Lloyd)" and metrics["lgbm_engine"] == "lightgbm"
    assert "below the scale threshold of 200,000" in (wd / "report" / "_pages" / "kmeans.qmd").read_text()


def test_local_cluster_settings(cluster):
    s = cluster
    sched = s.client.run_on_scheduler(lambda dask_scheduler: (dask_scheduler.allowed_failures,
                                                              dask_scheduler.WORKER_SATURATION))
    env = s.client.run(lambda: os.environ.get("OMP_WAIT_POLICY"))
    assert sched == (1, float("inf"))  # a cell killed twice fails; no root-task queuing behind the cells
    assert set(env.values()) == {"PASSIVE"} and s.n_workers == 2
    assert s.resources == {"cell": 1} and s.spare_thread and s.describe()["local_cluster"]


def test_prepare_runs_in_a_process_of_its_own_that_hands_the_run_folder_lock_over(workdir, monkeypatch, cluster):
    """`--executor dask` prepares in a spawned process (the CLI keeps no PyTorch, row texts or table
    strings through the grid: 1.1 GiB at 1,000,000 rows). That process takes the run folder's lock and
    hands it over: through the grid the CLI's process holds it, and it is released at the end."""
    from segreport import SegreportError, runner
    from segreport.stages import dask_grid
    from segreport.methods import Params
    from segreport.core.store import RunLock

    write_demo(workdir / "data" / "demo.csv", rows=300, seed=14)
    params = Params(data="data/demo.csv", methods=["kmeans", "llm"], k="2", stability_resamples=5,
                    projection_sample=200, null_references=1, null_sample=200,
                    llm={"part_rows": 64, "compare_numbers": False}, render=False, workers=1, executor="dask",
                    scheduler=cluster.address)
    seen = {}
    real = dask_grid.run_grid_dask

    def grid(layout, ctx, *args, **kwargs):
        with pytest.raises(SegreportError, match=rf"another segreport run \(pid {os.getpid()}, started"):
            RunLock(layout.root).acquire(wait=False)
        seen["built_by"] = {m: ctx["spaces"][m]["built_by"] for m in ("kmeans", "llm")}
        return real(layout, ctx, *args, **kwargs)

    monkeypatch.setattr(runner, "run_grid_dask", grid)  # the name the runner calls
    out = runner.run(params, progress=False, root=workdir)
    assert "(2/2 cells done" in out
    host = f"{os.uname().nodename}:"
    built = {m: int(b.removeprefix(host)) for m, b in seen["built_by"].items()}
    assert os.getpid() not in built.values()  # the embedding's space: the prepare process; the other: a worker
    assert not psutil.pid_exists(built["llm"])  # ended with its stage
    with RunLock(workdir / "results" / "demo").acquire(wait=False):
        pass
    nothing_written_where_the_workers_started(cluster)


def test_bad_input_on_dask_is_one_line_exit_2_and_writes_nothing(tmp_path):
    wd = small_project(tmp_path, seed=15)
    (wd / "p.yml").write_text("schema:\n  - {name: age, kind: numeric}\n  - {name: jobb, kind: categorical}\n")
    res = segreport(wd, "run", "-q", "--params", "p.yml", "--data", "data/demo.csv", "--methods", "kmeans",
                    "--k", "2", "--executor", "dask", "--workers", "1", check=False)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segreport: error: "), res.stderr
    assert "demo.csv: column 'jobb' named in the schema is not in the file; did you mean 'job'?" in lines[0]
    assert not (wd / "results").exists() or not any((wd / "results").iterdir())
