"""The real grid through papermill, with the real embedding model, on a small demo table; then the
report built from it and checked as a reader would (HTML parsed, PDF text extracted)."""

from __future__ import annotations

import json
import re
import subprocess

import nbformat
import pandas as pd
import pytest
from bs4 import BeautifulSoup

from segreport.lib.demo import write_demo
from segreport.methods import REGISTRY

from .conftest import make_workdir, run_inline, segreport

pytestmark = pytest.mark.slow  # runs the real grid: `pytest -m 'not slow'` skips it

KS = [2, 3]
METHODS = ["kmeans", "kprototypes", "llm"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("e2e") / "project", bundle=False)  # a first render: builds it
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
            # the one analysis notebook, headed by its method (what the report links and publishes)
            assert nb.metadata["papermill"]["input_path"].endswith("analysis/segment.ipynb")
            assert f"# {REGISTRY[m].notebook_title}: one cell of the grid" in nb.cells[0].source
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
        listed = [a["href"].removesuffix(".html") for a in soup.select("nav.sidebar li a")]
        assert sorted(listed) == sorted(set(pages) - {"famd", "hdbscan"}), listed  # the run's methods only
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
    assert len((site / "report" / "assets" / "vega-bundle.js").read_bytes()) > 500_000  # built by this run
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


def test_pdf_cover_says_what_the_report_decides_and_has_no_dead_link(demo_run):
    """The PDF travels alone: its cover names the data, the date and the decision in one sentence; a link
    in it goes to a web address (the published site), never to a file beside a site the reader lacks (the
    file's name is written out instead); no line runs past the right margin (where pdftotext is installed)."""
    import shutil

    from pypdf import PdfReader

    wd, _, _ = demo_run
    path = wd / "_site" / "report.pdf"
    pdf = PdfReader(path)
    cover = " ".join(pdf.pages[0].extract_text().split())
    manifest = json.loads((wd / "results" / "demo" / "manifest.json").read_text())
    assert cover.startswith("Customer segmentation report"), cover[:200]
    assert "Data: 600 customers of demo.csv" in cover and f"Date: {manifest['finished'][:10]}" in cover, cover
    decision = re.search(r"Decision: ([^.]*(?:\.\d[^.]*)*)\.", cover)
    assert decision and re.search(r"(use|the most stable is|the filter) .* \d+ segments", decision.group(1)), cover
    text = "\n".join(p.extract_text() for p in pdf.pages)
    assert "downloads/metrics.csv" in text  # a file named where the site has a link to it
    for number, page in enumerate(pdf.pages, 1):
        for annot in page.get("/Annots") or []:
            a = annot.get_object()
            if a.get("/Subtype") != "/Link" or "/A" not in a:
                continue
            uri = a["/A"].get_object().get("/URI")
            assert uri is None or re.match(r"^(https?|mailto):", str(uri)), f"page {number}: a link to {uri!r}"
    if shutil.which("pdftotext"):
        html = subprocess.run(["pdftotext", "-bbox", str(path), "-"], capture_output=True, text=True,
                              check=True).stdout
        soup = BeautifulSoup(html, "html.parser")
        for number, page in enumerate(soup.select("page"), 1):
            right = float(page["width"]) - 2 / 2.54 * 72 + 1  # the 2 cm margin, and 1 pt of rounding
            past = [w.get_text() for w in page.select("word") if float(w["xmax"]) > right]
            assert past == [], f"page {number}: past the right margin: {past[:5]}"


# the words a manager may meet that need the glossary: (a pattern found on a page, the glossary entry)
GLOSSARY_TERMS = [
    (r"\bNMI\b|mutual information", "mutual information"), (r"Yeo-Johnson", "Yeo-Johnson"),
    (r"k-means\+\+", "k-means++"), (r"clusterboot", "Clusterboot"), (r"gap statistic", "Gap statistic"),
    (r"\bgamma\b", "Gamma"), (r"\bz\b(?= ?[=<>≥]|-score| \()", "z (standard deviations)"),
    (r"adjusted Rand|\bARI\b", "Adjusted Rand index"), (r"silhouette", "Silhouette"),
    (r"Davies-Bouldin", "Davies-Bouldin"), (r"Calinski-Harabasz", "Calinski-Harabasz"), (r"Jaccard", "Jaccard"),
    (r"\bECOD\b", "ECOD"), (r"\bSHAP\b", "SHAP value"), (r"log-odds", "Log-odds"), (r"Cliff's delta", "Cliff's delta"),
    (r"t-SNE|\bPCA\b|\bMCA\b", "PCA, t-SNE, MCA"), (r"Gower", "Gower distance"), (r"bootstrap", "Bootstrap"),
    (r"\binertia\b", "Inertia"), (r"\blift\b", "Lift"), (r"LightGBM", "LightGBM surrogate"),
    (r"\bfp32\b|\bbf16\b|\bint8\b", "fp32, bf16, int8"), (r"fidelity gate", "Fidelity gate"),
    (r"HDBSCAN|UMAP", "HDBSCAN, UMAP"), (r"\bFAMD\b", "FAMD"), (r"MiniBatchKMeans|Lloyd", "Lloyd, MiniBatchKMeans"),
    (r"Huang", "Huang's algorithm"), (r"\belbow\b", "Elbow"), (r"standard error|\bSE\b", "Standard error"),
    (r"embedding", "Embedding"),
]
# what a manager's pages (the Overview, the personas) say only inside folded details, if at all
TECHNICAL = r"(?<![\w-])--[a-z]|\bfp32\b|\bbf16\b|openvino|\bonnx\b|fidelity gate|sentence-transformers|\bpyod\b|" \
            r"\bkmodes\b|papermill|\|SHAP\|"


def test_every_term_a_page_uses_is_in_the_glossary_and_the_managers_pages_keep_to_plain_words(demo_run):
    wd, _, _ = demo_run
    report = wd / "_site" / "report"
    appendix = BeautifulSoup((report / "appendix.html").read_text(), "html.parser")
    defined = [dt.get_text(" ", strip=True).replace("\u2019", "'") for dt in appendix.select("dl dt")]  # pandoc's ’
    assert len(defined) >= 25
    for page in sorted(report.glob("*.html")):
        soup = BeautifulSoup(page.read_text(), "html.parser")
        for tag in soup.select("script, style, nav, pre, dl"):
            tag.decompose()
        text = soup.get_text(" ").replace("\u2019", "'")
        for pattern, entry in GLOSSARY_TERMS:
            if re.search(pattern, text, flags=re.I if pattern.islower() else 0):
                assert any(entry.lower() in d.lower() for d in defined), f"{page.name} uses {pattern!r}: no glossary entry"
        if page.stem in ("index", "personas"):
            for tag in soup.select("details"):
                tag.decompose()
            found = re.findall(TECHNICAL, soup.get_text(" "), flags=re.I)
            assert found == [], f"{page.name}: technical words outside folded details: {found}"
