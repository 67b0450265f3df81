"""params.yaml as the stages read it: exactly as DVC does (YAML 1.2), anything a YAML 1.1 reader
would read differently refused, hostile files refused quickly, and every key validated."""

import os
import subprocess
import sys
import time

import pytest

from stages.catalogue import Catalogue
from stages.params import Params, checked, load, save
from stages.yaml12 import ParamsError, read_yaml
from tests.conftest import REPO, repo_catalogue, repo_params


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def dvc_reads(path):
    """The file as DVC itself loads params (dvc.utils.serialize, used for params deps)."""
    from dvc.utils.serialize import load_yaml

    return load_yaml(str(path))


# --- the same values as DVC, and no ambiguity -------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("10", 10), ("0x1f", 31), ("+12", 12), ("1_000", 1000), ("1.5e3", 1500.0), ("1e3", 1000.0),
    ("3.0", 3.0), (".inf", float("inf")), ("true", True), ("null", None), ("'010'", "010"),
    ("relu", "relu"), ("'1:00'", "1:00"), ('"yes"', "yes"),
])
def test_unambiguous_values_read_as_dvc_reads_them(tmp_path, text, value):
    path = write(tmp_path, f"a: {text}\n")
    assert read_yaml(path) == {"a": value} == dvc_reads(path)


@pytest.mark.parametrize("text, yaml12, yaml11", [
    ("010", "10", "8"),          # leading zero: decimal in 1.2, octal in 1.1
    ("0777", "777", "511"),
    ("0o10", "8", "'0o10'"),      # 1.2's octal is a string in 1.1
    ("09", "9", "'09'"),
    ("1:00", "'1:00'", "60"),     # sexagesimal in 1.1
    ("yes", "'yes'", "True"), ("no", "'no'", "False"), ("on", "'on'", "True"),
    ("off", "'off'", "False"), ("Yes", "'Yes'", "True"), ("y", "'y'", "True"),
])
def test_values_yaml_1_1_reads_differently_are_refused(tmp_path, text, yaml12, yaml11):
    path = write(tmp_path, f"train:\n  epochs: {text}\n")
    with pytest.raises(ParamsError) as error:
        read_yaml(path)
    message = str(error.value)
    assert (f"train.epochs is ambiguous: DVC (YAML 1.2) reads {yaml12}, YAML 1.1 tools read "
            f"{yaml11}") in message
    assert "\n" not in message


def test_ambiguous_key_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="ambiguous: DVC .* reads 'on', YAML 1.1 tools read True"):
        read_yaml(write(tmp_path, "on: 1\n"))


def test_duplicate_keys_are_refused_as_dvc_refuses_them(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 5\n  epochs: 50\n")
    with pytest.raises(ParamsError, match='found duplicate key "epochs"'):
        read_yaml(path)
    with pytest.raises(Exception, match="duplicate"):
        dvc_reads(path)


# --- hostile files: refused quickly, in one line ------------------------------------------------

def billion_laughs(levels=9):
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, expected", [
    (billion_laughs(), "expands to more than 10,000 values"),
    ("train:\n  epochs: 5\n  bomb: " + billion_laughs().split("\n", 1)[0].split(": ", 1)[1]
     + "\n", None),  # one small alias: fine here, refused later as an unknown key
    ("a: " + "9" * 5_000 + "\n", "Exceeds the limit"),  # Python refuses > 4300-digit ints
    ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "over 16,000 bytes"),
    ("a: " + "[" * 7_000 + "]" * 7_000 + "\n", "more than 1,000 [ and { brackets"),
    ("a: " + "[" * 60 + "]" * 60 + "\n", "nested more than 50 levels deep"),
    ("a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(60)) + " " * 60 + "v: 1\n",
     "nested more than 50 levels deep"),
    ("a: " + "9" * 1_000_001 + "\n", "over 16,000 bytes"),
    (b"a: \xff\xfe\n", "not UTF-8"),
    ("a: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    ("a: [unclosed\n", "cannot read"),
])
def test_hostile_files_fail_fast_with_one_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    started = time.monotonic()
    if expected is None:
        read_yaml(path)
    else:
        with pytest.raises(ParamsError) as error:
            read_yaml(path)
        message = str(error.value)
        assert expected in message and "\n" not in message and len(message) < 600, message
    assert time.monotonic() - started < 5


def test_alias_bomb_as_a_value_is_refused_before_any_stage_work(tmp_path):
    """The bomb under a known key and under an unknown one: refused by size, not by hanging."""
    bomb = billion_laughs().replace("\n", "\n  ").rstrip() + "\n"
    for key in ("epochs", "no_such_key"):
        path = write(tmp_path, "train:\n  " + bomb.replace("a9:", f"{key}:", 1))
        with pytest.raises(ParamsError, match="expands to more than"):
            read_yaml(path)


def validate(values, model=Params):
    return checked(model, values, "params.yaml")


def test_error_messages_show_values_bounded(tmp_path):
    params = repo_params()
    params["train"]["mlp"]["epochs"] = "x" * 10_000
    with pytest.raises(ParamsError) as error:
        validate(params)
    assert len(str(error.value)) < 400


# --- the schema ---------------------------------------------------------------------------------

@pytest.fixture
def params():
    return repo_params()


def message_of(params):
    with pytest.raises(ParamsError) as error:
        validate(params)
    message = str(error.value)
    assert "\n" not in message, "one line"
    return message


def test_repo_params_are_valid_and_what_dvc_reads(params):
    cfg = load(REPO / "params.yaml")
    assert cfg.model_dump() == params == dvc_reads(REPO / "params.yaml")
    assert cfg.train.recipe is cfg.train.mlp and cfg.train.recipe.epochs == params["train"][
        "mlp"]["epochs"], "stages read typed attributes"


def test_the_catalogue_is_valid_and_what_dvc_reads():
    catalogue = checked(Catalogue, repo_catalogue(), "datasets.yaml")
    assert catalogue.model_dump(exclude_none=True) == repo_catalogue() == dvc_reads(
        REPO / "datasets.yaml")


def test_repo_params_are_in_the_form_dvc_writes_back():
    """`dvc exp run -S` rewrites params.yaml with ruamel's round trip: a file already in that
    form comes back byte for byte, so experiments change only the lines they set."""
    from dvc.utils.serialize._yaml import dumps_yaml, parse_yaml_for_update

    text = (REPO / "params.yaml").read_text()
    assert dumps_yaml(parse_yaml_for_update(text, "params.yaml")) == text


def test_save_writes_what_read_params_reads_back(tmp_path, params):
    save(params, tmp_path / "params.yaml")
    assert read_yaml(tmp_path / "params.yaml") == params


def test_unknown_section(params):
    params["training"] = {"epochs": 3}
    assert message_of(params) == "params.yaml: unknown key training = {'epochs': 3}"


def test_unknown_key_in_a_family(params):
    params["train"]["mlp"]["epoch"] = 5
    assert message_of(params) == "params.yaml: unknown key train.mlp.epoch = 5"


def test_missing_key(params):
    del params["train"]["cnn"]["threads"]
    assert message_of(params) == "params.yaml: missing key train.cnn.threads"


def test_missing_section(params):
    del params["evaluate"]
    assert message_of(params) == "params.yaml: missing key evaluate"


def test_the_old_per_dataset_recipes_are_refused(params):
    """What trained is what DVC shows: no section quietly changes a family's recipe."""
    params["train"]["fashion-mnist"] = {"mlp": {"epochs": 40}}
    assert "unknown key train.fashion-mnist" in message_of(params)


@pytest.mark.parametrize("key, value, allowed", [
    # wrong types
    ("train.mlp.epochs", "ten", "input should be a valid integer"),
    ("train.mlp.epochs", 10.0, "input should be a valid integer"),
    ("train.cnn.threads", True, "input should be a valid integer"),  # YAML's true: no integer
    ("train.mlp.learning_rate", False, "input should be a valid number"),
    ("train.mlp.augment_flip", "yes", "input should be a valid boolean"),
    ("train.mlp.hidden_units", 128, "input should be a valid list"),
    ("preprocess.normalization", "minmax", "input should be 'scale' or 'standardize'"),
    ("train.model", "resnet", "input should be 'mlp' or 'cnn'"),
    ("data.dataset", "cifar", "input should be 'mnist' or 'fashion-mnist'"),
    # out of range
    ("train.mlp.epochs", 0, "input should be greater than or equal to 1"),
    ("preprocess.val_fraction", 1.5, "input should be less than or equal to 0.5"),
    ("preprocess.val_fraction", 0, "input should be greater than 0"),
    ("train.mlp.hidden_units", [], "list should have at least 1 item"),
    ("train.cnn.filters", [32, 64, 64, 64], "list should have at most 3 items"),
    ("train.mlp.dropout", 0.95, "input should be less than or equal to 0.9"),
    ("train.mlp.learning_rate", float("nan"), "input should be less than or equal to 1"),
])
def test_bad_value_names_key_value_and_what_is_allowed(params, key, value, allowed):
    set_key(params, key, value)
    assert message_of(params).startswith(f"params.yaml: {key} = {value!r} is not allowed: "
                                         f"{allowed}")


def test_a_bad_item_of_a_list_is_named_by_its_place(params):
    params["train"]["mlp"]["hidden_units"] = [128, 0]
    assert message_of(params).startswith(
        "params.yaml: train.mlp.hidden_units.1 = 0 is not allowed: input should be greater")


def set_key(values, dotted, value):
    *sections, last = dotted.split(".")
    for section in sections:
        values = values[section]
    values[last] = value


@pytest.mark.parametrize("key, value, allowed", [
    ("download.retries", True, "is not allowed: input should be a valid integer"),
    ("download.deadline_s", 0, "is not allowed: input should be greater than 0"),
    ("download.public_sources", "yes", "is not allowed: input should be a valid boolean"),
    ("datasets.mnist.mirrors", "/srv/mnist", "is not allowed: input should be a valid list"),
    ("datasets.mnist.checksums.mnist\\.npz.sha256", "abc", "should match pattern"),
    ("datasets.mnist.class_names", ["0", "0"], "class_names holds the same name twice"),
    ("datasets.mnist.checksums", {"mnist.npz": {"sha256": "a" * 64}},
     "checksums must name train-images-idx3-ubyte.gz"),
])
def test_a_bad_catalogue_names_key_value_and_what_is_allowed(key, value, allowed):
    catalogue = repo_catalogue()
    if "\\." in key:  # a file name as a key
        catalogue["datasets"]["mnist"]["checksums"]["mnist.npz"]["sha256"] = value
    else:
        set_key(catalogue, key, value)
    with pytest.raises(ParamsError) as error:
        checked(Catalogue, catalogue, "datasets.yaml")
    message = str(error.value)
    assert message.startswith("datasets.yaml: datasets." if "datasets." in key else
                              f"datasets.yaml: {key} = ") and allowed in message, message
    assert "\n" not in message and len(message) < 300, message


@pytest.mark.parametrize("url, problem", [
    ("http://[::1", "a malformed URL"),
    ("http://a..b/", "has an empty or overlong part"),
    ("http://:80/", "without a host"),
    ("http://127.0.0.1:99999/", "a malformed URL"),
    ("ftp://example.org/mnist/", "scheme 'ftp'"),
    ("file://server/share", "a file:// URL with a host"),
    ("", "an empty location"),
])
def test_mirror_urls_are_checked_before_any_connection(url, problem):
    catalogue = repo_catalogue()
    catalogue["datasets"]["mnist"]["mirrors"] = ["/srv/ok", url]
    with pytest.raises(ParamsError) as error:
        checked(Catalogue, catalogue, "datasets.yaml")
    assert f"datasets.mnist.mirrors.1 = {url!r}: not a directory or a file://" in str(
        error.value) and problem in str(error.value)


# --- a stage with bad params: one line, before any work -----------------------------------------

@pytest.mark.parametrize("text", [
    "train:\n  epochs: ten\n",
    "train:\n  epochs: 010\n",
    "train:\n  epochs: 5\n  epochs: 6\n",
    "data: [unclosed\n",
    None,  # no params.yaml at all
], ids=["not-allowed", "ambiguous", "duplicate-key", "not-yaml", "no-file"])
def test_a_stage_with_bad_params_exits_with_one_line_before_any_work(tmp_path, text):
    (tmp_path / "stages").symlink_to(REPO / "stages", target_is_directory=True)
    if text is not None:
        (tmp_path / "params.yaml").write_text(text)
    result = subprocess.run([sys.executable, "-m", "stages.preprocess"], cwd=tmp_path,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "params.yaml" in lines[0] and result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == sorted(["stages"] + (["params.yaml"] if text else [])), \
        "nothing read or written: there is no data/ and it did not ask for one"
