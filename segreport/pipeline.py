"""The stages of a run around the grid: prepare (data, feature spaces, projections) and compare.

Each stage reads and writes files in results/<run>/ (see store.RunLayout), so it
can be rerun alone; a feature space or projection whose inputs did not change is
reused, never recomputed because k changed.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from . import SegreportError, __version__
from .config import Params, params_to_dict
from .data import Table, check_k, load_table
from .demo import is_demo, write_demo
from .store import (RunLayout, atomic_write_json, atomic_write_npy, atomic_write_parquet, key, read_json,
                    read_json_or_empty)

SPACE_OF = {"kmeans": "kmeans", "kprototypes": "common", "llm": "llm"}  # projection space per method
PACKAGES = ("segreport", "numpy", "pandas", "scikit-learn", "pyod", "lightgbm", "shap", "kmodes", "numba",
            "torch", "sentence-transformers", "transformers", "openTSNE", "prince", "papermill", "jinja2",
            "altair", "vl-convert-python", "pypandoc-binary", "typst")
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


def read_template(params: Params, table: Table, root: Path) -> tuple[str, str]:
    """The row-to-text template: the configured file if it fits the table, else one from the schema."""
    from .embed import render_texts, schema_template

    path = Path(params.llm.template)
    if not path.is_absolute():
        path = root / path
    if path.exists():
        text = path.read_text(encoding="utf-8")
        try:
            render_texts(table.frame.head(1), text)
            return text, str(params.llm.template)
        except SegreportError:
            if params.llm.template != "templates/row_text.j2":
                raise
    elif params.llm.template != "templates/row_text.j2":
        raise SegreportError(f"{params.llm.template}: row-text template not found")
    return schema_template(table.schema), "generated from the schema"


def scale_plan(params: Params, rows: int, dask_lightgbm: bool) -> dict:
    """Which path each heavy step takes for a table of `rows` rows (written into the context and the report)."""
    s = params.scale
    scalable = rows >= s.threshold
    return {"threshold": s.threshold, "rows": rows, "scalable": scalable,
            "kmeans": "minibatch" if scalable else "lloyd", "batch_size": s.batch_size if scalable else None,
            "ecod_sample": s.ecod_sample if scalable and rows > s.ecod_sample else None,
            "lightgbm": "dask" if scalable and dask_lightgbm else "local",
            "lightgbm_rounds": s.lightgbm_rounds if scalable and dask_lightgbm else None,
            "holdout": s.holdout if scalable and dask_lightgbm else None}


def prepare(params: Params, root: Path = Path("."), progress: bool = True, session=None) -> tuple[RunLayout, dict]:
    """Load + validate the data, build each needed feature space and its projections.

    With a Dask session (`--executor dask`) each feature space is built as a task on the
    cluster and the embedding's parts are embedded by the workers (see dask_grid).
    """
    t0 = time.perf_counter()
    data_path = resolve_data(params, root)
    table = load_table(data_path, params.schema, params.outcome)
    check_k(table, params.k)
    template_text, template_source = (None, None)
    if "llm" in params.methods:
        from .embed import resolve_model

        resolve_model(params.llm.model)  # a bad model path fails here, before anything is written
        template_text, template_source = read_template(params, table, root)
    layout = RunLayout(run_dir(params, data_path))
    layout.root.mkdir(parents=True, exist_ok=True)
    fp = table.fingerprint()
    demo = is_demo(data_path, table.file_sha256)
    table_frame = table.frame.copy()
    if table.outcome is not None:
        # stored beside the table for the comparison only; never read by any model
        atomic_write_parquet(layout.root / "outcome.parquet", pd.DataFrame({"outcome": table.outcome.astype(str)}))
    if not layout.table.exists() or read_json_or_empty(layout.root / "table.json").get("fingerprint") != fp:
        atomic_write_parquet(layout.table, table_frame)
        atomic_write_json(layout.root / "table.json", {"fingerprint": fp})
    threads = threads_per_worker(1)
    scale = scale_plan(params, len(table.frame), session is not None and session.spare_thread)
    spaces = {}
    number_edges = None
    if "llm" in params.methods:
        from .embed import quantile_edges

        number_edges = quantile_edges(table.frame, table.numeric)
    names = [m for m in params.methods if m != "llm"] + ["common"]
    if session is None:
        for name in names:
            spaces[name] = build_space(name, params, table, layout, fp, None, progress, scale=scale)
    else:
        shared = session.client.scatter(table, direct=False)
        # submitted first: the workers build these while this process renders the texts to embed
        pending = session.submit_jobs({name: (build_space, (name, params, shared, layout, fp, None, False, None,
                                                            scale)) for name in names}, "space")
    if "llm" in params.methods:
        spaces["llm"] = build_space("llm", params, table, layout, fp, template_text, progress, number_edges,
                                    scale=scale, run_parts=session.run_parts if session else None)
    if session is not None:
        spaces.update(session.gather(pending, progress, "feature spaces"))
    # one seeded sample of rows for every figure and t-SNE, stratified by K-means' outlier flag if any
    strata = None
    out_file = layout.space("kmeans") / "outliers.npy"
    if "kmeans" in params.methods and out_file.exists():
        strata = np.load(out_file)
    from .features import sample_rows

    rows = sample_rows(len(table.frame), params.projection_sample, params.seed, strata)
    projections = {}
    for name in sorted({SPACE_OF[m] for m in params.methods} | {"mca"}):
        projections[name] = build_projection(name, params, table, layout, rows, fp, spaces, threads)
    context = {
        "params": params_to_dict(params),
        "data": {"path": str(data_path), "file_sha256": table.file_sha256, "fingerprint": fp,
                 "rows": int(len(table.frame)), "encoding": table.encoding,
                 "delimiter": table.delimiter, "demo": demo, "notes": table.notes,
                 "decisions": table.decisions, "outcome": params.outcome},
        "schema": [s.model_dump(mode="json") for s in table.schema],
        "used": {"numeric": table.numeric, "categorical": table.categorical,
                 "binary": [c.name for c in table.used if c.kind == "binary"]},
        "labels": {s.name: s.display for s in table.schema},
        "units": {s.name: s.unit for s in table.schema},
        "spaces": spaces, "projections": projections, "scale": scale,
        "row_template": {"text": template_text, "source": template_source, "numbers": params.llm.numbers,
                         "number_edges": number_edges},
        "versions": versions(), "segreport": __version__,
        "prepare_seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(layout.context, context)
    return layout, context


def space_key(method: str, params: Params, fp: str, template_text: str | None, schema: list,
              ecod_sample: int | None = None) -> str:
    mp = getattr(params, method, None)
    return key(__version__, method, fp, [s.model_dump(mode="json") for s in schema],
               mp.model_dump(mode="json") if mp is not None else None, template_text, ecod_sample, params.seed)


def build_space(method: str, params: Params, table: Table, layout: RunLayout, fp: str,
                template_text: str | None, progress: bool, number_edges: dict | None = None,
                scale: dict | None = None, run_parts=None) -> dict:
    """One feature space in results/<run>/spaces/<method>/ (reused when its key is unchanged).
    Runs in this process, or as a Dask task (then `table` arrives as the scattered table)."""
    from . import features

    d = layout.space(method)
    ecod_sample = (scale or {}).get("ecod_sample")
    k = space_key(method, params, fp, template_text, table.schema, ecod_sample)
    info_path = d / "info.json"
    old = read_json_or_empty(info_path)
    if old.get("key") == k:
        return old
    t0 = time.perf_counter()
    info: dict = {"key": k, "method": method}
    outlier_X = None
    if method == "kmeans":
        X, ct, names = features.fit_encoded(table, params.kmeans.power_transform)
        atomic_write_npy(d / "X.npy", X)
        joblib.dump(ct, _tmp(d / "transformer.joblib")); _commit(d / "transformer.joblib")
        info.update(dims=int(X.shape[1]), features=names)
        outlier_X = X
    elif method == "common":
        X, ct = features.fit_common(table)
        atomic_write_npy(d / "X.npy", X)
        joblib.dump(ct, _tmp(d / "transformer.joblib")); _commit(d / "transformer.joblib")
        info.update(dims=int(X.shape[1]))
    elif method == "kprototypes":
        xn, xc, enc = features.fit_mixed(table)
        atomic_write_npy(d / "X_num.npy", xn)
        atomic_write_npy(d / "X_cat.npy", xc)
        joblib.dump(enc, _tmp(d / "transformer.joblib")); _commit(d / "transformer.joblib")
        info.update(numeric=table.numeric, categorical=table.categorical)
        if params.kprototypes.outliers == "ecod":
            outlier_X, _ = features.fit_common(table)
    elif method == "llm":
        from .embed import embed_texts, row_texts

        t_texts = time.perf_counter()
        texts = row_texts(table.frame, template_text, params.llm.numbers, number_edges)
        einfo_texts = round(time.perf_counter() - t_texts, 3)
        emb, einfo = embed_texts(texts, params.llm.model, params.llm.precision, params.llm.batch_size,
                                 params.llm.normalize, cache_dir=params.cache_dir, progress=progress,
                                 seed=params.seed, run_parts=run_parts, part_rows=params.llm.part_rows,
                                 gate_k=params.k, gate_n_init=params.llm.n_init)
        atomic_write_npy(d / "X.npy", emb)
        info.update(embedding=einfo, dims=int(emb.shape[1]), example_text=texts[0] if texts else "",
                    texts_seconds=einfo_texts)
        outlier_X = emb
    mp = getattr(params, method, None)
    if mp is not None and getattr(mp, "outliers", "none") == "ecod" and outlier_X is not None:
        flags, scores, det = features.ecod_outliers(outlier_X, mp.contamination, ecod_sample, params.seed)
        atomic_write_npy(d / "outliers.npy", flags)
        joblib.dump(det, _tmp(d / "outlier_model.joblib")); _commit(d / "outlier_model.joblib")
        info["outliers"] = {"detector": "ECOD", "contamination": mp.contamination, "flagged": int(flags.sum()),
                            "fitted_rows": int(min(ecod_sample or len(flags), len(flags)))}
    else:
        (d / "outliers.npy").unlink(missing_ok=True)
        info["outliers"] = None
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["built_by"] = f"{platform.node()}:{os.getpid()}"  # this process, or the Dask worker that ran the task
    atomic_write_json(info_path, info)
    return info


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def _commit(path: Path) -> None:
    os.replace(_tmp(path), path)


def load_space(layout: RunLayout, method: str) -> dict:
    d = layout.space(method)
    out = {"info": read_json(d / "info.json")}
    for name in ("X", "X_num", "X_cat", "outliers"):
        f = d / f"{name}.npy"
        if f.exists():
            out[name] = np.load(f)
    return out


def build_projection(name: str, params: Params, table: Table, layout: RunLayout, rows: np.ndarray,
                     fp: str, spaces: dict, threads: int) -> dict:
    from .project import mca, project_space

    src_key = spaces[name]["key"] if name in spaces else fp
    k = key("projection", name, src_key, rows.tolist(), params.seed)
    info_path = layout.root / "projections" / f"{name}.json"
    old = read_json_or_empty(info_path)
    if old.get("key") == k and layout.projection(name).exists():
        return old
    t0 = time.perf_counter()
    if name == "mca":
        coords, var = mca(table.frame, table.categorical, rows, params.seed)
        coords.insert(0, "row", rows)
        info = {"explained_inertia": var, "rows": int(len(rows))}
    else:
        X = np.load(layout.space(name) / "X.npy")
        coords, info = project_space(X, rows, params.seed, threads=threads)
    info.update(key=k, seconds=round(time.perf_counter() - t0, 3))
    atomic_write_parquet(layout.projection(name), coords)
    atomic_write_json(info_path, info)
    return info


def compare(layout: RunLayout, ctx: dict, statuses: dict) -> dict:
    """Metrics table over all cells, agreement between methods, recommended k per method."""
    from .evaluate import agreement, elbow_k, recommend_k

    params = ctx["params"]
    rows, labels = [], {}
    for method in params["methods"]:
        for k in params["k"]:
            name = f"{method}/k{k}"
            st = statuses.get(name, {})
            row = {"method": method, "k": k, "status": st.get("status", "missing")}
            mfile = layout.cell(method, k) / "metrics.json"
            if row["status"] == "done" and mfile.exists():
                m = read_json(mfile)
                row.update(cost=m["cost"], lgbm_accuracy=m["lgbm_accuracy"], fitted_rows=m["fitted_rows"],
                           outliers=m["outliers"], min_size=min(m["sizes"]), max_size=max(m["sizes"]))
                for space in ("own", "common"):
                    for metric in ("silhouette", "davies_bouldin", "calinski_harabasz"):
                        row[f"{space}_{metric}"] = m[space].get(metric)
                labels[(method, k)] = pd.read_parquet(layout.cell(method, k) / "labels.parquet")["segment"].to_numpy()
            rows.append(row)
    table = pd.DataFrame(rows)
    recommended = {}
    for method in params["methods"]:
        sub = table[(table.method == method) & (table.status == "done")]
        col = "common_silhouette" if method == "kprototypes" else "own_silhouette"
        rec = recommend_k({int(k): (None if pd.isna(v) else float(v)) for k, v in zip(sub.k, sub[col])})
        rec["metric"] = col
        rec["elbow_k"] = elbow_k({int(k): float(c) for k, c in zip(sub.k, sub.cost)}) if len(sub) else None
        if rec["k"] is None and len(sub):
            rec["k"] = int(sub.k.min())
        recommended[method] = rec
    agree = []
    methods = params["methods"]
    for k in params["k"]:
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                if (a, k) in labels and (b, k) in labels:
                    agree.append({"k": k, "a": a, "b": b, **agreement(labels[(a, k)], labels[(b, k)])})
    chosen = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            ka, kb = recommended[a]["k"], recommended[b]["k"]
            if (a, ka) in labels and (b, kb) in labels:
                chosen.append({"a": a, "ka": ka, "b": b, "kb": kb, **agreement(labels[(a, ka)], labels[(b, kb)])})
    outcome = None
    out_file = layout.root / "outcome.parquet"
    if params.get("outcome") and out_file.exists():
        outcome = outcome_separation(pd.read_parquet(out_file)["outcome"], labels, recommended)
    verdict = rank_methods(layout, recommended, table)
    numbers = None
    if "llm" in methods and params["llm"].get("compare_numbers") and recommended["llm"]["k"]:
        numbers = numbers_experiment(layout, ctx, recommended["llm"]["k"])
    result = {"recommended": recommended, "agreement": agree, "agreement_chosen": chosen, "outcome": outcome,
              "verdict": verdict, "numbers_experiment": numbers}
    atomic_write_parquet(layout.comparison / "metrics.parquet", table)
    atomic_write_json(layout.comparison / "comparison.json", result)
    return result


def outcome_separation(outcome: pd.Series, labels: dict, recommended: dict) -> dict:
    """Share of the outcome's positive level per segment, and how much the segments separate it."""
    from sklearn.metrics import normalized_mutual_info_score

    y = outcome.astype(str).to_numpy()
    levels, counts = np.unique(y, return_counts=True)
    positive = "yes" if "yes" in levels else levels[np.argmin(counts)]
    pos = (y == positive).astype(float)
    out = {"positive": str(positive), "population_rate": float(pos.mean()), "methods": {}}
    for method, rec in recommended.items():
        lab = labels.get((method, rec["k"]))
        if lab is None:
            continue
        rates = [{"segment": int(s), "rate": float(pos[lab == s].mean()), "size": int((lab == s).sum())}
                 for s in np.unique(lab)]
        r = np.array([x["rate"] for x in rates])
        out["methods"][method] = {"k": rec["k"], "rates": rates, "spread": float(r.max() - r.min()),
                                  "nmi": float(normalized_mutual_info_score(y, lab))}
    return out


def rank_methods(layout: RunLayout, recommended: dict, table: pd.DataFrame) -> dict | None:
    """Which method segments best on common ground, and how sure: paired bootstrap replicates.

    Each method's segments at its recommended k are scored by silhouette in the common space; the
    bootstrap refits (same resampled rows for every method, same seed) give one score per replicate,
    so "A beats B in 19 of 20 resamples" is a direct measure of how sure the ranking is.
    """
    scores, stab = {}, {}
    for method, rec in recommended.items():
        f = layout.cell(method, rec["k"]) / "stability.json"
        row = table[(table.method == method) & (table.k == rec["k"])]
        if not len(row) or row.iloc[0]["status"] != "done":
            continue
        scores[method] = {"k": rec["k"], "common_silhouette": float(row.iloc[0]["common_silhouette"])}
        if f.exists():
            st = read_json(f)
            reps = [x for x in st.get("common_silhouette", []) if x is not None]
            stab[method] = reps
            scores[method].update(ari_mean=st["ari_mean"], ari_sd=st["ari_sd"],
                                  replicate_silhouette_mean=float(np.mean(reps)) if reps else None,
                                  replicate_silhouette_sd=float(np.std(reps)) if reps else None,
                                  dissolved=sum(1 for v in st["segments"].values() if v["dissolved"]))
    if not scores:
        return None
    best = max(scores, key=lambda m: scores[m]["common_silhouette"])
    wins = {}
    for other in scores:
        if other == best or not stab.get(best) or not stab.get(other):
            continue
        a, b = stab[best], stab[other]
        n = min(len(a), len(b))
        wins[other] = {"wins": int(sum(1 for i in range(n) if a[i] > b[i])), "of": n}
    most_stable = max((m for m in scores if "ari_mean" in scores[m]), key=lambda m: scores[m]["ari_mean"], default=None)
    return {"best": best, "scores": scores, "wins": wins, "most_stable": most_stable}


def numbers_experiment(layout: RunLayout, ctx: dict, k: int, max_rows: int = 3000) -> dict:
    """Does writing numbers as quantile words ('balance: high, 1240') change the LLM segments?

    On a seeded sample, both row-text variants are embedded (the run's own from its space, the
    other freshly, cached), clustered at the LLM method's recommended k, and compared on
    stability (bootstrap ARI), separation in the common space, and the outcome where one is given.
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    from .embed import embed_texts, row_texts
    from .evaluate import bootstrap_stability
    from .features import sample_rows
    from .methods.kmeans import KMeansSegmenter

    p, lp = ctx["params"], ctx["params"]["llm"]
    seed = int(p["seed"])
    frame = pd.read_parquet(layout.table)
    rows = sample_rows(len(frame), max_rows, seed)
    common = np.load(layout.space("common") / "X.npy")[rows]
    tpl = ctx["row_template"]
    own = lp.get("numbers", "plain")
    other = "words" if own == "plain" else "plain"
    texts = row_texts(frame.iloc[rows], tpl["text"], other, tpl["number_edges"])
    X_other, _ = embed_texts(texts, lp["model"], lp["precision"], int(lp["batch_size"]), bool(lp["normalize"]),
                             cache_dir=p.get("cache_dir"), progress=False, seed=seed)
    variants = {own: np.load(layout.space("llm") / "X.npy")[rows], other: X_other}
    out = {"k": k, "rows": int(len(rows)), "run_uses": own, "example": {}, "variants": {}}
    out["example"][other] = texts[0]
    out["example"][own] = row_texts(frame.iloc[rows[:1]], tpl["text"], own, tpl["number_edges"])[0]
    outcome = None
    if (layout.root / "outcome.parquet").exists():
        outcome = pd.read_parquet(layout.root / "outcome.parquet")["outcome"].astype(str).to_numpy()[rows]
    for name, X in variants.items():
        labels = KMeansSegmenter(k, n_init=3, random_state=seed).fit(X).labels_

        def refit(r, base, X=X):
            return KMeansSegmenter(k, n_init=3, random_state=seed).fit(X[r]).predict(X[base])

        st = bootstrap_stability(refit, labels, len(labels), 10, seed, len(labels))
        v = {"common_silhouette": float(silhouette_score(common, labels)), "stability_ari": st["ari_mean"],
             "stability_sd": st["ari_sd"], "labels": labels}
        if outcome is not None:
            pos = "yes" if "yes" in set(outcome) else sorted(set(outcome))[0]
            rates = [float((outcome[labels == s] == pos).mean()) for s in range(k)]
            v["outcome_spread"] = max(rates) - min(rates)
        out["variants"][name] = v
    out["agreement_ari"] = float(adjusted_rand_score(out["variants"][own].pop("labels"),
                                                     out["variants"][other].pop("labels")))
    return out
