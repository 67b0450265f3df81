"""Unit tests of the pipeline's pure functions: IDX parsing, bounded reads, reproducible writes,
the split and normalisation, and the evaluation metrics."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
import zipfile

import numpy as np
import pytest

from stages import evaluate
from stages.evaluate import classification_metrics
from stages.fileio import (
    ZIP_EPOCH,
    IdxError,
    TooLarge,
    gunzip,
    load_npz,
    parse_idx,
    read_json,
    save_npz,
    write_json,
)
from stages.normalization import blank_pixel, fit_normalization, normalize
from stages.params import save
from stages.preprocess import stratified_split
from tests.conftest import REPO, repo_params


def u32(n):
    return n.to_bytes(4, "big")


# Written out by hand rather than with an encoder, so parse_idx is checked against the format.
IMAGES = bytes([0, 0, 0x08, 3]) + u32(2) + u32(2) + u32(3) + bytes(range(12))
LABELS = bytes([0, 0, 0x08, 1]) + u32(4) + bytes([7, 0, 9, 255])


# --- fileio.parse_idx --------------------------------------------------------------------------

def test_parse_idx_images():
    assert int.from_bytes(IMAGES[:4], "big") == 2051  # MNIST's magic number for images
    array = parse_idx(IMAGES, expected_ndim=3)
    assert array.dtype == np.uint8 and array.shape == (2, 2, 3)
    np.testing.assert_array_equal(array, np.arange(12).reshape(2, 2, 3))


def test_parse_idx_labels():
    assert int.from_bytes(LABELS[:4], "big") == 2049  # and for labels
    array = parse_idx(LABELS, expected_ndim=1)
    assert array.dtype == np.uint8
    assert array.tolist() == [7, 0, 9, 255]
    assert parse_idx(LABELS).tolist() == [7, 0, 9, 255]  # without an expectation too


def test_parse_idx_empty_dimension_is_valid():
    assert parse_idx(bytes([0, 0, 8, 1]) + u32(0), 1).shape == (0,)


@pytest.mark.parametrize("header", [
    bytes([0, 0, 0x0B, 1]),  # 0x0B: int16 elements, not unsigned bytes
    bytes([0, 0, 0x0D, 1]),  # float32
    bytes([1, 0, 0x08, 1]),  # first two bytes must be zero
    bytes([0x1F, 0x8B, 0x08, 0x00]),  # still gzip-compressed
])
def test_parse_idx_wrong_magic(header):
    with pytest.raises(IdxError, match=f"bad magic number {int.from_bytes(header, 'big'):#010x}"):
        parse_idx(header + u32(4) + bytes(4), 1)


def test_parse_idx_wrong_number_of_dimensions():
    with pytest.raises(IdxError, match="has 1 dimensions; expected 3 .magic 2049"):
        parse_idx(LABELS, expected_ndim=3)
    with pytest.raises(IdxError, match="has 3 dimensions; expected 1 .magic 2051"):
        parse_idx(IMAGES, expected_ndim=1)


@pytest.mark.parametrize("length", [0, 1, 3])
def test_parse_idx_too_short_for_magic(length):
    with pytest.raises(IdxError, match=f"too short for an IDX header .{length} bytes"):
        parse_idx(IMAGES[:length])


@pytest.mark.parametrize("length", [4, 8, 15])
def test_parse_idx_truncated_header(length):
    with pytest.raises(IdxError, match=f"truncated header: {length} bytes, need 16"):
        parse_idx(IMAGES[:length], 3)


def test_parse_idx_truncated_data():
    with pytest.raises(IdxError, match=r"truncated: 27 bytes, header \(2, 2, 3\) needs 28"):
        parse_idx(IMAGES[:-1], 3)
    with pytest.raises(IdxError, match="truncated: 8 bytes"):
        parse_idx(LABELS[:8], 1)  # a header and no data at all


def test_parse_idx_trailing_bytes():
    with pytest.raises(IdxError,
                       match=r"has trailing bytes: 29 bytes, header \(2, 2, 3\) needs 28"):
        parse_idx(IMAGES + b"\0", 3)


def test_parse_idx_dimensions_too_large_to_multiply_in_int64():
    """2**31 * 2**31 * 4 = 2**64: in int64 that wraps to 0 and an empty body would 'fit'."""
    header = bytes([0, 0, 8, 3]) + u32(2**31) + u32(2**31) + u32(4)
    with pytest.raises(IdxError, match=f"truncated: 16 bytes.*needs {16 + 2**64}"):
        parse_idx(header, 3)


# --- fileio: reproducible, atomic writes -------------------------------------------------------

def sample_arrays():
    rng = np.random.default_rng(1)
    return {"x": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
            "y": np.arange(5, dtype=np.uint8),
            "f": rng.standard_normal((3, 4)).astype(np.float32),
            "i": np.arange(6, dtype=np.int64).reshape(2, 3).T}  # not C-contiguous


def test_save_npz_loads_back_equal(tmp_path):
    arrays = sample_arrays()
    save_npz(tmp_path / "a.npz", **arrays)
    loaded = load_npz(tmp_path / "a.npz", 2**20)
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)
    assert os.listdir(tmp_path) == ["a.npz"], "no temporary file left beside it"


def test_save_npz_is_byte_identical_whenever_it_is_written(tmp_path):
    save_npz(tmp_path / "a.npz", **sample_arrays())
    # Zip times have a resolution of 2 s: wait past it, so a timestamp would show.
    time.sleep(2.1)
    arrays = sample_arrays()
    save_npz(tmp_path / "b.npz", **dict(reversed(list(arrays.items()))))  # order of kwargs too
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        assert [i.filename for i in zf.infolist()] == ["f.npy", "i.npy", "x.npy", "y.npy"]
        assert {i.date_time for i in zf.infolist()} == {ZIP_EPOCH}
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]


def test_save_npz_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.npz"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):  # object arrays would need pickle, which is refused
        save_npz(target, x=np.arange(3), y=np.array([{"a": 1}], dtype=object))
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.npz"]


def test_save_npz_gives_the_usual_file_mode(tmp_path):
    save_npz(tmp_path / "a.npz", x=np.zeros(1))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.npz").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_json_stable_bytes(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2], "c": {"z": 0.5, "y": None}})
    write_json(tmp_path / "b.json", {"c": {"y": None, "z": 0.5}, "a": [1, 2], "b": 1})
    data = (tmp_path / "a.json").read_bytes()
    assert data == (tmp_path / "b.json").read_bytes()
    assert data.endswith(b"}\n") and data.index(b'"a"') < data.index(b'"b"') < data.index(b'"c"')
    assert read_json(tmp_path / "a.json") == {"a": [1, 2], "b": 1, "c": {"y": None, "z": 0.5}}
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json"]


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


def stage_dir(path, **sections):
    """A directory to run a stage in: the repo's params.yaml (with overrides) and the code."""
    path.mkdir()
    (path / "stages").symlink_to(REPO / "stages", target_is_directory=True)
    params = repo_params()
    for section, values in sections.items():
        params[section].update(values)
    save(params, path / "params.yaml")
    return path


def run_stage(name, cwd):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


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
        save_npz(cwd / "data/mnist.npz", **mnist)
        result = run_stage("preprocess", cwd)
        assert result.returncode == 0, result.stderr
        processed = cwd / "data/processed"
        outputs.append({p.name: p.read_bytes() for p in sorted(processed.iterdir())})
    assert list(outputs[0]) == ["dataset.json", "normalization.json", "test.npz", "train.npz",
                                "val.npz"]
    assert outputs[0] == outputs[1], "the same input and params give the same bytes"

    constants = read_json(processed / "normalization.json")
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
    mirror_dir, checksums = tiny_mirror
    data = repo_params()["data"]
    data["public_sources"] = False
    data["mnist"].update(checksums=checksums, mirrors=[str(mirror_dir)])
    cwd = stage_dir(tmp_path / "stage", data=data)
    for name in ("download", "preprocess"):
        code = (f"import runpy, sys; runpy.run_module('stages.{name}', run_name='__main__'); "
                "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
        result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "[]", f"{name} imported {result.stdout}"
    assert (cwd / "data/processed/train.npz").is_file()


# --- evaluate.classification_metrics ----------------------------------------------------------

def probs_for(predicted, true, num_classes):
    """0.8 on the predicted class; 0.1 on the true class when the prediction is wrong."""
    probs = np.full((len(predicted), num_classes), 0.0)
    for row, (p, t) in enumerate(zip(predicted, true)):
        probs[row, p] = 0.8
        probs[row, t if t != p else (p + 1) % num_classes] = 0.1
    return probs


def test_classification_metrics_by_hand():
    # actual:    0 0 0 1 1 2
    # predicted: 0 0 1 1 2 2
    # class 0: TP 2, predicted 2, actual 3 -> precision 1,   recall 2/3, F1 0.8
    # class 1: TP 1, predicted 2, actual 2 -> precision 1/2, recall 1/2, F1 1/2
    # class 2: TP 1, predicted 2, actual 1 -> precision 1/2, recall 1,   F1 2/3
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = [0, 0, 1, 1, 2, 2]
    metrics, per_class = classification_metrics(y_true, probs_for(y_pred, y_true, 3),
                                                num_classes=3)
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["misclassified"] == 2 and metrics["test_images"] == 6
    # The true class got 0.8 four times and 0.1 twice.
    assert metrics["loss"] == pytest.approx(-(4 * math.log(0.8) + 2 * math.log(0.1)) / 6, abs=1e-6)
    expected = [(1.0, 2 / 3, 0.8), (0.5, 0.5, 0.5), (0.5, 1.0, 2 / 3)]
    assert len(per_class) == len(expected)
    for got, (precision, recall, f1) in zip(per_class, expected):
        assert got["precision"] == pytest.approx(precision, abs=1e-6)
        assert got["recall"] == pytest.approx(recall, abs=1e-6)
        assert got["f1"] == pytest.approx(f1, abs=1e-6)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)
    # The headline numbers only: `dvc exp show` stays readable; classes go to per_class.csv.
    assert set(metrics) == {"accuracy", "loss", "macro_f1", "misclassified", "test_images"}
    json.dumps(metrics)  # written as is to metrics/accuracy.json
    assert evaluate.per_class_csv(per_class, ["zero", "one, with a comma", "two"]) == (
        "class,name,precision,recall,f1\n0,zero,1.0,0.666667,0.8\n"
        '1,"one, with a comma",0.5,0.5,0.5\n2,two,0.5,1.0,0.666667\n')


def test_classification_metrics_absent_class_scores_zero_without_warnings():
    y_true = np.array([0, 1, 1])
    probs = probs_for([0, 1, 0], y_true, 4)  # class 2 never occurs, class 3 never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics, per_class = classification_metrics(y_true, probs, num_classes=4)
    for c in (2, 3):
        assert per_class[c] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert per_class[0]["precision"] == pytest.approx(0.5)
    assert per_class[1]["recall"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(2 / 3, abs=1e-6)


def test_most_confident_errors_orders_wrong_predictions_by_confidence():
    y_true = np.array([0, 1, 2, 3])
    probs = np.array([[0.9, 0.1, 0.0],    # right
                      [0.6, 0.4, 0.0],    # wrong, 60 %
                      [0.05, 0.95, 0.0],  # wrong, 95 %
                      [0.0, 0.0, 1.0]])   # wrong (3 -> 2), 100 %
    assert evaluate.most_confident_errors(y_true, probs, 10).tolist() == [3, 2, 1]
    assert evaluate.most_confident_errors(y_true, probs, 2).tolist() == [3, 2]


def test_error_grid_has_one_captioned_cell_per_error():
    rng = np.random.default_rng(0)
    images = rng.random((12, 28, 28)).astype(np.float32)
    y_true = np.arange(12) % 10
    probs = np.eye(10)[(y_true + 1) % 10] * 0.9 + 0.01  # every prediction wrong
    grid = evaluate.error_grid(images, y_true, probs, 7, [str(d) for d in range(10)], columns=5,
                               zoom=2)
    cell = 28 * 2
    assert grid.size[0] == 5 * cell and grid.size[1] == 2 * (cell + 14)  # 7 cells: 2 rows
    assert np.asarray(grid)[:cell, :cell].std() > 0  # the first cell shows an image


def test_confusion_csv_names_the_classes():
    names = ["T-shirt/top", "Trouser", "Ankle boot"]
    assert evaluate.confusion_csv([0, 2], [1, 2], names) == (
        "actual,predicted\nT-shirt/top,Trouser\nAnkle boot,Ankle boot\n")


# --- bounded reads: a small file cannot make us allocate gigabytes -------------------------------

def test_load_npz_refuses_a_member_over_the_limit_from_its_header(tmp_path):
    save_npz(tmp_path / "a.npz", x=np.zeros((100, 28, 28), np.uint8))
    assert load_npz(tmp_path / "a.npz", 78_400)["x"].shape == (100, 28, 28)
    with pytest.raises(TooLarge, match=r"x.npy declares \(100, 28, 28\) uint8, 78,400 bytes"):
        load_npz(tmp_path / "a.npz", 78_399)


def test_load_npz_refuses_pickles_and_foreign_members(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="not an .npy array"):
        load_npz(tmp_path / "a.npz", 2**20)
    np.savez(tmp_path / "b.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_npz(tmp_path / "b.npz", 2**20)


def test_gunzip_stops_at_its_limit():
    import gzip

    data = gzip.compress(bytes(1000))
    assert gunzip(data, 1000) == bytes(1000)
    with pytest.raises(TooLarge, match="more than 999 bytes"):
        gunzip(data, 999)
    with pytest.raises(EOFError, match="truncated"):
        gunzip(data[:-12], 1000)


def test_signals_wait_until_the_deferred_block_is_done():
    from stages.fileio import signals_deferred

    seen = []
    previous = signal.signal(signal.SIGHUP, lambda number, frame: seen.append(number))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            assert seen == [], "not while the block runs"
        assert seen == [signal.SIGHUP], "right after it, with the usual handler"
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_replace_dir_swaps_whole_folders_and_leaves_nothing_aside(tmp_path):
    from stages.fileio import replace_dir

    (tmp_path / "out").mkdir()
    (tmp_path / "out/old.txt").write_text("old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new/new.txt").write_text("new")
    replace_dir(tmp_path / "new", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]
