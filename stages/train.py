"""Train stage: fit the MLP described in params.yaml and save it with what predict needs.

Deterministic by construction: seeds come from params, TensorFlow's op determinism is on, the
batch order and shifts come from a seeded generator, and the saved .keras file is stripped of its
timestamps. Same params and data -> bit-identical model.
"""

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from stages import params as params_module
from stages.fileio import load_npz, read_json, write_bytes, write_json
from stages.keras_file import save_model_reproducibly
from stages.preprocess import blank_pixel

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


def build_model(cfg, input_shape=(28, 28), num_classes=10):
    """Flatten -> [Dense(units, activation) -> Dropout] per hidden layer -> Dense softmax."""
    import keras

    layers = [keras.Input(shape=input_shape), keras.layers.Flatten()]
    for i, units in enumerate(cfg["hidden_units"]):
        layers.append(keras.layers.Dense(units, activation=cfg["activation"]))
        if cfg["dropout"] > 0:
            # A seed per layer: two layers of one width would otherwise drop the same units.
            layers.append(keras.layers.Dropout(cfg["dropout"], seed=cfg["seed"] + i))
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


def configure_tensorflow(cfg):
    """Threads, seeds and determinism; call before TensorFlow runs its first op."""
    import keras
    import tensorflow as tf

    if cfg["threads"]:
        tf.config.threading.set_intra_op_parallelism_threads(cfg["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(cfg["threads"])
    keras.utils.set_random_seed(cfg["seed"])
    tf.config.experimental.enable_op_determinism()


def shift_images(images, offset, shift, background):
    """Move a batch of images by shift - offset pixels (down, right), filling with `background`.

    `offset` holds two integers from 0 to 2 * shift. The result is a window of the images padded
    by `shift` on every side; padding each batch, rather than the whole training set once,
    saves a 200 MB copy at a negligible cost.
    """
    import tensorflow as tf

    height, width = images.shape[1:]
    padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift]],
                    constant_values=background)
    return padded[:, offset[0]:offset[0] + height, offset[1]:offset[1] + width]


def steps_per_epoch(examples, batch_size):
    return math.ceil(examples / batch_size)  # the last batch may be smaller


def fit(model, cfg, train, val, normalization, on_epoch_end=None):
    """Train `model` for cfg["epochs"] epochs; return the per-epoch history and epoch seconds.

    One compiled graph runs a whole epoch: the loop over batches, the gather of each batch from
    tensors already in memory, the forward and backward pass and the optimizer update. Keras'
    model.fit does the same arithmetic but pays for its data iterator, metric objects and a
    Python round-trip per step, which for this small MLP cost more than the arithmetic: it
    takes over twice as long per epoch, and still about 45 % longer with 32 steps per call
    (see bench/). All randomness (the order of the examples, each batch's shift) comes from one
    generator seeded from params, drawn outside the graph.

    `normalization` holds the constants preprocess applied: a shifted batch is filled in with
    what a blank pixel became. `on_epoch_end(epoch, model)` is called after each epoch, outside
    the timed part.
    """
    import keras
    import tensorflow as tf

    n, batch_size, shift = len(train["y"]), cfg["batch_size"], cfg["augment_shift"]
    steps = steps_per_epoch(n, batch_size)
    x, y = tf.constant(train["x"]), tf.constant(train["y"].astype(np.int32))
    x_val, y_val = tf.constant(val["x"]), tf.constant(val["y"].astype(np.int32))
    blank = blank_pixel(normalization)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    optimizer = build_optimizer(cfg, steps)
    variables = model.trainable_variables
    optimizer.build(variables)

    def correct(labels, probs):
        return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, axis=1, output_type=tf.int32),
                                              labels), tf.float32))

    @tf.function
    def train_epoch(order, offsets):
        loss_sum, hits = tf.constant(0.0), tf.constant(0.0)
        for step in tf.range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            xb = shift_images(tf.gather(x, batch), offsets[step], shift, blank)
            yb = tf.gather(y, batch)
            with tf.GradientTape() as tape:
                probs = model(xb, training=True)
                loss = loss_fn(yb, probs)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            loss_sum += loss * tf.cast(tf.shape(batch)[0], tf.float32)
            hits += correct(yb, probs)
        return loss_sum / n, hits / n

    @tf.function
    def score(images, labels):
        probs = model(images, training=False)
        return loss_fn(labels, probs), correct(labels, probs) / tf.cast(tf.shape(labels)[0],
                                                                        tf.float32)

    rng = np.random.default_rng(cfg["seed"])
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    epoch_seconds = []
    for epoch in range(cfg["epochs"]):
        started = time.perf_counter()
        order = rng.permutation(n).astype(np.int32)
        offsets = rng.integers(0, 2 * shift + 1, size=(steps, 2), dtype=np.int32)
        values = [*train_epoch(tf.constant(order), tf.constant(offsets)), *score(x_val, y_val)]
        epoch_seconds.append(time.perf_counter() - started)
        for key, value in zip(history, values):
            history[key].append(float(value))
        log.info("epoch %d/%d  %.2fs  loss %.4f  accuracy %.4f  val_loss %.4f  val_accuracy %.4f",
                 epoch + 1, cfg["epochs"], epoch_seconds[-1], *(h[-1] for h in history.values()))
        if on_epoch_end:
            on_epoch_end(epoch, model)
    return history, epoch_seconds


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

    configure_tensorflow(cfg)
    model = build_model(cfg, input_shape=train["x"].shape[1:])
    model.summary(print_fn=log.info)

    history, epoch_seconds = fit(model, cfg, train, val, normalization)
    seconds = sum(epoch_seconds)
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
