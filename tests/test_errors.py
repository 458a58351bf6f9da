"""Each bad input: a one-line error naming the file/column/row/key, exit status 2, nothing written."""

from __future__ import annotations

import re

import pytest

from segreport.cli import main
from segreport.lib.demo import generate

from .conftest import snapshot


def _run(capsys, *args):
    code = main(["run", "-q", *args])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def demo_csv(workdir):
    p = workdir / "customers.csv"
    generate(300, seed=1).to_csv(p, index=False)
    return p


def _check(workdir, capsys, args, pattern):
    before = (snapshot(workdir / "results"), snapshot(workdir / "_site"))
    code, err = _run(capsys, *args)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert (snapshot(workdir / "results"), snapshot(workdir / "_site")) == before
    assert not (workdir / "results").exists() or not any((workdir / "results").iterdir())


def test_missing_file(workdir, capsys):
    _check(workdir, capsys, ["--data", "nope.csv"], r"nope\.csv: file not found")


def test_empty_file(workdir, capsys):
    (workdir / "empty.csv").write_text("")
    _check(workdir, capsys, ["--data", "empty.csv"], r"empty\.csv: the file is empty")


def test_header_only(workdir, capsys):
    (workdir / "h.csv").write_text("age,job,marital,education,default,balance,housing,loan\n")
    _check(workdir, capsys, ["--data", "h.csv"], r"h\.csv: has a header but no rows")


def test_delimiter_splits_nothing(workdir, capsys):
    (workdir / "d.csv").write_text("age job marital\n30 admin single\n40 retired married\n")
    _check(workdir, capsys, ["--data", "d.csv"], r"d\.csv: every line is one field")


def test_configured_column_absent(workdir, capsys, demo_csv):
    (workdir / "p.yml").write_text("schema:\n  - {name: age, kind: numeric}\n  - {name: jobb, kind: categorical}\n")
    _check(workdir, capsys, ["--params", "p.yml", "--data", str(demo_csv)],
           r"customers\.csv: column 'jobb' named in the schema is not in the file; did you mean 'job'\?")


def test_text_in_numeric_column(workdir, capsys, demo_csv):
    df = generate(300, seed=1)
    df["age"] = df["age"].astype(object)
    df.loc[4, "age"] = "forty"
    df.loc[9, "age"] = "n/a?"
    df.to_csv(demo_csv, index=False)
    _check(workdir, capsys, ["--data", str(demo_csv)],
           r"column 'age' is numeric but holds text at row\(s\) 6, 11: 'forty', 'n/a\?'")


def test_all_missing_column(workdir, capsys, demo_csv):
    df = generate(300, seed=1)
    df["balance"] = ""
    df.to_csv(demo_csv, index=False)
    _check(workdir, capsys, ["--data", str(demo_csv)], r"column 'balance' is entirely missing")


def test_single_row(workdir, capsys, demo_csv):
    generate(300, seed=1).head(1).to_csv(demo_csv, index=False)
    _check(workdir, capsys, ["--data", str(demo_csv), "--k", "2-3"], r"customers\.csv: a single row; segments need more distinct rows than k")


def test_fewer_distinct_rows_than_k(workdir, capsys, demo_csv):
    df = generate(300, seed=1)
    df = df.iloc[[0, 1, 2] * 20]
    df.to_csv(demo_csv, index=False)
    _check(workdir, capsys, ["--data", str(demo_csv), "--k", "3-4"], r"60 row\(s\), 3 distinct; k=4")


def test_k_below_two(workdir, capsys, demo_csv):
    _check(workdir, capsys, ["--data", str(demo_csv), "--k", "1-3"], r"'k'.*k must be 2 or more")


def test_unknown_method(workdir, capsys, demo_csv):
    _check(workdir, capsys, ["--data", str(demo_csv), "--methods", "kmeans,kprototype"],
           r"unknown method 'kprototype'.*did you mean 'kprototypes'")


def test_unknown_parameter_key(workdir, capsys, demo_csv):
    (workdir / "p.yml").write_text("workerz: 2\n")
    _check(workdir, capsys, ["--params", "p.yml", "--data", str(demo_csv)],
           r"p\.yml: unknown parameter 'workerz'; did you mean 'workers'")


def test_invalid_params_value(workdir, capsys, demo_csv):
    (workdir / "p.yml").write_text("seed: forty-two\n")
    _check(workdir, capsys, ["--params", "p.yml", "--data", str(demo_csv)],
           r"p\.yml: invalid value for 'seed': 'forty-two'")


def test_not_utf8_is_read_as_cp1252(workdir, capsys):
    df = generate(200, seed=2)
    df.loc[0:20, "job"] = "técnico"
    p = workdir / "latin.csv"
    p.write_bytes(df.to_csv(index=False).encode("cp1252"))
    from segreport.lib.data import load_table

    with pytest.warns(UserWarning, match="not UTF-8.*read as cp1252"):
        t = load_table(p)
    assert "técnico" in set(t.frame["job"])


def test_undecodable_bytes(workdir, capsys):
    p = workdir / "bin.csv"
    p.write_bytes(b"age,job\n30,\x81\x8d\x8f\x90\x9d\n")
    _check(workdir, capsys, ["--data", "bin.csv"], r"bin\.csv: not UTF-8 .*byte 0x81 at offset 11")


def test_infinite_or_absurd_numbers(workdir, capsys, demo_csv):
    df = generate(300, seed=1)
    df["balance"] = df["balance"].astype(object)
    df.loc[7, "balance"] = "inf"
    df.to_csv(demo_csv, index=False)
    _check(workdir, capsys, ["--data", str(demo_csv)], r"column 'balance' holds an infinite or absurdly large value .* row\(s\) 9")
    df.loc[7, "balance"] = "1e300"
    df.to_csv(demo_csv, index=False)
    _check(workdir, capsys, ["--data", str(demo_csv)], r"column 'balance' holds an infinite or absurdly large value")


def test_missing_embedding_model(workdir, capsys, demo_csv):
    _check(workdir, capsys, ["--data", str(demo_csv), "--model", "./models/nothing-here"],
           r"embedding model './models/nothing-here': no such folder")


def test_unreadable_embedding_model(workdir, capsys, demo_csv):
    (workdir / "not-a-model").mkdir()
    (workdir / "not-a-model" / "weights.bin").write_bytes(b"\0")
    _check(workdir, capsys, ["--data", str(demo_csv), "--model", str(workdir / "not-a-model")],
           r"folder has no sentence-transformers model")


def test_duplicated_header(workdir, capsys):
    (workdir / "dup.csv").write_text("age,job,age\n30,admin,31\n40,retired,41\n")
    _check(workdir, capsys, ["--data", "dup.csv"], r"dup\.csv: duplicated column name\(s\) in the header: 'age'")
