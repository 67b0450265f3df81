"""Each stage as a process, as DVC runs it, when its params or inputs are wrong, or when it is
stopped midway: one line naming the file and the cause (never a traceback), a non-zero exit, and
nothing half-written left behind."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stages.common.files import save_npz, write_json
from tests.conftest import (
    REPO,
    built_once,
    one_error_line,
    run_stage,
    run_stage_telling_imports,
    stage_dir,
    start_stage,
    write_yaml,
)


def random_dataset(n_train: int, n_test: int = 100, seed: int = 0) -> dict:
    """data/raw.npz as download writes it, of random 28x28 pictures of ten classes."""
    rng = np.random.default_rng(seed)
    none = np.array([], dtype=str)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28, 1), dtype=np.uint8),
            "y_train": (np.arange(n_train) % 10).astype(np.uint16),
            "x_test": rng.integers(0, 256, (n_test, 28, 28, 1), dtype=np.uint8),
            "y_test": (np.arange(n_test) % 10).astype(np.uint16),
            "class_names": np.array([str(d) for d in range(10)]), "prepare": np.array("digit"),
            "files_train": none, "files_test": none, "skipped": none}


# --- params, and inputs that are not there or not what they should be ----------------------------

@pytest.mark.parametrize("stage", ["download", "preprocess", "train", "evaluate", "export"])
def test_bad_params_stop_every_stage_in_one_line_before_any_work(tmp_path, stage):
    cwd = stage_dir(tmp_path / "stage", train={"seed": -1})
    status, imported, err = run_stage_telling_imports(stage, cwd)
    assert status == 1 and imported == "[]"
    assert one_error_line(err) == ("error: params.yaml: train.seed = -1 is not allowed: input "
                                   "should be greater than or equal to 0")


@pytest.mark.parametrize("stage, missing, writer", [
    ("preprocess", "data/raw.npz", "download"),
    ("train", "data/processed/train.npz", "preprocess"),
    ("evaluate", "data/processed/test.npz", "preprocess"),
    ("export", "data/processed/val.npz", "preprocess"),
])
def test_a_stage_run_before_its_inputs_exist_says_what_to_run(tmp_path, stage, missing, writer):
    status, _, err = run_stage(stage, stage_dir(tmp_path / "stage"))
    assert status == 1
    assert one_error_line(err) == (f"error: {missing}: not found; run `dvc repro` (the {writer} "
                                   "stage writes it)")


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A folder where download and preprocess have run, on 1,000 random pictures."""
    cwd = stage_dir(tmp_path_factory.mktemp("processed") / "stage")
    save_npz(cwd / "data/raw.npz", **random_dataset(1000))
    status, _, err = run_stage("preprocess", cwd)
    assert status == 0, err
    return cwd


def copy_stage(source, target):
    """A fresh stage folder holding a copy of `source`'s data."""
    cwd = stage_dir(target)
    shutil.copytree(source / "data", cwd / "data")
    return cwd


@pytest.mark.parametrize("stage, damaged, content", [
    ("train", "data/processed/train.npz", b"PK\x03\x04 not really a zip"),
    ("train", "data/processed/dataset.json", b"{"),
    ("evaluate", "data/processed/test.npz", b""),
    ("evaluate", "model/model.keras", b"PK\x03\x04" + bytes(200)),
    ("export", "model/model.keras", b"not a model"),
    ("preprocess", "data/raw.npz", None),
])
def test_a_damaged_input_is_one_line_naming_it(processed, tmp_path, stage, damaged, content):
    cwd = copy_stage(processed, tmp_path / "stage")
    (cwd / "model").mkdir()
    (cwd / "model/metadata.json").write_text(json.dumps(
        {"class_names": list("0123456789"), "input_shape": [28, 28, 1], "prepare": "digit"}))
    target = cwd / damaged
    if content is None:  # a folder where a file should be
        target.unlink()
        target.mkdir()
    else:
        target.write_bytes(content)
    status, _, err = run_stage(stage, cwd)
    assert status == 1
    line = one_error_line(err)
    assert line.startswith(f"error: {damaged}: "), line
    assert ("damaged or not what" in line or "not found" in line), line


def test_a_model_trained_for_other_data_is_refused_by_evaluate(processed, model_dir, tmp_path):
    """A model of 10 classes against data of 3: named, not a shape error deep in Keras."""
    cwd = copy_stage(processed, tmp_path / "stage")
    (cwd / "model").mkdir()
    shutil.copy(model_dir / "model.keras", cwd / "model/model.keras")
    info = json.loads((cwd / "data/processed/dataset.json").read_text())
    info["class_names"] = ["a", "b", "c"]
    (cwd / "data/processed/dataset.json").write_text(json.dumps(info))
    status, _, err = run_stage("evaluate", cwd)
    assert status == 1
    assert "gives 10 outputs; the data are (28, 28, 1) pictures of 3 classes" in \
        one_error_line(err)


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


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture(scope="session")
def big_input_once(tmp_path_factory, worker_id):
    """(folder, digests of its data/processed): a stage folder whose preprocess has run once on
    60,000 random training pictures and as many test ones, its params now asking for another
    split (seed), so that the next run spends a while writing test.npz after train.npz."""
    def build(folder):
        cwd = stage_dir(folder / "stage")
        save_npz(cwd / "data/raw.npz", **random_dataset(60_000, 60_000))
        status, _, err = run_stage("preprocess", cwd)
        assert status == 0, err
        (folder / "digests.json").write_text(json.dumps(digests(cwd / "data/processed")))
        from tests.conftest import tiny_params

        params = tiny_params()
        params["preprocess"]["seed"] = 7
        write_yaml(cwd / "params.yaml", params)

    folder = built_once(tmp_path_factory, worker_id, "big-input", build)
    return folder / "stage", json.loads((folder / "digests.json").read_text())


@pytest.fixture
def big_input(big_input_once, tmp_path):
    """big_input_once for one test: its files hard-linked (a stage replaces its outputs, never
    writes into them), the code's links copied as links."""
    source, first = big_input_once
    cwd = tmp_path / "stage"
    shutil.copytree(source, cwd, symlinks=True, copy_function=os.link)
    return cwd, first


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
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


def test_a_stop_signal_python_drops_in_a_finaliser_still_stops_the_stage(tmp_path):
    """A signal whose SystemExit is raised inside __del__ is dropped by Python ("Exception
    ignored in"); the record of it still keeps the next output out of place, and the exit says
    which signal, with no traceback."""
    code = """
import gc, os, signal, time
from pathlib import Path
from stages.common.files import write_json
from stages.common.runner import run

class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside the finaliser

def main():
    Finalised()
    gc.collect()
    write_json(Path("out.json"), {"written": True})

run(main)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written, nothing left"


@pytest.mark.slow
def test_what_sigkill_leaves_behind_the_next_run_removes(big_input):
    cwd, first = big_input
    proc = start_stage("preprocess", cwd, niceness=10)
    freeze_between("data/.processed.*.tmp/train.npz", "data/.processed.*.tmp/test.npz", cwd, proc)
    proc.kill()
    proc.communicate()
    assert list((cwd / "data").glob(".processed.*.tmp")), "SIGKILL cannot be caught"
    status, _, err = run_stage("preprocess", cwd)
    assert status == 0, err
    assert sorted(p.name for p in (cwd / "data").iterdir()) == ["processed", "raw.npz"]
    assert digests(cwd / "data/processed") != first  # the new split, whole


@pytest.mark.slow
def test_train_stopped_midway_keeps_the_old_model_and_its_neighbours(processed, tmp_path):
    """Stopped while it trains: model.keras and metadata.json stay as they were, and export's
    model.onnx beside them is not touched."""
    cwd = copy_stage(processed, tmp_path / "stage")
    (cwd / "model").mkdir()
    before = {"model.keras": b"an earlier model", "metadata.json": b"{}",
              "model.onnx": b"export's output"}
    for name, content in before.items():
        (cwd / "model" / name).write_bytes(content)
    from tests.conftest import tiny_params

    params = tiny_params()
    params["train"]["mlp"].update(epochs=200, batch_size=64)  # long enough to be stopped
    write_yaml(cwd / "params.yaml", params)
    proc = start_stage("train", cwd)
    wait_for("metrics/train/plots/metrics/train_loss.tsv", cwd, proc, timeout=120)  # an epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (cwd / "model").iterdir()} == before


def test_an_output_path_that_is_a_folder_is_one_line(processed, tmp_path):
    cwd = copy_stage(processed, tmp_path / "stage")
    (cwd / "metrics/data.json").mkdir(parents=True)
    (cwd / "metrics/data.json/x").write_text("in the way")
    status, _, err = run_stage("preprocess", cwd)
    assert status == 1
    assert one_error_line(err).startswith("error: ") and "metrics/data.json" in err


def test_outputs_get_the_umask_s_mode_not_a_temporary_file_s(tmp_path):
    """A file or a folder put in place by files.atomic is made as any other (the umask's mode),
    not owner-only as the temporary names it starts under would be."""
    from stages.common.files import atomic

    mask = os.umask(0o027)
    try:
        write_json(tmp_path / "out.json", {"a": 1})
        with atomic(tmp_path / "folder", folder=True) as tmp:
            (tmp / "inside.npz").write_bytes(b"x")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out.json"]
