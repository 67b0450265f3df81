"""Evaluate's pure functions: the test-set metrics, the per-class and confusion CSVs, and the
grid of the most confident errors."""

import json
import math
import warnings

import numpy as np
import pytest

from stages import evaluate
from stages.evaluate import classification_metrics


def probs_for(predicted, true, num_classes):
    """0.8 on the predicted class; 0.1 on the true class when the prediction is wrong."""
    probs = np.full((len(predicted), num_classes), 0.0)
    for row, (p, t) in enumerate(zip(predicted, true)):
        probs[row, p] = 0.8
        probs[row, t if t != p else (p + 1) % num_classes] = 0.1
    return probs


def test_classification_metrics_by_hand():
    # actual:    0 0 0 1 1 2
    # predicted: 0 0 1 1 2 2
    # class 0: TP 2, predicted 2, actual 3 -> precision 1,   recall 2/3, 1 error (33.33 %)
    # class 1: TP 1, predicted 2, actual 2 -> precision 1/2, recall 1/2, 1 error (50 %)
    # class 2: TP 1, predicted 2, actual 1 -> precision 1/2, recall 1,   no error
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = [0, 0, 1, 1, 2, 2]
    metrics, per_class = classification_metrics(y_true, probs_for(y_pred, y_true, 3),
                                                num_classes=3)
    assert metrics["test_accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    # The true class got 0.8 four times and 0.1 twice.
    assert metrics["test_loss"] == pytest.approx(-(4 * math.log(0.8) + 2 * math.log(0.1)) / 6,
                                                 abs=1e-6)
    expected = [(1, 33.33, 1.0, 2 / 3), (1, 50.0, 0.5, 0.5), (0, 0.0, 0.5, 1.0)]
    assert len(per_class) == len(expected)
    for got, (errors, rate, precision, recall) in zip(per_class, expected):
        assert (got["errors"], got["error_rate"]) == (errors, rate)
        assert got["precision"] == pytest.approx(precision, abs=1e-6)
        assert got["recall"] == pytest.approx(recall, abs=1e-6)
    # The headline numbers only, each named for the test set: `dvc exp show` and `dvc metrics
    # show` stay readable; classes go to per_class.csv.
    assert set(metrics) == {"test_accuracy", "test_loss"}
    json.dumps(metrics)  # written as is to metrics/test.json
    assert evaluate.per_class_csv(per_class, ["zero", "one, with a comma", "two"]) == (
        b"class,name,errors,error_rate,precision,recall\n0,zero,1,33.33,1.0,0.666667\n"
        b'1,"one, with a comma",1,50.0,0.5,0.5\n2,two,0,0.0,0.5,1.0\n')


def test_classification_metrics_absent_class_scores_zero_without_warnings():
    y_true = np.array([0, 1, 1])
    probs = probs_for([0, 1, 0], y_true, 4)  # class 2 never occurs, class 3 never predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics, per_class = classification_metrics(y_true, probs, num_classes=4)
    for c in (2, 3):  # no images of either: no errors, no error rate
        assert per_class[c] == {"errors": 0, "error_rate": 0.0, "precision": 0.0, "recall": 0.0}
    assert per_class[0]["precision"] == pytest.approx(0.5)
    assert per_class[1]["recall"] == pytest.approx(0.5)
    assert metrics["test_accuracy"] == pytest.approx(2 / 3, abs=1e-6)


def test_most_confident_errors_orders_wrong_predictions_by_confidence():
    y_true = np.array([0, 1, 2, 3])
    probs = np.array([[0.9, 0.1, 0.0],    # right
                      [0.6, 0.4, 0.0],    # wrong, 60 %
                      [0.05, 0.95, 0.0],  # wrong, 95 %
                      [0.0, 0.0, 1.0]])   # wrong (3 -> 2), 100 %
    assert evaluate.most_confident_errors(y_true, probs, 10).tolist() == [3, 2, 1]
    assert evaluate.most_confident_errors(y_true, probs, 2).tolist() == [3, 2]


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64, 3), (8, 8, 1)])
def test_error_grid_has_one_captioned_cell_per_error(shape):
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (12, *shape), dtype=np.uint8)
    y_true = np.arange(12) % 10
    probs = np.eye(10)[(y_true + 1) % 10] * 0.9 + 0.01  # every prediction wrong
    grid = evaluate.error_grid(pictures, y_true, probs, 7, [str(d) for d in range(10)],
                               columns=5)
    cell = shape[0] * round(112 / shape[0])  # every picture shown at about 112 px
    assert grid.size[0] == 5 * cell and grid.size[1] == 2 * (cell + 14)  # 7 cells: 2 rows
    first = np.asarray(grid)[:cell, :cell]
    assert first.std() > 0  # the first cell shows a picture
    assert (first[..., 0] != first[..., 1]).any() == (shape[2] == 3)  # in colour if it was


def test_confusion_csv_holds_the_errors_alone_named_by_class():
    names = ["T-shirt/top", "Trouser", "Ankle boot, size 9"]
    y_true, y_pred = np.array([0, 2, 1, 2]), np.array([1, 2, 1, 0])
    assert evaluate.confusion_csv(y_true, y_pred, names) == (
        b'actual,predicted\nT-shirt/top,Trouser\n"Ankle boot, size 9",T-shirt/top\n')


