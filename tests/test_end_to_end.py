"""The real grid through papermill, with the real embedding model, on a small demo table; then the
report built from it and checked as a reader would (HTML parsed, PDF text extracted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from bs4 import BeautifulSoup

from segreport.demo import write_demo

from .conftest import make_workdir, run_inline, segreport

pytestmark = pytest.mark.slow  # runs the real grid: `pytest -m 'not slow'` skips it

KS = [2, 3]
METHODS = ["kmeans", "kprototypes", "llm"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("e2e") / "project")
    write_demo(wd / "data" / "demo.csv", rows=600, seed=3)
    args = ["run", "-q", "--data", "data/demo.csv", "--k", "2-3", "--workers", "2"]
    first = segreport(wd, *args)
    return wd, args, first


def test_every_cell_has_its_results(demo_run):
    wd, _, first = demo_run
    run = wd / "results" / "demo"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["data"]["rows"] == 600
    assert manifest["data"]["demo"]["rows"] == 600
    assert len(manifest["data"]["file_sha256"]) == 64 and manifest["versions"]["torch"].startswith("2.13.0")
    for m in METHODS:
        for k in KS:
            cell = run / "cells" / m / f"k{k}"
            st = manifest["cells"][f"{m}/k{k}"]
            assert st["status"] == "done" and st["wall_seconds"] > 0
            labels = pd.read_parquet(cell / "labels.parquet")
            assert len(labels) == 600 and sorted(labels.segment.unique()) == list(range(k))
            metrics = json.loads((cell / "metrics.json").read_text())
            assert sum(metrics["sizes"]) == 600
            assert -1 <= metrics["common"]["silhouette"] <= 1 and metrics["common"]["davies_bouldin"] > 0
            assert 0 < metrics["lgbm_accuracy"] <= 1
            shap = json.loads((cell / "shap.json").read_text())
            assert set(shap["mean_abs_shap"]) == {str(s) for s in range(k)}
            nb = nbformat.read(cell / "notebook.ipynb", as_version=4)
            assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
            assert nb.metadata["kernelspec"]["name"] == "segreport"
            assert all(c.get("outputs") for c in nb.cells if c.cell_type == "code" and "parameters" not in
                       str(c.metadata.get("tags", [])))
    kmeans = json.loads((run / "cells" / "kmeans" / "k3" / "metrics.json").read_text())
    assert kmeans["outliers"] == 60 and kmeans["fitted_rows"] == 540  # ECOD contamination 0.1
    comp = json.loads((run / "comparison" / "comparison.json").read_text())
    assert {a["k"] for a in comp["agreement"]} == set(KS) and len(comp["agreement"]) == 6
    assert all(comp["recommended"][m]["k"] in KS for m in METHODS)
    assert "silhouette" in comp["recommended"]["kmeans"]["rule"] and "Jaccard" in comp["recommended"]["kmeans"]["rule"]
    # one recommendation per run, with a structure call against tables without segments
    rec = comp["recommendation"]
    assert rec["method"] in METHODS and rec["k"] in KS and rec["structure"] in ("clear", "weak", "none")
    assert set(comp["nulls"]) == set(METHODS) and all(n["references"] >= 1 for n in comp["nulls"].values())
    assert comp["verdict"]["table"] and any("gower" == r["space"] for r in comp["verdict"]["table"])


def test_the_run_prints_only_its_result_lines(demo_run):
    """No traceback, no '--- Logging error ---', no library warning (nbconvert's 'Alternative text is missing'
    went through a handler bound to a closed file: 18 logging errors on the demo)."""
    _, _, first = demo_run
    lines = (first.stdout + first.stderr).splitlines()
    noise = [ln for ln in lines if re.search(r"Traceback|Logging error|warn|Alternative text", ln, re.I)]
    assert not noise, "\n".join(noise[:20])
    assert any(ln.startswith("results: ") for ln in lines) and any(ln.startswith("report: ") for ln in lines)


def test_rerun_reuses_cells_and_is_byte_identical(demo_run):
    wd, args, _ = demo_run
    run = wd / "results" / "demo"
    files = sorted(run.glob("cells/*/k*/labels.parquet")) + sorted(run.glob("cells/*/k*/metrics.json"))
    before = {f: f.read_bytes() for f in files}
    segreport(wd, *args)
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["reused"] for s in manifest["cells"].values())
    assert {f: f.read_bytes() for f in files} == before
    # that every cell computed again gives the same bytes (same seed, same numbers) is checked where the
    # cells are computed twice anyway: test_dask_matches_local_executor (all three methods, two processes
    # and two executors) and the resumed runs of test_reliability


def test_html_site_reads_well(demo_run):
    wd, _, _ = demo_run
    site = wd / "_site"
    pages = {p.stem: p for p in (site / "report").glob("*.html")}
    assert set(pages) == {"index", "kmeans", "kprototypes", "llm", "famd", "hdbscan", "personas", "comparison",
                          "appendix"}  # methods not in the run get a page saying how to add them
    for name, page in pages.items():
        text = page.read_text()
        soup = BeautifulSoup(text, "html.parser")
        shown = "".join(pre.get_text() for pre in soup.find_all("pre"))  # the row-text template, shown as code
        visible = soup.get_text().replace(shown, "")
        assert "{{" not in visible and "{%" not in visible and "{#" not in visible, name
        assert soup.select("nav.sidebar a") and len(soup.select("nav.sidebar li")) == len(pages)
        for a in soup.select("a[href]"):
            href = a["href"].split("#")[0]
            if href and not re.match(r"^[a-z]+:", href):
                assert (page.parent / href).exists(), f"{name}: broken link {href}"
        for script in soup.select("script.vega-spec"):
            spec = json.loads(script.string)
            assert spec.get("data") or spec.get("datasets") or spec.get("hconcat") or spec.get("layer")
            assert soup.find(id=script["data-target"]) is not None
    personas = BeautifulSoup(pages["personas"].read_text(), "html.parser")
    manifest = json.loads((wd / "results" / "demo" / "manifest.json").read_text())
    expected = sum(manifest["recommended"][m] for m in METHODS)
    assert len(personas.select(".persona")) == expected
    assert all(card.find("h3") and "%" in card.get_text() for card in personas.select(".persona"))
    km = BeautifulSoup(pages["kmeans"].read_text(), "html.parser")
    assert len(km.select("script.vega-spec")) >= 4
    for png in (site / "report" / "figures").glob("*.png"):
        assert png.stat().st_size > 2000
    appendix = BeautifulSoup(pages["appendix"].read_text(), "html.parser")
    nb_links = [a["href"] for a in appendix.select("a[href$='.html']") if "notebooks/" in a["href"]]
    assert len(nb_links) == len(METHODS) * len(KS)
    assert "Built on generated demo data" in pages["index"].read_text()


def test_pdf_has_the_report(demo_run):
    from pypdf import PdfReader

    wd, _, _ = demo_run
    pdf = PdfReader(wd / "_site" / "report.pdf")
    assert 6 <= len(pdf.pages) <= 80
    text = "\n".join(p.extract_text() for p in pdf.pages)
    for heading in ("Overview", "K-means", "K-Prototypes", "LLM embeddings", "Segment personas", "Comparison of methods"):
        assert heading in text
    manifest = json.loads((wd / "results" / "demo" / "manifest.json").read_text())
    chosen = json.loads((wd / "results" / "demo" / "cells" / "kmeans" / f"k{manifest['recommended']['kmeans']}"
                         / "personas.json").read_text())
    for c in chosen:
        assert c["name"].split(" · ")[0] in text
    assert "silhouette" in text and "Davies" in text  # tables made it through typst


def test_render_only_rebuilds_site_without_analysis(demo_run, capsys):
    wd, _, _ = demo_run
    (wd / "_site" / "report.pdf").unlink()
    capsys.readouterr()
    run_inline(wd, "render", "--data", "data/demo.csv", "--k", "2-3")
    assert "report: " in capsys.readouterr().out
    assert (wd / "_site" / "report.pdf").exists()
