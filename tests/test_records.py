"""The typed records the stages hand each other (store.Context, store.Comparison, store.CellMetrics):
read and written by RunLayout, a damaged or wrong-typed one said in one line naming its file, and the
bytes the plain JSON writer writes (outputs stay byte-identical)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segreport import SegreportError
from segreport.core.store import (CellMetrics, Comparison, Context, RecordError, RunLayout, chosen_segmentation, read_json,
                             to_json)

from .conftest import make_workdir, run_inline

METRICS = {
    "method": "kmeans", "grid": "k", "value": np.int64(3), "k": 3, "seed": 42, "rows": 600, "fitted_rows": 540,
    "outliers": 60, "cost": np.float64(1276.529305576642), "cost_name": "inertia", "sizes": np.array([200, 250, 150]),
    "own": {"silhouette": 0.21, "davies_bouldin": 1.5, "calinski_harabasz": float("nan")},
    "common": {"silhouette": 0.18, "davies_bouldin": 1.7, "calinski_harabasz": 120},
    "gower": {"silhouette": 0.1, "rows": 600}, "own_fitted_rows": None, "rules": {"accuracy": 0.9},
    "majority_baseline": 0.5016666666666667, "stability": None, "lgbm_accuracy": 0.95, "lgbm_folds": 3,
    "lgbm_cv_rows": 600, "lgbm_engine": "lightgbm", "lgbm_validation": "cross-validation",
    "lgbm_holdout_rows": None, "shap_rows": 600, "algorithm": "K-means on encoded columns",
    "gamma": 0.4999999999999999,  # a method's own fact (Method.model_facts): kept as it is
}


def test_a_record_round_trips_to_the_plain_writers_bytes(tmp_path):
    layout = RunLayout(tmp_path)
    written = layout.write_metrics("kmeans", 3, METRICS)
    path = layout.cell_file("kmeans", 3, "metrics.json")
    assert path.read_text() == to_json(METRICS)  # numpy numbers, NaN -> null, sorted keys: as before
    back = layout.read_metrics("kmeans", 3)
    assert back == written and back.dump() == json.loads(to_json(METRICS))
    assert isinstance(back.k, int) and back.cost == METRICS["cost"] and back.own["calinski_harabasz"] is None
    # an int stays an int, a float a float: 120 is not written as 120.0, 3 not as 3.0
    assert '"calinski_harabasz": 120,' in path.read_text() and '"k": 3,' in path.read_text()
    # read as the dict it was, by the call sites and templates that index it
    assert back["k"] == 3 and back.get("gamma") == METRICS["gamma"] and back.get("absent", "x") == "x"
    assert "gamma" in back and "absent" not in back and back["sizes"] == [200, 250, 150]
    with pytest.raises(KeyError):
        back["absent"]
    comp = {"recommended": {"kmeans": {"k": 4, "value": 4}}, "recommendation": {"method": "kmeans", "k": 4}}
    layout.write_comparison(comp)
    assert layout.comparison_json.read_text() == to_json(comp)  # only the fields it was given
    assert layout.read_comparison().dump() == comp and chosen_segmentation(layout) == ("kmeans", 4)


@pytest.mark.parametrize("damage, said", [
    (lambda text: text[: len(text) // 2], "not JSON"),
    (lambda text: text.replace('"k": 3', '"k": "three"'), "k: input should be a valid integer"),
    (lambda text: text.replace('"k": 3', '"k": 3.0'), "k: input should be a valid integer"),
    (lambda text: text.replace('"cost_name": "inertia",', ""), "cost_name: field required"),
    (lambda text: text.replace('"sizes": [', '"sizes": ["200", '), "sizes.0: input should be a valid integer"),
], ids=["cut", "a string for an int", "a float for an int", "a field missing", "a string in a list"])
def test_a_damaged_or_wrong_typed_record_is_said_in_one_line_naming_its_file(tmp_path, damage, said):
    layout = RunLayout(tmp_path)
    layout.write_metrics("kmeans", 3, METRICS)
    path = layout.cell_file("kmeans", 3, "metrics.json")
    path.write_text(damage(path.read_text()))
    with pytest.raises(RecordError) as info:
        layout.read_metrics("kmeans", 3)
    msg = str(info.value)
    assert isinstance(info.value, SegreportError) and "\n" not in msg  # the CLI's one line, exit 2
    assert msg.startswith(f"{path}: not a valid cell's metrics (") and said in msg, msg


def test_a_wrong_typed_context_and_comparison_are_said_naming_their_file(tmp_path):
    layout = RunLayout(tmp_path)
    layout.comparison.mkdir()
    layout.comparison_json.write_text(json.dumps({"recommended": ["kmeans"]}))
    with pytest.raises(RecordError, match=r"comparison\.json: not a valid comparison \(recommended: input should be "
                                          r"a valid dictionary\)"):
        chosen_segmentation(layout)
    layout.context.write_text(json.dumps({"params": {}, "methods": "kmeans"}))
    with pytest.raises(RecordError, match=r"context\.json: not a valid run context \(methods: input should be a valid "
                                          r"list and \d+ more\)"):
        layout.read_context()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    from segreport.lib.demo import write_demo

    wd = make_workdir(tmp_path_factory.mktemp("records") / "project", bundle=False)
    write_demo(wd / "data" / "demo.csv", rows=300, seed=5)
    run_inline(wd, "run", "-q", "--no-render", "--data", "data/demo.csv", "--methods", "kmeans,kprototypes",
               "--k", "3")
    return wd / "results" / "demo"


@pytest.mark.slow
def test_the_records_of_a_real_run_are_the_plain_writers_bytes(real_run, monkeypatch):
    """On a real run: each record read and written again gives its file's bytes, and a cell's metrics and the
    comparison, computed again, are written as the plain writer writes the dicts the stages build."""
    from segreport.stages import compare
    from segreport.stages.cell import run_cell

    layout = RunLayout(real_run)
    files = [(Context, layout.context), (Comparison, layout.comparison_json)] + \
        [(CellMetrics, p) for p in sorted(real_run.glob("cells/*/k3/metrics.json"))]
    assert len(files) == 4
    for model, path in files:
        text = path.read_text()
        assert model.read(path).to_json() == text == to_json(read_json(path))
        assert model.of(read_json(path)).to_json() == text
    before = layout.cell_file("kprototypes", 3, "metrics.json").read_bytes()
    metrics = run_cell(real_run, "kprototypes", 3)  # the dict the cell builds: numpy numbers and all
    assert layout.cell_file("kprototypes", 3, "metrics.json").read_bytes() == before == to_json(metrics).encode()
    before = layout.comparison_json.read_bytes()
    monkeypatch.chdir(real_run.parent.parent)
    result = compare._compare(layout, layout.read_context(), read_json(layout.manifest)["cells"])
    assert layout.comparison_json.read_bytes() == before == to_json(result).encode()
