"""One trainer per process: time each epoch and score the test set after it.

    python -m bench.trainers {project,keras_fit,torch,sklearn} DATA_DIR --threads N --epochs E

DATA_DIR holds preprocess' output (train/val/test .npz). Each trainer runs the same recipe as
far as its library allows: the project's default params (batch size, epochs, Adam with warm-up
and cosine decay, dropout, the one-pixel batch shift). The test set is scored after every epoch,
outside the timed part, so that time-to-accuracy can be read off. Prints one JSON object.

Each trainer gets a process of its own: TensorFlow and PyTorch fix their thread pools once, and
a clean process is what a user's run looks like.
"""

import argparse
import functools
import json
import math
import time
from pathlib import Path

import numpy as np

from stages import params
from stages.fileio import load_npz, read_json
from stages.preprocess import blank_pixel

REPO = Path(__file__).resolve().parent.parent


def accuracy(probs, labels):
    return float(np.mean(np.asarray(probs).argmax(axis=1) == labels))


def project(cfg, data):
    """The train stage's own fit(), exactly as `dvc repro` runs it."""
    from stages import train

    train.configure_tensorflow(cfg)
    model = train.build_model(cfg)
    scores = []

    def score(epoch, model):
        scores.append(accuracy(model(data["test"]["x"], training=False), data["test"]["y"]))

    _, seconds = train.fit(model, cfg, data["train"], data["val"], data["normalization"],
                           on_epoch_end=score)
    return seconds, scores


def keras_fit(cfg, data, steps_per_execution=1):
    """model.compile + model.fit on arrays in memory (no batch shift). With steps_per_execution
    32, as the train stage had it before its own loop, each call into the compiled graph runs 32
    steps rather than one."""
    import keras

    from stages import train

    train.configure_tensorflow(cfg)
    model = train.build_model(cfg)
    optimizer = train.build_optimizer(
        cfg, train.steps_per_epoch(len(data["train"]["y"]), cfg["batch_size"]))
    model.compile(optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    seconds, scores = [], []

    class Timer(keras.callbacks.Callback):
        """Epoch times, and the test set scored after each epoch outside them."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)
            scores.append(accuracy(model.predict(data["test"]["x"], batch_size=1024, verbose=0),
                                   data["test"]["y"]))

    model.fit(data["train"]["x"], data["train"]["y"], batch_size=cfg["batch_size"],
              epochs=cfg["epochs"], validation_data=(data["val"]["x"], data["val"]["y"]),
              callbacks=[Timer()], verbose=0)
    return seconds, scores


def torch(cfg, data):
    """A plain PyTorch 2 eager loop: the same model, optimizer, schedule, shift and batches."""
    import torch

    from stages import train

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    x, y = (torch.from_numpy(data["train"][k]) for k in ("x", "y"))
    y = y.long()
    n, batch_size, shift = len(y), cfg["batch_size"], cfg["augment_shift"]
    steps = train.steps_per_epoch(n, batch_size)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(28 * 28, cfg["hidden_units"][0]), torch.nn.ReLU(),
        torch.nn.Dropout(cfg["dropout"]), torch.nn.Linear(cfg["hidden_units"][0], 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
    total, warmup = cfg["epochs"] * steps, round(cfg["warmup_epochs"] * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        step / warmup if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))))
    loss_fn = torch.nn.CrossEntropyLoss()
    blank = blank_pixel(data["normalization"])
    x_test = torch.from_numpy(data["test"]["x"])

    rng = np.random.default_rng(cfg["seed"])
    seconds, scores = [], []
    for _ in range(cfg["epochs"]):
        started = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(n))
        offsets = rng.integers(0, 2 * shift + 1, size=(steps, 2))
        for step in range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            top, left = offsets[step]
            xb = torch.nn.functional.pad(x[batch], (shift,) * 4, value=blank)
            xb = xb[:, top:top + 28, left:left + 28]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xb), y[batch]).backward()
            optimizer.step()
            schedule.step()
        seconds.append(time.perf_counter() - started)
        model.eval()
        with torch.no_grad():
            scores.append(accuracy(model(x_test), data["test"]["y"]))
    return seconds, scores


def sklearn(cfg, data):
    """scikit-learn's MLPClassifier, one partial_fit per epoch: Adam at its default constant
    rate of 0.001 (it has no schedule, and 0.003 without one did no better), no dropout."""
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    flat = {split: data[split]["x"].reshape(len(data[split]["x"]), -1)
            for split in ("train", "test")}
    model = MLPClassifier(hidden_layer_sizes=tuple(cfg["hidden_units"]),
                          activation=cfg["activation"], batch_size=cfg["batch_size"],
                          learning_rate_init=1e-3, random_state=cfg["seed"])
    seconds, scores = [], []
    with threadpool_limits(cfg["threads"]):
        for _ in range(cfg["epochs"]):
            started = time.perf_counter()
            model.partial_fit(flat["train"], data["train"]["y"], classes=np.arange(10))
            seconds.append(time.perf_counter() - started)
            scores.append(accuracy(model.predict_proba(flat["test"]), data["test"]["y"]))
    return seconds, scores


# name -> (function, label in the results, epochs to run: None for params' train.epochs)
TRAINERS = {
    "project": (project, "this project (`stages/train.py`)", None),
    "torch": (torch, "PyTorch 2 eager loop", None),
    "keras_fit": (keras_fit, "Keras `model.fit` (for reference)", 4),
    "keras_fit_32": (functools.partial(keras_fit, steps_per_execution=32),
                     "Keras `model.fit`, `steps_per_execution=32` (for reference)", 4),
    "sklearn": (sklearn, "scikit-learn `MLPClassifier`", None),
}


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.trainers")
    parser.add_argument("trainer", choices=TRAINERS)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--epochs", type=int, help="default: params.yaml's train.epochs")
    args = parser.parse_args()

    cfg = {**params.load("train", REPO / "params.yaml"), "threads": args.threads}
    cfg["epochs"] = args.epochs or cfg["epochs"]
    data = {split: load_npz(args.data_dir / f"{split}.npz") for split in ("train", "val", "test")}
    data["normalization"] = read_json(args.data_dir / "normalization.json")
    function = TRAINERS[args.trainer][0]
    seconds, scores = function(cfg, data)
    print(json.dumps({"trainer": args.trainer, "threads": args.threads,
                      "batch_size": cfg["batch_size"], "epoch_seconds": seconds,
                      "test_accuracy": scores}))


if __name__ == "__main__":
    main()
