"""The benchmark's arithmetic (its timings are read by people, never asserted by tests)."""

import pytest

from bench.run import summarise


def test_summary_leaves_out_the_first_epoch_and_adds_up_time_to_98():
    run = {"epoch_seconds": [5.0, 1.0, 3.0, 2.0, 2.5],
           "test_accuracy": [0.90, 0.97, 0.981, 0.979, 0.985]}
    summary = summarise(run)
    assert summary["median_epoch_s"] == pytest.approx(2.25)  # of 1, 3, 2, 2.5: not the 5 s
    assert summary["to_target"] == (pytest.approx(9.0), 3)   # 5 + 1 + 3, first over 98 %
    assert summary["train_s"] == pytest.approx(13.5)
    assert summary["final_accuracy"] == 0.985 and summary["epochs"] == 5


def test_summary_says_when_98_is_never_reached():
    run = {"epoch_seconds": [1.0, 1.0, 1.0], "test_accuracy": [0.5, 0.9, 0.97]}
    assert summarise(run)["to_target"] is None
