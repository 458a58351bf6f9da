"""Failures that do not lose work, interrupted runs that resume, and a report safe to publish."""

from __future__ import annotations

import pytest

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
from bs4 import BeautifulSoup

from segreport.lib.demo import generate, write_demo

from .conftest import LIGHT, ROOT, make_workdir, run_inline, segreport, test_seed

pytestmark = pytest.mark.slow  # runs the real grid: `pytest -m 'not slow'` skips it


def _cell_bytes(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes()
            for p in sorted(run.glob("cells/*/k*/labels.parquet")) + sorted(run.glob("cells/*/k*/metrics.json"))}


def test_failed_cell_is_recorded_and_the_rest_renders(tmp_path):
    wd = make_workdir(tmp_path / "project")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=5)
    analysis = wd / "my-analysis"
    shutil.copytree(ROOT / "analysis", analysis)
    nb = nbformat.read(analysis / "segment.ipynb", as_version=4)
    after = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    nb.cells.insert(after + 1, nbformat.v4.new_code_cell(
        'if (method, value) == ("kmeans", 3):\n    raise RuntimeError("this cell breaks on purpose")'))
    nbformat.write(nb, analysis / "segment.ipynb")
    (wd / "p.yml").write_text(f"analysis: {analysis}\n" + LIGHT)
    res = segreport(wd, "run", "-q", "--params", "p.yml", "--data", "data/demo.csv", "--methods", "kmeans,kprototypes",
                    "--k", "2-3")
    assert "failed cells: kmeans/k3" in res.stdout
    manifest = json.loads((wd / "results" / "demo" / "manifest.json").read_text())
    assert manifest["status"] == "done with failed cells" and manifest["failed"] == ["kmeans/k3"]
    bad = manifest["cells"]["kmeans/k3"]
    assert bad["status"] == "failed" and "this cell breaks on purpose" in bad["error"]
    assert (wd / bad["notebook"]).exists()  # the failing notebook is kept, with its traceback
    assert all(manifest["cells"][c]["status"] == "done" for c in ("kmeans/k2", "kprototypes/k2", "kprototypes/k3"))
    page = BeautifulSoup((wd / "_site" / "report" / "kmeans.html").read_text(), "html.parser")
    failed = page.select(".failed")
    assert failed and "this cell breaks on purpose" in failed[0].get_text()
    link = failed[0].find("a")["href"]
    assert (wd / "_site" / "report" / link).exists()
    assert (wd / "_site" / "report.pdf").exists()


def _start(wd: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "segreport", *args], cwd=wd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_report_escapes_data_and_leaks_no_customer(tmp_path):
    wd = make_workdir(tmp_path / "project")
    df = generate(400, seed=9)
    df.loc[df.job == "management", "job"] = '<script>alert("x")</script>'
    df.loc[df.job == "retired", "job"] = "=cmd|' /C calc'!A0 & \"friends\""
    df = df.rename(columns={"marital": "marital <b>status</b>"})
    df.to_csv(wd / "evil.csv", index=False)
    (wd / "p.yml").write_text(
        "schema:\n"
        "  - {name: age, kind: numeric}\n  - {name: job, kind: categorical}\n"
        "  - {name: 'marital <b>status</b>', kind: categorical}\n  - {name: balance, kind: numeric}\n"
        "  - {name: housing, kind: binary}\n"
        "min_segment_size: 20\n" + LIGHT)
    run_inline(wd, "run", "-q", "--params", "p.yml", "--data", "evil.csv", "--methods", "kmeans,kprototypes,llm",
               "--k", "3")
    for page in (wd / "_site" / "report").glob("*.html"):
        text = page.read_text()
        soup = BeautifulSoup(text, "html.parser")
        scripts = [s for s in soup.find_all("script") if s.get("src") is None and "vega-spec" not in s.get("class", [])]
        assert all("vegaEmbed" in (s.string or "") for s in scripts), page.name  # only our own script
        assert not [b for b in soup.find_all("b") if "status" in b.get_text()], page.name  # the column's <b>
        assert '<script>alert("x")' not in text
        for spec in soup.select("script.vega-spec"):
            assert "<" not in spec.string
    personas = (wd / "_site" / "report" / "personas.html").read_text()
    assert "&lt;script&gt;alert" in personas or "&lt;script&gt;" in (wd / "_site" / "report" / "kmeans.html").read_text()
    index = BeautifulSoup((wd / "_site" / "report" / "index.html").read_text(), "html.parser")
    assert "marital <b>status</b>" in index.get_text()
    from pypdf import PdfReader

    pdf_text = "\n".join(p.extract_text() for p in PdfReader(wd / "_site" / "report.pdf").pages)
    assert "marital <b>status</b>" in pdf_text
    # no individual customer: no page shows a (age, balance) pair of a real row
    raw = pd.read_csv(wd / "evil.csv")
    site_text = " ".join(p.read_text() for p in (wd / "_site" / "report").glob("*.html"))
    rows = [f"{a}, {b}" for a, b in zip(raw.age, raw.balance)]
    assert not any(r in site_text for r in rows[:400] if len(r) > 8)
    csv = (wd / "_site" / "report" / "downloads" / "metrics.csv").read_text()
    assert "\n=" not in csv and ",=" not in csv


# --------------------------------------------------------------------------- faults injected into whole runs
# (the library's side of each fault, in this process: test_faults.py)

ARGS = ["run", "-q", "--no-render", "--data", "data/demo.csv", "--methods", "kmeans", "--k", "2-3", "--workers", "1"]
# files that hold wall times, timestamps, process ids or paths: every other file of a run is compared byte for byte
VOLATILE = {"manifest.json", "context.json", "timings.json", "notebook.ipynb", "kernel.log", "done.json", "info.json",
            ".lock"}


def _result_bytes(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in VOLATILE and not (p.parent.name == "projections" and p.suffix == ".json")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One finished run (kmeans, k 2-3, 300 demo rows) and how long it took."""
    wd = make_workdir(tmp_path_factory.mktemp("reference") / "project")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=6)
    t0 = time.time()
    segreport(wd, *ARGS)
    return wd, time.time() - t0


def test_interrupted_run_resumes_to_the_same_results(reference, tmp_path):
    """SIGTERM once the first cell is done: status 130, an `interrupted` manifest that is still JSON, the
    finished cell kept and no temporary file; the next run reuses it and ends with the reference's bytes."""
    ref, _ = reference
    wd = make_workdir(tmp_path / "interrupted")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=6)
    proc = _start(wd, *ARGS)
    manifest = wd / "results" / "demo" / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            done = [c for c in json.loads(manifest.read_text())["cells"].values() if c["status"] == "done"]
        except (OSError, ValueError, KeyError):
            done = []
        if done:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    m = json.loads(manifest.read_text())  # still valid JSON
    assert m["status"] == "interrupted"
    finished = [n for n, c in m["cells"].items() if c["status"] == "done"]
    assert len(finished) == 1, m["cells"]  # one of the two cells: the other one was running
    assert not list((wd / "results").rglob("*.tmp"))
    segreport(wd, *ARGS)
    m = json.loads(manifest.read_text())
    assert m["status"] == "done" and all(m["cells"][n]["reused"] for n in finished)
    assert _cell_bytes(wd / "results" / "demo") == _cell_bytes(ref / "results" / "demo")


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_damaged_files_of_each_kind_are_said_and_rebuilt_to_the_same_bytes(reference, tmp_path):
    ref, _ = reference
    wd = tmp_path / "project"
    shutil.copytree(ref, wd, symlinks=True)
    run = wd / "results" / "demo"
    other = sorted(p.stem for p in run.glob("projections/*.parquet") if p.stem != "mca")[0]
    faults = {  # file -> (how, what the run does about it)
        "cells/kmeans/k3/labels.parquet": (_cut, "recomputing that cell"),
        "cells/kmeans/k2/model.joblib": (_flip, "recomputing that cell"),
        "spaces/kmeans/X.npy": (_cut, "rebuilding that feature space"),
        "spaces/common/X.npy": (_flip, "rebuilding that feature space"),
        f"projections/{other}.parquet": (_cut, "rebuilding that projection"),
        "projections/mca.parquet": (_flip, "rebuilding that projection"),
        "table.parquet": (_flip, "writing it again"),
    }
    for rel, (how, _) in faults.items():
        how(run / rel)
    res = segreport(wd, *ARGS)
    said = [line for line in res.stderr.splitlines() if " is damaged " in line]
    assert len(said) == len(faults), res.stderr
    for rel, (how, action) in faults.items():
        why = r"size differs: 100 bytes, not \d+" if how is _cut else "hash differs"
        assert any(re.fullmatch(rf"segreport: results/demo/{re.escape(rel)} is damaged \({why}\): {action}", line)
                   for line in said), (rel, said)
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "done" and not any(m["cells"][c]["reused"] for c in ("kmeans/k2", "kmeans/k3"))
    assert _result_bytes(run) == _result_bytes(ref / "results" / "demo")
    # and once rebuilt, nothing is said and everything is reused
    res = segreport(wd, *ARGS)
    assert " is damaged " not in res.stderr
    assert all(c["reused"] for c in json.loads((run / "manifest.json").read_text())["cells"].values())


def _sigkill_then_resume(reference, tmp_path, seed: int) -> None:
    import random

    ref, seconds = reference
    wd = make_workdir(tmp_path / "project")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=6)
    proc = subprocess.Popen([sys.executable, "-m", "segreport", *ARGS], cwd=wd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    at = random.Random(seed).uniform(0.5, 0.9 * seconds)
    print(f"SEGREPORT_TEST_SEED={seed}: SIGKILL after {at:.1f} s of a {seconds:.1f} s run")
    time.sleep(at)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers, with no chance to clean up
    proc.wait()
    time.sleep(2)  # the cells' kernels (their own sessions) see their worker gone and exit
    run = wd / "results" / "demo"
    lock = run / ".lock"
    held = lock.exists() and lock.read_text() != ""
    res = segreport(wd, *ARGS)
    replay = f"replay with SEGREPORT_TEST_SEED={seed}"
    assert ("taking over its lock" in res.stderr) == held, (replay, res.stderr)
    assert not list(run.rglob("*.tmp")), replay
    assert json.loads((run / "manifest.json").read_text())["status"] == "done", replay
    assert _result_bytes(run) == _result_bytes(ref / "results" / "demo"), replay


def test_sigkill_at_a_random_point_then_resume_gives_the_same_bytes(reference, tmp_path):
    """One moment per test run, drawn anew each time (so runs over time cover the whole run) and printed:
    SEGREPORT_TEST_SEED replays it. The three fixed moments of earlier rounds: `pytest --deep`."""
    _sigkill_then_resume(reference, tmp_path, test_seed())


@pytest.mark.deep
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_three_fixed_points_then_resume_gives_the_same_bytes(reference, tmp_path, seed):
    _sigkill_then_resume(reference, tmp_path, seed)


def test_two_runs_on_one_folder_one_waits_or_stops(tmp_path):
    wd = make_workdir(tmp_path / "project")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=6)
    first = _start(wd, *ARGS)
    lock = wd / "results" / "demo" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text()):
        time.sleep(0.1)
    assert json.loads(lock.read_text())["pid"] == first.pid
    res = segreport(wd, *ARGS, "--no-wait", check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"segreport: error: results/demo is being written by another segreport run "
                                 f"(pid {first.pid}, started ")
    second = _start(wd, *ARGS)
    _, err1 = first.communicate(timeout=900)
    _, err2 = second.communicate(timeout=900)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert f"results/demo is being written by another segreport run (pid {first.pid}, started " in err2
    assert "waiting for it to finish" in err2
    m = json.loads((wd / "results" / "demo" / "manifest.json").read_text())
    assert m["status"] == "done" and all(c["reused"] for c in m["cells"].values())  # the second ran nothing again


def _can_mount_tmpfs() -> bool:
    import shutil as sh

    if not sh.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                          capture_output=True).returncode == 0


FULL_DISK = """
set -u
mount -t tmpfs -o size=${SMALL}k tmpfs results
"$PY" -m segreport run -q --no-render --data data/demo.csv --methods kmeans --k 2-3 --workers 1 2> "$OUT/err0"
echo $? > "$OUT/rc0"
find results -name '*.tmp' > "$OUT/tmp0"
mount -o remount,size=${SIZE}k results
"$PY" -m segreport run -q --no-render --data data/demo.csv --methods kmeans --k 2-3 --workers 1 2> "$OUT/err1"
echo $? > "$OUT/rc1"
find results -name '*.tmp' > "$OUT/tmp1"
find results -name done.json > "$OUT/done1"
mount -o remount,size=64m results
"$PY" -m segreport run -q --no-render --data data/demo.csv --methods kmeans --k 2-3 --workers 1 2> "$OUT/err2"
echo $? > "$OUT/rc2"
cp -r results "$OUT/results"
"""


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no private mount namespace here to mount a small tmpfs in")
def test_a_full_disk_is_one_line_status_4_no_temporary_file_and_the_next_run_resumes(reference, tmp_path):
    ref, _ = reference
    refrun = ref / "results" / "demo"
    # room for the run without the cell k3, and half of k3: the disk fills up while k3 writes its results
    used = sum(p.stat().st_size for p in refrun.rglob("*") if p.is_file() and "k3" not in p.parts)
    k3 = sum(p.stat().st_size for p in (refrun / "cells" / "kmeans" / "k3").rglob("*") if p.is_file())
    files = sum(1 for p in refrun.rglob("*") if p.is_file())
    size_k = (used + k3 // 2) // 1024 + 4 * files
    # first, the reproduction (#29): room for the table and half the first feature space, whose
    # np.save ends in a short write without an errno
    pages = lambda name: -(-(refrun / name).stat().st_size // 4096)  # noqa: E731
    small_k = 4 * (1 + pages("table.parquet") + pages("table.json") + pages("spaces/kmeans/X.npy") // 2)
    wd = make_workdir(tmp_path / "project")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=6)
    (wd / "results").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["unshare", "--mount", "sh", "-c", FULL_DISK], cwd=wd, check=True, timeout=1200,
                   env={**os.environ, "SIZE": str(size_k), "SMALL": str(small_k), "PY": sys.executable, "OUT": str(out)})
    err0 = (out / "err0").read_text()
    assert (out / "rc0").read_text().strip() == "4" and (out / "tmp0").read_text() == "", err0
    assert err0 == ("segreport: no space left on device in results/demo/spaces/kmeans while writing X.npy; "
                    "finished cells are kept, free space and run again\n")
    err1 = (out / "err1").read_text()
    assert (out / "rc1").read_text().strip() == "4", err1
    assert err1.count("\n") == 1 and re.fullmatch(
        r"segreport: no space left on device in results/demo\S* while writing \S+; finished cells are kept, "
        r"free space and run again\n", err1), err1
    assert (out / "tmp1").read_text() == ""  # no temporary file left behind
    finished = [Path(p).parent.name for p in (out / "done1").read_text().split()]
    assert finished, f"the disk of {size_k} KiB filled up before any cell finished: {err1}"
    assert (out / "rc2").read_text().strip() == "0", (out / "err2").read_text()
    m = json.loads((out / "results" / "demo" / "manifest.json").read_text())
    assert m["status"] == "done" and all(m["cells"][f"kmeans/{c}"]["reused"] for c in finished)
    assert _result_bytes(out / "results" / "demo") == _result_bytes(refrun)
    for done in (out / "results" / "demo").glob("cells/*/*/done.json"):  # the run's records, verified on reuse
        assert sorted(json.loads(done.read_text())["records"]) == ["notebook.ipynb", "timings.json"]
