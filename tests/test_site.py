"""A site that works anywhere it is served, and `quarto render` on a fresh clone (issue #14, items 6 and 10).

Quarto resolves a book's chapters before it runs the pre-render script, so the chapters _quarto.yml
lists are committed stubs; the pre-render (the analysis) writes the pages beside them, in ignored
folders, and leaves the git tree clean. Quarto itself cannot run here: the slow tests replay its order
of events (chapters looked up on a fresh clone, then the pre-render command with Quarto's environment),
then build the site with the built-in renderer, serve it over HTTP and open it in headless Chromium.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from segreport.methods import REGISTRY
from segreport.report.render import chapters as quarto_chapters
from segreport.report.render import (PAGES_DIR, local_paths, page_path, publish_modes, publishable_notebook, quarto_text,
                              read_quarto, scrub_paths, stub_pages, stub_text)
from segreport.core.store import RunLayout

from .conftest import LIGHT, ROOT

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=15000"]


def chapters(project: Path) -> list[str]:
    return read_quarto(project, ["tracking"])["chapters"]


def stub_code(stub: str) -> str:
    """The Python of a stub's one cell, as Quarto's Jupyter engine runs it."""
    return stub.split("```{python}\n", 1)[1].split("\n```", 1)[0]


def run_stub(stub: Path) -> str:
    """What Quarto puts in place of the stub's cell (`output: asis`): the cell's printed markdown. Quarto runs
    a chapter's cells in the chapter's folder."""
    res = subprocess.run([sys.executable, "-c", stub_code(stub.read_text())], cwd=stub.parent, capture_output=True,
                         text=True, check=True)
    return res.stdout


# --------------------------------------------------------------------------- fast: the committed chapters


def git_files() -> set[str]:
    res = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip("not a git checkout")
    return set(res.stdout.splitlines())


def test_every_chapter_is_committed_as_its_stub():
    tracked = git_files()
    listed = chapters(ROOT)
    assert listed and {Path(c).stem for c in listed} == set(stub_pages())
    for ch in listed:
        assert ch in tracked, f"{ch}: listed in _quarto.yml but not committed (Quarto needs it before pre-render)"
        assert (ROOT / ch).read_text() == stub_text(Path(ch).stem), \
            f"{ch} differs from segreport.report.render.stub_text: rewrite it with render.write_stubs(Path('report'))"


def test_the_chapters_are_the_registrys():
    """_quarto.yml lists a chapter per method of the registry, as render.write_chapters writes it; a project
    whose list lacks one gets it, the rest of its file as it was."""
    text = (ROOT / "_quarto.yml").read_text()
    assert quarto_text(text) == text, "_quarto.yml's chapters differ from the registry's: render.write_chapters"
    assert [Path(c).stem for c in chapters(ROOT)][1:-4] == list(REGISTRY)
    assert quarto_chapters() == [c for c in read_quarto(ROOT)["chapters"] if "appendix" not in c]
    short = text.replace("    - report/famd.qmd\n", "")
    assert short != text and quarto_text(short) == text


def test_generated_pages_are_ignored_and_the_stubs_are_not():
    res = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"report/{PAGES_DIR}/kmeans.qmd"], cwd=ROOT)
    assert res.returncode == 0
    for path in ("report/kmeans.qmd", "report/index.qmd"):
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 1
    for path in ("report/figures/x.png", "report/notebooks/kmeans-k3.html", ".quarto/idx/x.json", "_site/index.html"):
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0, path


def test_a_stub_shows_its_page_without_front_matter(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    stub = report / "kmeans.qmd"
    stub.write_text(stub_text("kmeans"))
    assert stub.read_text().startswith('---\ntitle: "K-means"\n')
    assert "not been written" in run_stub(stub)
    page = page_path(report, "kmeans")
    page.parent.mkdir()
    body = "## How it works\n\nA *page* with `code`, a \\$ sign and a [link](appendix.qmd).\n\n---\n\nafter a rule\n"
    page.write_text('---\ntitle: "K-means"\n---\n' + body)
    assert run_stub(stub).rstrip("\n") == body.rstrip("\n")


def test_the_pages_workflow_renders_with_quarto():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "report.yml").read_text())
    steps = wf["jobs"]["build"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    runs = " ".join(s.get("run", "") for s in steps)
    assert any(u.startswith("quarto-dev/quarto-actions/setup@") for u in uses)
    assert "quarto render" in runs
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_site"
    i_setup = next(i for i, u in enumerate(uses) if u.startswith("quarto-dev/quarto-actions/setup@"))
    i_render = next(i for i, s in enumerate(steps) if "quarto render" in s.get("run", ""))
    assert i_setup < i_render < uses.index(upload["uses"])


# --------------------------------------------------------------------------- fast: what gets published


def test_published_notebook_has_no_local_path(tmp_path):
    project = tmp_path / "proj"
    run = project / "results" / "demo"
    run.mkdir(parents=True)
    (project / "report").mkdir()
    nb = {"cells": [{"cell_type": "code", "source": f'run_dir = "{run}"', "metadata": {}, "outputs": [
        {"output_type": "stream", "name": "stderr", "text": f"{sys.prefix}/lib/x.py:1: Warning\n{project}/data/a.csv"}],
        "execution_count": 1}],
        "metadata": {"papermill": {"input_path": str(ROOT / "segreport" / "analysis" / "segment.ipynb"),
                                   "output_path": str(run / "cells" / ".notebook.ipynb.x.tmp"),
                                   "parameters": {"run_dir": str(run)}, "environment_variables": {}}},
        "nbformat": 4, "nbformat_minor": 5}
    src = tmp_path / "nb.ipynb"
    src.write_text(json.dumps(nb))
    out = publishable_notebook(src, RunLayout(run), project / "report", "kmeans-k3")
    for path in (str(tmp_path), str(ROOT), sys.prefix):
        assert path not in out
    pub = json.loads(out)
    assert pub["metadata"]["papermill"]["parameters"]["run_dir"] == "results/demo"
    assert pub["metadata"]["papermill"]["input_path"] == "analysis/segment.ipynb"
    assert pub["cells"][0]["source"] == 'run_dir = "results/demo"'
    assert "./data/a.csv" in pub["cells"][0]["outputs"][0]["text"]
    pairs = local_paths(RunLayout(run), project / "report")
    assert scrub_paths(f"see {run}/cells", pairs) == "see results/demo/cells"


def test_publish_modes_whatever_the_umask(tmp_path):
    site = tmp_path / "site"
    (site / "a" / "b").mkdir(parents=True)
    (site / "a" / "b" / "f.html").write_text("x")
    (site / "g.js").write_text("x")
    os.chmod(site, 0o700)
    os.chmod(site / "a", 0o700)
    os.chmod(site / "g.js", 0o600)
    os.chmod(site / "a" / "b" / "f.html", 0o755)
    publish_modes(site)
    modes = {p.relative_to(site).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [site, *site.rglob("*")]}
    assert modes == {".": 0o755, "a": 0o755, "a/b": 0o755, "a/b/f.html": 0o644, "g.js": 0o644}


# --------------------------------------------------------------------------- slow: a fresh clone, served


def fresh_clone(dest: Path) -> Path:
    """The repository as `git clone` gives it (tracked files only, the working tree's changes included), as a
    new git repository so that `git status` can tell what a build changed."""
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    commit = subprocess.run(["git", "stash", "create"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit or "HEAD"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x"], cwd=dest, input=archive, check=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "clone"], cwd=dest, check=True)
    return dest


def git_status(repo: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout


def as_quarto_runs_pre_render(project: Path, env: dict) -> subprocess.CompletedProcess:
    """`project.pre-render` of _quarto.yml, as Quarto runs it for a whole-project render: in the project folder,
    `python` from PATH, with the QUARTO_PROJECT_* variables."""
    cfg = yaml.safe_load((project / "_quarto.yml").read_text())
    commands = cfg["project"]["pre-render"]
    commands = [commands] if isinstance(commands, str) else commands
    full = {**env, "QUARTO_PROJECT_RENDER_ALL": "1", "QUARTO_PROJECT_OUTPUT_DIR": str(project / "_site"),
            "QUARTO_PROJECT_INPUT_FILES": "\n".join(read_quarto(project)["chapters"]),
            "QUARTO_PROJECT_SCRIPT_PROGRESS": "0", "QUARTO_PROJECT_SCRIPT_QUIET": "0"}
    for command in commands:
        res = subprocess.run(shlex.split(command), cwd=project, env=full, capture_output=True, text=True, timeout=1500)
        assert res.returncode == 0, f"pre-render `{command}` failed:\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    from segreport.lib.demo import write_demo

    repo = fresh_clone(tmp_path_factory.mktemp("fresh") / "segreport")
    listed = read_quarto(repo)["chapters"]
    missing_before = [c for c in listed if not (repo / c).exists()]
    status_before = git_status(repo)
    write_demo(repo / "data" / "demo.csv", rows=300)  # data/ is ignored: the clone stays clean
    params = repo.parent / "params-light.yml"
    params.write_text(LIGHT + "data: data/demo.csv\nmethods: [kmeans]\nk: [3]\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "SEGREPORT_PARAMS": str(params), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # `python -m segreport` in the clone runs the clone's package
    as_quarto_runs_pre_render(repo, env)
    status_after_pre_render = git_status(repo)
    # the site as the built-in renderer builds it where Quarto is absent, under a strict umask
    res = subprocess.run([sys.executable, "-m", "segreport", "render", "--engine", "builtin"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=900, preexec_fn=lambda: os.umask(0o077))
    assert res.returncode == 0, res.stderr[-3000:]
    return {"repo": repo, "missing_before": missing_before, "status_before": status_before,
            "status_after_pre_render": status_after_pre_render, "status_after_render": git_status(repo)}


@pytest.mark.slow
def test_quarto_finds_every_chapter_on_a_fresh_clone_and_the_build_changes_no_tracked_file(clone):
    repo = clone["repo"]
    assert clone["status_before"] == ""
    assert clone["missing_before"] == [], "Quarto stops with 'Book chapter ... not found' before its pre-render"
    assert clone["status_after_pre_render"] == "", clone["status_after_pre_render"]
    assert clone["status_after_render"] == "", clone["status_after_render"]
    for ch in read_quarto(repo)["chapters"]:
        page = page_path((repo / ch).parent, Path(ch).stem)
        assert page.exists(), f"the pre-render did not write {page}"
        shown = run_stub(repo / ch)  # what Quarto renders in place of the stub's cell
        assert shown.strip() and shown.strip() in page.read_text()
        assert "not been written" not in shown


@pytest.fixture(scope="module")
def served(clone):
    """The built site behind python's http.server on localhost, as an ordinary static server serves it."""
    site = clone["repo"] / "_site"
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"site": site, "url": f"http://127.0.0.1:{server.server_address[1]}", "repo": clone["repo"]}
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.skip("no headless Chromium here (apt-get install chromium)")
    return found


HARNESS = """<!doctype html><html><head><meta charset="utf-8"><title>harness</title></head><body>
<script>
// every page in an iframe of its own, loaded one after the other; once a page has loaded and its scripts
// had time to draw, its DOM is copied into a textarea of this page, which Chromium then dumps, with what
// the page measured as laid out (PROBE) in a second textarea
const pages = %s;
const width = %d;
%s
let i = 0;
function next() {
  if (i >= pages.length) { document.body.setAttribute("data-done", "1"); return; }
  const [url, w] = pages[i++];
  const frame = document.createElement("iframe");
  frame.style.width = (w || width) + "px";
  frame.style.height = "900px";
  frame.style.border = "0";
  frame.onload = () => setTimeout(() => {
    const key = w ? url + "@" + w : url;
    const box = document.createElement("textarea");
    box.className = "dom";
    box.setAttribute("data-url", key);
    box.textContent = "<!doctype html>" + frame.contentDocument.documentElement.outerHTML;
    document.body.appendChild(box);
    const measured = document.createElement("textarea");
    measured.className = "probe";
    measured.setAttribute("data-url", key);
    let found;
    try { found = probe(frame.contentDocument, frame.contentWindow); } catch (err) { found = {error: String(err)}; }
    measured.textContent = JSON.stringify(found);
    document.body.appendChild(measured);
    frame.remove();
    next();
  }, 3000);
  frame.src = url;
  document.body.appendChild(frame);
}
next();
</script></body></html>"""


# what a page measures as laid out in its iframe: how wide the document is against its viewport, every
# element past the viewport's edges that no scrolling box holds (one that itself fits the screen), and chart
# text drawn smaller than 10 px (its font size times the scale the SVG is drawn at)
PROBE = """
function probe(doc, win) {
  const vw = doc.documentElement.clientWidth;
  const out = {width: vw, scrollWidth: doc.documentElement.scrollWidth, overflow: [], small: [], texts: 0,
               scrollers: 0, cues: doc.querySelectorAll(".scroll-cue").length};
  const name = el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (typeof el.className === "string" && el.className ? "." + el.className.trim().split(/\\s+/).join(".") : "");
  function held(el) {
    for (let p = el.parentElement; p && p !== doc.body; p = p.parentElement) {
      const ox = win.getComputedStyle(p).overflowX;
      if ((ox === "auto" || ox === "scroll" || ox === "hidden") && p.getBoundingClientRect().right <= vw + 1
          && p.getBoundingClientRect().left >= -1) { return true; }
    }
    return false;
  }
  doc.querySelectorAll("body *").forEach(el => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) { return; }
    const ox = win.getComputedStyle(el).overflowX;
    if (el.matches("table, .vega-chart") && el.scrollWidth > el.clientWidth + 1) { out.scrollers += 1; }
    if ((r.right > vw + 1 || r.left < -1) && !held(el)) {
      out.overflow.push(name(el) + " from " + Math.round(r.left) + " to " + Math.round(r.right) + ": " +
                        (el.textContent || "").trim().slice(0, 60));
    }
  });
  doc.querySelectorAll(".vega-chart svg text").forEach(t => {
    if (!t.textContent.trim()) { return; }
    const m = t.getScreenCTM();
    const px = parseFloat(win.getComputedStyle(t).fontSize) * (m ? Math.hypot(m.a, m.b) : 1);
    out.texts += 1;
    if (px < 9.95) { out.small.push(t.textContent.trim().slice(0, 40) + " at " + px.toFixed(1) + " px"); }
  });
  return out;
}
"""


def browse(root: Path, pages: list[str], tmp_path: Path, width: int = 1280) -> dict[str, str]:
    """Each page's DOM after its scripts ran, from ONE headless Chromium (see browse_all)."""
    return browse_all(root, pages, tmp_path, width)[0]


def browse_all(root: Path, pages: list[str], tmp_path: Path, width: int = 1280,
               narrow: dict[str, int] | None = None) -> tuple[dict[str, str], dict[str, dict]]:
    """Each page's DOM after its scripts ran and what it measured (PROBE), from ONE headless Chromium (a dozen
    launches cost a minute): `root` served over HTTP beside a harness page that opens every page (paths under
    root) in an iframe in turn and copies its DOM out once it has drawn; Chromium dumps the harness after a
    virtual-time budget. `narrow`: pages opened once more at another width (a phone's), keyed "<page>@<width>"."""
    from bs4 import BeautifulSoup

    opened = [[p, 0] for p in pages] + [[p, w] for p, w in (narrow or {}).items()]
    keys = pages + [f"{p}@{w}" for p, w in (narrow or {}).items()]

    exe = browser()

    class Handler(QuietHandler):
        def do_GET(self):
            if self.path.split("?")[0] == "/__harness__.html":
                body = (HARNESS % (json.dumps([["/" + p, w] for p, w in opened]), width, PROBE)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/__harness__.html"
        flags = [f if not f.startswith("--virtual-time-budget") else f"--virtual-time-budget={8000 * len(opened) + 5000}"
                 for f in FLAGS]
        res = subprocess.run([exe, *flags, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 0 and "<html" in res.stdout, res.stderr[-2000:]
    soup = BeautifulSoup(res.stdout, "html.parser")
    doms = {box["data-url"].lstrip("/"): box.get_text() for box in soup.select("textarea.dom")}
    probes = {box["data-url"].lstrip("/"): json.loads(box.get_text()) for box in soup.select("textarea.probe")}
    assert list(doms) == keys, f"the harness opened {list(doms)} of {keys}"
    return doms, probes


BROKEN = {"no-vega": "", "vega-rejects": "window.vegaEmbed = function () { return Promise.reject(new Error('x')); };",
          "vega-throws": "window.vegaEmbed = function () { throw new Error('x'); };"}


@pytest.fixture(scope="module")
def browsed(served, tmp_path_factory):
    """Every page of the served site, and the K-means page of three copies of it whose Vega bundle is missing,
    rejects or throws, opened in one headless Chromium."""
    root = tmp_path_factory.mktemp("browse")
    (root / "site").symlink_to(served["site"])
    for name, bundle in BROKEN.items():
        shutil.copytree(served["site"], root / name)
        (root / name / "report" / "assets" / "vega-bundle.js").write_text(bundle)
    pages = sorted(p.name for p in (served["site"] / "report").glob("*.html"))
    urls = [f"site/report/{p}" for p in pages] + [f"{name}/report/kmeans.html" for name in BROKEN]
    doms, probes = browse_all(root, urls, root, narrow={f"site/report/{p}": PHONE for p in pages})
    return {"pages": pages, "root": root, "dom": doms, "probe": probes}


PHONE = 420  # px: a phone held upright


@pytest.mark.slow
def test_every_chart_draws_on_the_served_site(browsed):
    from bs4 import BeautifulSoup

    pages = browsed["pages"]
    assert {p.removesuffix(".html") for p in pages} >= {"index", "kmeans", "personas", "comparison", "appendix"}
    drawn = 0
    for page in pages:
        soup = BeautifulSoup(browsed["dom"][f"site/report/{page}"], "html.parser")
        for chart in soup.select(".vega-chart"):
            assert chart.find(["svg", "canvas"]) is not None, f"{page}: chart {chart.get('id')} did not draw"
            assert chart.find("img", class_="vega-fallback") is None
            drawn += 1
    assert drawn >= 5  # kmeans: elbow, silhouette, projections, SHAP, sizes; comparison: common silhouette


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(BROKEN))
def test_a_chart_that_cannot_draw_shows_its_png(browsed, variant):
    import urllib.request

    from bs4 import BeautifulSoup

    soup = BeautifulSoup(browsed["dom"][f"{variant}/report/kmeans.html"], "html.parser")
    charts = soup.select(".vega-chart")
    assert charts
    site = browsed["root"] / variant
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for chart in charts:
            img = chart.find("img", class_="vega-fallback")
            assert img is not None and chart.find("svg") is None, chart
            assert img["src"] == f"figures/{chart['id'].removeprefix('fig-')}.png"
            with urllib.request.urlopen(f"{url}/report/{img['src']}") as resp:  # the PNG is there, served
                assert resp.status == 200 and resp.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_published_files_are_world_readable_and_name_no_local_path(served):
    site, repo = served["site"], served["repo"]
    bad = []
    for p in [site, *site.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        if mode != (0o755 if p.is_dir() else 0o644):
            bad.append(f"{oct(mode)} {p.relative_to(site)}")
    assert bad == [], "built under umask 077, served they must be readable by the web server: " + ", ".join(bad)
    needles = {str(repo), os.path.realpath(repo), str(ROOT), sys.prefix}
    published = [p for p in site.rglob("*") if p.is_file()]
    published += [p for p in (repo / "report" / "notebooks").glob("*") if p.suffix in (".ipynb", ".html")]
    assert any(p.suffix == ".ipynb" for p in published) and any(p.suffix == ".pdf" for p in published)
    for p in published:
        data = p.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, f"{p.relative_to(repo)} names the local path {needle}"


@pytest.mark.slow
@pytest.mark.parametrize("width", [PHONE, 1280])
def test_every_page_fits_the_screen_and_chart_text_stays_readable(browsed, width):
    """At 420 px (a phone) and 1280 px: no page is wider than the screen, anything wider (a table, a chart)
    scrolls inside a box of its own, which says so, and no chart text is drawn under 10 px."""
    texts = 0
    for page in browsed["pages"]:
        key = f"site/report/{page}" + (f"@{width}" if width != 1280 else "")
        p = browsed["probe"][key]
        assert "error" not in p, f"{page}: {p}"
        assert p["scrollWidth"] <= p["width"], \
            f"{page} at {width} px: the page is {p['scrollWidth']} px wide"
        assert p["overflow"] == [], f"{page} at {width} px: past the screen, outside a scrolling box: {p['overflow'][:5]}"
        assert p["small"] == [], f"{page} at {width} px: chart text under 10 px: {p['small'][:5]}"
        assert p["cues"] >= p["scrollers"], \
            f"{page} at {width} px: {p['scrollers']} boxes scroll sideways, {p['cues']} say so"
        texts += p["texts"]
    assert texts > 50  # the charts drew, and their text was measured


@pytest.mark.slow
def test_navigation_lists_only_the_methods_of_the_run(browsed):
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(browsed["dom"]["site/report/index.html"], "html.parser")
    listed = [a["href"] for a in soup.select("nav.sidebar a")]
    assert "kmeans.html" in listed and not {"famd.html", "hdbscan.html", "llm.html"} & set(listed), listed


def test_a_list_after_a_paragraph_is_a_list():
    """pandoc reads "- item" right after a paragraph line as the paragraph's text: the pages set lists apart."""
    from segreport.report.render import lists_apart

    assert lists_apart("Reasons:\n- one\n- two\n\n| a |\n- b\n") == "Reasons:\n\n- one\n- two\n\n| a |\n- b\n"
    assert lists_apart("```\ncode\n- not a list\n```\n") == "```\ncode\n- not a list\n```\n"
