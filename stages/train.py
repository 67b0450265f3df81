"""Train stage: fit the MLP described in params.yaml and save it with what predict needs.

Deterministic by construction: seeds come from params, TensorFlow's op determinism is on, the
batches are shuffled by a seeded tf.data pipeline, and the saved .keras file is stripped of its
timestamps. Same params and data -> bit-identical model.
"""

import logging
import os
import math
import sys
import time
from pathlib import Path

from stages import params as params_module
from stages.fileio import load_npz, read_json, write_bytes, write_json
from stages.keras_file import save_model_reproducibly

# Hide the INFO lines TensorFlow prints at import (CPU features); warnings stay. TF 2.21
# still announces oneDNN on stderr whatever this says.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

log = logging.getLogger("train")

DATA_DIR = Path("data/processed")
MODEL_FILE = Path("model/model.keras")
METADATA_FILE = Path("model/metadata.json")
METRICS_FILE = Path("metrics/train.json")
HISTORY_FILE = Path("metrics/history.csv")
TIMING_FILE = Path("metrics/timing.json")  # git-ignored, not a DVC out: timings vary per run
CLASS_NAMES = [str(d) for d in range(10)]
# Batches run per call into the compiled graph: fewer Python round-trips, same arithmetic.
STEPS_PER_EXECUTION = 32


def build_model(cfg, input_shape=(28, 28), num_classes=10):
    """Flatten -> [Dense(units, activation) -> Dropout] per hidden layer -> Dense softmax."""
    import keras

    layers = [keras.Input(shape=input_shape), keras.layers.Flatten()]
    for units in cfg["hidden_units"]:
        layers.append(keras.layers.Dense(units, activation=cfg["activation"]))
        if cfg["dropout"] > 0:
            layers.append(keras.layers.Dropout(cfg["dropout"], seed=cfg["seed"]))
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(layers, name="mnist_mlp")


def learning_rate_schedule(cfg, steps_per_epoch):
    """Linear warm-up to the peak rate, then cosine decay to 0 (or hold, for 'constant')."""
    import keras

    total = cfg["epochs"] * steps_per_epoch
    warmup = min(int(round(cfg["warmup_epochs"] * steps_per_epoch)), total - 1)
    # CosineDecay with alpha=1 never decays: that gives 'constant', warm-up included.
    alpha = 1.0 if cfg["schedule"] == "constant" else 0.0
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(cfg["learning_rate"], total, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, alpha=alpha, warmup_target=cfg["learning_rate"],
        warmup_steps=warmup)


def build_optimizer(cfg, steps_per_epoch):
    import keras

    lr = learning_rate_schedule(cfg, steps_per_epoch)
    if cfg["optimizer"] == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(lr)


def batches(x, y, batch_size, seed=None):
    """An in-memory tf.data pipeline; reshuffled every epoch, from `seed`, when one is given.

    Shuffling indices and gathering whole batches is far cheaper than shuffling 54,000
    separate examples through the pipeline.
    """
    import tensorflow as tf

    x, y = tf.constant(x), tf.constant(y)
    idx = tf.data.Dataset.range(len(x))
    if seed is not None:
        idx = idx.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return (idx.batch(batch_size)
            .map(lambda i: (tf.gather(x, i), tf.gather(y, i)))
            .prefetch(tf.data.AUTOTUNE))


def history_csv(history):
    """Per-epoch curves as CSV for `dvc plots`: one row per epoch, fixed column order."""
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    rows = ["epoch," + ",".join(columns)]
    for epoch in range(len(history["loss"])):
        rows.append(f"{epoch + 1}," + ",".join(f"{history[c][epoch]:.6f}" for c in columns))
    return "\n".join(rows) + "\n"


def main():
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = params_module.load("train")
    train, val = load_npz(DATA_DIR / "train.npz"), load_npz(DATA_DIR / "val.npz")
    normalization = read_json(DATA_DIR / "normalization.json")

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg["seed"])
    tf.config.experimental.enable_op_determinism()

    steps_per_epoch = math.ceil(len(train["y"]) / cfg["batch_size"])
    model = build_model(cfg, input_shape=train["x"].shape[1:])
    model.compile(optimizer=build_optimizer(cfg, steps_per_epoch),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=min(STEPS_PER_EXECUTION, steps_per_epoch))
    model.summary(print_fn=log.info)

    started = time.perf_counter()
    history = model.fit(
        batches(train["x"], train["y"], cfg["batch_size"], seed=cfg["seed"]),
        validation_data=batches(val["x"], val["y"], 1024),
        epochs=cfg["epochs"],
        shuffle=False,  # the pipeline above already reshuffles, from the seed
        # A live progress bar in a terminal; one line per epoch in CI logs and files.
        verbose=1 if sys.stdout.isatty() else 2,
    ).history
    seconds = time.perf_counter() - started
    log.info("trained %d epochs in %.1f s", cfg["epochs"], seconds)

    save_model_reproducibly(model, MODEL_FILE)
    write_json(METADATA_FILE, {
        "class_names": CLASS_NAMES,
        "input_shape": list(train["x"].shape[1:]),
        "normalization": normalization,
    })
    write_json(METRICS_FILE, {
        "epochs": len(history["loss"]),
        "params": model.count_params(),
        "train_loss": round(history["loss"][-1], 6),
        "train_accuracy": round(history["accuracy"][-1], 6),
        "val_loss": round(history["val_loss"][-1], 6),
        "val_accuracy": round(history["val_accuracy"][-1], 6),
    })
    write_bytes(HISTORY_FILE, history_csv(history).encode())
    write_json(TIMING_FILE, {"train_seconds": round(seconds, 2)})


if __name__ == "__main__":
    main()
