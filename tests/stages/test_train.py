"""The train stage's pieces on real TensorFlow: both model families, the schedule, the batch
shift, short deterministic trainings on the tiny drawn digits, and DVCLive's per-epoch files."""

import os
import subprocess
import sys

import numpy as np
import pytest

from stages import train
from stages.common.models import build_model
from stages.common.params import CNN, MLP
from tests.conftest import REPO, TINY_TRAINING, repo_params

SEED = 42
SCALE = {"method": "scale", "mean": 0.0, "std": 1.0}


def model(family, cfg, seed=SEED, shape=(28, 28, 1), classes=10, dataset="mnist"):
    return build_model(family, cfg, seed, shape, classes, SCALE, dataset)


def family_cfg(family, **overrides):
    """The repo's recipe for `family`, as fit() reads it, shortened for the tiny dataset.
    threads 0: TensorFlow is already running in this process, its thread pools are fixed."""
    values = {**repo_params()["train"][family], **TINY_TRAINING[family], "epochs": 3,
              "threads": 0, **overrides}
    return {"mlp": MLP, "cnn": CNN}[family].model_validate(values)


def changed(cfg, **values):
    return type(cfg).model_validate({**cfg.model_dump(), **values})


@pytest.fixture
def cfg():
    return family_cfg("mlp")


@pytest.fixture(scope="module")
def tiny_splits(tiny_arrays):
    """The tiny dataset as preprocess hands it to train: uint8 (N, 28, 28, 1), 500 + 100."""
    x, y = tiny_arrays["x_train"][..., np.newaxis], tiny_arrays["y_train"]
    return {"x": x[:500], "y": y[:500]}, {"x": x[500:], "y": y[500:]}


def test_the_mlp_is_flatten_then_its_hidden_layers_then_softmax():
    cfg = family_cfg("mlp", hidden_units=[64, 32], dropout=0.2)
    mlp = model("mlp", cfg, dataset="fashion-mnist")
    assert [layer.__class__.__name__ for layer in mlp.layers] == [
        "Rescaling", "Flatten", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [layer.units for layer in mlp.layers if hasattr(layer, "units")] == [64, 32, 10]
    assert mlp.count_params() == (784 + 1) * 64 + (64 + 1) * 32 + (32 + 1) * 10
    assert mlp.name == "fashion_mnist_mlp", "named after its family and the data it learns"


def test_the_cnn_has_the_parameters_its_recipe_says():
    cfg = family_cfg("cnn", **{k: repo_params()["train"]["cnn"][k] for k in (
        "filters", "final_filters", "kernel_size", "padding", "dense_units")})
    cnn = model("cnn", cfg)
    assert cnn.name == "mnist_cnn"
    kinds = [layer.__class__.__name__ for layer in cnn.layers]
    assert kinds.count("Conv2D") == len(cfg.filters) + len(cfg.final_filters)
    assert kinds.count("MaxPooling2D") == len(cfg.filters) and kinds[-1] == "Dense"
    # Each 3x3 convolution: 9 weights per input channel and a bias, per filter.
    channels, expected = 1, 0
    for filters in cfg.filters + cfg.final_filters:
        expected += (cfg.kernel_size ** 2 * channels + 1) * filters
        channels = filters
    side = 28
    for _ in cfg.filters:
        side = (side - cfg.kernel_size + 1) // 2
    features = side * side * channels
    if cfg.dense_units:
        expected += (features + 1) * cfg.dense_units
        features = cfg.dense_units
    expected += (features + 1) * 10
    assert cnn.count_params() == expected <= 100_000


@pytest.mark.parametrize("family", ["mlp", "cnn"])
@pytest.mark.parametrize("shape, classes", [((8, 8, 1), 2), ((64, 64, 3), 50), ((28, 28, 3), 1000)])
def test_both_families_take_any_size_channels_and_classes(family, shape, classes):
    """The repo's own recipes, on pictures 8x8 to 64x64, grey or colour, 2 to 1,000 classes: a
    convolution that would shrink a small map to nothing pads instead."""
    cfg = family_cfg(family, **{k: v for k, v in repo_params()["train"][family].items()
                                if k in ("filters", "final_filters", "kernel_size", "padding")})
    built = model(family, cfg, shape=shape, classes=classes, dataset="my/pets.v2")
    assert built.input_shape == (None, *shape) and built.output_shape == (None, classes)
    assert built.name == f"my_pets_v2_{family}"
    probs = np.asarray(built(np.zeros((2, *shape), np.float32)))
    assert probs.shape == (2, classes) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_the_model_normalises_its_input_itself():
    cfg = family_cfg("mlp")
    constants = {"method": "standardize", "mean": 0.2, "std": 0.5}
    built = build_model("mlp", cfg, SEED, (2, 2, 1), 2, constants, "x")
    rescale = built.layers[0]
    out = np.asarray(rescale(np.array([[0.0, 51.0, 255.0]], np.float32)))
    np.testing.assert_allclose(out, [[-0.4, 0.0, 1.6]], atol=1e-6)


def test_schedule_warms_up_then_decays_to_zero(cfg):
    cfg = changed(cfg, epochs=10, warmup_epochs=1, learning_rate=0.003)
    schedule = train.learning_rate_schedule(cfg, steps_per_epoch=100)
    rate = lambda step: float(schedule(step))  # noqa: E731
    assert rate(0) == 0.0
    assert rate(50) == pytest.approx(0.0015)
    assert rate(100) == pytest.approx(0.003)
    assert rate(550) == pytest.approx(0.0015, rel=1e-3)  # half-way through the cosine
    assert rate(1000) == pytest.approx(0.0, abs=1e-9)


def test_constant_schedule_holds_the_peak_after_warm_up(cfg):
    cfg = changed(cfg, epochs=10, warmup_epochs=0, schedule="constant")
    schedule = train.learning_rate_schedule(cfg, steps_per_epoch=100)
    assert [float(schedule(s)) for s in (0, 500, 999)] == pytest.approx([cfg.learning_rate] * 3)


@pytest.mark.parametrize("offset, moved_to", [
    ((1, 1), (10, 20)),   # the middle offset leaves the picture where it was
    ((0, 0), (11, 21)),   # down and right by one
    ((2, 0), (9, 21)),    # up by one, right by one
])
def test_shift_images_moves_the_ink_and_black_comes_in(offset, moved_to):
    image = np.full((1, 28, 28, 2), 7.0, np.float32)  # two channels, a grey ground
    image[0, 10, 20] = 300.0
    image[0, 0, :] = 100.0  # a row of ink along the top edge
    shifted = np.asarray(train.shift_images(image, np.array(offset), 1))[0]
    assert shifted.shape == (28, 28, 2)
    assert (shifted[moved_to] == 300.0).all() and (shifted == 300.0).sum() == 2
    if offset[0] == 0:  # moved down: black comes in at the top
        assert (shifted[0] == 0).all() and (shifted[1, 1:] == 100.0).all()
    if offset[0] == 2:  # moved up: the top row leaves, black comes in at the bottom
        assert (shifted == 100.0).sum() == 0 and (shifted[27] == 0).all()


def test_shift_of_zero_changes_nothing():
    images = np.random.default_rng(0).random((4, 28, 28, 3), dtype=np.float32)
    np.testing.assert_array_equal(train.shift_images(images, np.array([0, 0]), 0), images)


def affine(rng_seed=0, count=1, **cfg):
    cfg = family_cfg("cnn", **{"augment_shift": 0, "augment_rotate": 0, "augment_scale": 0,
                               "augment_flip": False, **cfg})
    return train.affine_transforms(np.random.default_rng(rng_seed), count, cfg, side=28)


def test_affine_with_nothing_to_do_is_the_identity():
    images = np.random.default_rng(0).random((3, 28, 28, 3), dtype=np.float32)
    moved = train.transform_images(images, affine(count=3))
    np.testing.assert_allclose(np.asarray(moved), images, atol=1e-6)


def test_affine_moves_turns_and_scales_each_picture_on_its_own():
    image = np.zeros((1, 28, 28, 1), np.float32)
    image[0, 8:20, 13:15] = 200.0  # a vertical bar through the middle
    images = np.repeat(image, 64, axis=0)
    moved = np.asarray(train.transform_images(
        images, affine(count=64, augment_shift=2, augment_rotate=20, augment_scale=0.2)))
    assert len({m.tobytes() for m in moved}) == 64, "every picture gets its own transform"
    assert moved.min() >= 0 and np.isclose(moved[:, 0, 0], 0).all(), "black comes in"
    # Ink moves by at most the shift plus what turning and scaling add at the bar's ends.
    centres = [np.argwhere(m[..., 0] > 50).mean(axis=0) for m in moved]
    assert max(np.abs(np.array(centres) - [13.5, 14.0]).max(axis=1)) <= 2 + 1.5


def test_affine_flip_mirrors_about_half_the_pictures():
    image = np.zeros((1, 28, 28, 1), np.float32)
    image[0, 5:23, 4:9] = 1.0  # a bar on the left
    images = np.repeat(image, 200, axis=0)
    moved = np.asarray(train.transform_images(images, affine(count=200, augment_flip=True)))
    mirrored = [np.allclose(m, image[0, :, ::-1], atol=1e-5) for m in moved]
    unchanged = [np.allclose(m, image[0], atol=1e-5) for m in moved]
    assert all(a != b for a, b in zip(mirrored, unchanged)), "each one or the other"
    assert 70 <= sum(mirrored) <= 130


def trained_weights(cfg, splits, family="mlp", seed=SEED):
    train.configure_tensorflow(cfg, seed)
    built = model(family, cfg, seed)
    epochs_seen = []
    history, seconds = train.fit(built, cfg, seed, *splits,
                                 on_epoch_end=lambda epoch, values: epochs_seen.append(epoch))
    return [w.copy() for w in built.get_weights()], history, seconds, epochs_seen


def test_fit_learns_and_reports_every_epoch(cfg, tiny_splits):
    _, history, seconds, epochs_seen = trained_weights(changed(cfg, epochs=6), tiny_splits)
    assert epochs_seen == list(range(6)) and len(seconds) == 6
    assert set(history) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy",
                            "learning_rate"}
    assert history["learning_rate"][-1] == pytest.approx(0.0, abs=1e-9)  # cosine ends at 0
    assert all(len(values) == 6 for values in history.values())
    assert history["train_loss"][-1] < 0.6 * history["train_loss"][0]
    assert history["val_accuracy"][-1] > 0.5, "printed digits are easy: far above chance (0.1)"


def test_history_is_the_mean_over_every_example_last_short_batch_included(cfg, tiny_splits):
    # A learning rate of 0 keeps the weights fixed, and no dropout or shift makes a training
    # batch score like inference: each epoch's loss and accuracy must then be the model's
    # own, over all 500 examples (15 batches of 32 and one of 20), each counted once.
    cfg = cfg.model_copy(update={"learning_rate": 0.0, "dropout": 0.0, "augment_shift": 0,
                                 "epochs": 2})  # a rate of 0 is no params value: not validated
    train.configure_tensorflow(cfg, SEED)
    built = model("mlp", cfg)
    before = [w.copy() for w in built.get_weights()]
    history, _ = train.fit(built, cfg, SEED, *tiny_splits)
    for a, b in zip(before, built.get_weights()):
        np.testing.assert_array_equal(a, b)
    for prefix, split in (("train_", tiny_splits[0]), ("val_", tiny_splits[1])):
        probs = built.predict(split["x"].astype(np.float32), verbose=0).astype(np.float64)
        loss = -np.mean(np.log(probs[np.arange(len(split["y"])), split["y"]]))
        accuracy = np.mean(probs.argmax(axis=1) == split["y"])
        assert history[prefix + "loss"] == pytest.approx([loss] * 2, rel=1e-5)
        assert history[prefix + "accuracy"] == pytest.approx([accuracy] * 2, abs=1e-7)


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_fit_is_bit_identical_for_the_same_seed_and_differs_for_another(family, tiny_splits):
    cfg = family_cfg(family)
    first, history, _, _ = trained_weights(cfg, tiny_splits, family)
    again, history_again, _, _ = trained_weights(cfg, tiny_splits, family)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert history == history_again

    other, _, _, _ = trained_weights(cfg, tiny_splits, family, seed=SEED + 1)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_the_cnn_learns_the_tiny_digits(tiny_splits):
    cfg = family_cfg("cnn", epochs=10, augment_shift=1, learning_rate=0.01)
    _, history, _, _ = trained_weights(cfg, tiny_splits, "cnn")
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert history["val_accuracy"][-1] > 0.5


def test_dvclive_writes_each_curve_as_each_epoch_ends(cfg, tiny_splits, tmp_path):
    """What `dvc plots` draws: after epoch k, each curve's .tsv has k rows, the last one this
    epoch's value at step k."""
    import csv

    from dvclive import Live

    seen = []
    with Live(dir=str(tmp_path / "live"), dvcyaml=False, save_dvc_exp=False) as live:
        log_epoch = train.live_logger(live)

        def check_after(epoch, values):
            log_epoch(epoch, values)
            for key, value in values.items():
                tsv = (tmp_path / f"live/plots/metrics/{key}.tsv").read_text().splitlines()
                *_, last = csv.DictReader(tsv, delimiter="\t")
                assert (int(last["step"]), float(last[key])) == (epoch + 1, pytest.approx(value))
                seen.append((key, len(tsv) - 1))

        train.configure_tensorflow(cfg, SEED)
        train.fit(model("mlp", cfg), cfg, SEED, *tiny_splits, on_epoch_end=check_after)
    assert sorted(seen) == sorted((key, k) for key in train.HISTORY_KEYS for k in (1, 2, 3))


# Trains the default model, at the default batch size, on 600 drawn digits; prints the weights.
TRAIN_AND_PRINT_WEIGHTS = """
import json, sys
import numpy as np
from stages.common.runner import import_tensorflow
import_tensorflow()
from stages import train
from stages.common.models import build_model
from stages.common.params import MLP
from tests.digits import synthetic_mnist

cfg = MLP.model_validate_json(sys.argv[1])
digits = synthetic_mnist(n_train=700, n_test=1, seed=0)
x, y = digits["x_train"][..., None], digits["y_train"]
train.configure_tensorflow(cfg, 42)
model = build_model("mlp", cfg, 42, (28, 28, 1), 10, {"mean": 0.0, "std": 1.0}, "mnist")
train.fit(model, cfg, 42, {"x": x[:600], "y": y[:600]}, {"x": x[600:], "y": y[600:]})
print(np.concatenate([w.ravel() for w in model.get_weights()]).tobytes().hex())
"""


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to compare")
def test_thread_count_does_not_change_the_result(cfg):
    # TensorFlow fixes its thread pools at its first op: each count trains in a process of its own.
    cfg = changed(cfg, batch_size=256, epochs=1)  # matrices of the real run's size

    runs = [subprocess.Popen([sys.executable, "-c", TRAIN_AND_PRINT_WEIGHTS,
                              changed(cfg, threads=threads).model_dump_json()], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for threads in (1, os.cpu_count())]  # side by side: the answer must not care
    weights = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        weights.append(out.split()[-1])
    assert weights[0] == weights[1]
