"""End to end: the real `dvc repro` in a temporary git repo, on the tiny dataset over HTTP."""

import json

import numpy as np
import pytest

from stages.fileio import load_npz

pytestmark = pytest.mark.slow

ALL_STAGES = ["download", "preprocess", "train", "evaluate", "export"]


def test_repro_builds_every_output_then_does_nothing(pipeline_repo, tiny_arrays):
    repo = pipeline_repo
    assert repo.repro() == ALL_STAGES

    mnist = load_npz(repo.path / "data/mnist.npz", 2**30)
    for key, array in tiny_arrays.items():
        np.testing.assert_array_equal(mnist[key], array)
        assert mnist[key].dtype == np.uint8
    assert mnist["class_names"].tolist() == [str(d) for d in range(10)]

    # The test images reach preprocess only to be transformed; train + val partition train.
    processed = {s: load_npz(repo.path / f"data/processed/{s}.npz", 2**30)
                 for s in ("train", "val", "test")}
    np.testing.assert_array_equal(processed["test"]["y"], tiny_arrays["y_test"])
    assert processed["test"]["x"].dtype == np.float32
    assert len(processed["train"]["y"]) + len(processed["val"]["y"]) == len(tiny_arrays["y_train"])
    assert len(processed["val"]["y"]) == 60  # val_fraction 0.1, stratified: 6 of each digit
    assert np.bincount(processed["val"]["y"]).tolist() == [6] * 10

    metadata = json.loads((repo.path / "model/metadata.json").read_text())
    assert metadata["normalization"]["method"] == "scale"
    assert (metadata["family"], metadata["dataset"]) == ("mlp", "mnist")
    assert metadata["class_names"] == [str(d) for d in range(10)]
    summary = json.loads((repo.path / "metrics/train/metrics.json").read_text())
    assert summary["parameter_count"] == 101_770 and summary["step"] == 5
    curves = repo.path / "metrics/train/plots/metrics"
    assert sorted(p.name for p in curves.iterdir()) == [
        "accuracy.tsv", "learning_rate.tsv", "loss.tsv", "val_accuracy.tsv", "val_loss.tsv"]
    assert (curves / "loss.tsv").read_text().splitlines()[0] == "step\tloss"
    assert len((curves / "loss.tsv").read_text().splitlines()) == 1 + 5

    accuracy = json.loads((repo.path / "metrics/accuracy.json").read_text())
    assert accuracy["test_images"] == 200
    assert accuracy["accuracy"] > 0.5, "5 epochs on printed digits should beat chance (0.1)"
    per_class = (repo.path / "metrics/per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,name,precision,recall,f1" and len(per_class) == 11
    confusion = (repo.path / "metrics/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 201

    export = json.loads((repo.path / "metrics/export.json").read_text())
    assert export["mismatched_predictions"] == 0 and export["max_abs_diff"] <= 1e-5
    assert export["test_images"] == 200
    assert (repo.path / "model/model.onnx").stat().st_size > 100_000
    timing = json.loads((repo.path / "metrics/timing.json").read_text())
    assert timing["train_seconds"] > 0

    # Nothing changed: nothing runs, and DVC agrees everything is up to date.
    assert repo.repro() == []
    assert "up to date" in repo.dvc("status").stdout
    # Timings are local: neither a DVC output nor something git would commit.
    assert "timing" not in (repo.path / "dvc.lock").read_text()
    assert repo.git("check-ignore", "metrics/timing.json").returncode == 0
