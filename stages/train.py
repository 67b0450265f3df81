"""Train stage: fit the model family params.yaml names (`train.model`), save it with what
export needs, and log every epoch through DVCLive.

Deterministic by construction: seeds come from params, TensorFlow's op determinism is on, the
batch order and augmentation come from a seeded generator, and the saved .keras file is stripped
of its timestamps. Same params, data and CPU type: a bit-identical model.
"""

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from stages.common import layout, params
from stages.common.files import load_json, load_npz, write_json
from stages.common.runner import import_tensorflow, run

log = logging.getLogger("train")


def learning_rate_schedule(cfg: params.Recipe, steps_per_epoch: int) -> object:
    """Linear warm-up to the peak rate, then cosine decay to 0 (or hold, for 'constant': a
    CosineDecay with alpha 1 never decays)."""
    import keras

    total = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, alpha=1.0 if cfg.schedule == "constant" else 0.0,
        warmup_target=cfg.learning_rate, warmup_steps=warmup)


def build_optimizer(cfg: params.Recipe, steps_per_epoch: int) -> object:
    import keras

    rate = learning_rate_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(rate)


def configure_tensorflow(cfg: params.Recipe, seed: int) -> None:
    """Threads, seeds and determinism; call before TensorFlow runs its first op."""
    import keras
    import tensorflow as tf

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.threads)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def shift_images(images: object, offset: object, shift: int) -> object:
    """A batch (N, H, W, C) moved by shift - offset pixels (down, right; `offset`: two integers
    from 0 to 2 * shift), black coming in: a window of the batch padded by `shift`."""
    import tensorflow as tf

    height, width = images.shape[1:3]
    padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]])
    return padded[:, offset[0]:offset[0] + height, offset[1]:offset[1] + width]


def affine_transforms(rng: np.random.Generator, count: int, cfg: params.Recipe,
                      side: int) -> np.ndarray:
    """`count` random transforms about the centre, one per picture (a shift, a turn and a scaling
    up to the recipe's augment_*, a mirror half the time with augment_flip), each as the 8
    numbers ImageProjectiveTransformV3 takes: from a pixel of the output to the input's."""
    angle = np.deg2rad(rng.uniform(-cfg.augment_rotate, cfg.augment_rotate, count))
    scale = 1 + rng.uniform(-cfg.augment_scale, cfg.augment_scale, count)
    dx, dy = rng.uniform(-cfg.augment_shift, cfg.augment_shift, (2, count))
    mirror = np.where(rng.random(count) < 0.5, -1.0, 1.0) if cfg.augment_flip else 1.0
    centre = (side - 1) / 2
    a0, a1 = mirror * np.cos(angle) / scale, np.sin(angle) / scale
    b0, b1 = -mirror * np.sin(angle) / scale, np.cos(angle) / scale
    a2 = centre - a0 * (centre + dx) - a1 * (centre + dy)
    b2 = centre - b0 * (centre + dx) - b1 * (centre + dy)
    zeros = np.zeros(count)
    return np.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1).astype(np.float32)


def transform_images(images: object, transforms: object) -> object:
    """One projective transform per picture of a batch (N, H, W, C), bilinear, black coming in."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=images.shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


# The curves of training, one value per epoch: what DVCLive logs and `dvc plots` draws.
HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate")


def fit(model: object, cfg: params.Recipe, seed: int, train: dict, val: dict,
        on_epoch_end: Callable[[int, dict], None] | None = None) -> tuple[dict, list]:
    """Train `model` for cfg.epochs epochs; return the per-epoch history and epoch seconds, and
    call `on_epoch_end(epoch, values)` after each.

    One compiled graph runs a whole epoch, batches gathered from the uint8 pictures in memory,
    and one a validation batch: Keras' model.fit and model.predict pay a Python round-trip per
    step, which costs the small MLP more than its arithmetic (bench/results.md). All randomness
    comes from one generator seeded from params.
    Augmentation: "shift" moves each batch by whole pixels (the MLP's recipe), "affine" moves,
    turns and scales each picture (the CNN's), or "none"."""
    import keras
    import tensorflow as tf

    n, batch_size, shift, augment = len(train["y"]), cfg.batch_size, cfg.augment_shift, cfg.augment
    steps = math.ceil(n / batch_size)  # the last batch may be smaller
    x, y = tf.constant(train["x"]), tf.constant(train["y"].astype(np.int32))
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    optimizer = build_optimizer(cfg, steps)
    variables = model.trainable_variables
    optimizer.build(variables)

    def augmented(pictures: object, step: object, moves: object) -> object:
        if augment == "affine":
            return transform_images(pictures, moves[step * batch_size:(step + 1) * batch_size])
        return shift_images(pictures, moves[step], shift) if augment == "shift" else pictures

    infer = tf.function(lambda pictures: model(tf.cast(pictures, tf.float32), training=False))

    @tf.function
    def train_epoch(order: object, moves: object) -> tuple:
        loss_sum, hits = tf.constant(0.0), tf.constant(0.0)
        for step in tf.range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            xb = augmented(tf.cast(tf.gather(x, batch), tf.float32), step, moves)
            yb = tf.gather(y, batch)
            with tf.GradientTape() as tape:
                probs = model(xb, training=True)
                loss = loss_fn(yb, probs)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            loss_sum += loss * tf.cast(tf.shape(batch)[0], tf.float32)
            hits += tf.reduce_sum(tf.cast(tf.argmax(probs, 1, tf.int32) == yb, tf.float32))
        return loss_sum / n, hits / n

    rng = np.random.default_rng(seed)
    history = {key: [] for key in HISTORY_KEYS}
    epoch_seconds = []
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        order = rng.permutation(n).astype(np.int32)
        if augment == "affine":  # one transform per picture, in batch order
            moves = affine_transforms(rng, n, cfg, side=train["x"].shape[1])
        else:  # one offset per batch (unused without augmentation)
            moves = rng.integers(0, 2 * shift + 1, size=(steps, 2), dtype=np.int32)
        values = list(train_epoch(tf.constant(order), tf.constant(moves)))
        probs = np.concatenate([infer(val["x"][start:start + layout.INFERENCE_BATCH])
                                for start in range(0, len(val["y"]), layout.INFERENCE_BATCH)])
        values += [loss_fn(val["y"], probs), np.mean(probs.argmax(axis=1) == val["y"])]
        epoch_seconds.append(time.perf_counter() - started)
        values.append(optimizer.learning_rate)  # the rate of the epoch's last step
        for key, value in zip(HISTORY_KEYS, values):
            history[key].append(float(value))
        log.info("epoch %d/%d  %.2fs  loss %.4f  accuracy %.4f  val_loss %.4f  val_accuracy %.4f"
                 "  lr %.2g", epoch + 1, cfg.epochs, epoch_seconds[-1],
                 *(h[-1] for h in history.values()))
        if on_epoch_end:
            on_epoch_end(epoch, {key: h[-1] for key, h in history.items()})
    return history, epoch_seconds


def live_logger(live: object) -> Callable[[int, dict], None]:
    """An on_epoch_end for fit(): each epoch a line of each curve's .tsv, by DVCLive."""
    def log_epoch(epoch: int, values: dict) -> None:
        live.step = epoch + 1
        for key, value in values.items():
            live.log_metric(key, value)
        live.next_step()
    return log_epoch


def main() -> None:
    cfg = params.load().train
    train, val = (load_npz(layout.SPLITS[s], "preprocess", ("x", "y")) for s in ("train", "val"))
    dataset = load_json(layout.DATASET_INFO, "preprocess")

    import_tensorflow()
    from dvclive import Live

    from stages.common.keras_file import save_model_reproducibly
    from stages.common.models import build_model

    configure_tensorflow(cfg.recipe, cfg.seed)
    model = build_model(cfg.model, cfg.recipe, cfg.seed, dataset["input_shape"],
                        len(dataset["class_names"]), dataset["normalization"], dataset["name"])
    model.summary(print_fn=log.info)
    with Live(dir=str(layout.TRAINING_CURVES), dvcyaml=False, save_dvc_exp=False) as live:
        history, epoch_seconds = fit(model, cfg.recipe, cfg.seed, train, val,
                                     on_epoch_end=live_logger(live))
    log.info("trained %d epochs in %.1f s", cfg.recipe.epochs, sum(epoch_seconds))

    write_json(layout.MODEL_INFO, {
        "class_names": dataset["class_names"], "dataset": dataset["name"], "family": cfg.model,
        "input_shape": dataset["input_shape"], "prepare": dataset["prepare"]})
    save_model_reproducibly(model, layout.KERAS_MODEL)
    write_json(layout.TIMING, {"train_seconds": round(sum(epoch_seconds), 2)})


if __name__ == "__main__":
    run(main)
