"""Shared fixtures: a scratch project folder, the real bank data from ../shared, demo tables; runs of the
grid in this process for tests whose subject is downstream of it; the `deep` marker and the seed of the
tests that draw a random point in time."""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT.parent / "shared" / "data" / "bank-marketing" / "train.csv"
LIGHT = "stability_resamples: 10\nnull_references: 1\nnull_sample: 300\nprojection_sample: 200\n"


def pytest_addoption(parser):
    parser.addoption("--deep", action="store_true",
                     help="also run the tests marked deep: the long variants (the three fixed SIGKILL seeds) "
                          "that the README's test command and CI leave out")


# the test modules that take longest, longest first (their tests' seconds in `--durations`, 2026-12-04): the
# two workers (`-n 2 --dist loadscope --no-loadscope-reorder`) each take a whole module, these first, and the many
# short modules fill in at the end, instead of one long module starting last while the other worker idles
LONGEST_FIRST = ("test_reliability", "test_dask", "test_end_to_end", "test_reuse", "test_any_table", "test_methods",
                 "test_track", "test_assign", "test_bank", "test_downloads", "test_seed_preset", "test_embed",
                 "test_embed_fast", "test_site")


def _cost_rank(item) -> int:
    name = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_cost_rank)  # stable: a module's tests keep their order
    if config.getoption("--deep"):
        return
    skip = pytest.mark.skip(reason="a long variant: run it with `pytest --deep`")
    for item in items:
        if "deep" in item.keywords:
            item.add_marker(skip)


def test_seed() -> int:
    """The seed of a test that draws (a moment to kill a run at, ...): $SEGREPORT_TEST_SEED to replay a
    failure, else drawn now; the test prints it, and its failure message names it."""
    return int(os.environ.get("SEGREPORT_TEST_SEED") or random.SystemRandom().randrange(1_000_000))


test_seed.__test__ = False  # a helper, not a test


@pytest.fixture
def bank_path() -> Path:
    if not BANK.exists():
        pytest.skip(f"the real bank data is not here ({BANK}): ../shared is absent")
    return BANK


_BUNDLE: list[Path] = []


def vega_bundle_once() -> Path:
    """The site's Vega bundle (vl-convert's `javascript_bundle`, about 4 CPU-seconds), built once per test
    session by render's own `vega_bundle`: a project keeps it in report/assets/ after its first render, as
    the test projects now do from the start (test_end_to_end's project builds its own)."""
    if not _BUNDLE:
        from segreport.report.render import vega_bundle

        folder = tempfile.mkdtemp(prefix="segreport-tests-")
        atexit.register(shutil.rmtree, folder, True)
        path = Path(folder) / "vega-bundle.js"
        vega_bundle(path)
        _BUNDLE.append(path)
    return _BUNDLE[0]


def make_workdir(path: Path, bundle: bool = True) -> Path:
    """A folder laid out like the project (templates, _quarto.yml) in which a run can write; with `bundle`,
    as after a first render (the Vega bundle in report/assets)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "templates").symlink_to(ROOT / "templates")
    (path / "params").symlink_to(ROOT / "params")
    shutil.copy(ROOT / "_quarto.yml", path / "_quarto.yml")
    (path / "report").mkdir(exist_ok=True)
    if bundle:
        (path / "report" / "assets").mkdir(exist_ok=True)
        shutil.copy(vega_bundle_once(), path / "report" / "assets" / "vega-bundle.js")
    # runs in a test check behaviour, not the defaults' sample sizes: fewer bootstrap refits, a single
    # small null reference and t-SNE on 200 rows (a quarter of a small run's time at 3,000) keep the grid
    # quick (a file given with --params replaces this one)
    (path / "params.yml").write_text(LIGHT)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    wd = make_workdir(tmp_path / "project")
    monkeypatch.chdir(wd)
    return wd


def snapshot(folder: Path) -> dict:
    """Every file under a folder with its size and mtime: to check that nothing was written (a run folder's
    .lock aside: a command that holds the lock signs it, whatever it then writes)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def segreport(cwd: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m segreport ARGS` in `cwd` as a user runs it (a fresh process); fails the test with the
    command's stderr where it does not succeed (check)."""
    res = subprocess.run([sys.executable, "-m", "segreport", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"segreport {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


def segreport_together(*runs: tuple[Path, tuple[str, ...]], timeout: int = 900) -> None:
    """`python -m segreport ARGS` in each (cwd, ARGS) at once, as separate users would start them: for runs
    whose results a test compares and whose start-up (interpreters, clusters, kernels) would otherwise wait
    one after the other. Fails the test with the stderr of each run that does not succeed."""
    procs = []
    for cwd, args in runs:  # stderr to a file: a pipe not read while another run is waited for could fill
        err = tempfile.TemporaryFile("w+")
        procs.append((cwd, args, err, subprocess.Popen([sys.executable, "-m", "segreport", *args], cwd=cwd,
                                                       text=True, stdout=subprocess.DEVNULL, stderr=err)))
    failed = []
    for cwd, args, err, proc in procs:
        proc.wait(timeout=timeout)
        err.seek(0)
        if proc.returncode != 0:
            failed.append(f"segreport {' '.join(args)} in {cwd} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        err.close()
    assert not failed, "\n".join(failed)


def inline_grid(layout, ctx, cells, workers, manifest, progress=True, project=None):
    """runner.run_grid without papermill: the cells left to run, each by `run_cell` (what its notebook
    calls) in this process, one after the other."""
    import time

    from segreport.stages.cell import run_cell
    from segreport.stages.grid import cells_to_run, record_cell

    todo, statuses = cells_to_run(layout, ctx, cells, manifest)
    for method, k, ck in todo:
        t0 = time.perf_counter()
        try:
            run_cell(layout.root, method, k)
            st = {"status": "done", "error": None}
        except Exception as exc:  # as the grid records a cell whose notebook raised
            st = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        record_cell(layout, manifest, method, k, ck, {**st, "wall_seconds": round(time.perf_counter() - t0, 3)})
    return statuses


def run_inline(cwd: Path, *args: str, code: int = 0) -> None:
    """`segreport ARGS` in `cwd` in this process, the grid's cells run by `run_cell` here (`inline_grid`):
    no interpreter, worker pool or Jupyter kernel to start, the libraries imported once for the whole
    session. For tests whose subject is downstream of the grid (assign, downloads, the report, tracking);
    the grid itself (papermill notebooks on real kernels, worker processes, signals) is tested as users
    run it in test_end_to_end, test_reliability and test_dask. Fails unless the command exits `code`."""
    from segreport import runner
    from segreport.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(runner, "run_grid", inline_grid)
        mp.setenv("SEGREPORT_SITE_URL", os.environ.get("SEGREPORT_SITE_URL", ""))  # render sets it for pandoc
        got = main(list(args))
    assert got == code, f"segreport {' '.join(args)} exited {got}, not {code}"
