"""Method 3's feature space: each row rendered to text, embedded by a sentence model.

Texts come from a Jinja template (templates/row_text.j2 by default, or one
generated from the schema). Identical texts are embedded once, by one of the
paths in embed_fast (PyTorch fp32 / bf16, ONNX Runtime, OpenVINO, int8):
`precision: auto` takes the fastest that passes the fidelity gate against fp32
on this machine, and every part of a reduced path is checked against fp32 on a
sample. Embeddings are cached on disk as partitioned parquet (one file per part
of 8,192 distinct texts, named by the path and the hash of model, exported model
and texts), so a rerun embeds nothing, an interrupted run resumes, and the Dask
executor embeds the parts on its workers. A part is written once, atomically,
and carries the sha256 of its texts and vectors: a damaged part is said so in
one line and embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ... import SegreportError
from . import embed_fast as ef
from .sentence_model import load_model
from .sentence_model import LOADS as _LOADS
from .sentence_model import encode as _encode
from ...core.store import atomic_output, embedding_part, say_damaged, sweep_orphans



# --------------------------------------------------------------------------- text


def schema_template(schema) -> str:
    """One 'Label: value unit' clause per used column, in schema order."""
    clauses = []
    for spec in schema:
        if not spec.use or spec.kind not in ("numeric", "categorical", "binary"):
            continue
        unit = f" {spec.unit}" if spec.unit else ""
        clauses.append(f"{spec.display}: {{{{ row[{spec.name!r}] | fmt }}}}{unit}")
    return ", ".join(clauses)


def strip_comments(template_text: str) -> str:
    """The template without its Jinja comments ({# ... #}): what it renders is unchanged."""
    import re

    return re.sub(r"\{#.*?#\}\s*", "", template_text, flags=re.S).strip() + "\n"


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


QUANTILE_WORDS = ("very low", "low", "medium", "high", "very high")


def quantile_edges(frame: pd.DataFrame, numeric: list[str]) -> dict[str, list[float]]:
    """Quintile edges of each numeric column (from the training table), for `numbers: words`."""
    return {c: [float(q) for q in frame[c].quantile([0.2, 0.4, 0.6, 0.8])] for c in numeric}


def with_number_words(frame: pd.DataFrame, edges: dict[str, list[float]]) -> pd.DataFrame:
    """Numeric values rendered as 'high, 1240': a sentence model reads words, not magnitudes."""
    out = frame.copy()
    for c, e in edges.items():
        idx = np.searchsorted(np.asarray(e), out[c].to_numpy(float), side="right")
        out[c] = [f"{QUANTILE_WORDS[i]}, {_fmt(v)}" for i, v in zip(idx, out[c].to_numpy(float))]
    return out


def row_texts(frame: pd.DataFrame, template_text: str, numbers: str = "plain",
              edges: dict[str, list[float]] | None = None) -> list[str]:
    """The texts method 3 embeds: the template, with numbers plain or as quantile words."""
    if numbers == "words" and edges:
        frame = with_number_words(frame, edges)
    return render_texts(frame, template_text)


def render_texts(frame: pd.DataFrame, template_text: str) -> list[str]:
    """Render each row through the template. `row` maps column name to value."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.filters["fmt"] = _fmt
    try:
        tpl = env.from_string(template_text)
    except jinja2.TemplateSyntaxError as exc:
        raise SegreportError(f"row-text template: syntax error at line {exc.lineno}: {exc.message}") from None
    cols = list(frame.columns)
    records = frame.to_dict(orient="records") if cols else []
    out = []
    try:
        for rec in records:
            out.append(" ".join(tpl.render(row=rec).split()))
    except jinja2.UndefinedError as exc:
        raise SegreportError(f"row-text template refers to a column that is not used: {exc.message}") from None
    return out


def release_models() -> None:
    """Drop this process's sentence models and compiled encoders (PyTorch, ONNX Runtime, OpenVINO) and
    hand the freed heap back to the OS. Called when a stage that embeds is done: the grid's workers and
    their kernels need the memory, and a later stage that embeds loads what it needs again (seconds)."""
    import ctypes
    import gc

    ef.get_encoder.cache_clear()
    load_model.cache_clear()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed arenas otherwise
    except (OSError, AttributeError):  # not glibc
        pass


def cpu_has_bf16() -> bool:
    """True where the CPU does bf16 matrix arithmetic natively (AMX or AVX-512 BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


PART_ROWS = 8192  # distinct texts per cache part: one task on the Dask executor, one file on disk
CHECK_PER_PART = 64  # texts per part re-embedded in fp32 to check bf16


# rows filled at once from a part: a part's vectors gathered for all of its rows at once were a second
# per-row matrix where few distinct texts cover many rows (1.5 GB at 1,000,000 rows, 4,067 texts in one part)
SCATTER_ROWS = 65_536


class EmbeddingPlan:
    """The distinct texts of a table, in sorted order, cut into parts that are embedded (and cached) alone.

    A part's file is named by the hash of its model, precision and texts, so any run that
    needs the same part (another table with overlapping rows, a rerun, another executor)
    reads it instead of embedding it again.
    """

    def __init__(self, texts: list[str], model_name: str, precision: str, folder: Path, part_rows: int | None = None,
                 model_dir: str | None = None):
        self.part_rows = part_rows or PART_ROWS
        uniq, self.inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        self.texts = [str(u) for u in uniq]
        self.rows = len(texts)
        self.model = model_name
        self.folder = Path(folder)
        self.use(precision, model_dir)

    def use(self, precision: str, model_dir: str | None = None) -> None:
        """Name the parts for this path: the file name carries the path, so parts of different paths never mix."""

        precision = ef.default_path() if precision == "auto" else precision
        if precision not in ef.PATHS:
            raise SegreportError(f"unknown embedding precision '{precision}'; one of auto, {', '.join(ef.PATHS)}")
        self.precision, self.model_dir = precision, model_dir
        self.bf16 = precision == "bf16"
        variant = Path(model_dir).name if model_dir else ""  # the exported model's hash (int8: its calibration too)
        self.parts = []
        for lo in range(0, len(self.texts), self.part_rows):
            chunk = self.texts[lo:lo + self.part_rows]
            h = hashlib.sha256(f"{self.model}|{precision}|{variant}\n".encode())
            for t in chunk:
                h.update(t.encode())
                h.update(b"\0")
            self.parts.append({"lo": lo, "hi": lo + len(chunk),
                               "path": embedding_part(self.folder, precision, h.hexdigest()[:24])})

    def missing(self) -> list[dict]:
        return [p for p in self.parts if not p["path"].exists()]

    def texts_of(self, part: dict) -> list[str]:
        return self.texts[part["lo"]:part["hi"]]


def embed_part(texts: list[str], model_name: str, precision: str | bool, batch_size: int, path: str | Path,
               seed: int = 0, threads: int | None = None, model_dir: str | None = None) -> dict:
    """Embed one part of distinct texts and write it as a parquet file, atomically.

    `precision` is an embedding path (embed_fast.PATHS; True / False mean bf16 / fp32); exported
    paths load their model from `model_dir`. Runs wherever a part is sent: in this process, or on
    a Dask worker, where the model is loaded once per worker process and reused for every part.
    """
    import platform

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch


    path = Path(path)
    if path.exists():  # another task or run wrote it meanwhile
        try:
            return part_meta(path)
        except Exception:  # unreadable: written again below
            pass
    if isinstance(precision, bool):
        precision = "bf16" if precision else "fp32"
    if threads:
        torch.set_num_threads(int(threads))
    encoder = ef.get_encoder(model_name, precision, model_dir, torch.get_num_threads())
    t0 = time.perf_counter()
    emb = encoder(texts, batch_size)
    meta = {"rows": len(texts), "seconds": round(time.perf_counter() - t0, 3), "host": platform.node(),
            "pid": os.getpid(), "model_loads_in_process": _LOADS.get(model_name, 0), "bf16": precision == "bf16",
            "precision": precision}
    if precision != "fp32":  # the same texts in fp32, on a seeded sample of the part
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(texts), size=min(CHECK_PER_PART, len(texts)), replace=False))
        ref = _encode(load_model(model_name), [texts[i] for i in idx], batch_size, False, False)
        a = emb[idx]
        cos = (a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))
        meta["check"] = {"sample": int(len(idx)), "min_cosine": float(cos.min()), "sum_cosine": float(cos.sum())}
    dim = emb.shape[1]
    table = pa.table({"text": pa.array(texts, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim)})
    meta["sha256"] = part_hash(texts, emb)  # what a reader checks the part against
    table = table.replace_schema_metadata({b"segreport": json.dumps(meta).encode()})
    with atomic_output(path) as tmp:  # another run may write the same part: either whole file wins
        pq.write_table(table, tmp, compression="zstd")
    return meta


def part_meta(path: Path) -> dict:
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[b"segreport"])


def part_hash(texts: list[str], emb: np.ndarray) -> str:
    """sha256 of a part's texts and float32 vectors: recorded in the part, checked when it is read."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(emb, dtype=np.float32).tobytes())
    return h.hexdigest()


class DamagedPart(Exception):
    """A cache part that cannot be read, or whose content is not what it recorded."""


def read_part(path: Path, texts: list[str]) -> np.ndarray:
    """A cached part's embeddings, after checking it is readable, holds exactly these texts and its
    vectors hash to the sha256 it recorded (parts written before it recorded one: the first two)."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
        meta = json.loads((t.schema.metadata or {}).get(b"segreport", b"{}"))
        col = t.column("embedding").combine_chunks()
        emb = col.values.to_numpy().reshape(len(t), -1)
        held = t.column("text").to_pylist()
    except Exception as exc:  # cut or scrambled: pyarrow's ArrowInvalid, OSError, a bad footer ...
        raise DamagedPart(f"unreadable: {type(exc).__name__}") from None
    if held != texts:  # the part's name is the hash of its texts
        raise DamagedPart("it does not hold the texts its name promises")
    if meta.get("sha256") and part_hash(held, emb) != meta["sha256"]:
        raise DamagedPart("hash differs")
    return emb


def embed_texts(texts: list[str], model_name: str, precision: str = "auto", batch_size: int = 128,
                normalize: bool = True, cache_dir: str | Path | None = None, progress: bool = True,
                seed: int = 0, run_parts=None, part_rows: int | None = None, gate_k: list[int] | None = None,
                gate_n_init: int = 10, gate_sample: int | None = None) -> tuple[np.ndarray, dict]:
    """Embed texts (distinct ones once) through the partitioned parquet cache. Returns (n, d) float32
    and facts for the manifest.

    precision: "auto", or a path of embed_fast.PATHS. With "auto" and the run's k grid in `gate_k`,
    embed_fast.decide_path picks the path for the distinct texts still to embed: the fidelity gate
    runs only where it pays for itself, and this CPU's cached verdict is reused (the plan and the
    numbers go into the facts under "gate"); without `gate_k`, auto is bf16 where the CPU has native
    bf16, else fp32.

    Missing parts are embedded here one after another, or by `run_parts(plan, missing, progress)`
    (the Dask executor's: one task per part, spread over the workers). Either way each part
    is a file in <cache_dir>/embeddings/, written atomically, so an interrupted run resumes
    with the parts it finished.
    """
    import tempfile

    t0 = time.perf_counter()
    tmpdir = None
    if cache_dir is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="segreport-embed-")
        cache_dir = tmpdir.name
    try:

        plan = EmbeddingPlan(texts, model_name, precision, Path(cache_dir) / "embeddings", part_rows)
        sample = ef.GATE_SAMPLE if gate_sample is None else int(gate_sample)
        gate = None
        if precision == "auto" and gate_k:
            todo = [t for p in plan.missing() for t in plan.texts_of(p)]  # what the default path has not embedded yet
            if todo:
                load_model(model_name)  # fails early, before the gate
                gate = ef.decide_path(todo, model_name, gate_k, seed, gate_n_init, cache_dir, batch_size, sample)
            else:
                gate = {"chosen": plan.precision, "skipped": f"every part is embedded by {plan.precision} already",
                        "reason": "nothing left to embed"}
        model_dir = None
        if plan.precision in ef.EXPORTED_PATHS or (gate and gate["chosen"] in ef.EXPORTED_PATHS):
            chosen = gate["chosen"] if gate else plan.precision
            model_dir = ef.model_folder(model_name, chosen, cache_dir, ef.seeded_sample(plan.texts, sample, seed))
            plan.use(chosen, model_dir)
        elif gate:
            plan.use(gate["chosen"])
        if plan.folder.is_dir():
            sweep_orphans(plan.folder)  # parts whose writer was killed: runs on other tables may share the folder
        missing = plan.missing()
        info = {"model": model_name, "precision": plan.precision, "unique_texts": len(plan.texts),
                "rows": len(texts), "parts": len(plan.parts), "parts_embedded": len(missing),
                "cache": str(plan.folder), "gate": gate,
                "exported_model": Path(model_dir).name if model_dir else None}
        t1 = time.perf_counter()
        if missing and run_parts is not None:
            run_parts(plan, missing, progress, batch_size, seed)
        elif missing:
            load_model(model_name)  # fails early, before the bar
            from tqdm.auto import tqdm

            with tqdm(total=sum(p["hi"] - p["lo"] for p in missing), desc="embedding", unit="row",
                      disable=not progress) as bar:
                for p in missing:
                    embed_part(plan.texts_of(p), model_name, plan.precision, batch_size, p["path"], seed=seed,
                               model_dir=plan.model_dir)
                    bar.update(p["hi"] - p["lo"])
        if missing:
            n_new = sum(p["hi"] - p["lo"] for p in missing)
            info["embed_seconds"] = round(time.perf_counter() - t1, 3)
            info["rows_per_second"] = round(n_new / max(info["embed_seconds"], 1e-9), 1)
        # each part's block goes straight to its rows: the client holds the per-row matrix and one part,
        # never the distinct-texts matrix beside it (a million rows of 384 floats: 1.5 GB each)
        order = np.argsort(plan.inverse, kind="stable")
        by_text = plan.inverse[order]
        out = None
        metas = []
        for p in plan.parts:
            try:
                block = read_part(p["path"], plan.texts_of(p))
            except DamagedPart as why:
                say_damaged(p["path"], str(why), "embedding that part again")
                p["path"].unlink(missing_ok=True)
                embed_part(plan.texts_of(p), model_name, plan.precision, batch_size, p["path"], seed=seed,
                           model_dir=plan.model_dir)  # by the path its file name says
                block = read_part(p["path"], plan.texts_of(p))
                missing.append(p)
            if normalize:
                block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
            if out is None:
                out = np.empty((len(texts), block.shape[1]), dtype=np.float32)
            a, b = np.searchsorted(by_text, [p["lo"], p["hi"]])
            for lo in range(a, b, SCATTER_ROWS):  # a part of few texts can cover most rows: copied in slices
                hi = min(b, lo + SCATTER_ROWS)
                out[order[lo:hi]] = block[by_text[lo:hi] - p["lo"]]
            metas.append(part_meta(p["path"]))
        if out is None:
            out = np.empty((len(texts), 0), dtype=np.float32)
        info["parts_embedded"] = len(missing)  # damaged parts included
        by_process: dict[str, int] = {}  # rows embedded in this run, per process (this one or Dask workers)
        for p, m in zip(plan.parts, metas):
            if p in missing:
                by_process[f"{m['host']}:{m['pid']}"] = by_process.get(f"{m['host']}:{m['pid']}", 0) + m["rows"]
        info["embedded_by"] = by_process or None
        checks = [m["check"] for m in metas if m.get("check")]
        if checks:
            n = sum(c["sample"] for c in checks)
            info["fp32_check"] = {"sample": n, "min_cosine_to_fp32": min(c["min_cosine"] for c in checks),
                                  "mean_cosine_to_fp32": sum(c["sum_cosine"] for c in checks) / n}
            if plan.precision == "bf16":
                info["bf16_check"] = info["fp32_check"]
        info["dimensions"] = int(out.shape[1])
        info.update(cache_hit=not missing, seconds=round(time.perf_counter() - t0, 3))
        return out, info
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
