"""What the trained model reads, and refuses as "not a digit", in a set of pictures: counted the
same way by the tests (tests/app/test_refusal.py, test_photos.py) and the benchmark
(bench/refusal.py).

The real MNIST test digits come from the pipeline's data/raw.npz, or else from the IDX files in
$MNIST_MIRROR (a folder, as `make repro` reads it).
"""

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.classifier import model_input
from app.metadata import ModelInfo
from app.pictures import refusal as rules
from app.pictures.decode import InputError

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "model" / "model.onnx"
MNIST = REPO / "data" / "raw.npz"  # download's output: MNIST, when the model is an MNIST one
# Shares refused (issue 18: at most, at most, at least) and read right (issue 30: at least).
GOALS = {"mnist": 0.005, "photos": 0.02, "scrawls": 0.9, "paper": 0.95}
AT_LEAST = {"scrawls", "paper"}
# What an MNIST model says of itself: how predict and the server make its pictures.
DIGIT_MODEL = ModelInfo(class_names=[str(d) for d in range(10)], dataset="mnist", family="mlp",
                        input_shape=(28, 28, 1), prepare="digit", refusal={"kind": "digit"})


@dataclass
class Answer:
    read: str       # the class the model reads, or "" when the transform found no digit
    refusal: str    # why it is not a digit (pictures/refusal.py, or the transform's), or None


def answers(classifier, pictures, transform):
    """An Answer for each picture, read as predict and the API read it: `transform(picture)`
    brings it to MNIST form (or raises InputError), the model reads it, the rules judge it."""
    seen, reasons = [], []
    for picture in pictures:
        try:
            seen.append(np.asarray(transform(picture)).reshape(28, 28, 1))
            reasons.append(None)
        except InputError as error:
            reasons.append(str(error))
    probabilities = iter(classifier.probabilities(np.stack(seen)) if seen else [])
    pixels = iter(seen)
    results = []
    for reason in reasons:
        if reason:
            results.append(Answer("", reason))
            continue
        probs = next(probabilities)
        results.append(Answer(classifier.info.class_names[int(np.argmax(probs))],
                              rules.refusal(next(pixels)[..., 0], probs)))
    return results


def from_png(drawing):
    return model_input(drawing.png, DIGIT_MODEL)  # as predict and the server read it


def share(answers):
    """The share of `answers` that are refusals."""
    return sum(a.refusal is not None for a in answers) / len(answers)


def read_right(answers, truths):
    """The share of `answers` that read the truth and are not refused."""
    return sum(a.read == t and a.refusal is None for a, t in zip(answers, truths)) / len(answers)


def mnist_available():
    return MNIST.is_file() or bool(os.environ.get("MNIST_MIRROR"))


def mnist_test_digits():
    """(pixels, labels) of the 10,000 real MNIST test digits, grey levels 0-255."""
    if MNIST.is_file():
        with np.load(MNIST) as data:  # (N, 28, 28, 1), as download writes them
            return data["x_test"][..., 0].astype(np.float32), data["y_test"]
    mirror = Path(os.environ["MNIST_MIRROR"])
    return (idx(mirror / "t10k-images-idx3-ubyte.gz").astype(np.float32),
            idx(mirror / "t10k-labels-idx1-ubyte.gz"))


def idx(path):
    """An IDX file (gzipped) as an array: its header gives the number of dimensions and each."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)

