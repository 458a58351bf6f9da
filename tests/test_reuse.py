"""A rerun that changes nothing recomputes nothing: the comparison and the site are reused where their
inputs did not change and their files are intact, and recomputed where an input changed or a file
is damaged (said in one line). `segreport render` builds again, from the pieces that did not change.

The grid runs in this process (each cell's `run_cell`, what its notebook calls, no papermill), so the
runs here take seconds; the real grid's reuse is tested in test_end_to_end and test_reliability."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from segreport import runner
from segreport.stages.cell import run_cell
from segreport.cli import main
from segreport.lib.demo import write_demo

from .conftest import LIGHT, inline_grid, make_workdir, snapshot

ARGS = ["run", "-q", "--data", "data/demo.csv", "--methods", "kmeans", "--k", "2-3", "--workers", "1"]
COMPARISON = Path("results/demo/comparison")


def run(monkeypatch, *args: str) -> dict:
    """`segreport run ARGS` (later options win) in the working folder; its manifest."""
    monkeypatch.setattr(runner, "run_grid", inline_grid)
    assert main([*ARGS, *args]) == 0
    return json.loads(Path("results/demo/manifest.json").read_text())


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run (kmeans, k 2-3, 300 demo rows) with its site."""
    wd = make_workdir(tmp_path_factory.mktemp("reuse") / "project")
    write_demo(wd / "data" / "demo.csv", rows=300, seed=6)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(wd)
        mp.setenv("SEGREPORT_SITE_URL", "")  # the built-in renderer sets it for pandoc
        m = run(mp)
    assert m["comparison"] == {"reused": False} and m["render"] == {"reused": False}
    return wd


@pytest.fixture
def project(finished, tmp_path, monkeypatch) -> Path:
    wd = tmp_path / "project"
    shutil.copytree(finished, wd, symlinks=True)
    monkeypatch.chdir(wd)
    monkeypatch.setenv("SEGREPORT_SITE_URL", "")
    return wd


def test_a_rerun_that_changes_nothing_reuses_the_comparison_and_the_site(project, monkeypatch, capsys):
    before = {name: snapshot(project / name) for name in (COMPARISON, Path("_site"), Path("report"))}
    m = run(monkeypatch)
    assert all(c["reused"] for c in m["cells"].values())
    assert m["comparison"] == {"reused": True} and m["render"] == {"reused": True}
    assert {name: snapshot(project / name) for name in before} == before  # not a file written
    assert " is damaged " not in capsys.readouterr().err


def test_a_changed_parameter_recomputes_the_comparison_and_a_setting_of_the_run_does_not(project, monkeypatch):
    m = run(monkeypatch, "--workers", "2")  # how the grid runs: the same comparison, the same site
    assert m["comparison"] == {"reused": True} and m["render"] == {"reused": True}
    (project / "params.yml").write_text(LIGHT.replace("null_sample: 300", "null_sample: 200"))
    m = run(monkeypatch)
    assert all(c["reused"] for c in m["cells"].values())  # the cells do not read it; the comparison does
    assert m["comparison"] == {"reused": False} and m["render"] == {"reused": False}
    assert json.loads((COMPARISON / "comparison.json").read_text())["nulls"]["kmeans"]["rows"] == 200
    m = run(monkeypatch)
    assert m["comparison"] == {"reused": True} and m["render"] == {"reused": True}


def test_a_changed_grid_recomputes_the_comparison_though_every_cell_is_reused(project, monkeypatch):
    m = run(monkeypatch, "--k", "2")
    assert m["comparison"] == {"reused": False}
    assert pd.read_parquet(COMPARISON / "metrics.parquet").k.tolist() == [2]
    m = run(monkeypatch)  # k 2-3 again: a k added, whose cell is still there
    assert all(m["cells"][c]["reused"] for c in ("kmeans/k2", "kmeans/k3"))
    assert m["comparison"] == {"reused": False}
    assert pd.read_parquet(COMPARISON / "metrics.parquet").k.tolist() == [2, 3]


def test_a_new_k_reuses_the_null_reference_of_an_unchanged_recommendation(project, monkeypatch, capsys):
    """The null reference depends on a method's recommended k, not on the grid: a k added to the grid
    recomputes the comparison, not the refits on tables without segments while the k stays; another
    k, or a damaged record, computes them again (the damage said in one line)."""
    from segreport.stages import compare

    null = COMPARISON / "null-kmeans.json"
    held = json.loads(null.read_text())
    k = json.loads((COMPARISON / "comparison.json").read_text())["recommended"]["kmeans"]["k"]
    assert held["value"][0]["k"] == k
    calls = []
    real = compare.null_check
    monkeypatch.setattr(compare, "null_check", lambda *a: calls.append(a[3]) or real(*a))
    m = run(monkeypatch, "--k", "2-4")  # k 4 added: a cell computed, the comparison computed again
    assert m["comparison"] == {"reused": False} and not m["cells"]["kmeans/k4"]["reused"]
    k_now = json.loads((COMPARISON / "comparison.json").read_text())["recommended"]["kmeans"]["k"]
    assert calls == ([] if k_now == k else [k_now])
    assert json.loads(null.read_text())["value"] == held["value"] or k_now != k
    record = json.loads(null.read_text())
    record["value"][0]["rows"] += 1  # the key still matches; the content does not
    null.write_text(json.dumps(record))
    capsys.readouterr()
    run(monkeypatch, "--k", "2-3")
    assert calls[-1] == k and "null-kmeans.json is damaged" in capsys.readouterr().err
    assert json.loads((COMPARISON / "comparison.json").read_text())["nulls"]["kmeans"] == held["value"][0]


def test_the_comparison_key_follows_the_cells_the_parameters_and_the_code(project, monkeypatch):
    from segreport.stages import compare
    from segreport.core.store import RunLayout

    layout = RunLayout("results/demo")
    ctx = json.loads(Path("results/demo/context.json").read_text())
    statuses = json.loads(Path("results/demo/manifest.json").read_text())["cells"]
    base = compare.comparison_key(layout, ctx, statuses)
    assert compare.comparison_key(layout, ctx, dict(statuses)) == base
    assert compare.comparison_key(layout, ctx, {**statuses, "kmeans/k3": {"status": "failed", "error": "x"}}) != base
    more = {**ctx, "grid": {"kmeans": [2, 3, 4]}}
    assert compare.comparison_key(layout, more, {**statuses, "kmeans/k4": {"status": "done", "key": "k4"}}) != base
    for name, value in (("null_references", 2), ("seed", 1), ("workers", 2), ("site", "elsewhere")):
        changed = compare.comparison_key(layout, {**ctx, "params": {**ctx["params"], name: value}}, statuses)
        assert (changed == base) == (name in compare.NOT_COMPARED), name
    done = layout.cell("kmeans", 3) / "done.json"  # the cell computed again, to other files
    record = json.loads(done.read_text())
    record["files"]["labels.parquet"]["sha256"] = "0" * 64
    done.write_text(json.dumps(record))
    assert compare.comparison_key(layout, ctx, statuses) != base
    monkeypatch.setattr(compare, "compare_code_hash", lambda: "other code")
    record["files"]["labels.parquet"]["sha256"] = json.loads(
        (Path("results/demo/manifest.json")).read_text())["cells"]["kmeans/k3"]["hashes"]["labels.parquet"]
    done.write_text(json.dumps(record))
    assert compare.comparison_key(layout, ctx, statuses) != base


def test_a_damaged_comparison_is_said_and_computed_again_to_the_same_bytes(project, monkeypatch, capsys):
    before = _bytes(COMPARISON)
    _flip(COMPARISON / "comparison.json")
    m = run(monkeypatch)
    said = capsys.readouterr().err.splitlines()
    assert ("segreport: results/demo/comparison/comparison.json is damaged (hash differs): recomputing the "
            "comparison") in said
    assert m["comparison"] == {"reused": False} and _bytes(COMPARISON) == before
    assert m["render"] == {"reused": True}  # the same comparison: the site built from it stands
    (COMPARISON / "metrics.parquet").unlink()
    m = run(monkeypatch)
    assert "segreport: results/demo/comparison/metrics.parquet is missing: recomputing the comparison" in \
        capsys.readouterr().err.splitlines()
    assert m["comparison"] == {"reused": False} and _bytes(COMPARISON) == before
    m = run(monkeypatch)
    assert m["comparison"] == {"reused": True} and " is damaged " not in capsys.readouterr().err


def test_a_damaged_site_is_said_and_built_again(project, monkeypatch, capsys):
    page = project / "_site" / "report" / "kmeans.html"
    before = page.read_bytes()
    page.unlink()
    m = run(monkeypatch)
    assert "segreport: _site/report/kmeans.html is missing: building the site again" in \
        capsys.readouterr().err.splitlines()
    assert m["comparison"] == {"reused": True} and m["render"] == {"reused": False}
    assert page.read_bytes() == before
    _flip(project / "_site" / "report.pdf")
    m = run(monkeypatch)
    assert "segreport: _site/report.pdf is damaged (hash differs): building the site again" in \
        capsys.readouterr().err.splitlines()
    assert m["render"] == {"reused": False}
    assert run(monkeypatch)["render"] == {"reused": True}


def render(*args: str) -> None:
    assert main(["render", "--data", "data/demo.csv", "--methods", "kmeans", "--k", "2-3", *args]) == 0


def test_render_builds_the_site_again_from_the_pieces_that_did_not_change(project, monkeypatch):
    site = project / "_site"
    before = _bytes(site)
    pieces = {name: snapshot(project / "report" / name) for name in ("figures", "downloads/profiles", ".cache")}
    built = (site / "index.html").stat().st_mtime_ns
    render()
    assert (site / "index.html").stat().st_mtime_ns != built  # built again, as asked
    assert _bytes(site) == before  # to the same bytes, the PDF's included
    # no figure drawn, no profile written, no page converted again
    assert {name: snapshot(project / "report" / name) for name in pieces} == pieces
    # what changed is made again, and only that: the projections drawn on a smaller sample, and a
    # profile spreadsheet that went missing (a run with a new figure sample: the same cells and
    # comparison, another site)
    (project / "report" / "downloads" / "profiles" / "kmeans-k3.xlsx").unlink()
    (project / "params.yml").write_text(LIGHT + "figure_sample: 100\n")
    m = run(monkeypatch)
    assert m["comparison"] == {"reused": True} and m["render"] == {"reused": False}
    figures = snapshot(project / "report" / "figures")
    redrawn = {f for f in figures if figures[f] != pieces["figures"].get(f)}
    assert redrawn == {"kmeans-projections.png", "kmeans-projections.vl.json", "kmeans-projections.inputs.sha256"}
    profiles = snapshot(project / "report" / "downloads" / "profiles")
    rewritten = {f for f in profiles if profiles[f] != pieces["downloads/profiles"].get(f)}
    assert rewritten == {"kmeans-k3.csv", "kmeans-k3.xlsx", ".kmeans-k3.key"}
    assert _bytes(site)["report/downloads/profiles/kmeans-k3.xlsx"] == before["report/downloads/profiles/kmeans-k3.xlsx"]
    # a run after an explicit render reuses its site
    render()
    assert run(monkeypatch)["render"] == {"reused": True}


def test_a_cell_unmaps_its_feature_spaces_before_the_surrogate(project, monkeypatch):
    """The spaces are memory-mapped while the cell fits and scores, and unmapped before the surrogate
    (at 1,000,000 rows an LLM cell held its 1.5 GB embedding through LightGBM's minute on the cluster)."""
    from segreport.stages import cell

    def mapped() -> list[str]:
        return sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                       if "/spaces/" in line})

    seen = {}

    def watch(stage, real):
        def watched(*args, **kwargs):
            seen[stage] = mapped()
            return real(*args, **kwargs)
        monkeypatch.setattr(cell, real.__name__, watched)

    watch("fit", cell.fit_method)
    watch("surrogate", cell.surrogate)
    run_cell(project / "results" / "demo", "kmeans", 2)
    assert any(p.endswith("/spaces/kmeans/X.npy") for p in seen["fit"])
    assert any(p.endswith("/spaces/common/X.npy") for p in seen["fit"])
    assert seen["surrogate"] == []
