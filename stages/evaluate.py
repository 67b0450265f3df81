"""Evaluate stage: the trained model scored on the held-out test set, the only place it is used:
metrics/test.json (test_accuracy and test_loss, what `dvc metrics diff` and `dvc exp show`
compare), and for `dvc plots` each class's errors (per_class.csv), a row per wrong answer
(confusion.csv: the matrix of the errors alone) and the most confident mistakes (errors.png).
"""

import csv
import io
import logging

import numpy as np

from stages.common import layout, params
from stages.common.files import atomic, load_json, load_npz, write_bytes, write_json
from stages.common.runner import import_tensorflow, run

log = logging.getLogger("evaluate")
EPSILON = 1e-7  # Keras clips probabilities the same way before taking the log


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           num_classes: int) -> tuple[dict, list[dict]]:
    """(headline, per_class): accuracy and loss on the test set; and for each class,
    its errors (images of it read as another class), error rate (in %), precision and recall."""
    y_pred = probs.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    true_pos = np.diag(confusion)
    predicted, images = confusion.sum(axis=0), confusion.sum(axis=1)
    # A class never predicted (or absent) has undefined precision (recall): report 0, as sklearn.
    precision = np.divide(true_pos, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_pos, images, out=np.zeros(num_classes), where=images > 0)
    errors = images - true_pos
    error_rate = np.divide(100 * errors, images, out=np.zeros(num_classes), where=images > 0)
    per_class = [{"errors": int(errors[c]), "error_rate": round(float(error_rate[c]), 2),
                  "precision": round(precision[c], 6), "recall": round(recall[c], 6)}
                 for c in range(num_classes)]
    picked = np.clip(probs[np.arange(len(y_true)), y_true], EPSILON, 1.0)  # the true class's
    headline = {"test_accuracy": round(float(np.mean(y_pred == y_true)), 6),
                "test_loss": round(float(-np.mean(np.log(picked))), 6)}
    return headline, per_class


def csv_bytes(rows: list) -> bytes:
    """Rows (the first the header) as CSV, with "\\n" line ends on every platform."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode()


def per_class_csv(per_class: list[dict], class_names: list[str]) -> bytes:
    columns = ["errors", "error_rate", "precision", "recall"]
    return csv_bytes([["class", "name", *columns]] + [
        [c, name, *(m[k] for k in columns)] for c, (name, m) in enumerate(zip(class_names,
                                                                            per_class))])


def confusion_csv(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> bytes:
    """One row per wrong answer: DVC's confusion matrix of them shows where the errors go,
    which the right answers (99 % of the diagonal) would otherwise drown."""
    wrong = np.flatnonzero(y_true != y_pred)
    return csv_bytes([["actual", "predicted"]] + [[class_names[y_true[i]],
                                                    class_names[y_pred[i]]] for i in wrong])


def most_confident_errors(y_true: np.ndarray, probs: np.ndarray, count: int) -> np.ndarray:
    """Indices of wrong predictions, most confident first (ties: lower index first)."""
    wrong = np.flatnonzero(probs.argmax(axis=1) != y_true)
    confidence = probs[wrong].max(axis=1)
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def error_grid(pictures: np.ndarray, y_true: np.ndarray, probs: np.ndarray, count: int,
               class_names: list[str], columns: int = 5) -> object:
    """A PNG-ready grid of the `count` most confidently wrong pictures, each captioned
    '4 as 9 97%' (names cut to 8 characters), each shown at about 112 px."""
    from PIL import Image, ImageDraw, ImageFont

    picked = most_confident_errors(y_true, probs, count)
    side = pictures.shape[1]
    cell, caption = side * max(1, round(112 / side)), 14
    rows = max(1, -(-len(picked) // columns))
    grid = Image.new("RGB", (columns * cell, rows * (cell + caption)), (40, 40, 40))
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default(size=11)
    for n, i in enumerate(picked):
        picture = Image.fromarray(pictures[i].squeeze(axis=2) if pictures.shape[3] == 1
                                  else pictures[i])
        x, y = (n % columns) * cell, (n // columns) * (cell + caption)
        grid.paste(picture.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        truth, guess = (class_names[c][:8] for c in (y_true[i], probs[i].argmax()))
        draw.text((x + 2, y + cell + 1), f"{truth} as {guess} {probs[i].max():.0%}",
                  fill=(255, 255, 255), font=font)
    if len(picked) == 0:
        draw.text((4, 4), "no errors", fill=(255, 255, 255), font=font)
    return grid


def main() -> None:
    cfg = params.load().evaluate
    test = load_npz(layout.SPLITS["test"], "preprocess", ("x", "y"))
    dataset = load_json(layout.DATASET_INFO, "preprocess")
    class_names = dataset["class_names"]

    import_tensorflow()
    from stages.common.keras_file import load_model

    model = load_model(layout.KERAS_MODEL, dataset["input_shape"], len(class_names))
    probs = model.predict(test["x"].astype(np.float32), batch_size=layout.INFERENCE_BATCH,
                          verbose=0)
    y_true = test["y"].astype(np.int64)

    headline, per_class = classification_metrics(y_true, probs, len(class_names))
    write_json(layout.TEST_METRICS, headline)
    write_bytes(layout.PER_CLASS, per_class_csv(per_class, class_names))
    write_bytes(layout.CONFUSION, confusion_csv(y_true, probs.argmax(axis=1), class_names))
    with atomic(layout.ERRORS) as tmp:
        error_grid(test["x"], y_true, probs, cfg.error_grid, class_names).save(tmp, format="PNG")
    log.info("test accuracy %.4f, loss %.4f, %d of %d wrong", headline["test_accuracy"],
             headline["test_loss"], sum(m["errors"] for m in per_class), len(y_true))


if __name__ == "__main__":
    run(main)
