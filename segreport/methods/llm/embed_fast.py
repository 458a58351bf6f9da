"""Faster embedding paths for method 3 and the fidelity gate that lets `precision: auto` use one.

Every path runs the same sentence model; the PyTorch fp32 path is the reference.

  fp32            PyTorch, full precision (the reference)
  bf16            PyTorch under bf16 autocast (fast only where the CPU has AMX / AVX-512 BF16)
  onnx-fp32       ONNX Runtime, graph fused by its transformer optimizer, fp32
  onnx-int8       ONNX Runtime, dynamic int8 with per-channel weights; the FFN down-projections
                  (the layers whose activations carry outliers) stay fp32
  openvino-fp32   OpenVINO, fp32, one single-threaded stream per thread
  openvino-bf16   the same IR with bf16 inference precision (offered only where the CPU has native bf16)
  openvino-int8   OpenVINO after NNCF static quantisation calibrated on the run's own texts
                  (transformer preset, FFN down-projections kept fp32)

Exported models are built locally from the loaded (bundled) model, once, and cached under
<cache_dir>/models/<hash>/ (written to a temporary folder and renamed into place); the hash covers
the model files, the path, the exporter versions and, for static int8, the calibration texts.
The graphs end in mean pooling over the attention mask, as the model's pooling config says;
normalisation (where the model has a Normalize module) is done after, in numpy.

The gate (`fidelity_gate`) compares a path with PyTorch fp32 on a seeded sample of the run's own
texts: minimum cosine similarity >= 0.99 and, at every k of the run's grid, K-means labels (n_init
starts on the normalised vectors, under the run's seed and four more) that agree with fp32's under the
same seed (median ARI) at least as well as fp32's own agree under the next seed, or at 0.98.
`decide_path` is what `precision: auto` calls: `gate_plan` weighs what measuring would cost against
what a faster path could save on the texts still to embed (at most GATE_BUDGET of the embedding);
`choose_path` measures the candidates (fidelity and rate on one interleaved pass over the sample) and
takes the fastest if it beats the default path (bf16 where the CPU has native bf16, else fp32) by
MIN_GAIN. What it measured is this CPU's verdict, cached per (model, CPU flags, threads, library
versions) and reused by every later data set, where only a small check on the run's own texts is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from ... import SegreportError
from .sentence_model import encode, load_model, resolve_model
from ...core.store import (EXPORT_RECORD, NoSpaceError, WriteError, atomic_folder, atomic_write_text, gate_verdict, no_space,
                    say_damaged)

TORCH_PATHS = ("fp32", "bf16")
EXPORTED_PATHS = ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
PATHS = TORCH_PATHS + EXPORTED_PATHS

EXPORT_VERSION = 1
GATE_VERSION = 1
GATE_MIN_COSINE = 0.99
GATE_MIN_ARI = 0.98  # the most agreement asked of a path's K-means labels (see fidelity_gate)
GATE_SEEDS = 5  # K-means seeds the labels are compared under (the run's and 4 more)
GATE_SAMPLE = 1000  # distinct texts the gate compares on
MIN_GAIN = 1.1  # a faster path must be this much faster than the default path to replace it
CALIB_TEXTS = 256  # texts that calibrate static int8
FLAG_NAMES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")

EXPORTS: list[str] = []  # exports built in this process (tests: a cached export is not built again)


# --------------------------------------------------------------------------- machine


@lru_cache(maxsize=1)
def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide which paths can be fast here (read at run time from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in FLAG_NAMES}


def native_bf16(flags: dict | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool(flags.get("amx_bf16") or flags.get("avx512_bf16"))


def default_path() -> str:
    """What auto used before the gate existed, and keeps where nothing faster passes."""
    return "bf16" if native_bf16() else "fp32"


def int8_dot(flags: dict | None = None) -> bool:
    """The CPU has int8 dot-product instructions (VNNI or AMX). Without them int8 matrix products run
    on AVX2's multiply-add pairs and gain little over fp32 (measured on an AVX2-only EPYC: onnx-int8
    124 rows/s against onnx-fp32 111), so the int8 paths are not worth their export and gate time."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags.get("avx512_vnni") or flags.get("avx_vnni") or flags.get("amx_int8"))


def candidate_paths(flags: dict | None = None) -> list[str]:
    """The paths `auto` tries on this machine: bf16 ones only where the CPU does bf16 natively, int8
    ones only where it has int8 dot-product instructions."""
    out = ["onnx-fp32", "openvino-fp32"] + (["onnx-int8", "openvino-int8"] if int8_dot(flags) else [])
    if native_bf16(flags):
        out = ["bf16", "openvino-bf16"] + out
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "none"
    return out


@lru_cache(maxsize=8)
def model_fingerprint(model_name: str) -> str:
    """Hash of the model's files (the bundled folder), so an export is rebuilt if the model changes."""

    h = hashlib.sha256(model_name.encode())
    p = Path(resolve_model(model_name))
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:24]


def texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def seeded_sample(texts: list[str], n: int, seed: int) -> list[str]:
    if len(texts) <= n:
        return list(texts)
    idx = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
    return [texts[i] for i in idx]


# --------------------------------------------------------------------------- export


def _structure(st) -> dict:
    """Check the model is Transformer -> mean Pooling [-> Normalize], the pipeline the exported graphs copy."""
    names = [type(m).__name__ for m in st]
    if len(names) < 2 or names[0] != "Transformer" or names[1] != "Pooling" or any(
            n != "Normalize" for n in names[2:]):
        raise SegreportError(f"fast embedding paths need Transformer -> Pooling [-> Normalize]; this model has {names}")
    cfg = st[1].get_config_dict()
    mode = cfg.get("pooling_mode")
    mean = mode == "mean" if mode is not None else bool(cfg.get("pooling_mode_mean_tokens")) and not any(
        cfg.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                             "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"))
    if not mean:
        raise SegreportError(f"fast embedding paths need mean pooling; this model's pooling is {cfg}")
    return {"normalize": "Normalize" in names[2:]}


def _tokenize(st, texts: list[str]) -> dict:
    """The model's own preprocessing (sentence-transformers 6 calls it preprocess; older versions tokenize)."""
    fn = getattr(st, "preprocess", None) or st.tokenize
    return fn(texts)


def _input_names(st) -> list[str]:
    return [k for k in _tokenize(st, ["a"]).keys() if k in ("input_ids", "attention_mask", "token_type_ids")]


def _export_onnx(st, out: Path) -> dict:
    """torch.onnx export of the transformer module followed by mean pooling over the attention mask."""
    import copy

    import torch

    _structure(st)
    bert = copy.deepcopy(st[0].auto_model).eval().float()
    try:  # plain attention ops: the pattern ONNX Runtime's fusion recognises
        bert.set_attn_implementation("eager")
    except Exception:  # noqa: BLE001 - older transformers; sdpa exports too
        pass
    names = _input_names(st)

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            kw = dict(zip(names, inputs))
            h = self.inner(**kw)[0]
            mask = kw["attention_mask"].unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    ex = _tokenize(st, ["an example sentence to trace", "a second one"])
    args = tuple(ex[n] for n in names)
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes["sentence_embedding"] = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(bert), args, str(out / "model.onnx"), input_names=names,
                          output_names=["sentence_embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)
    cfg = bert.config
    return {"inputs": names, "heads": int(cfg.num_attention_heads), "hidden": int(cfg.hidden_size)}


def _ffn_down(onnx_path: Path) -> tuple[list[str], list[str]]:
    """(weight MatMuls, the FFN down-projections among them: weight taller than wide)."""
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    weight = [n.name for n in g.node if n.op_type == "MatMul" and n.input[1] in shapes]
    down = [n.name for n in g.node if n.name in weight and len(shapes[n.input[1]]) == 2
            and shapes[n.input[1]][0] > shapes[n.input[1]][1]]
    return weight, down


def _build(st, path: str, out: Path, base: Path | None, calib: list[str] | None) -> dict:
    if path == "onnx-base":
        return _export_onnx(st, out)
    base_facts = json.loads((base / EXPORT_RECORD).read_text())["facts"]
    if path == "onnx-fp32":
        from onnxruntime.transformers import optimizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(str(base / "model.onnx"), model_type="bert", num_heads=base_facts["heads"],
                                           hidden_size=base_facts["hidden"], opt_level=1)
        opt.save_model_to_file(str(out / "model.onnx"))
        fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        return {"fused_operators": fused, "inputs": base_facts["inputs"]}
    if path == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        weight, down = _ffn_down(base / "model.onnx")
        nodes = [n for n in weight if n not in down]
        quantize_dynamic(str(base / "model.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes)
        return {"int8_matmuls": len(nodes), "fp32_matmuls": down, "inputs": base_facts["inputs"]}
    if path == "openvino":
        import openvino as ov

        ov.save_model(ov.convert_model(str(base / "model.onnx")), str(out / "model.xml"), compress_to_fp16=False)
        return {"inputs": base_facts["inputs"]}
    if path == "openvino-int8":
        import logging

        import nncf
        import openvino as ov

        nncf.set_log_level(logging.ERROR)
        _, down = _ffn_down(base / "model.onnx")
        model = ov.convert_model(str(base / "model.onnx"))
        names = base_facts["inputs"]
        data = [feed for _, feed in _batches(st, calib, 32, names)]
        q = nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
                          ignored_scope=nncf.IgnoredScope(names=down, validate=False))
        ov.save_model(q, str(out / "model.xml"), compress_to_fp16=False)
        return {"calibration_texts": len(calib), "fp32_matmuls": down, "inputs": names}
    raise SegreportError(f"unknown export '{path}'")


@contextlib.contextmanager
def _quiet():
    """The exporters' own output muted where it is written: file descriptors 1 and 2 (NNCF's progress bars,
    ONNX Runtime's advice, C++ loggers alike). sys.stdout and sys.stderr stay the objects they were, so a
    logging handler created meanwhile writes to the real stderr afterwards (one bound to a swapped-in file
    that was then closed printed "--- Logging error ---" for every later warning); a handler that an
    exporter adds to the root logger meanwhile (logging.basicConfig) is removed again."""
    import logging

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    root = list(logging.root.handlers)
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (OSError, ValueError):
                        pass
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
        for h in logging.root.handlers[:]:
            if h not in root:
                logging.root.removeHandler(h)


def _export_kind(path: str) -> str:
    return "openvino" if path in ("openvino-fp32", "openvino-bf16") else path  # bf16 is a compile-time hint


def _export_folder(model_name: str, kind: str, cache_dir: str | Path, calib: list[str] | None) -> Path:
    key = hashlib.sha256(json.dumps([model_fingerprint(model_name), kind, EXPORT_VERSION, _versions(),
                                     texts_hash(calib) if calib else None]).encode()).hexdigest()[:20]
    return Path(cache_dir) / "models" / key


def exported_model(model_name: str, path: str, cache_dir: str | Path, calib_texts: list[str] | None = None) -> Path:
    """The folder of `path`'s exported model, built on first use and reused after (atomic rename into place)."""

    kind = _export_kind(path)
    base = None if kind == "onnx-base" else exported_model(model_name, "onnx-base", cache_dir)
    calib = None
    if kind == "openvino-int8":
        if not calib_texts:
            raise SegreportError("openvino-int8 needs calibration texts")
        calib = list(calib_texts[:CALIB_TEXTS])
    final = _export_folder(model_name, kind, cache_dir, calib)
    key = final.name
    if (final / EXPORT_RECORD).exists():
        return final
    try:
        # written whole into a temporary folder, its facts last, then one rename (store.atomic_folder); where
        # another process finished the same export first, its folder is kept
        with atomic_folder(final, replace=False) as tmp:
            t0 = time.perf_counter()
            with _quiet():  # the exporters' progress bars and advice are not the user's business
                facts = _build(load_model(model_name), kind, tmp, base, calib)
            meta = {"model": model_name, "kind": kind, "seconds": round(time.perf_counter() - t0, 2),
                    "versions": _versions(), "facts": facts}
            atomic_write_text(tmp / EXPORT_RECORD, json.dumps(meta, indent=1))
    except BaseException as exc:
        # a full disk while an exporter wrote (its own error, errno or not) is said naming the model's folder
        if no_space(exc) and not isinstance(exc, WriteError):
            raise NoSpaceError(final) from exc
        raise
    EXPORTS.append(f"{kind}:{key}")
    return final


# --------------------------------------------------------------------------- encoders


def _batches(st, texts: list[str], batch_size: int, names: list[str]):
    """Longest first, as sentence-transformers batches; tokenised by the model's own tokenize()."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for lo in range(0, len(texts), batch_size):
        idx = order[lo:lo + batch_size]
        feats = _tokenize(st, [texts[i] for i in idx])
        yield idx, {n: np.ascontiguousarray(feats[n].numpy().astype(np.int64)) for n in names}


class Encoder:
    """One path's encoder: texts -> (n, d) float32 in input order, as SentenceTransformer.encode would give."""

    def __init__(self, model_name: str, path: str, folder: Path | None, threads: int):

        if path not in PATHS:
            raise SegreportError(f"unknown embedding precision '{path}'; one of {', '.join(('auto',) + PATHS)}")
        self.st = load_model(model_name)
        self.path, self.threads = path, max(1, int(threads))
        if path in TORCH_PATHS:
            return
        self.normalize = _structure(self.st)["normalize"]
        meta = json.loads((Path(folder) / EXPORT_RECORD).read_text())
        self.names = meta["facts"]["inputs"]
        if path.startswith("onnx-"):
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = self.threads, 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a shared machine: no busy waiting
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(str(Path(folder) / "model.onnx"), so, providers=["CPUExecutionProvider"])
        else:
            import openvino as ov

            core = ov.Core()
            # one single-threaded stream per thread: on few cores this beats one stream over all of them,
            # and each batch is computed by one thread, so results do not depend on scheduling
            cfg = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": self.threads,
                   "INFERENCE_PRECISION_HINT": "bf16" if path == "openvino-bf16" else "f32",
                   "PERFORMANCE_HINT": "THROUGHPUT"}
            self.compiled = core.compile_model(core.read_model(str(Path(folder) / "model.xml")), "CPU", cfg)
            self.queue = ov.AsyncInferQueue(self.compiled, self.threads)

    def __call__(self, texts: list[str], batch_size: int = 128) -> np.ndarray:

        if self.path in TORCH_PATHS:
            return encode(self.st, texts, batch_size, self.path == "bf16", False)
        out = np.empty((len(texts), self.dim), dtype=np.float32) if texts else np.empty((0, 0), np.float32)
        if not texts:
            return out
        if self.path.startswith("onnx-"):
            for idx, feed in _batches(self.st, texts, batch_size, self.names):
                out[idx] = self.session.run(None, feed)[0]
        else:
            def done(req, idx):
                out[idx] = req.get_output_tensor(0).data

            self.queue.set_callback(done)
            for idx, feed in _batches(self.st, texts, batch_size, self.names):
                self.queue.start_async(feed, idx)
            self.queue.wait_all()
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    @property
    def dim(self) -> int:
        get = getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
        return int(get())


@lru_cache(maxsize=8)
def get_encoder(model_name: str, path: str, folder: str | None, threads: int) -> Encoder:
    """Encoders are cached per process (a Dask worker compiles its model once)."""
    return Encoder(model_name, path, Path(folder) if folder else None, threads)


def model_folder(model_name: str, path: str, cache_dir: str | Path, calib_texts: list[str] | None = None) -> str | None:
    return None if path in TORCH_PATHS else str(exported_model(model_name, path, cache_dir, calib_texts))


# --------------------------------------------------------------------------- gate


def kmeans_labels(X: np.ndarray, ks, seed: int, n_init: int) -> dict[int, np.ndarray]:
    from sklearn.cluster import KMeans

    Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return {k: KMeans(k, n_init=n_init, random_state=seed).fit_predict(Xn) for k in gate_ks(ks, len(Xn))}


def gate_ks(ks, n: int) -> list[int]:
    """The k of `ks` that K-means can fit on `n` sampled texts (2 <= k < n), sorted."""
    return sorted({int(k) for k in ks if 1 < int(k) < n})


def gate_seeds(seed: int) -> list[int]:
    """The K-means seeds the gate compares labels under where they differ: the run's seed and GATE_SEEDS - 1 more."""
    return [int(seed) + i for i in range(GATE_SEEDS)]


def _labels_at(store: dict, X: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    """K-means labels of X at (k, seed), computed once into store {seed: {k: labels}}."""
    at = store.setdefault(int(seed), {})
    if int(k) not in at:
        at[int(k)] = kmeans_labels(X, [k], seed, n_init)[int(k)]
    return at[int(k)]


def fidelity_gate(ref: np.ndarray, cand: np.ndarray, ks, seed: int = 0, n_init: int = 10,
                  ref_labels: dict | None = None, min_cosine: float = GATE_MIN_COSINE,
                  min_ari: float = GATE_MIN_ARI) -> dict:
    """Does `cand` (embeddings of the same texts by another path) keep fp32's geometry and segments?

    Passes when the minimum cosine similarity to `ref` is >= min_cosine and, at every k in ks, the K-means
    labels (normalised vectors, n_init starts) of `cand` agree with fp32's under the run's seed at ARI >=
    min_ari, or, where they do not, agree with fp32's under the same seed (the median over the gate's seeds,
    `gate_seeds`) at least as well as fp32's own labels agree with themselves under the next seed (the median
    over consecutive seeds: the `floor`). K-means on sentence vectors has near-ties (on bank texts at k >= 5,
    fp32 under another seed agrees with itself at a median ARI of 0.85-0.94): a path passes where it moves the
    segments no more than a change of K-means' seed does, and is never asked for more than min_ari.
    ref_labels: {seed: {k: labels}} of `ref`, filled as needed and shared by the candidates of one gate.
    """
    from sklearn.metrics import adjusted_rand_score

    if ref.shape != cand.shape:
        raise SegreportError(f"fidelity gate: shapes differ ({ref.shape} vs {cand.shape})")
    a = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    b = cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-12)
    cos = (a * b).sum(1)
    ref_labels = ref_labels if ref_labels is not None else {}
    got: dict = {}
    ari, floor = {}, {}
    for k in gate_ks(ks, len(a)):
        first = adjusted_rand_score(_labels_at(ref_labels, ref, k, seed, n_init), _labels_at(got, cand, k, seed, n_init))
        floor[str(k)] = min_ari
        if first >= min_ari:
            ari[str(k)] = round(float(first), 4)
            continue
        seeds = gate_seeds(seed)
        same = [adjusted_rand_score(_labels_at(ref_labels, ref, k, s, n_init), _labels_at(got, cand, k, s, n_init))
                for s in seeds]
        own = [adjusted_rand_score(_labels_at(ref_labels, ref, k, s, n_init), _labels_at(ref_labels, ref, k, t, n_init))
               for s, t in zip(seeds, seeds[1:])]
        ari[str(k)] = round(float(np.median(same)), 4)
        floor[str(k)] = round(min(min_ari, float(np.median(own))), 4)
    min_cos = float(cos.min()) if len(cos) else 1.0
    lowest = min(ari.values()) if ari else None
    passed = bool(min_cos >= min_cosine and all(ari[k] >= floor[k] for k in ari) and np.isfinite(cand).all())
    return {"sample": int(len(a)), "min_cosine": round(min_cos, 6), "mean_cosine": round(float(cos.mean()), 6) if len(cos) else 1.0,
            "ari": ari, "min_ari": lowest, "floor": floor, "passed": passed}


# --------------------------------------------------------------------------- the gate's economics
#
# The gate measures; measuring costs exports, model loads and a sample embedded once per path. It runs
# only where what it can save (the distinct texts still to embed x the per-row gain of the best path)
# exceeds what it costs, and never above GATE_BUDGET of the embedding it decides. What it measured on
# this CPU (each path's rate and whether it kept fp32's geometry) is its verdict, cached per (model,
# CPU flags, threads, library versions) and reused by every later data set: there, only the run's own
# fidelity check on a small sample is left, where it is cheap.

GATE_BUDGET = 0.10  # the gate's expected cost, at most this share of the embedding it decides
GATE_MARGIN = 0.8  # a gate planned on priors spends at most this share of its budget (they are estimates)
PRIOR_FP32_ROWS_PER_SECOND = 100.0  # fp32 rate before one was measured here (2 cores: 95 AVX2 EPYC, 190 VNNI Xeon)
# gains expected over the default path before they were measured here: the best ones seen on our CPUs
# (openvino-fp32 1.08-1.64x on AVX2 and VNNI; int8 only where VNNI is, and often failing the gate)
PRIOR_GAIN = {"openvino-fp32": 1.3, "onnx-fp32": 1.2, "openvino-int8": 1.5, "onnx-int8": 1.4,
              "bf16": 1.5, "openvino-bf16": 1.8}
# seconds to build an export not yet cached (2 cores, AVX2 EPYC, load average 13: onnx-base 4.5, onnx-fp32 7.2,
# openvino 12.9; each export.json records its own figure)
PRIOR_EXPORT_SECONDS = {"onnx-base": 10.0, "onnx-fp32": 8.0, "openvino": 10.0, "onnx-int8": 15.0,
                        "openvino-int8": 45.0}
LOAD_SECONDS = 1.5  # loading or compiling one path's session and its warm-up
# the gate's K-means, per path, seed and k (n_init 10 on 300-1,000 sampled texts, k 2-8: 0.03-0.06 s measured
# on 2 cores of a VNNI Xeon, 2026-12-04); planned as if every k needed every seed (near-ties at every k)
KMEANS_SECONDS = 0.06
CHECK_SAMPLE = 256  # the run's own fidelity check where a verdict exists
MIN_SAMPLE = 200  # fewer sampled texts than this measure neither fidelity nor speed
SAMPLE_STEPS = (GATE_SAMPLE, 500, 300, MIN_SAMPLE)
TIMING_CHUNKS = 4  # the sample is embedded in this many chunks, paths interleaved (the machine may be shared)
VERDICT_VERSION = 2  # 2: near-ties judged against fp32's own agreement under another seed (fidelity_gate)


def _needed_exports(path: str) -> list[str]:
    return [] if path in TORCH_PATHS else ["onnx-base", _export_kind(path)]


def export_seconds_left(model_name: str, paths, cache_dir: str | Path) -> dict[str, float]:
    """What building each export these paths need would still cost here: 0 where it is cached, else its
    prior (static int8 is calibrated on each run's own texts, so it is never counted as cached)."""
    out = {}
    for p in paths:
        for kind in _needed_exports(p):
            if kind in out:
                continue
            cached = kind != "openvino-int8" and (_export_folder(model_name, kind, cache_dir, None) / EXPORT_RECORD).exists()
            out[kind] = 0.0 if cached else PRIOR_EXPORT_SECONDS.get(kind, 30.0)
    return out


def _export_cost(paths, left: dict[str, float]) -> float:
    return float(sum(left.get(k, 0.0) for k in {k for p in paths for k in _needed_exports(p)}))


def gate_plan(n_texts: int, candidates: list[str], base: str, verdict: dict | None,
              exports_left: dict[str, float], sample_max: int = GATE_SAMPLE, n_k: int = 7) -> dict:
    """What the gate does for `n_texts` distinct texts still to embed: the decision rule, pure.

    action  skip   keep `base` (nothing can pay for the gate, or this CPU's verdict says base is fastest)
            check  use the verdict's best path once the run's own sample passes the fidelity check
            use    use the verdict's best path (the check would cost more than GATE_BUDGET; every
                   part is still checked against fp32 on 64 texts)
            gate   measure `candidates` (the longest prefix by expected gain, and the largest sample,
                   whose expected cost fits) on a sample of the run's texts

    Costs are in seconds at the fp32 (base) rate measured here (the verdict's), else the prior one, plus the
    gate's K-means (KMEANS_SECONDS per path, seed and k; `n_k`: the k of the run's grid).
    """
    rates = (verdict or {}).get("rows_per_second") or {}
    r_base = float(rates.get(base) or rates.get("fp32") or PRIOR_FP32_ROWS_PER_SECOND)
    fits = GATE_SEEDS * n_k * KMEANS_SECONDS  # the gate's K-means per measured path
    embed_s = n_texts / r_base
    budget = GATE_BUDGET * embed_s
    plan = {"texts": int(n_texts), "baseline": base, "baseline_rows_per_second": round(r_base, 1),
            "embedding_seconds_expected": round(embed_s, 2), "budget_seconds": round(budget, 2)}

    def done(action, reason, path=None, gain=1.0, saving=0.0, cost=0.0, **kw):
        return {**plan, "action": action, "path": path or base, "expected_gain": round(gain, 3),
                "expected_saving_seconds": round(saving, 2), "expected_cost_seconds": round(cost, 2),
                "reason": reason, **kw}

    if not candidates:
        return done("skip", f"no candidate path on this CPU; {base} stays")
    paths = (verdict or {}).get("paths") or {}
    if verdict and all(c in paths for c in candidates):
        passing = {c: paths[c]["rows_per_second"] / r_base for c in candidates
                   if paths[c].get("passed") and paths[c].get("rows_per_second")}
        if not passing:
            return done("skip", f"measured on this CPU before: no path kept fp32's segments; {base} stays")
        best = max(passing, key=passing.get)
        g = passing[best]
        if g < MIN_GAIN:
            return done("skip", f"measured on this CPU before: the fastest path passing the gate, {best}, ran "
                                f"{g:.2f}x {base}, below {MIN_GAIN}x; {base} stays", gain=g)
        saving = embed_s * (1 - 1 / g)
        use_cost = _export_cost([best], exports_left)
        s = min(CHECK_SAMPLE, n_texts)
        check_cost = LOAD_SECONDS + s / r_base + s / (r_base * g) + 2 * fits  # fp32 and the path
        if use_cost + check_cost < saving and check_cost <= budget:
            return done("check", f"measured on this CPU before: {best} ran {g:.2f}x {base}; checked on "
                                 f"{s} of this run's texts", best, g, saving, check_cost, sample=s)
        if use_cost < saving:
            return done("use", f"measured on this CPU before: {best} ran {g:.2f}x {base} (a check on this run's "
                               f"texts would cost {check_cost:.1f} s, over {budget:.1f} s)", best, g, saving, 0.0)
        return done("skip", f"{best} would save {saving:.1f} s; building it costs {use_cost:.1f} s; {base} stays",
                    gain=g, saving=saving, cost=use_cost)
    def cost_of(cands: list[str], s: int) -> float:
        """Measuring fp32, `cands` and the default path where it is not fp32 (choose_path measures it too)
        on `s` texts: the exports, loading each path, the sample and the K-means fits."""
        measured = ["fp32"] + cands + ([base] if base != "fp32" and base not in cands else [])
        return (_export_cost(cands, exports_left) + LOAD_SECONDS * len(measured)
                + s / r_base * sum(1 / PRIOR_GAIN.get(c, 1.0) for c in measured)
                + len(measured) * fits)

    order = sorted(candidates, key=lambda c: -PRIOR_GAIN.get(c, 1.0))
    g = max(PRIOR_GAIN.get(c, 1.0) for c in order)
    saving = embed_s * (1 - 1 / g)
    limit = min(GATE_MARGIN * budget, saving)
    steps = sorted({min(s, sample_max, n_texts) for s in SAMPLE_STEPS}, reverse=True)
    for m in range(len(order), 0, -1):
        cands = order[:m]
        for s in steps:
            if s < MIN_SAMPLE:
                continue
            cost = cost_of(cands, s)
            if cost <= limit:
                return done("gate", f"not measured on this CPU yet: {', '.join(cands)} on {s} sampled texts "
                                    f"(about {cost:.0f} s, against up to {saving:.0f} s saved)",
                            None, g, saving, cost, candidates=cands, sample=s)
    cheapest = cost_of(order[:1], min(MIN_SAMPLE, n_texts))
    return done("skip", f"{n_texts} distinct texts: the gate would cost about {cheapest:.0f} s, more than the "
                        f"{limit:.1f} s it may spend ({GATE_BUDGET:.0%} of the embedding less a margin, and no more "
                        f"than the {saving:.1f} s a faster path could save); {base} stays",
                gain=g, saving=saving, cost=cheapest)


# --------------------------------------------------------------------------- the verdict, cached per CPU


def verdict_file(model_name: str, cache_dir: str | Path, threads: int) -> Path:
    """One file per (model, CPU flags, threads, library versions): reused by every data set on this CPU."""
    src = {"model": model_fingerprint(model_name), "cpu_flags": cpu_flags(), "threads": int(threads),
           "versions": _versions(), "gate": [VERDICT_VERSION, GATE_MIN_COSINE, GATE_MIN_ARI, GATE_SEEDS, MIN_GAIN]}
    key = hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:24]
    return gate_verdict(cache_dir, key)


def _body_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_verdict(path: Path) -> dict | None:
    """The cached verdict, or None where there is none; a damaged one is said so in one line and removed
    (the next gate measures again)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        body = data["verdict"]
        ok = data.get("sha256") == _body_hash(body) and body.get("version") == VERDICT_VERSION
        why = None if ok else "hash differs"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why, body = f"unreadable: {type(exc).__name__}", None
    if why:
        say_damaged(path, why, "the gate measures the paths again")
        path.unlink(missing_ok=True)
        return None
    return body


def write_verdict(path: Path, body: dict) -> None:
    """Written whole or not at all (atomic rename), with the sha256 its reader checks."""
    body = {**body, "version": VERDICT_VERSION}
    atomic_write_text(path, json.dumps({"verdict": body, "sha256": _body_hash(body)}, indent=1, sort_keys=True))


# --------------------------------------------------------------------------- the gate


def _prepared(model_name: str, c: str, cache_dir, texts_s, threads, batch_size) -> tuple[Encoder, float]:
    t0 = time.perf_counter()
    folder = model_folder(model_name, c, cache_dir, texts_s)
    enc = get_encoder(model_name, c, folder, threads)
    enc(texts_s[:16], batch_size)  # warm-up: the first batch pays for thread pools and kernels
    return enc, time.perf_counter() - t0


def _measure(encs: dict[str, Encoder], texts: list[str], batch_size: int) -> tuple[dict, dict]:
    """Every path embeds the same sample, in chunks, the paths interleaved (alternating order), so a
    machine shared with other work slows them alike: (embeddings, median rows/s over the chunks)."""
    chunks = [c for c in np.array_split(np.arange(len(texts)), TIMING_CHUNKS) if len(c)]
    names = list(encs)
    embs: dict[str, list] = {c: [] for c in names}
    rates: dict[str, list] = {c: [] for c in names}
    for i, idx in enumerate(chunks):
        part = [texts[j] for j in idx]
        for c in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            embs[c].append(encs[c](part, batch_size))
            rates[c].append(len(part) / max(time.perf_counter() - t0, 1e-9))
    return ({c: np.concatenate(v) for c, v in embs.items()},
            {c: float(np.median(v)) for c, v in rates.items()})


def choose_path(texts: list[str], model_name: str, ks, seed: int, n_init: int, cache_dir: str | Path,
                batch_size: int = 128, sample: int = GATE_SAMPLE, candidates: list[str] | None = None,
                threads: int | None = None) -> dict:
    """Measure the candidates against PyTorch fp32 on a seeded sample of `texts`: the fastest that passes
    the fidelity gate, with the numbers. What was measured becomes this CPU's verdict (write_verdict)."""
    import torch

    t_start = time.perf_counter()
    threads = threads or torch.get_num_threads()
    flags = cpu_flags()
    base = default_path()
    cands = [c for c in (list(candidates) if candidates is not None else candidate_paths(flags)) if c != "fp32"]
    if base != "fp32" and base not in cands:  # a faster path is judged against the default path, so it is measured too
        cands.append(base)
    ks = sorted({int(k) for k in ks})
    texts_s = seeded_sample(texts, sample, seed)
    encs: dict[str, Encoder] = {"fp32": _prepared(model_name, "fp32", cache_dir, texts_s, threads, batch_size)[0]}
    results: dict[str, dict] = {}
    for c in cands:
        try:
            encs[c], prep = _prepared(model_name, c, cache_dir, texts_s, threads, batch_size)
        except Exception as exc:  # noqa: BLE001 - a path that cannot run here is simply not a candidate
            if isinstance(exc, WriteError):  # ... but a full disk is no property of the path: the gate stops
                raise
            results[c] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        results[c] = {"export_seconds": round(prep, 2)}
    embs, rates = _measure(encs, texts_s, batch_size)
    ref = embs["fp32"]
    ref_labels: dict = {}  # fp32's K-means labels, shared by the candidates
    gk = gate_ks(ks, len(ref))
    results["fp32"] = {"reference": True, "passed": True, "min_cosine": 1.0, "ari": {str(k): 1.0 for k in gk},
                       "min_ari": 1.0 if gk else None}
    for c in encs:
        if c != "fp32":
            g = fidelity_gate(ref, embs[c], ks, seed, n_init, ref_labels)
            g.pop("sample", None)
            results[c].update(g)
        results[c]["rows_per_second"] = round(rates[c], 1)
    timed = [c for c in ["fp32"] + cands if results.get(c, {}).get("passed")]
    baseline = base if results.get(base, {}).get("passed") else "fp32"
    best = max(timed, key=lambda c: results[c]["rows_per_second"])
    base_rate = results[baseline]["rows_per_second"]
    gain = results[best]["rows_per_second"] / base_rate
    chosen = best if best != baseline and gain >= MIN_GAIN else baseline
    for c in timed:
        results[c]["vs_baseline"] = round(results[c]["rows_per_second"] / base_rate, 3)
    if chosen == baseline and best == baseline:
        reason = f"no other path passed the gate faster than {baseline}; {baseline} stays"
    elif chosen == baseline:
        reason = f"fastest passing path {best} ran {gain:.2f}x {baseline}, below {MIN_GAIN}x; {baseline} stays"
    else:
        reason = f"{chosen} passed the gate and ran {gain:.2f}x the speed of {baseline}"
    ch = results[chosen]
    seconds = round(time.perf_counter() - t_start, 2)
    out = {"chosen": chosen, "baseline": baseline, "speedup_vs_baseline": round(ch["rows_per_second"] / base_rate, 3),
           "min_cosine": ch["min_cosine"], "min_ari": ch["min_ari"], "ari": ch["ari"], "floor": ch.get("floor"),
           "reason": reason,
           "sample": len(texts_s), "k": ks, "seed": seed, "n_init": n_init, "threads": threads,
           "thresholds": {"min_cosine": GATE_MIN_COSINE, "min_ari": GATE_MIN_ARI, "seeds": GATE_SEEDS, "min_gain": MIN_GAIN},
           "cpu_flags": flags, "candidates": results, "seconds": seconds, "cached": False}
    encs.clear()
    get_encoder.cache_clear()  # every candidate's compiled model: the embedding builds the chosen one again
    vfile = verdict_file(model_name, cache_dir, threads)
    old = read_verdict(vfile) or {}
    body = {"model": model_name, "cpu_flags": flags, "threads": threads,
            "rows_per_second": {**old.get("rows_per_second", {}),
                                **{c: results[c]["rows_per_second"] for c in results if "rows_per_second" in results[c]}},
            "paths": {**old.get("paths", {}),
                      **{c: {k: results[c].get(k) for k in ("passed", "rows_per_second", "min_cosine", "min_ari", "error")}
                         | {"sample": len(texts_s), "measured_on": texts_hash(texts_s)} for c in cands}},
            "gate_seconds": seconds}
    write_verdict(vfile, body)
    return out


def check_path(texts: list[str], model_name: str, path: str, ks, seed: int, n_init: int, cache_dir: str | Path,
               batch_size: int = 128, sample: int = CHECK_SAMPLE, threads: int | None = None) -> dict:
    """The run's own fidelity check of a path this CPU's verdict chose: fp32 and `path` on a seeded sample."""
    import torch

    t0 = time.perf_counter()
    threads = threads or torch.get_num_threads()
    texts_s = seeded_sample(texts, sample, seed)
    encs = {"fp32": _prepared(model_name, "fp32", cache_dir, texts_s, threads, batch_size)[0],
            path: _prepared(model_name, path, cache_dir, texts_s, threads, batch_size)[0]}
    embs, _ = _measure(encs, texts_s, batch_size)
    g = fidelity_gate(embs["fp32"], embs[path], ks, seed, n_init)
    if path not in TORCH_PATHS:
        get_encoder.cache_clear()
    return {**g, "path": path, "k": sorted({int(k) for k in ks}), "seconds": round(time.perf_counter() - t0, 2)}


def decide_path(texts: list[str], model_name: str, ks, seed: int, n_init: int, cache_dir: str | Path,
                batch_size: int = 128, sample: int = GATE_SAMPLE, threads: int | None = None) -> dict:
    """`precision: auto` for `texts` (the distinct texts still to embed): the plan (gate_plan), then what
    it called for. The result says the path (`chosen`), the plan, and what was measured."""
    import torch

    t0 = time.perf_counter()
    threads = threads or torch.get_num_threads()
    base = default_path()
    cands = [c for c in candidate_paths() if c != "fp32"]
    vfile = verdict_file(model_name, cache_dir, threads)
    verdict = read_verdict(vfile)
    plan = gate_plan(len(texts), cands, base, verdict, export_seconds_left(model_name, cands, cache_dir), sample,
                     n_k=max(1, len({int(k) for k in ks})))
    out = {"plan": plan, "baseline": base, "k": sorted({int(k) for k in ks}), "verdict": vfile.name,
           "cpu_flags": cpu_flags()}
    if plan["action"] == "gate":
        res = choose_path(texts, model_name, ks, seed, n_init, cache_dir, batch_size, plan["sample"],
                          plan["candidates"], threads)
        out.update(res)
    elif plan["action"] == "check":
        chk = check_path(texts, model_name, plan["path"], ks, seed, n_init, cache_dir, batch_size, plan["sample"],
                         threads)
        if chk["passed"]:
            out.update(chosen=plan["path"], check=chk, sample=chk["sample"], min_cosine=chk["min_cosine"],
                       min_ari=chk["min_ari"], ari=chk["ari"], floor=chk["floor"], speedup_vs_baseline=plan["expected_gain"],
                       reason=plan["reason"])
        else:  # as the gate says a baseline kept: its own numbers (itself), the candidate's in `check`
            out.update(chosen=base, check=chk, sample=chk["sample"], min_cosine=1.0, min_ari=1.0,
                       ari={k: 1.0 for k in chk["ari"]}, speedup_vs_baseline=1.0,
                       reason=f"{plan['reason']}, and failed there (min cosine {chk['min_cosine']:.5f}, "
                              f"min ARI {chk['min_ari']}): {base} stays")
    elif plan["action"] == "use":
        v = verdict["paths"][plan["path"]]
        out.update(chosen=plan["path"], sample=v.get("sample"), min_cosine=v.get("min_cosine"),
                   min_ari=v.get("min_ari"), speedup_vs_baseline=plan["expected_gain"], reason=plan["reason"])
    else:
        out.update(chosen=base, skipped=plan["reason"], reason=plan["reason"])
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
