"""Preprocess: the stratified split, the normalisation, and the stage as DVC runs it."""

import json

import numpy as np
import pytest

from stages.fileio import load_npz, read_json, save_npz
from stages.normalization import blank_pixel, fit_normalization, normalize
from stages.preprocess import stratified_split
from tests.conftest import run_stage, run_stage_telling_imports, stage_dir, tiny_catalogue

# --- preprocess: the split ---------------------------------------------------------------------

def labels_with_class_sizes(sizes, seed=0):
    labels = np.repeat(np.arange(len(sizes), dtype=np.uint8), sizes)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def test_stratified_split_is_seeded():
    labels = labels_with_class_sizes([50] * 10)
    train_a, val_a = stratified_split(labels, 0.1, seed=42)
    train_b, val_b = stratified_split(labels, 0.1, seed=42)
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(val_a, val_b)
    _, val_c = stratified_split(labels, 0.1, seed=43)
    assert len(val_c) == len(val_a) and not np.array_equal(val_c, val_a)


@pytest.mark.parametrize("sizes, fraction", [([50] * 10, 0.1), ([20, 30, 40, 55, 61, 70, 80, 90,
                                                                 100, 120], 0.2)])
def test_stratified_split_keeps_each_class_share(sizes, fraction):
    labels = labels_with_class_sizes(sizes)
    train_idx, val_idx = stratified_split(labels, fraction, seed=0)
    expected_val = [round(n * fraction) for n in sizes]
    assert np.bincount(labels[val_idx], minlength=len(sizes)).tolist() == expected_val
    assert np.bincount(labels[train_idx], minlength=len(sizes)).tolist() == [
        n - v for n, v in zip(sizes, expected_val)]


def test_stratified_split_partitions_the_indices():
    labels = labels_with_class_sizes([37, 41, 29, 50, 33, 45, 38, 40, 44, 43], seed=3)
    train_idx, val_idx = stratified_split(labels, 0.25, seed=7)
    assert np.intersect1d(train_idx, val_idx).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])),
                                  np.arange(len(labels)))
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)  # sorted


# --- preprocess: normalisation -----------------------------------------------------------------

def test_scale_maps_pixels_into_unit_interval():
    x = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    constants = fit_normalization(x, "scale")
    assert constants == {"method": "scale", "mean": 0.0, "std": 1.0}
    out = normalize(x, constants)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 1 / 255, 128 / 255, 1]], rtol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_standardize_gives_zero_mean_unit_std_on_train():
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 200, (300, 28, 28), dtype=np.uint8)
    constants = fit_normalization(x_train, "standardize")
    assert constants["method"] == "standardize"
    json.dumps(constants)  # plain floats: written to normalization.json as is
    out = normalize(x_train, constants)
    assert out.dtype == np.float32
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-4
    # Other images are transformed with the same constants, not standardised on their own.
    bright = np.full((2, 28, 28), 255, dtype=np.uint8)
    expected = (1.0 - constants["mean"]) / constants["std"]
    np.testing.assert_allclose(normalize(bright, constants), expected, rtol=1e-5)
    assert fit_normalization(x_train, "standardize") == constants  # fitting is pure


def test_blank_pixel_is_what_a_zero_pixel_becomes():
    assert blank_pixel({"method": "scale", "mean": 0.0, "std": 1.0}) == 0.0
    constants = {"method": "standardize", "mean": 0.13, "std": 0.31}
    assert blank_pixel(constants) == pytest.approx(-0.13 / 0.31)
    zeros = normalize(np.zeros((1, 28, 28), np.uint8), constants)
    assert (zeros == np.float32(blank_pixel(constants))).all()


def test_preprocess_stage_fits_constants_on_the_training_split_only(tmp_path):
    """Make the validation and test images bright: constants fitted on them would show it."""
    rng = np.random.default_rng(0)
    y_train = labels_with_class_sizes([30] * 10)
    train_idx, val_idx = stratified_split(y_train, 0.2, seed=5)
    x_train = rng.integers(0, 100, (300, 28, 28), dtype=np.uint8)
    x_train[val_idx] = 255
    mnist = {"x_train": x_train, "y_train": y_train,
             "x_test": np.full((20, 28, 28), 255, np.uint8),
             "y_test": np.arange(20, dtype=np.uint8) % 10,
             "class_names": np.array([str(d) for d in range(10)])}
    outputs = []
    for run in ("a", "b"):
        cwd = stage_dir(tmp_path / run, preprocess={"normalization": "standardize",
                                                    "val_fraction": 0.2, "seed": 5})
        save_npz(cwd / "data/raw.npz", **mnist)
        status, _, err = run_stage("preprocess", cwd)
        assert status == 0, err
        processed = cwd / "data/processed"
        outputs.append({p.name: p.read_bytes() for p in sorted(processed.iterdir())})
    assert list(outputs[0]) == ["dataset.json", "normalization.json", "test.npz", "train.npz",
                                "val.npz"]
    assert outputs[0] == outputs[1], "the same input and params give the same bytes"

    constants = read_json(processed / "normalization.json", "preprocess", [])
    assert constants == fit_normalization(x_train[train_idx], "standardize")
    train = load_npz(processed / "train.npz", 2**24)
    val = load_npz(processed / "val.npz", 2**24)
    np.testing.assert_array_equal(train["y"], y_train[train_idx])
    np.testing.assert_array_equal(val["y"], y_train[val_idx])
    assert train["x"].dtype == np.float32
    assert abs(float(train["x"].mean())) < 1e-4 and abs(float(train["x"].std()) - 1) < 1e-3
    assert float(val["x"].min()) > 2, "bright validation images stay far above the train mean"


def test_download_and_preprocess_never_import_tensorflow(tmp_path, tiny_mirror):
    """TensorFlow costs seconds and hundreds of MB to import; the data stages must not pay it."""
    cwd = stage_dir(tmp_path / "stage", tiny_catalogue(tiny_mirror[1]))
    for name in ("download", "preprocess"):
        status, imported, err = run_stage_telling_imports(
            name, cwd, {"MNIST_MIRROR": str(tiny_mirror[0])})
        assert status == 0, err
        assert imported == "[]", f"{name} imported {imported}"
    assert (cwd / "data/processed/train.npz").is_file()


