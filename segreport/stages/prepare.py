"""Stage 1 of a run: the data, each method's feature space, the common space, the projections.

Each step reads and writes files in results/<run>/ (see store.RunLayout), so it can be
rerun alone; a feature space or projection whose inputs did not change is reused, never
recomputed because k changed. A method that does not apply to the table (methods/*.py:
`requires`) is left out here, before the grid, with one line saying why.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from .. import SegreportError, __version__
from ..core.config import params_to_dict
from ..lib.data import Table, check_k, load_table, sample_rows
from ..lib.demo import is_demo, write_demo
from ..methods import BuildEnv, Params, Space, get
from ..core.store import (OUTLIER_MODEL, OUTLIERS, SPACE_INFO, TRANSFORMER, RunLayout, atomic_write_joblib,
                    atomic_write_json, atomic_write_npy, atomic_write_parquet, damage, file_record, key, make_folder,
                    read_json, read_json_or_empty, say_damaged, verify)

COMMON = "common"  # the neutral space every method's segments are scored in (not a method)
PACKAGES = ("segreport", "numpy", "pandas", "scikit-learn", "pyod", "lightgbm", "shap", "kmodes", "numba",
            "torch", "sentence-transformers", "transformers", "openTSNE", "prince", "umap-learn", "papermill",
            "jinja2", "altair", "vl-convert-python", "pypandoc-binary", "typst")
DEMO_PATH = "data/demo.csv"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def resolve_data(params: Params, root: Path) -> Path:
    """'demo' means the generated demo table at data/demo.csv, made on first use."""
    if params.data == "demo":
        path = root / DEMO_PATH
        if not path.exists():
            write_demo(path, rows=params.demo_rows, seed=0)
        return path
    return Path(params.data)


def run_dir(params: Params, data_path: Path) -> Path:
    name = params.run or data_path.stem
    return Path(params.results) / name


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def scale_plan(params: Params, rows: int, dask_lightgbm: bool) -> dict:
    """Which path each heavy step takes for a table of `rows` rows (written into the context and the report)."""
    s = params.scale
    scalable = rows >= s.threshold
    return {"threshold": s.threshold, "rows": rows, "scalable": scalable,
            "centroids": "minibatch" if scalable else "lloyd", "batch_size": s.batch_size if scalable else None,
            "ecod_sample": s.ecod_sample if scalable and rows > s.ecod_sample else None,
            "lightgbm": "dask" if scalable and dask_lightgbm else "local",
            "lightgbm_rounds": s.lightgbm_rounds if scalable and dask_lightgbm else None,
            "holdout": s.holdout if scalable and dask_lightgbm else None}


def applicable(params: Params, table: Table, progress: bool = True) -> tuple[list[str], dict[str, str]]:
    """The methods that can run on this table, and why each of the others cannot (printed once)."""
    run, skipped = [], {}
    for name in params.methods:
        why = get(name).requires(table)
        if why:
            skipped[name] = why
            print(f"segreport: {get(name).display} left out: {why}", file=sys.stderr)
        else:
            run.append(name)
    if not run:
        raise SegreportError(f"{table.path}: none of the methods {', '.join(params.methods)} applies to this table: "
                             + "; ".join(skipped.values()))
    return run, skipped


def grid_of(params: Params, methods: list[str], rows: int) -> dict[str, list[int]]:
    """Each method's grid values (k, or its own grid parameter)."""
    out = {}
    for name in methods:
        m = get(name)
        out[name] = m.grid_values(params, rows) if m.grid != "k" else m.grid_values(params)
    return out


def prepare(params: Params, root: Path = Path("."), progress: bool = True, session=None,
            lock=None) -> tuple[RunLayout, dict]:
    """Load + validate the data, build each needed feature space and its projections.

    With a Dask session (`--executor dask`) each feature space is built as a task on the
    cluster and the embedding's parts are embedded by the workers (see dask_grid). `lock(layout)`
    is called once the input is validated, before anything is written into the run folder.
    Every file reused from an earlier run is verified against the size and sha256 recorded when
    it was written; a damaged one is said so in one line and built again.
    """
    t0 = time.perf_counter()
    data_path = resolve_data(params, root)
    table = load_table(data_path, params.schema, params.outcome)
    methods, skipped = applicable(params, table, progress)
    if any(get(m).grid == "k" for m in methods):
        check_k(table, params.k)
    inputs = {name: get(name).prepare_inputs(params, table, root) for name in methods}
    layout = RunLayout(run_dir(params, data_path))
    if lock is not None:
        lock(layout)
    make_folder(layout.root)
    fp = table.fingerprint()
    demo = is_demo(data_path, table.file_sha256)
    if table.outcome is not None:
        # stored beside the table for the comparison only; never read by any model
        atomic_write_parquet(layout.outcome, pd.DataFrame({"outcome": table.outcome.astype(str)}))
    else:
        layout.outcome.unlink(missing_ok=True)
    if table.ids is not None:  # for the assignment files only
        atomic_write_parquet(layout.ids, pd.DataFrame({table.id_column: table.ids}))
    else:
        layout.ids.unlink(missing_ok=True)
    table_info = read_json_or_empty(layout.table_info)
    why = damage(layout.table, table_info.get("file")) if table_info.get("fingerprint") == fp else None
    if why and why != "missing":
        say_damaged(layout.table, why, "writing it again")
    if why or table_info.get("fingerprint") != fp or "file" not in table_info:
        atomic_write_parquet(layout.table, table.frame.copy())
        atomic_write_json(layout.table_info, {"fingerprint": fp, "file": file_record(layout.table)})
    threads = threads_per_worker(1)
    scale = scale_plan(params, len(table.frame), session is not None and session.spare_thread)
    env = dict(cache_dir=params.cache_dir, seed=params.seed, k=list(params.k))
    spaces = {}
    # every space but the embedding: here, or each as a Dask task while this process renders the texts
    local_names = [m for m in methods if not _embeds(m)] + [COMMON]
    if session is None:
        for name in local_names:
            spaces[name] = build_space(name, params, table, layout, fp, inputs.get(name), progress, scale, env)
    else:
        shared = session.client.scatter(table, direct=False)
        there = RunLayout(layout.root.resolve())  # a worker's working directory need not be this process's
        pending = session.submit_jobs({name: (build_space, (name, params, shared, there, fp, inputs.get(name),
                                                            False, scale, env)) for name in local_names}, "space")
    for name in methods:
        if _embeds(name):
            spaces[name] = build_space(name, params, table, layout, fp, inputs[name], progress, scale, env,
                                       run_parts=session.run_parts if session else None)
    if session is not None:
        spaces.update(session.gather(pending, progress, "feature spaces"))
    # one seeded sample of rows for every figure and t-SNE, stratified by the first outlier flags found
    strata = None
    for name in methods:
        if (layout.space(name) / OUTLIERS).exists():
            strata = np.load(layout.space(name) / OUTLIERS)
            break
    rows = sample_rows(len(table.frame), params.projection_sample, params.seed, strata)
    projections = {}
    for name in sorted({projection_space(m) for m in methods} | {"mca"}):
        projections[name] = build_projection(name, params, table, layout, rows, fp, spaces, threads)
    context = {
        "params": params_to_dict(params),
        "methods": methods, "skipped": skipped, "grid": grid_of(params, methods, len(table.frame)),
        "data": {"path": str(data_path), "name": data_path.name, "file_sha256": table.file_sha256,
                 "fingerprint": fp, "rows": int(len(table.frame)), "encoding": table.encoding,
                 "delimiter": table.delimiter, "demo": demo, "notes": table.notes,
                 "decisions": table.decisions, "outcome": table.outcome_name,
                 "outcome_source": table.outcome_source, "outcome_label": table.outcome_label, "pooled": table.pooled, "id_column": table.id_column,
                 "left_out": table.left_out},
        "schema": [s.model_dump(mode="json") for s in table.schema],
        "used": {"numeric": table.numeric, "categorical": table.categorical,
                 "binary": [c.name for c in table.used if c.kind == "binary"]},
        "labels": {s.name: s.display for s in table.schema},
        "units": {s.name: s.unit for s in table.schema},
        "spaces": spaces, "projections": projections, "scale": scale, "inputs": inputs,
        "versions": versions(), "segreport": __version__,
        "prepare_seconds": round(time.perf_counter() - t0, 3),
    }
    layout.write_context(context)
    return layout, context


def _embeds(name: str) -> bool:
    """A method whose space is built in this process, its parts being the Dask tasks (the embedding)."""
    return get(name).builds_in_client


def projection_space(method: str) -> str:
    return COMMON if get(method).projection == "common" else method


# a space's pickles (transformer, outlier model) name the modules of their classes: a space pickled before the
# package had its folders (segreport.features, now segreport.lib.features) is built again, never unpickled
PICKLED_FROM = "segreport.lib"


def space_key(name: str, params: Params, fp: str, inputs: dict | None, schema: list,
              ecod_sample: int | None = None) -> str:
    parts = get(name).space_key_parts(params, inputs or {}) if name != COMMON else None
    return key(__version__, PICKLED_FROM, name, fp, [s.model_dump(mode="json") for s in schema], parts, ecod_sample,
               params.seed)


def build_space(name: str, params: Params, table: Table, layout: RunLayout, fp: str, inputs: dict | None,
                progress: bool, scale: dict | None = None, env: dict | None = None, run_parts=None) -> dict:
    """One feature space in results/<run>/spaces/<name>/ (reused when its key is unchanged).
    Runs in this process, or as a Dask task (then `table` arrives as the scattered table)."""
    d = layout.space(name)
    ecod_sample = (scale or {}).get("ecod_sample")
    k = space_key(name, params, fp, inputs, table.schema, ecod_sample)
    info_path = d / SPACE_INFO
    old = read_json_or_empty(info_path)
    if old.get("key") == k and "files" in old:
        bad = verify(d, old["files"])
        if bad is None:
            return old
        say_damaged(*bad, "rebuilding that feature space")
    from ..lib import features  # scikit-learn: only where a space is built

    t0 = time.perf_counter()
    if name == COMMON:
        X, ct = features.fit_common(table)
        sp, outliers, contamination = Space({"X": X}, ct, {"dims": int(X.shape[1])}), "none", 0.0
    else:
        m = get(name)
        sp = m.build_space(table, params, BuildEnv(inputs=inputs or {}, progress=progress, run_parts=run_parts,
                                                   **(env or {})))
        outliers, contamination = m.outlier_params(params)
    written = []  # what a reuse verifies: every file of the space, as written now
    for arr_name, arr in sp.arrays.items():
        path = layout.space_array(name, arr_name)
        atomic_write_npy(path, arr)
        written.append(path.name)
    if sp.transformer is not None:
        atomic_write_joblib(d / TRANSFORMER, sp.transformer)
        written.append(TRANSFORMER)
    info: dict = {"key": k, "method": name, **sp.info}
    if outliers == "ecod" and sp.outlier_X is not None:
        flags, _scores, det = features.ecod_outliers(sp.outlier_X, contamination, ecod_sample, params.seed)
        atomic_write_npy(d / OUTLIERS, flags)
        atomic_write_joblib(d / OUTLIER_MODEL, det)
        written += [OUTLIERS, OUTLIER_MODEL]
        info["outliers"] = {"detector": "ECOD", "contamination": contamination, "flagged": int(flags.sum()),
                            "fitted_rows": int(min(ecod_sample or len(flags), len(flags)))}
    else:
        (d / OUTLIERS).unlink(missing_ok=True)
        info["outliers"] = None
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["built_by"] = f"{platform.node()}:{os.getpid()}"  # this process, or the Dask worker that ran the task
    info["files"] = {f: file_record(d / f) for f in sorted(written)}
    atomic_write_json(info_path, info)
    return info


def load_space(layout: RunLayout, name: str, mmap: bool = False) -> dict:
    """A built space's arrays (X, outliers) and its info; X memory-mapped on request."""
    d = layout.space(name)
    out = {"info": read_json(d / SPACE_INFO), "X": np.load(layout.space_matrix(name), mmap_mode="r" if mmap else None)}
    if (d / OUTLIERS).exists():
        out["outliers"] = np.load(d / OUTLIERS)
    return out


def build_projection(name: str, params: Params, table: Table, layout: RunLayout, rows: np.ndarray,
                     fp: str, spaces: dict, threads: int) -> dict:
    src_key = spaces[name]["key"] if name in spaces else fp
    k = key("projection", name, src_key, rows.tolist(), params.seed)
    info_path = layout.projection_info(name)
    old = read_json_or_empty(info_path)
    if old.get("key") == k and "file" in old:
        why = damage(layout.projection(name), old["file"])
        if why is None:
            return old
        say_damaged(layout.projection(name), why, "rebuilding that projection")
    from ..lib.projections import mca, project_space  # scikit-learn, prince, openTSNE: only where one is computed

    t0 = time.perf_counter()
    if name == "mca":
        coords, var = mca(table.frame, table.categorical, rows, params.seed)
        coords.insert(0, "row", rows)
        info = {"explained_inertia": var, "rows": int(len(rows))}
    else:
        # copy-on-write, not read-only: scikit-learn's PCA copies an array it cannot write (1.5 GB for a million
        # embeddings, the prepare stage's peak at 1M rows) though its covariance solver never writes to it
        X = np.load(layout.space_matrix(name), mmap_mode="c")
        coords, info = project_space(X, rows, params.seed, threads=threads)
    info.update(key=k, seconds=round(time.perf_counter() - t0, 3))
    atomic_write_parquet(layout.projection(name), coords)
    info["file"] = file_record(layout.projection(name))
    atomic_write_json(info_path, info)
    return info
