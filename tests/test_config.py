import pytest

from segreport import SegreportError
from segreport.core.config import parse_k
from segreport.methods import load_params


def test_parse_k_ranges_and_lists():
    assert parse_k("3-8") == [3, 4, 5, 6, 7, 8]
    assert parse_k("3,5, 7") == [3, 5, 7]
    assert parse_k([4, 2, 4]) == [2, 4]
    assert parse_k(5) == [5]


@pytest.mark.parametrize("bad", ["1-4", "0", "8-3", "x", "3-"])
def test_parse_k_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        parse_k(bad)


def test_cli_overrides_file(tmp_path):
    f = tmp_path / "p.yml"
    f.write_text("k: 3-4\nseed: 1\nkprototypes: {engine: kmodes}\n")
    p = load_params(f, {"seed": 7, "k": None, "llm.precision": "fp32"})
    assert p.seed == 7 and p.k == [3, 4] and p.kprototypes.engine == "kmodes" and p.llm.precision == "fp32"


def test_unknown_key_suggests_closest(tmp_path):
    f = tmp_path / "p.yml"
    f.write_text("sed: 3\n")
    with pytest.raises(SegreportError, match=r"unknown parameter 'sed'; did you mean 'seed'\?"):
        load_params(f)
    f.write_text("kmeans: {contamnation: 0.2}\n")
    with pytest.raises(SegreportError, match=r"'kmeans.contamnation'; did you mean 'contamination'"):
        load_params(f)


def test_unknown_method_suggests_closest():
    with pytest.raises(SegreportError, match=r"unknown method 'kmean'.*did you mean 'kmeans'"):
        load_params(None, {"methods": "kmean,llm"})


def test_invalid_value_names_key_value_and_reason(tmp_path):
    f = tmp_path / "p.yml"
    f.write_text("kmeans:\n  contamination: 0.9\n")
    with pytest.raises(SegreportError) as e:
        load_params(f)
    msg = str(e.value)
    assert "kmeans.contamination" in msg and "0.9" in msg and "less than 0.5" in msg


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "p.yml"
    f.write_text("k: [3, 4\nseed: 2\n")
    with pytest.raises(SegreportError, match=r"p.yml: not valid YAML at line"):
        load_params(f)


def test_results_must_be_a_folder_not_an_object_store_url(tmp_path):
    f = tmp_path / "p.yml"
    f.write_text("results: s3://bucket/runs\n")
    with pytest.raises(SegreportError, match=r"p.yml: invalid value for 'results': 's3://bucket/runs' \(must be a folder"):
        load_params(f)
    with pytest.raises(SegreportError, match=r"'scale.threshold': 0"):
        load_params(None, {"scale.threshold": 0})


def test_a_key_given_twice_is_refused_with_its_line_and_the_shipped_files_have_none(tmp_path):
    from .conftest import ROOT

    f = tmp_path / "p.yml"
    f.write_text("k: 2-3\nllm: {batch_size: 8}\nseed: 1\nllm:\n  precision: fp32\n")
    with pytest.raises(SegreportError, match=r"p.yml: not valid YAML at line 4, column 1: the key 'llm' is given twice"):
        load_params(f)
    f.write_text("kmeans: {n_init: 3, n_init: 4}\n")  # nested mappings too
    with pytest.raises(SegreportError, match=r"the key 'n_init' is given twice"):
        load_params(f)
    for shipped in [ROOT / "params.yml", *sorted((ROOT / "params").glob("*.yml"))]:
        load_params(shipped)


def test_the_parameters_pickle_as_a_prepare_process_and_dask_send_them():
    import pickle

    from segreport.methods import load_params as load

    p = load(None, {"k": "2-3", "methods": "kmeans,llm"})
    assert pickle.loads(pickle.dumps(p)) == p
