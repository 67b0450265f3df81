"""One trainer per process: time each epoch and score the test set after it.

    python -m bench.trainers {project,torch,keras_fit,keras_fit_32,sklearn} {mlp,cnn} DATA_DIR \
        --threads N [--epochs E]

DATA_DIR holds preprocess' output (train/val/test .npz of uint8 pictures (N, H, W, C), and
dataset.json: the dataset's name, classes and normalisation constants). Every trainer runs the
family's recipe for that dataset (params.yaml's `train.<family>`, with RECIPES' values for
Fashion-MNIST) as far as its library allows, with `threads` and `epochs` replaced. The test set
is scored after every epoch, outside the timed part, so that time-to-accuracy can be read off.
Prints one JSON object.

Each trainer gets a process of its own: TensorFlow and PyTorch fix their thread pools once, and
a clean process is what a user's run looks like.
"""

import argparse
import functools
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from stages import train
from stages.common import params, runner
from stages.common.files import load_json, load_npz

REPO = Path(__file__).resolve().parent.parent
CHUNK = 1000  # pictures scored at once: the CNN's first maps of 10,000 would take 1 GB
# docs/pipeline.md's recipes for Fashion-MNIST, on top of params.yaml's (the `-S` values there):
# clothes are harder than digits, and MNIST's recipes reach only 87.8 % (MLP) and 90.2 % (CNN).
RECIPES = {
    "fashion-mnist": {
        "mlp": {"hidden_units": [256], "dropout": 0.3, "epochs": 40, "augment": "none"},
        "cnn": {"padding": "same", "final_filters": [128], "batch_size": 128,
                "learning_rate": 0.003, "epochs": 30, "augment_shift": 1, "augment_rotate": 0,
                "augment_scale": 0.05, "augment_flip": True},
    },
}


def recipe(family, dataset="mnist"):
    """The family's recipe from params.yaml, with the dataset's own values (RECIPES) and the
    shared seed, as a plain dict."""
    cfg = params.load(REPO / "params.yaml").train
    return {**getattr(cfg, family).model_dump(), **RECIPES.get(dataset, {}).get(family, {}),
            "seed": cfg.seed}


def read_data(data_dir, splits=("train", "val", "test")):
    """preprocess' output: the splits, uint8 pictures (N, H, W, C) and labels, with the
    dataset's name, its number of classes and its normalisation constants."""
    info = load_json(data_dir / "dataset.json", "preprocess")
    data = {split: load_npz(data_dir / f"{split}.npz", "preprocess", ("x", "y"))
            for split in splits}
    return {**data, "name": info["name"], "classes": len(info["class_names"]),
            "normalization": info["normalization"]}


def accuracy(probs, labels):
    return float(np.mean(np.asarray(probs).argmax(axis=1) == labels))


def keras_accuracy(model, split):
    """The model's test accuracy, fed floats as evaluate feeds them, CHUNK pictures at once."""
    return accuracy(model.predict(split["x"].astype(np.float32), batch_size=CHUNK, verbose=0),
                    split["y"])


def keras_model(family, cfg, data):
    """The train stage's model, with TensorFlow configured as the stage configures it."""
    runner.import_tensorflow()  # with the stages' settings: oneDNN's kernels on every CPU
    from stages.common.models import build_model

    typed = SimpleNamespace(**cfg)
    train.configure_tensorflow(typed, cfg["seed"])
    return build_model(family, typed, cfg["seed"], data["train"]["x"].shape[1:], data["classes"],
                       data["normalization"], data["name"])


def project(family, cfg, data):
    """The train stage's own fit(), exactly as `dvc repro` runs it."""
    model = keras_model(family, cfg, data)
    scores = []
    _, seconds = train.fit(model, SimpleNamespace(**cfg), cfg["seed"], data["train"],
                           data["val"],
                           on_epoch_end=lambda *_: scores.append(keras_accuracy(model,
                                                                                data["test"])))
    return seconds, scores


def keras_fit(family, cfg, data, steps_per_execution=1):
    """model.compile + model.fit on arrays in memory, no augmentation. With steps_per_execution
    32 each call into the compiled graph runs 32 steps rather than one."""
    import keras

    model = keras_model(family, cfg, data)
    steps = math.ceil(len(data["train"]["y"]) / cfg["batch_size"])
    model.compile(train.build_optimizer(SimpleNamespace(**cfg), steps),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    seconds, scores = [], []

    class Timer(keras.callbacks.Callback):
        """Epoch times, and the test set scored after each epoch outside them."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)
            scores.append(keras_accuracy(model, data["test"]))

    # Floats, as a user of model.fit hands them over (and as evaluate feeds the model).
    model.fit(data["train"]["x"].astype(np.float32), data["train"]["y"],
              batch_size=cfg["batch_size"], epochs=cfg["epochs"], callbacks=[Timer()],
              validation_data=(data["val"]["x"].astype(np.float32), data["val"]["y"]), verbose=0)
    return seconds, scores


def torch_loop(family, cfg, data):
    """A plain PyTorch 2 eager loop doing what fit() does: the same model, optimizer, schedule,
    batches and augmentation (drawn from the same seeded generator in the same order), the
    uint8 pictures of each batch cast to floats, the training loss and accuracy summed up, and
    the validation split scored within the epoch."""
    import torch

    from bench import torch_twin

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    x, y = torch.from_numpy(data["train"]["x"]), torch.from_numpy(data["train"]["y"]).long()
    n, side, batch_size, shift = len(y), x.shape[1], cfg["batch_size"], cfg["augment_shift"]
    steps = math.ceil(n / batch_size)  # the last batch may be smaller, as in fit()
    model = torch_twin.build_model(family, cfg, x.shape[1:], data["classes"],
                                   data["normalization"])
    optimizer = torch_twin.build_optimizer(cfg, model)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 torch_twin.schedule_factor(cfg, steps))
    loss_fn = torch.nn.CrossEntropyLoss()
    x_val, y_val = (torch.from_numpy(data["val"][k]) for k in ("x", "y"))

    def augmented(images, step, moves):
        if cfg["augment"] == "affine":
            return torch_twin.transform_images(
                images, moves[step * batch_size:(step + 1) * batch_size])
        if cfg["augment"] == "shift":
            return torch_twin.shift_images(images, *moves[step], shift)
        return images

    def logits(images):
        with torch.no_grad():
            return torch.cat([model(images[i:i + CHUNK].float())
                              for i in range(0, len(images), CHUNK)])

    rng = np.random.default_rng(cfg["seed"])
    seconds, scores, history = [], [], []
    for _ in range(cfg["epochs"]):
        started = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(n))
        if cfg["augment"] == "affine":
            transforms = train.affine_transforms(rng, n, SimpleNamespace(**cfg), side)
            moves = torch_twin.affine_thetas(transforms, *x.shape[1:3])
        else:
            moves = rng.integers(0, 2 * shift + 1, size=(steps, 2))
        loss_sum, hits = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for step in range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            with torch.no_grad():
                xb = augmented(x[batch].float(), step, moves)
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
    rate of 0.001 (it has no schedule, and 0.003 without one did no better), no dropout, on
    the pictures normalised as the model's first layer normalises them."""
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    mean, std = data["normalization"]["mean"], data["normalization"]["std"]
    flat = {split: ((data[split]["x"].reshape(len(data[split]["x"]), -1) / 255 - mean) / std)
            .astype(np.float32) for split in ("train", "test")}
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
    data = read_data(args.data_dir)
    cfg = recipe(args.family, data["name"])
    cfg["threads"], cfg["epochs"] = args.threads, args.epochs or cfg["epochs"]
    cfg["epochs"] = min(cfg["epochs"], trainer.max_epochs or cfg["epochs"])
    seconds, scores = trainer.function(args.family, cfg, data)
    print(json.dumps({"trainer": args.trainer, "family": args.family, "dataset": data["name"],
                      "threads": args.threads, "batch_size": cfg["batch_size"],
                      "epoch_seconds": seconds, "test_accuracy": scores}))


if __name__ == "__main__":
    main()
