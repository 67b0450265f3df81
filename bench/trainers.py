"""One trainer per process: time each epoch and score the test set after it.

    python -m bench.trainers {project,torch,keras_fit,keras_fit_32,sklearn} {mlp,cnn} DATA_DIR \
        --threads N [--epochs E]

DATA_DIR holds preprocess' output (train/val/test .npz). Every trainer runs the family's recipe
from params.yaml (`train.<family>`, see recipe()) as far as its library allows, with `threads` and
`epochs` replaced. The test set is scored after every epoch, outside the timed part, so that
time-to-accuracy can be read off. Prints one JSON object.

Each trainer gets a process of its own: TensorFlow and PyTorch fix their thread pools once, and
a clean process is what a user's run looks like.
"""

import argparse
import functools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from stages import params, runner, train
from stages.fileio import read_json, read_split
from stages.normalization import blank_pixel

REPO = Path(__file__).resolve().parent.parent
CHUNK = 1000  # images scored at once: the CNN's first maps of 10,000 images would take 1 GB


def recipe(family):
    """The family's recipe from params.yaml, with the shared seed, as a plain dict."""
    cfg = params.load(REPO / "params.yaml").train
    return {**getattr(cfg, family).model_dump(), "seed": cfg.seed}


def accuracy(probs, labels):
    return float(np.mean(np.asarray(probs).argmax(axis=1) == labels))


def project(family, cfg, data):
    """The train stage's own fit(), exactly as `dvc repro` runs it."""
    from stages.models import build_model

    runner.import_tensorflow()  # with the stages' settings: oneDNN's kernels on every CPU
    typed = SimpleNamespace(**cfg)
    train.configure_tensorflow(typed, cfg["seed"])
    model = build_model(family, typed, cfg["seed"], data["train"]["x"].shape[1:], data["classes"])
    scores = []

    def score(epoch, values):
        probs = model.predict(data["test"]["x"], batch_size=CHUNK, verbose=0)
        scores.append(accuracy(probs, data["test"]["y"]))

    _, seconds = train.fit(model, typed, cfg["seed"], data["train"], data["val"],
                           data["normalization"], on_epoch_end=score)
    return seconds, scores


def keras_fit(family, cfg, data, steps_per_execution=1):
    """model.compile + model.fit on arrays in memory, no augmentation. With steps_per_execution
    32 each call into the compiled graph runs 32 steps rather than one."""
    import keras

    from stages.models import build_model

    runner.import_tensorflow()
    typed = SimpleNamespace(**cfg)
    train.configure_tensorflow(typed, cfg["seed"])
    model = build_model(family, typed, cfg["seed"], data["train"]["x"].shape[1:], data["classes"])
    optimizer = train.build_optimizer(
        typed, train.steps_per_epoch(len(data["train"]["y"]), cfg["batch_size"]))
    model.compile(optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    seconds, scores = [], []

    class Timer(keras.callbacks.Callback):
        """Epoch times, and the test set scored after each epoch outside them."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)
            scores.append(accuracy(model.predict(data["test"]["x"], batch_size=CHUNK, verbose=0),
                                   data["test"]["y"]))

    model.fit(data["train"]["x"], data["train"]["y"], batch_size=cfg["batch_size"],
              epochs=cfg["epochs"], validation_data=(data["val"]["x"], data["val"]["y"]),
              callbacks=[Timer()], verbose=0)
    return seconds, scores


def torch_loop(family, cfg, data):
    """A plain PyTorch 2 eager loop doing what fit() does: the same model, optimizer, schedule,
    batches and augmentation (drawn from the same seeded generator in the same order), the
    training loss and accuracy summed up, and the validation split scored within the epoch."""
    import torch

    from bench import torch_twin

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    x, y = torch.from_numpy(data["train"]["x"]), torch.from_numpy(data["train"]["y"]).long()
    n, side, batch_size, shift = len(y), x.shape[1], cfg["batch_size"], cfg["augment_shift"]
    steps = train.steps_per_epoch(n, batch_size)
    model = torch_twin.build_model(family, cfg, side, data["classes"])
    optimizer = torch_twin.build_optimizer(cfg, model)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 torch_twin.schedule_factor(cfg, steps))
    loss_fn = torch.nn.CrossEntropyLoss()
    blank = blank_pixel(data["normalization"])
    x_val, y_val = (torch.from_numpy(data["val"][k]) for k in ("x", "y"))

    def augmented(images, step, moves):
        if cfg["augment"] == "affine":
            return torch_twin.transform_images(
                images, moves[step * batch_size:(step + 1) * batch_size], blank)
        if cfg["augment"] == "shift":
            top, left = moves[step]
            padded = torch.nn.functional.pad(images, (shift,) * 4, value=blank)
            return padded[:, top:top + side, left:left + side]
        return images

    def logits(images):
        with torch.no_grad():
            return torch.cat([model(images[i:i + CHUNK]) for i in range(0, len(images), CHUNK)])

    rng = np.random.default_rng(cfg["seed"])
    seconds, scores, history = [], [], []
    for _ in range(cfg["epochs"]):
        started = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(n))
        if cfg["augment"] == "affine":
            transforms = train.affine_transforms(rng, n, SimpleNamespace(**cfg), side)
            moves = torch_twin.affine_thetas(transforms, side, side)
        else:
            moves = rng.integers(0, 2 * shift + 1, size=(steps, 2))
        loss_sum, hits = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for step in range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            with torch.no_grad():
                xb = augmented(x[batch], step, moves)
            yb = y[batch]
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(batch)
            hits += (out.detach().argmax(1) == yb).sum()
        model.eval()
        val_out = logits(x_val)
        val_loss, val_hits = loss_fn(val_out, y_val.long()), (val_out.argmax(1) == y_val).sum()
        history.append((float(loss_sum) / n, int(hits) / n, float(val_loss),  # as fit() has
                        int(val_hits) / len(y_val)))
        seconds.append(time.perf_counter() - started)
        scores.append(accuracy(logits(torch.from_numpy(data["test"]["x"])), data["test"]["y"]))
    return seconds, scores


def sklearn(family, cfg, data):
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
            model.partial_fit(flat["train"], data["train"]["y"],
                              classes=np.arange(data["classes"]))
            seconds.append(time.perf_counter() - started)
            scores.append(accuracy(model.predict_proba(flat["test"]), data["test"]["y"]))
    return seconds, scores


class Trainer:
    def __init__(self, function, label, families=("mlp", "cnn"), max_epochs=None):
        self.function, self.label = function, label
        self.families, self.max_epochs = families, max_epochs  # None: the recipe's epochs


TRAINERS = {
    "project": Trainer(project, "this project (`stages/train.py`)"),
    "torch": Trainer(torch_loop, "PyTorch 2 eager loop"),
    "keras_fit": Trainer(keras_fit, "Keras `model.fit` (reference)", max_epochs=4),
    "keras_fit_32": Trainer(functools.partial(keras_fit, steps_per_execution=32),
                            "Keras `model.fit`, `steps_per_execution=32` (reference)",
                            max_epochs=4),
    "sklearn": Trainer(sklearn, "scikit-learn `MLPClassifier`", families=("mlp",)),
}


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.trainers")
    parser.add_argument("trainer", choices=TRAINERS)
    parser.add_argument("family", choices=("mlp", "cnn"))
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--epochs", type=int, help="default: the family's recipe's epochs")
    args = parser.parse_args()

    trainer = TRAINERS[args.trainer]
    dataset = read_json(args.data_dir / "dataset.json", "preprocess", ["class_names"])
    cfg = recipe(args.family)
    cfg["threads"], cfg["epochs"] = args.threads, args.epochs or cfg["epochs"]
    cfg["epochs"] = min(cfg["epochs"], trainer.max_epochs or cfg["epochs"])
    data = {split: read_split(args.data_dir / f"{split}.npz") for split in ("train", "val", "test")}
    data["normalization"] = read_json(args.data_dir / "normalization.json", "preprocess",
                                      ["mean", "std"])
    data["classes"] = len(dataset["class_names"])
    seconds, scores = trainer.function(args.family, cfg, data)
    print(json.dumps({"trainer": args.trainer, "family": args.family, "threads": args.threads,
                      "batch_size": cfg["batch_size"], "epoch_seconds": seconds,
                      "test_accuracy": scores}))


if __name__ == "__main__":
    main()
