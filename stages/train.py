"""Train stage: fit the model family params.yaml names (`train.model`), save it with what
predict needs, and log every epoch through DVCLive.

Deterministic by construction: seeds come from params, TensorFlow's op determinism is on, the
batch order and shifts come from a seeded generator, and the saved .keras file is stripped of its
timestamps. Same params, data and CPU type -> bit-identical model.
"""

import logging
import math
import time

import numpy as np

from stages import layout, params
from stages.fileio import (
    read_json,
    read_split,
    remove_stale_temporaries,
    replace_files,
    temporary_dir,
    write_json,
)
from stages.normalization import blank_pixel
from stages.runner import StageError, import_tensorflow, run

log = logging.getLogger("train")


def learning_rate_schedule(cfg, steps_per_epoch):
    """Linear warm-up to the peak rate, then cosine decay to 0 (or hold, for 'constant')."""
    import keras

    total = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    # CosineDecay with alpha=1 never decays: that gives 'constant', warm-up included.
    alpha = 1.0 if cfg.schedule == "constant" else 0.0
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, alpha=alpha, warmup_target=cfg.learning_rate,
        warmup_steps=warmup)


def build_optimizer(cfg, steps_per_epoch):
    import keras

    lr = learning_rate_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return keras.optimizers.Adam(lr)


def configure_tensorflow(cfg, seed):
    """Threads, seeds and determinism; call before TensorFlow runs its first op."""
    import keras
    import tensorflow as tf

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.threads)
    keras.utils.set_random_seed(seed)
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


def affine_transforms(rng, count, cfg, side=28):
    """`count` random transforms, one per image: a shift of up to augment_shift pixels, a turn
    of up to augment_rotate degrees and a scaling by up to augment_scale, about the centre,
    and with augment_flip, a mirror image half the time. Each row is the 8 numbers
    ImageProjectiveTransformV3 takes: the map from a pixel of the output to the point of the
    input it shows."""
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


def transform_images(images, transforms, background):
    """Apply one projective transform per image (bilinear), filling with `background`."""
    import tensorflow as tf

    height, width = images.shape[1:]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., tf.newaxis], transforms=transforms, output_shape=[height, width],
        fill_value=background, interpolation="BILINEAR", fill_mode="CONSTANT")
    return moved[..., 0]


def steps_per_epoch(examples, batch_size):
    return math.ceil(examples / batch_size)  # the last batch may be smaller


# The curves of training, one value per epoch: what DVCLive logs and `dvc plots` draws.
HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate")


def fit(model, cfg, seed, train, val, normalization, on_epoch_end=None):
    """Train `model` for cfg.epochs epochs; return the per-epoch history and epoch seconds.

    One compiled graph runs a whole epoch: the loop over batches, the gather of each batch from
    tensors already in memory, the forward and backward pass and the optimizer update. Keras'
    model.fit does the same arithmetic but pays for its data iterator, metric objects and a
    Python round-trip per step, which for the small MLP cost more than the arithmetic: it
    takes over twice as long per epoch, and still about 45 % longer with 32 steps per call
    (see bench/). All randomness (the order of the examples, each batch's shift or each image's
    transform) comes from one generator seeded from params, drawn outside the graph.

    Augmentation (cfg.augment): "shift" moves each batch as a whole by whole pixels, which
    costs next to nothing (the MLP's recipe); "affine" moves, turns and scales each image on
    its own (the CNN's); "none". `normalization` holds the constants preprocess applied: what
    moves in from outside an image is what a blank pixel became.

    `on_epoch_end(epoch, values)` is called after each epoch with that epoch's entry of each
    history key, outside the timed part.
    """
    import keras
    import tensorflow as tf

    n, batch_size, shift = len(train["y"]), cfg.batch_size, cfg.augment_shift
    augment = cfg.augment
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

    def augmented(images, step, moves):
        if augment == "affine":
            return transform_images(images, moves[step * batch_size:(step + 1) * batch_size],
                                    blank)
        if augment == "shift":
            return shift_images(images, moves[step], shift, blank)
        return images

    @tf.function
    def train_epoch(order, moves):
        loss_sum, hits = tf.constant(0.0), tf.constant(0.0)
        for step in tf.range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            xb = augmented(tf.gather(x, batch), step, moves)
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

    rng = np.random.default_rng(seed)
    history = {key: [] for key in HISTORY_KEYS}
    epoch_seconds = []
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        order = rng.permutation(n).astype(np.int32)
        if augment == "affine":  # one transform per image, in batch order
            moves = affine_transforms(rng, n, cfg, side=x.shape[1])
        else:  # one offset per batch (unused without augmentation)
            moves = rng.integers(0, 2 * shift + 1, size=(steps, 2), dtype=np.int32)
        values = [*train_epoch(tf.constant(order), tf.constant(moves)), *score(x_val, y_val)]
        epoch_seconds.append(time.perf_counter() - started)
        # The rate of the epoch's last step: what the schedule had reached.
        values.append(optimizer.learning_rate)
        for key, value in zip(HISTORY_KEYS, values):
            history[key].append(float(value))
        log.info("epoch %d/%d  %.2fs  loss %.4f  accuracy %.4f  val_loss %.4f  val_accuracy %.4f"
                 "  lr %.2g", epoch + 1, cfg.epochs, epoch_seconds[-1],
                 *(h[-1] for h in history.values()))
        if on_epoch_end:
            on_epoch_end(epoch, {key: h[-1] for key, h in history.items()})
    return history, epoch_seconds


def live_logger(live):
    """An on_epoch_end for fit() that logs each epoch through DVCLive: one line per epoch in
    each curve's .tsv (the step is the epoch's number), written as each epoch ends."""
    def log_epoch(epoch, values):
        live.step = epoch + 1
        for key, value in values.items():
            live.log_metric(key, value)
        live.next_step()
    return log_epoch


def main():
    # Params and inputs first: a mistake in them is reported before TensorFlow's seconds.
    cfg = params.load().train
    remove_stale_temporaries(layout.TIMING.parent)
    train, val = read_split(layout.SPLITS["train"]), read_split(layout.SPLITS["val"])
    normalization = read_json(layout.NORMALIZATION, "preprocess", ["mean", "std"])
    dataset = read_json(layout.DATASET_INFO, "preprocess", ["name", "class_names"])
    class_names = dataset["class_names"]

    import_tensorflow()
    from dvclive import Live

    from stages.keras_file import save_model_reproducibly
    from stages.models import build_model

    configure_tensorflow(cfg.recipe, cfg.seed)
    try:
        model = build_model(cfg.model, cfg.recipe, cfg.seed, train["x"].shape[1:],
                            len(class_names), dataset["name"])
    except ValueError as e:
        raise StageError(str(e)) from e
    model.summary(print_fn=log.info)

    with Live(dir=str(layout.TRAINING_CURVES), dvcyaml=False, save_dvc_exp=False) as live:
        history, epoch_seconds = fit(model, cfg.recipe, cfg.seed, train, val, normalization,
                                     on_epoch_end=live_logger(live))
    seconds = sum(epoch_seconds)
    log.info("trained %d epochs in %.1f s", cfg.recipe.epochs, seconds)

    # The model and its metadata go into model/ together (export's model.onnx stays beside
    # them): a stopped run leaves the old pair or the new one, never one of each.
    remove_stale_temporaries(layout.MODEL)
    with temporary_dir(layout.KERAS_MODEL) as tmp:
        save_model_reproducibly(model, tmp / layout.KERAS_MODEL.name)
        write_json(tmp / layout.MODEL_INFO.name, {
            "class_names": class_names,
            "dataset": dataset["name"],
            "family": cfg.model,
            "input_shape": list(train["x"].shape[1:]),
            "normalization": normalization,
        })
        replace_files(tmp, layout.MODEL, [layout.KERAS_MODEL.name, layout.MODEL_INFO.name])
    write_json(layout.TIMING, {"train_seconds": round(seconds, 2)})


if __name__ == "__main__":
    run(main)
