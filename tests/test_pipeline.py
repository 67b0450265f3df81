"""End to end: the real `dvc repro` in a temporary git repo, on the tiny dataset over HTTP."""

import json

import numpy as np
import pytest

from stages.fileio import load_npz

pytestmark = pytest.mark.slow


def test_repro_builds_every_output_then_does_nothing(pipeline_repo, tiny_arrays):
    repo = pipeline_repo
    assert repo.repro() == ["download", "preprocess", "train", "evaluate"]

    mnist = load_npz(repo.path / "data/mnist.npz")
    for key, array in tiny_arrays.items():
        np.testing.assert_array_equal(mnist[key], array)
        assert mnist[key].dtype == np.uint8

    # The test images reach preprocess only to be transformed; train + val partition train.
    processed = {s: load_npz(repo.path / f"data/processed/{s}.npz") for s in ("train", "val", "test")}
    np.testing.assert_array_equal(processed["test"]["y"], tiny_arrays["y_test"])
    assert processed["test"]["x"].dtype == np.float32
    assert len(processed["train"]["y"]) + len(processed["val"]["y"]) == len(tiny_arrays["y_train"])
    assert len(processed["val"]["y"]) == 60  # val_fraction 0.1, stratified: 6 of each digit
    assert np.bincount(processed["val"]["y"]).tolist() == [6] * 10

    assert (repo.path / "model/model.keras").is_file()
    metadata = json.loads((repo.path / "model/metadata.json").read_text())
    assert metadata["normalization"]["method"] == "scale"
    train = json.loads((repo.path / "metrics/train.json").read_text())
    assert train["params"] == 101_770 and train["epochs"] == 5
    accuracy = json.loads((repo.path / "metrics/accuracy.json").read_text())
    assert accuracy["test_images"] == 200
    assert accuracy["accuracy"] > 0.5, "5 epochs on printed digits should beat chance (0.1)"
    assert set(accuracy["per_class"]) == {str(d) for d in range(10)}
    confusion = (repo.path / "metrics/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 201
    timing = json.loads((repo.path / "metrics/timing.json").read_text())
    assert timing["train_seconds"] > 0

    # Nothing changed: nothing runs, and DVC agrees everything is up to date.
    assert repo.repro() == []
    assert "up to date" in repo.dvc("status").stdout
    # Timings are local: neither a DVC output nor something git would commit.
    assert "timing" not in (repo.path / "dvc.lock").read_text()
    assert repo.git("check-ignore", "metrics/timing.json").returncode == 0
