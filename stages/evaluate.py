"""Evaluate stage: score the trained model on the held-out test set, the only place it is used.

Writes metrics/accuracy.json, the headline numbers `dvc metrics diff` and `dvc exp show`
compare (accuracy, loss, macro F1, errors); metrics/per_class.csv (precision, recall and F1 of
each class, drawn by DVC as a bar chart); metrics/confusion.csv (one actual,predicted row per
test image) for DVC's confusion-matrix plot; and metrics/errors.png, the test images the model
got wrong with the most confidence, for DVC's image plots.
"""

import logging
import os
from pathlib import Path

import numpy as np

from stages import params as params_module
from stages.fileio import (
    atomic_path,
    read_json_with,
    read_split,
    remove_stale_temporaries,
    write_bytes,
    write_json,
)
from stages.runner import import_tensorflow, run

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as train: the same kernels on every CPU

log = logging.getLogger("evaluate")

MODEL_FILE = Path("model/model.keras")
TEST_FILE = Path("data/processed/test.npz")
DATASET_FILE = Path("data/processed/dataset.json")
METRICS_FILE = Path("metrics/accuracy.json")
PER_CLASS_FILE = Path("metrics/per_class.csv")
CONFUSION_FILE = Path("metrics/confusion.csv")
ERRORS_FILE = Path("metrics/errors.png")
EPSILON = 1e-7  # Keras clips probabilities the same way before taking the log


def cross_entropy(y_true, probs):
    picked = np.clip(probs[np.arange(len(y_true)), y_true], EPSILON, 1.0)
    return float(-np.mean(np.log(picked)))


def classification_metrics(y_true, probs, num_classes=10):
    """(headline, per_class): accuracy, loss, macro F1 and errors; and each class's precision,
    recall and F1 (recall is also the share of that class's images read right)."""
    y_pred = probs.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    true_pos = np.diag(confusion).astype(np.float64)
    # A class never predicted (or absent) has undefined precision (recall): report 0, as sklearn.
    precision = np.divide(true_pos, confusion.sum(axis=0),
                          out=np.zeros(num_classes), where=confusion.sum(axis=0) > 0)
    recall = np.divide(true_pos, confusion.sum(axis=1),
                       out=np.zeros(num_classes), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros(num_classes), where=(precision + recall) > 0)
    per_class = [{"precision": round(precision[c], 6), "recall": round(recall[c], 6),
                  "f1": round(f1[c], 6)} for c in range(num_classes)]
    headline = {
        "accuracy": round(float(np.mean(y_pred == y_true)), 6),
        "loss": round(cross_entropy(y_true, probs), 6),
        "macro_f1": round(float(f1.mean()), 6),
        "misclassified": int(np.sum(y_pred != y_true)),
        "test_images": int(len(y_true)),
    }
    return headline, per_class


def csv_field(text):
    """A class name as a CSV field: quoted when it holds a comma or a quote."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"') else text


def per_class_csv(per_class, class_names):
    rows = ["class,name,precision,recall,f1"]
    rows += [f"{c},{csv_field(name)},{m['precision']},{m['recall']},{m['f1']}"
             for c, (name, m) in enumerate(zip(class_names, per_class))]
    return "\n".join(rows) + "\n"


def confusion_csv(y_true, y_pred, class_names):
    names = [csv_field(name) for name in class_names]
    rows = ["actual,predicted"] + [f"{names[a]},{names[p]}" for a, p in zip(y_true, y_pred)]
    return "\n".join(rows) + "\n"


def most_confident_errors(y_true, probs, count):
    """Indices of wrong predictions, most confident first (ties: lower index first)."""
    wrong = np.flatnonzero(probs.argmax(axis=1) != y_true)
    confidence = probs[wrong].max(axis=1)
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def error_grid(images, y_true, probs, count, class_names, columns=5, zoom=4):
    """A PNG-ready grid of the `count` most confidently wrong images, each captioned
    '4 as 9 97%' (names cut to 8 characters). Images are shown white on black, however they
    were normalised."""
    from PIL import Image, ImageDraw, ImageFont

    picked = most_confident_errors(y_true, probs, count)
    lo, hi = float(images.min()), float(images.max())
    cell, caption = 28 * zoom, 14
    rows = max(1, -(-len(picked) // columns))
    grid = Image.new("L", (columns * cell, rows * (cell + caption)), 40)
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default(size=11)
    for n, i in enumerate(picked):
        pixels = ((images[i] - lo) / (hi - lo or 1) * 255).astype(np.uint8)
        x, y = (n % columns) * cell, (n // columns) * (cell + caption)
        grid.paste(Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        truth, guess = (class_names[c][:8] for c in (y_true[i], probs[i].argmax()))
        label = f"{truth} as {guess} {probs[i].max():.0%}"
        draw.text((x + 2, y + cell + 1), label, fill=255, font=font)
    if len(picked) == 0:
        draw.text((4, 4), "no errors", fill=255, font=font)
    return grid


def main():
    import_tensorflow()
    from stages.keras_file import load_model_checked

    cfg = params_module.load("evaluate")
    remove_stale_temporaries(METRICS_FILE.parent)
    test = read_split(TEST_FILE)
    class_names = read_json_with(DATASET_FILE, "preprocess", ["class_names"])["class_names"]
    model = load_model_checked(MODEL_FILE, test["x"].shape[1:], len(class_names))
    probs = model.predict(test["x"], batch_size=cfg["batch_size"], verbose=0)
    y_true = test["y"].astype(np.int64)

    headline, per_class = classification_metrics(y_true, probs, len(class_names))
    write_json(METRICS_FILE, headline)
    write_bytes(PER_CLASS_FILE, per_class_csv(per_class, class_names).encode())
    write_bytes(CONFUSION_FILE, confusion_csv(y_true, probs.argmax(axis=1), class_names).encode())
    with atomic_path(ERRORS_FILE) as tmp:
        error_grid(test["x"], y_true, probs, cfg["error_grid"], class_names).save(tmp, format="PNG")
    log.info("test accuracy %.4f, loss %.4f, %d of %d misclassified", headline["accuracy"],
             headline["loss"], headline["misclassified"], headline["test_images"])


if __name__ == "__main__":
    run(main)
