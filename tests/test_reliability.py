"""Failures that do not lose work, interrupted runs that resume, and a report safe to publish."""

from __future__ import annotations

import pytest

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
from bs4 import BeautifulSoup

from segreport.demo import generate, write_demo

from .conftest import LIGHT, ROOT, make_workdir, segreport

pytestmark = pytest.mark.slow  # runs the real grid: `pytest -m 'not slow'` skips it


def _cell_bytes(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes()
            for p in sorted(run.glob("cells/*/k*/labels.parquet")) + sorted(run.glob("cells/*/k*/metrics.json"))}


def test_failed_cell_is_recorded_and_the_rest_renders(tmp_path):
    wd = make_workdir(tmp_path / "project")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=5)
    analysis = wd / "my-analysis"
    shutil.copytree(ROOT / "analysis", analysis)
    nb = nbformat.read(analysis / "kmeans.ipynb", as_version=4)
    nb.cells.insert(2, nbformat.v4.new_code_cell('if value == 3:\n    raise RuntimeError("this cell breaks on purpose")'))
    nbformat.write(nb, analysis / "kmeans.ipynb")
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


def test_interrupted_run_resumes_to_the_same_results(tmp_path):
    args = ["run", "-q", "--no-render", "--data", "data/demo.csv", "--methods", "kmeans,kprototypes", "--k", "2-5",
            "--workers", "1"]
    ref = make_workdir(tmp_path / "reference")
    write_demo(ref / "data" / "demo.csv", rows=300, seed=6)
    segreport(ref, *args)
    wd = make_workdir(tmp_path / "interrupted")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=6)
    proc = _start(wd, *args)
    manifest = wd / "results" / "demo" / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            done = [c for c in json.loads(manifest.read_text())["cells"].values() if c["status"] == "done"]
        except (OSError, ValueError, KeyError):
            done = []
        if len(done) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    m = json.loads(manifest.read_text())  # still valid JSON
    assert m["status"] == "interrupted"
    finished = [n for n, c in m["cells"].items() if c["status"] == "done"]
    assert 2 <= len(finished) < 8
    assert not list((wd / "results").rglob("*.tmp"))
    segreport(wd, *args)
    m = json.loads(manifest.read_text())
    assert m["status"] == "done" and all(m["cells"][n]["reused"] for n in finished)
    assert _cell_bytes(wd / "results" / "demo") == _cell_bytes(ref / "results" / "demo")


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
    segreport(wd, "run", "-q", "--params", "p.yml", "--data", "evil.csv", "--methods", "kmeans,kprototypes,llm",
              "--k", "3")
    for page in (wd / "_site" / "report").glob("*.html"):
        text = page.read_text()
        soup = BeautifulSoup(text, "html.parser")
        scripts = [s for s in soup.find_all("script") if s.get("src") is None and "vega-spec" not in s.get("class", [])]
        assert all("vegaEmbed" in (s.string or "") for s in scripts), page.name  # only our own script
        assert not soup.find("b"), page.name
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
