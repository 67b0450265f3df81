"""Preprocess: the splits (validation, and test when the data has none), test copies of training
pictures left out, the normalisation, and the stage as DVC runs it."""

import json

import numpy as np
import pytest

from stages.common.files import save_npz
from stages.preprocess import copies_of_training, normalization, stratified_split
from tests.conftest import one_error_line, run_stage, run_stage_telling_imports, stage_dir


def labels_with_class_sizes(sizes: list, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(len(sizes), dtype=np.uint16), sizes)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def raw_dataset(x_train, y_train, x_test=None, y_test=None, names=None) -> dict:
    """data/raw.npz as download writes it."""
    none = np.array([], dtype=str)
    shape = (0, *x_train.shape[1:])
    return {"x_train": x_train, "y_train": y_train,
            "x_test": np.zeros(shape, np.uint8) if x_test is None else x_test,
            "y_test": np.zeros(0, np.uint16) if y_test is None else y_test,
            "class_names": np.array([f"c{i}" for i in range(int(y_train.max()) + 1)]),
            "prepare": np.array("picture"), "files_train": none if names is None else names,
            "files_test": none, "skipped": np.array(["a/x.png: broken"])}


def test_stratified_split_is_seeded_keeps_each_class_share_and_partitions():
    sizes = [20, 30, 40, 55, 61, 70, 80, 90, 100, 120]
    labels = labels_with_class_sizes(sizes)
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[held]).tolist() == [round(n * 0.2) for n in sizes]
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))
    assert np.all(np.diff(kept) > 0) and np.all(np.diff(held) > 0)
    np.testing.assert_array_equal(held, stratified_split(labels, 0.2, seed=0)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.2, seed=1)[1])


def test_normalization_is_fitted_in_batches_as_numpy_would_whole():
    x = np.random.default_rng(0).integers(0, 200, (9000, 8, 8, 3), dtype=np.uint8)
    some = np.arange(0, 9000, 2)
    constants = normalization(x, some, "standardize")
    assert constants["mean"] == pytest.approx(x[some].mean() / 255)
    assert constants["std"] == pytest.approx((x[some] / 255).std())
    assert normalization(x, some, "scale") == {"method": "scale", "mean": 0.0, "std": 1.0}
    grey = np.full((3, 2, 2, 1), 7, np.uint8)
    assert normalization(grey, np.arange(3), "standardize")["std"] == 1.0


def test_copies_are_found_by_their_pixels():
    x_train = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 1), dtype=np.uint8)
    x_test = np.stack([x_train[3], x_train[0] // 2, x_train[0], x_train[4]])
    found = copies_of_training(x_test, np.arange(4), x_train, np.array([0, 1, 2, 3]))
    assert found.tolist() == [3, -1, 0, -1]  # training picture 4 is not among those compared


def test_a_folder_without_test_pictures_gets_a_test_split_and_copies_are_left_out(tmp_path):
    rng = np.random.default_rng(0)
    y = labels_with_class_sizes([40, 40, 40])
    x = rng.integers(0, 256, (120, 6, 6, 3), dtype=np.uint8)
    x[1] = x[0]  # the same picture twice: wherever the split puts the two, it is found
    x[2] = x[0]
    names = np.array([f"c{label}/{i}.png" for i, label in enumerate(y)])
    cwd = stage_dir(tmp_path / "stage", preprocess={"test_fraction": 0.25,
                                                    "normalization": "standardize"})
    save_npz(cwd / "data/raw.npz", **raw_dataset(x, y, names=names))
    status, _, err = run_stage("preprocess", cwd)
    assert status == 0, err
    splits = {name: np.load(cwd / f"data/processed/{name}.npz") for name in ("train", "val",
                                                                            "test")}
    metrics = json.loads((cwd / "metrics/data.json").read_text())
    copies = metrics["test_copies"]
    assert metrics == {"skipped_files": 1, "test_copies": copies}
    assert [len(splits[s]["y"]) for s in ("train", "val", "test")] == [81, 9, 30 - copies]
    assert splits["test"]["x"].dtype == np.uint8 and splits["test"]["x"].shape[1:] == (6, 6, 3)
    if copies:
        assert "a test picture is a copy of a training one: c" in err
    seen = {bytes(p) for s in ("train", "val") for p in splits[s]["x"]}
    assert not any(bytes(p) in seen for p in splits["test"]["x"])
    info = json.loads((cwd / "data/processed/dataset.json").read_text())
    assert info["input_shape"] == [6, 6, 3] and info["prepare"] == "picture"
    assert info["class_names"] == ["c0", "c1", "c2"]
    train = splits["train"]["x"]
    assert info["normalization"]["mean"] == pytest.approx(train.mean() / 255)  # train's alone


def test_the_datasets_own_test_set_is_kept_and_checked(tmp_path):
    rng = np.random.default_rng(1)
    y = labels_with_class_sizes([30, 30])
    x = rng.integers(0, 256, (60, 4, 4, 1), dtype=np.uint8)
    x_test = np.concatenate([x[:3], rng.integers(0, 256, (7, 4, 4, 1), dtype=np.uint8)])
    cwd = stage_dir(tmp_path / "stage")
    save_npz(cwd / "data/raw.npz", **raw_dataset(x, y, x_test, np.zeros(10, np.uint16)))
    status, _, err = run_stage("preprocess", cwd)
    assert status == 0, err
    assert "3 test pictures are copies of training ones: the test set leaves them out" in err
    assert len(np.load(cwd / "data/processed/test.npz")["y"]) == 7


def test_too_few_pictures_to_hold_validation_out_is_one_line(tmp_path):
    y = labels_with_class_sizes([3, 3, 3, 3])
    x = np.random.default_rng(2).integers(0, 256, (12, 4, 4, 1), dtype=np.uint8)
    cwd = stage_dir(tmp_path / "stage")
    save_npz(cwd / "data/raw.npz", **raw_dataset(x, y, x, y))
    status, _, err = run_stage("preprocess", cwd)
    assert status == 1
    assert one_error_line(err).startswith("error: preprocess.val_fraction = 0.1 holds out no")
    assert not (cwd / "data/processed").exists()


def test_download_and_preprocess_never_import_tensorflow(tmp_path, tiny_mirror):
    cwd = stage_dir(tmp_path / "stage", {"mnist": tiny_mirror[1]})
    env = {"MNIST_MIRROR": str(tiny_mirror[0])}
    for stage in ("download", "preprocess"):
        status, imported, err = run_stage_telling_imports(stage, cwd, env)
        assert (status, imported) == (0, "[]"), err
