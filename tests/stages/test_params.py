"""params.yaml as the stages read it: with DVC's own loader, every key validated, and a mistake
named in one line before any work."""

import pytest

from stages.common.params import Params, ParamsError, checked, load, read_yaml
from tests.conftest import REPO, repo_params, write_yaml


def dvc_reads(path):
    """The file as DVC itself loads params (its `dvc params diff` reads them so)."""
    from dvc.api import params_show

    return params_show(str(path), repo=str(path.parent))


def test_the_repository_params_are_valid_and_what_dvc_reads(tmp_path):
    params = load(REPO / "params.yaml")
    assert params.train.recipe is params.train.mlp and params.data.dataset == "mnist"
    assert read_yaml(REPO / "params.yaml") == repo_params()


def with_change(dotted, value):
    params = repo_params()
    *sections, key = dotted.split(".")
    node = params
    for section in sections:
        node = node.setdefault(section, {})
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return params


@pytest.mark.parametrize("dotted, value, message", [
    ("train.mlp.epochs", 0, "train.mlp.epochs = 0 is not allowed: input should be greater than "
                            "or equal to 1"),
    ("train.mlp.epochs", "10", "train.mlp.epochs = '10' is not allowed: input should be a valid "
                               "integer"),
    ("train.mlp.epoch", 5, "unknown key train.mlp.epoch = 5"),
    ("train.mlp.epochs", ..., "missing key train.mlp.epochs"),
    ("extra.key", 1, "unknown key extra = {'key': 1}"),
    ("train.mlp.hidden_units", [64, 0], "train.mlp.hidden_units.1 = 0 is not allowed"),
    ("data.dataset", "../elsewhere", "data.dataset = '../elsewhere' is not allowed: expected "
                                     "mnist, fashion-mnist or the name of a folder in datasets/"),
    ("data.dataset", "/abs/path", "data.dataset = '/abs/path' is not allowed"),
    ("data.image_size", 4, "data.image_size = 4 is not allowed: expected auto or a side in "
                           "pixels from 8 to 512"),
    ("data.channels", 2, "data.channels = 2 is not allowed"),
    ("data.on_bad_file", "ignore", "data.on_bad_file = 'ignore' is not allowed: input should be "
                                   "'error' or 'skip'"),
])
def test_a_bad_value_is_named_with_what_is_allowed(tmp_path, dotted, value, message):
    path = tmp_path / "params.yaml"
    write_yaml(path, with_change(dotted, value))
    with pytest.raises(ParamsError) as error:
        load(path)
    assert str(error.value).startswith(f"{path}: {message}"), str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("dataset", ["mnist", "pets", "holiday/photos.2024", "a_b-c"])
def test_a_dataset_is_a_catalogue_name_or_a_folder_under_datasets(dataset):
    checked(Params, with_change("data.dataset", dataset), "params.yaml")


def test_a_file_yaml_cannot_read_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 5\n  epochs: 50\n")
    with pytest.raises(ParamsError, match='^cannot read .*duplicate key "epochs"'):
        load(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ParamsError, match="^cannot read"):
        load(path)


def test_the_stages_read_what_dvc_reads(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".dvc").mkdir()
    write_yaml(tmp_path / "params.yaml", repo_params())
    assert dvc_reads(tmp_path / "params.yaml") == read_yaml(tmp_path / "params.yaml")
