"""Each stage as a process, as DVC runs it, when its inputs are missing or damaged, or when it is
stopped midway: one line naming the file and the cause (never a traceback), a non-zero exit, and
nothing half-written left behind."""

import hashlib
import json
import os
import shutil
import signal
import time
import zipfile

import numpy as np
import pytest

from stages.fileio import save_npz
from stages.params import save
from tests.conftest import (
    built_once,
    one_error_line,
    repo_params,
    run_stage_telling_imports,
    stage_dir,
    start_stage,
)
from tests.conftest import run_stage as run

DIGITS = np.array([str(d) for d in range(10)])


def read_json(path):
    return json.loads(path.read_text())


def random_dataset(n_train, n_test=100, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": (np.arange(n_train) % 10).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": (np.arange(n_test) % 10).astype(np.uint8), "class_names": DIGITS}


# --- inputs that are not there, or not what they should be ---------------------------------------

@pytest.mark.parametrize("stage, missing, writer", [
    ("preprocess", "data/raw.npz", "download"),
    ("train", "data/processed/train.npz", "preprocess"),
    ("evaluate", "data/processed/test.npz", "preprocess"),
    ("export", "data/processed/test.npz", "preprocess"),
])
def test_a_stage_run_before_its_inputs_exist_says_what_to_run(tmp_path, stage, missing, writer):
    cwd = stage_dir(tmp_path / "stage")
    status, out, err = run(stage, cwd)
    assert status == 1
    assert one_error_line(err) == (f"error: {missing}: not found; run `dvc repro` (the {writer} "
                                   "stage writes it)")


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A folder where download and preprocess have run, on 1,000 random images."""
    cwd = stage_dir(tmp_path_factory.mktemp("processed") / "stage")
    save_npz(cwd / "data/raw.npz", **random_dataset(1000))
    status, _, err = run("preprocess", cwd)
    assert status == 0, err
    return cwd


def copy_stage(source, target):
    """A fresh stage folder holding a copy of `source`'s data."""
    cwd = stage_dir(target)
    shutil.copytree(source / "data", cwd / "data")
    return cwd


@pytest.mark.parametrize("stage, damaged, content, cause", [
    ("train", "data/processed/train.npz", b"PK\x03\x04 not really a zip", "damaged or not what"),
    ("train", "data/processed/normalization.json", b"{", "damaged or not what"),
    ("evaluate", "data/processed/test.npz", b"", "damaged or not what"),
    ("evaluate", "model/model.keras", b"PK\x03\x04" + bytes(200), "cannot load the model"),
    ("export", "model/model.keras", b"not a model", "cannot load the model"),
    ("preprocess", "data/raw.npz", None, "not a regular file"),
])
def test_a_damaged_input_is_one_line_naming_it(processed, tmp_path, stage, damaged, content,
                                               cause):
    cwd = copy_stage(processed, tmp_path / "stage")
    if stage == "export":  # export reads train's metadata before the model: let that be sound
        (cwd / "model").mkdir()
        (cwd / "model/metadata.json").write_text(
            '{"class_names": ["0"], "normalization": {"mean": 0, "std": 1}}')
    target = cwd / damaged
    target.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        target.unlink()
        target.mkdir()
    else:
        target.write_bytes(content)
    status, _, err = run(stage, cwd)
    assert status == 1
    line = one_error_line(err)
    assert line.startswith(f"error: {damaged}: ") and cause in line.lower(), line


@pytest.mark.parametrize("stage", ["evaluate", "export"])
def test_a_file_that_is_no_keras_model_is_refused_before_tensorflow_loads(processed, tmp_path,
                                                                          stage):
    """A zip without the weights: one line, from a process that never imported TensorFlow."""
    cwd = copy_stage(processed, tmp_path / "stage")
    (cwd / "model").mkdir()
    (cwd / "model/metadata.json").write_text(
        '{"class_names": ["0"], "normalization": {"mean": 0, "std": 1}}')
    with zipfile.ZipFile(cwd / "model/model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    status, imported, err = run_stage_telling_imports(stage, cwd)
    assert status == 1
    assert one_error_line(err) == (
        "error: model/model.keras: cannot load the model (ValueError: not a Keras model: no "
        "model.weights.h5 in the zip); run `dvc repro` (the train stage writes it)")
    assert imported == "[]"


def test_a_model_trained_for_other_data_is_refused_by_evaluate(processed, model_dir,
                                                                tmp_path):
    """A model of 10 classes against data of 3: named, not a shape error deep in Keras."""
    cwd = copy_stage(processed, tmp_path / "stage")
    (cwd / "model").mkdir()
    shutil.copy(model_dir / "model.keras", cwd / "model/model.keras")
    (cwd / "data/processed/dataset.json").write_text(
        '{"name": "mnist", "class_names": ["a", "b", "c"]}')
    status, _, err = run("evaluate", cwd)
    assert status == 1
    assert "gives 10 outputs; the data are (28, 28) images of 3 classes" in one_error_line(err)


def test_preprocess_refuses_a_split_that_leaves_validation_empty(tmp_path):
    cwd = stage_dir(tmp_path / "stage")
    save_npz(cwd / "data/raw.npz", **random_dataset(30))  # 3 per class: 0.1 of 3 rounds to 0
    status, _, err = run("preprocess", cwd)
    assert status == 1
    assert one_error_line(err) == ("error: preprocess.val_fraction = 0.1 holds out no validation "
                                   "image of the 30 training images; raise it")
    assert not (cwd / "data/processed").exists()


# --- stopped midway -------------------------------------------------------------------------------

def wait_for(path_glob, cwd, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not list(cwd.glob(path_glob)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path_glob} never appeared"
        time.sleep(0.005)


def freeze_between(written, not_yet, cwd, proc):
    """Freeze `proc` (SIGSTOP) as soon as a file matching `written` appears, and check that one
    matching `not_yet` has not: the stage is then known to be stopped between the two, however
    late this process got to look. A signal sent to the frozen process waits for SIGCONT."""
    wait_for(written, cwd, proc)
    proc.send_signal(signal.SIGSTOP)
    assert list(cwd.glob(written)) and not list(cwd.glob(not_yet)), (
        f"the stage got past {not_yet} before it was frozen: this machine was too busy to tell")


@pytest.fixture(scope="session")
def big_input_once(tmp_path_factory, worker_id):
    """(folder, digests of its data/processed): a stage folder whose preprocess has run once
    (scale) on 60,000 random training and as many test images, its params now asking for other
    bytes (standardize), so that the next run spends about a second writing test.npz after
    train.npz. Built once for the whole run; nobody may change it."""
    def build(folder):
        cwd = stage_dir(folder / "stage")
        save_npz(cwd / "data/raw.npz", **random_dataset(60_000, 60_000))
        status, _, err = run("preprocess", cwd)
        assert status == 0, err
        params = repo_params()
        params["preprocess"]["normalization"] = "standardize"
        save(params, cwd / "params.yaml")
        (folder / "digests.json").write_text(json.dumps(digests(cwd / "data/processed")))

    folder = built_once(tmp_path_factory, worker_id, "big-input", build)
    return folder / "stage", read_json(folder / "digests.json")


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def big_input(big_input_once, tmp_path):
    """big_input_once for one test: its files hard-linked (a stage replaces its outputs, never
    writes into them), the `stages` link copied as a link."""
    source, first = big_input_once
    cwd = tmp_path / "stage"
    shutil.copytree(source, cwd, symlinks=True, copy_function=os.link)
    return cwd, first


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_preprocess_stopped_while_writing_keeps_the_old_set_whole(big_input, signum):
    cwd, first = big_input
    proc = start_stage("preprocess", cwd, niceness=10)
    freeze_between("data/.processed.*.tmp/train.npz", "data/.processed.*.tmp/test.npz", cwd, proc)
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum and "Traceback" not in err
    assert sorted(p.name for p in (cwd / "data").iterdir()) == ["processed", "raw.npz"]
    assert digests(cwd / "data/processed") == first, (
        "the earlier run's outputs, all of them, unchanged: no mixed set")


def test_what_sigkill_leaves_behind_the_next_run_removes(big_input):
    cwd, _ = big_input
    proc = start_stage("preprocess", cwd, niceness=10)
    freeze_between("data/.processed.*.tmp/train.npz", "data/.processed.*.tmp/test.npz", cwd, proc)
    proc.kill()
    proc.communicate()
    assert list((cwd / "data").glob(".processed.*.tmp")), "SIGKILL cannot be caught"
    status, _, err = run("preprocess", cwd)
    assert status == 0, err
    assert sorted(p.name for p in (cwd / "data").iterdir()) == ["processed", "raw.npz"]
    assert read_json(cwd / "data/processed/normalization.json")["method"] == "standardize"


def test_train_stopped_midway_keeps_the_old_model_and_its_neighbours(processed, tmp_path):
    """Stopped while it trains: model.keras and metadata.json stay the earlier pair, and
    export's model.onnx beside them is not touched."""
    cwd = copy_stage(processed, tmp_path / "stage")
    (cwd / "model").mkdir()
    before = {"model.keras": b"an earlier model", "metadata.json": b"{}",
              "model.onnx": b"export's output"}
    for name, content in before.items():
        (cwd / "model" / name).write_bytes(content)
    params = repo_params()
    params["train"]["mlp"].update(epochs=200, batch_size=64)  # long enough to be stopped
    save(params, cwd / "params.yaml")
    proc = start_stage("train", cwd)
    deadline = time.monotonic() + 120
    while not (cwd / "metrics/train/plots/metrics/train_loss.tsv").exists():  # an epoch ended
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (cwd / "model").iterdir()} == before
