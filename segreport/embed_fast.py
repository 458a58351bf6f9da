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
texts: minimum cosine similarity >= 0.99 and, at every k of the run's grid, K-means labels (the
run's seed and n_init, on the normalised vectors) with ARI >= 0.98 to the fp32 labels.
`choose_path` runs every candidate through the gate on this machine, measures the rates of those
that pass (interleaved rounds, median), and takes the fastest if it beats the default path
(bf16 where the CPU has native bf16, else fp32) by MIN_GAIN. Its result is cached by model,
candidates, CPU flags, sample hash and k grid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import SegreportError
from .store import WriteError, atomic_write_text, make_folder, no_space, write_failure

TORCH_PATHS = ("fp32", "bf16")
EXPORTED_PATHS = ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")
PATHS = TORCH_PATHS + EXPORTED_PATHS

EXPORT_VERSION = 1
GATE_VERSION = 1
GATE_MIN_COSINE = 0.99
GATE_MIN_ARI = 0.98
GATE_SAMPLE = 1000  # distinct texts the gate compares on
GATE_MIN_TEXTS = 4000  # fewer distinct texts than this: auto keeps the default path (the gate would cost more than it saves)
MIN_GAIN = 1.1  # a faster path must be this much faster than the default path to replace it
SPEED_ROUNDS = 3  # interleaved timing rounds per passing path, on SPEED_TEXTS texts, after the fidelity pass
SPEED_TEXTS = 256
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
    from .embed import resolve_model

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
    base_facts = json.loads((base / "export.json").read_text())["facts"]
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
    """Python-level stdout/stderr (NNCF's rich progress bars, ONNX Runtime's logging advice) muted."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _export_kind(path: str) -> str:
    return "openvino" if path in ("openvino-fp32", "openvino-bf16") else path  # bf16 is a compile-time hint


def exported_model(model_name: str, path: str, cache_dir: str | Path, calib_texts: list[str] | None = None) -> Path:
    """The folder of `path`'s exported model, built on first use and reused after (atomic rename into place)."""
    from .embed import load_model

    kind = _export_kind(path)
    base = None if kind == "onnx-base" else exported_model(model_name, "onnx-base", cache_dir)
    calib = None
    if kind == "openvino-int8":
        if not calib_texts:
            raise SegreportError("openvino-int8 needs calibration texts")
        calib = list(calib_texts[:CALIB_TEXTS])
    key = hashlib.sha256(json.dumps([model_fingerprint(model_name), kind, EXPORT_VERSION, _versions(),
                                     texts_hash(calib) if calib else None]).encode()).hexdigest()[:20]
    final = Path(cache_dir) / "models" / key
    if (final / "export.json").exists():
        return final
    tmp = final.with_name(f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    make_folder(tmp)
    try:
        t0 = time.perf_counter()
        with _quiet():  # the exporters' progress bars and advice are not the user's business
            facts = _build(load_model(model_name), kind, tmp, base, calib)
        meta = {"model": model_name, "kind": kind, "seconds": round(time.perf_counter() - t0, 2),
                "versions": _versions(), "facts": facts}
        atomic_write_text(tmp / "export.json", json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "export.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same export first
    except BaseException as exc:
        # a full disk while an exporter wrote (its own error, errno or not) is said naming the model's folder
        said = write_failure(exc, tmp).moved(tmp, final) if isinstance(exc, OSError) or no_space(exc) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if said is not None and said is not exc:
            raise said from exc
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
        from .embed import load_model

        if path not in PATHS:
            raise SegreportError(f"unknown embedding precision '{path}'; one of {', '.join(('auto',) + PATHS)}")
        self.st = load_model(model_name)
        self.path, self.threads = path, max(1, int(threads))
        if path in TORCH_PATHS:
            return
        self.normalize = _structure(self.st)["normalize"]
        meta = json.loads((Path(folder) / "export.json").read_text())
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
        from .embed import _encode

        if self.path in TORCH_PATHS:
            return _encode(self.st, texts, batch_size, self.path == "bf16", False)
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
    return {int(k): KMeans(int(k), n_init=n_init, random_state=seed).fit_predict(Xn)
            for k in ks if 1 < int(k) < len(Xn)}


def fidelity_gate(ref: np.ndarray, cand: np.ndarray, ks, seed: int = 0, n_init: int = 10,
                  ref_labels: dict | None = None, min_cosine: float = GATE_MIN_COSINE,
                  min_ari: float = GATE_MIN_ARI) -> dict:
    """Does `cand` (embeddings of the same texts by another path) keep fp32's geometry and segments?

    Passes when the minimum cosine similarity to `ref` is >= min_cosine and the K-means labels
    (seed, n_init, normalised vectors) agree with ref's at ARI >= min_ari at every k in ks.
    """
    from sklearn.metrics import adjusted_rand_score

    if ref.shape != cand.shape:
        raise SegreportError(f"fidelity gate: shapes differ ({ref.shape} vs {cand.shape})")
    a = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    b = cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-12)
    cos = (a * b).sum(1)
    ref_labels = ref_labels if ref_labels is not None else kmeans_labels(ref, ks, seed, n_init)
    got = kmeans_labels(cand, list(ref_labels), seed, n_init)
    ari = {str(k): round(float(adjusted_rand_score(ref_labels[k], got[k])), 4) for k in ref_labels}
    min_cos = float(cos.min()) if len(cos) else 1.0
    lowest = min(ari.values()) if ari else None
    passed = bool(min_cos >= min_cosine and (lowest is None or lowest >= min_ari) and np.isfinite(cand).all())
    return {"sample": int(len(a)), "min_cosine": round(min_cos, 6), "mean_cosine": round(float(cos.mean()), 6) if len(cos) else 1.0,
            "ari": ari, "min_ari": lowest, "passed": passed}


def _rate(enc: Encoder, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    e = enc(texts, batch_size)
    return e, len(texts) / max(time.perf_counter() - t0, 1e-9)


def choose_path(texts: list[str], model_name: str, ks, seed: int, n_init: int, cache_dir: str | Path,
                batch_size: int = 128, sample: int = GATE_SAMPLE, candidates: list[str] | None = None,
                threads: int | None = None) -> dict:
    """The fastest path that passes the gate on this machine, with the numbers. Cached on disk."""
    import torch

    t_start = time.perf_counter()
    threads = threads or torch.get_num_threads()
    flags = cpu_flags()
    base = default_path()
    cands = list(candidates) if candidates is not None else candidate_paths(flags)
    cands = [c for c in cands if c != "fp32"]
    ks = sorted({int(k) for k in ks})
    texts_s = seeded_sample(texts, sample, seed)
    key_src = {"model": model_fingerprint(model_name), "candidates": cands, "cpu_flags": flags, "threads": threads,
               "sample": texts_hash(texts_s), "k": ks, "seed": seed, "n_init": n_init, "batch_size": batch_size,
               "gate": [GATE_VERSION, GATE_MIN_COSINE, GATE_MIN_ARI, MIN_GAIN], "versions": _versions()}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
    gate_file = Path(cache_dir) / "gate" / f"gate-{key}.json"
    if gate_file.exists():
        out = json.loads(gate_file.read_text())
        out["cached"] = True
        return out

    encs: dict[str, Encoder] = {"fp32": get_encoder(model_name, "fp32", None, threads)}
    encs["fp32"](texts_s[:32], batch_size)  # warm-up
    ref, ref_rate = _rate(encs["fp32"], texts_s, batch_size)
    ref_labels = kmeans_labels(ref, ks, seed, n_init)
    results: dict[str, dict] = {"fp32": {"reference": True, "passed": True, "min_cosine": 1.0,
                                         "ari": {str(k): 1.0 for k in ref_labels}, "min_ari": 1.0 if ref_labels else None,
                                         "rows_per_second_first_pass": round(ref_rate, 1)}}
    folders: dict[str, str | None] = {"fp32": None}
    for c in cands:
        try:
            t0 = time.perf_counter()
            folders[c] = model_folder(model_name, c, cache_dir, texts_s)
            prep = time.perf_counter() - t0
            encs[c] = get_encoder(model_name, c, folders[c], threads)
            encs[c](texts_s[:32], batch_size)
            emb, rate = _rate(encs[c], texts_s, batch_size)
        except Exception as exc:  # noqa: BLE001 - a path that cannot run here is simply not a candidate
            if isinstance(exc, WriteError):  # ... but a full disk is no property of the path: the gate stops
                raise
            results[c] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        results[c] = {**fidelity_gate(ref, emb, ks, seed, n_init, ref_labels), "export_seconds": round(prep, 2),
                      "rows_per_second_first_pass": round(rate, 1)}
        results[c].pop("sample", None)

    # the rates that decide: interleaved rounds (the machine may be shared), median with the first pass
    timed = [c for c in ["fp32"] + cands if results.get(c, {}).get("passed")]
    rates = {c: [results[c]["rows_per_second_first_pass"]] for c in timed}
    sub = texts_s[:SPEED_TEXTS]
    for r in range(SPEED_ROUNDS if len(timed) > 1 else 0):
        for c in (timed if r % 2 == 0 else timed[::-1]):
            rates[c].append(_rate(encs[c], sub, batch_size)[1])
    for c in results:
        if c in rates:
            results[c]["rows_per_second"] = round(float(np.median(rates[c])), 1)
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
    out = {"chosen": chosen, "baseline": baseline, "speedup_vs_baseline": round(ch["rows_per_second"] / base_rate, 3),
           "min_cosine": ch["min_cosine"], "min_ari": ch["min_ari"], "ari": ch["ari"], "reason": reason,
           "sample": len(texts_s), "k": ks, "seed": seed, "n_init": n_init, "threads": threads,
           "thresholds": {"min_cosine": GATE_MIN_COSINE, "min_ari": GATE_MIN_ARI, "min_gain": MIN_GAIN},
           "cpu_flags": flags, "candidates": results, "model_dir": folders.get(chosen),
           "seconds": round(time.perf_counter() - t_start, 2), "cached": False}
    encs.clear()
    get_encoder.cache_clear()  # every candidate's compiled model: the embedding builds the chosen one again
    atomic_write_text(gate_file, json.dumps(out, indent=1))
    return out
