"""The benchmark's arithmetic (its timings are read by people, never asserted by tests)."""

import argparse
import os
import shlex
import sys
import types
from pathlib import Path

import pytest

from bench import folders
from bench.coldstart import all_imports, top_level_imports
from bench.load import multipart_body, percentile, summarise_client, wrk_result
from bench.run import DEFAULT_WORKERS, measure_operators, parse_args, serving_goals, training_goals
from bench.sweep import bench_env
from bench.trainers import RECIPES, recipe
from bench.training import accuracy_table, best_of_threads, ratio_to_torch, reached, summarise
from tests.conftest import REPO, read_yaml


def run(seconds, scores, threads=1):
    return {"epoch_seconds": seconds, "test_accuracy": scores, "threads": threads}


def test_summary_leaves_out_the_first_epoch_and_adds_up_time_to_target():
    summary = summarise(run([5.0, 1.0, 3.0, 2.0, 2.5], [0.90, 0.97, 0.981, 0.979, 0.985]), 0.98)
    assert summary["median_epoch_s"] == pytest.approx(2.25)  # of 1, 3, 2, 2.5: not the 5 s
    assert summary["to_target"] == (pytest.approx(9.0), 3)   # 5 + 1 + 3, first over 98 %
    assert summary["train_s"] == pytest.approx(13.5)
    assert summary["final_accuracy"] == 0.985 and summary["epochs"] == 5


def test_summary_of_the_cnn_counts_to_its_own_target():
    summary = summarise(run([4.0, 2.0, 2.0], [0.99, 0.994, 0.996]), 0.995)
    assert summary["to_target"] == (pytest.approx(8.0), 3)
    assert reached(summary, 0.995) == "8.0 s (epoch 3)"


def test_summary_says_when_the_target_is_never_reached():
    summary = summarise(run([1.0, 1.0, 1.0], [0.5, 0.9, 0.97]), 0.98)
    assert summary["to_target"] is None
    assert reached(summary, 0.98) == "not in 3 epochs"


def test_a_single_epoch_is_its_own_median():  # a smoke run of --epochs 1
    assert summarise(run([7.0], [0.9]), 0.98)["median_epoch_s"] == 7.0


def test_each_trainer_is_compared_at_its_own_best_thread_count():
    runs = {
        "project": [summarise(run([9, 1.0, 1.0], [0.9] * 3, 1), 0.98),
                    summarise(run([9, 0.6, 0.6], [0.9] * 3, 2), 0.98)],
        "torch": [summarise(run([9, 0.8, 0.8], [0.9] * 3, 1), 0.98),
                  summarise(run([9, 1.2, 1.2], [0.9] * 3, 2), 0.98)],
    }
    assert best_of_threads(runs["project"])["threads"] == 2
    assert best_of_threads(runs["torch"])["threads"] == 1
    assert ratio_to_torch(runs) == {"project": pytest.approx(0.75), "torch": pytest.approx(1.0)}


def test_a_tie_goes_to_fewer_threads():
    tied = [summarise(run([1, 0.5], [0.9, 0.9], t), 0.98) for t in (2, 1)]
    assert best_of_threads(tied)["threads"] == 1


def test_percentiles_interpolate_between_ranks_as_numpy_does():
    values = [5, 1, 4, 2, 3]
    assert percentile(values, 50) == 3
    assert percentile(values, 0) == 1 and percentile(values, 100) == 5
    assert percentile(values, 99) == pytest.approx(4.96)  # numpy.percentile(values, 99)
    assert percentile([0.010, 0.020], 50) == pytest.approx(0.015)


def test_the_python_client_summary_counts_non_2xx_and_socket_errors():
    summary = summarise_client([0.01] * 98 + [0.2, 0.3], [200] * 99 + [500], 2, seconds=0.5)
    assert summary["requests"] == 100 and summary["rps"] == pytest.approx(200)
    assert summary["p50_ms"] == pytest.approx(10)
    assert summary["p99_ms"] == pytest.approx(201)  # between 200 and 300 ms, at 0.01 of a rank
    assert summary["non_2xx"] == 1 and summary["socket_errors"] == 2


def test_wrk_results_come_from_the_script_line_in_microseconds():
    stdout = ("Running 10s test @ http://127.0.0.1:1/predict\n  Latency  12.00ms\n"
              'BENCH {"requests": 5000, "duration_us": 10000000, "status_errors": 3, '
              '"socket_errors": 1, "p50_us": 12500, "p99_us": 98000, "max_us": 150000}\n')
    result = wrk_result(stdout)
    assert result["rps"] == pytest.approx(500) and result["seconds"] == pytest.approx(10)
    assert (result["p50_ms"], result["p99_ms"], result["max_ms"]) == (12.5, 98.0, 150.0)
    assert result["non_2xx"] == 3 and result["socket_errors"] == 1


def test_api_and_predict_goals():
    fast = {"rps": 450, "p99_ms": 80, "non_2xx": 0, "socket_errors": 0}
    cold = {"median_s": 0.3, "max_s": 0.6, "peak_rss_mb": 140, "heavy_imports": []}
    # One worker is measured for the table; the goal is the server's default worker count.
    rows = serving_goals(cold, {"runs": {1: {**fast, "rps": 200}, DEFAULT_WORKERS: fast}})
    assert ["**met**" in row for row in rows] == [True, True]
    assert f"API, {DEFAULT_WORKERS} worker" in rows[1]
    with_an_error = {DEFAULT_WORKERS: {**fast, "socket_errors": 1}}
    assert "**missed**" in serving_goals(None, {"runs": with_an_error})[0]
    assert "**missed**" in serving_goals({**cold, "heavy_imports": ["tensorflow"]}, None)[0]


def test_the_multipart_body_holds_the_png_in_the_file_field():
    body = multipart_body(b"\x89PNG-bytes")
    assert b'name="file"; filename="digit.png"' in body
    assert b"\r\n\r\n\x89PNG-bytes\r\n--" in body and body.endswith(b"--\r\n")


IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       120 |        120 |     _io
import time:      5000 |     150000 |   numpy._core
import time:      1494 |     189663 | numpy
import time:       838 |     108798 | onnxruntime
import time:        40 |         40 |   tensorflow.python
"""


def test_imports_are_read_from_importtime():
    assert top_level_imports(IMPORTTIME) == {"numpy": pytest.approx(0.189663),
                                             "onnxruntime": pytest.approx(0.108798)}
    assert "tensorflow.python" in all_imports(IMPORTTIME)
    assert "imported package" not in all_imports(IMPORTTIME)


def test_options():
    args = parse_args(["--only", "training", "--families", "cnn", "--threads", "1,2",
                       "--epochs", "1"])
    assert (args.only, args.families, args.threads, args.epochs) == (["training"], ["cnn"],
                                                                     [1, 2], 1)
    assert args.output is None  # a partial run does not overwrite results.md
    assert parse_args([]).output.name == "results.md"
    with pytest.raises(SystemExit):
        parse_args(["--only", "trainnig"])


def test_a_quick_run_is_short_and_writes_no_results_page():
    args = parse_args(["--quick"])
    assert (args.epochs, args.runs, args.api_seconds, args.output) == (1, 2, 2, None)
    assert parse_args(["--quick", "--epochs", "3"]).epochs == 3  # the options still apply
    assert (parse_args([]).epochs, parse_args([]).runs) == (None, 7)


def test_the_recipes_reach_their_accuracy_goals_only_on_real_data():
    def runs(accuracy):
        return {"project": [summarise(run([2.0] * 3, [0.9, 0.95, accuracy]), 0.98)],
                "torch": [summarise(run([3.0] * 3, [0.9] * 3), 0.98)]}

    rows = training_goals({"mlp": runs(0.981), "cnn": runs(0.994)}, real_data=True)
    accuracy = [row for row in rows if "recipe on MNIST" in row]
    assert ["**met**" in row for row in accuracy] == [True, False]  # 98 % and 99.5 %
    assert "98.10% after 3 epochs" in accuracy[0]
    random = training_goals({"mlp": runs(0.99)}, real_data=False)
    assert all("needs real MNIST" in row for row in random if "recipe on MNIST" in row)


def fashion_values(family):
    """docs/pipeline.md's `-S` values of a family's Fashion-MNIST recipe, as a dict."""
    row = next(line for line in (REPO / "docs/pipeline.md").read_text().splitlines()
               if line.startswith(f"| {family.upper()} | `"))
    values = {}
    for word in shlex.split(row.split("`", 1)[1].rsplit("`", 1)[0]):
        key, value = word.split("=", 1)
        if key.startswith(f"train.{family}."):
            values[key.rsplit(".", 1)[1]] = read_yaml_value(value)
    return values


def read_yaml_value(text):
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_the_fashion_recipes_are_those_of_the_docs(family):
    assert RECIPES["fashion-mnist"][family] == fashion_values(family)
    cfg = recipe(family, "fashion-mnist")
    assert {k: cfg[k] for k in RECIPES["fashion-mnist"][family]} == fashion_values(family)
    params = read_yaml(REPO / "params.yaml")["train"]
    assert recipe(family) == {**params[family], "seed": params["seed"]}  # MNIST: params alone


def test_the_accuracy_table_names_the_recipe_and_its_goal():
    summary = summarise(run([30.0] * 3, [0.88, 0.905, 0.912], threads=2), 0.91)
    text = "\n".join(accuracy_table("fashion-mnist", "cnn", summary))
    assert "`padding=same`" in text and "`augment_flip=True`" in text
    assert "| 3 | 30.00 | 90.0 | 91.20% | 90.0 s (epoch 3) |" in text


def folder_figures(arrays_mb=100.0, download=260.0, preprocess=330.0, seconds=(12.0, 6.0)):
    return {"pictures": 70_000, "arrays_mb": arrays_mb, "download_s": seconds[0],
            "download_peak_mb": download, "fixed_download_mb": 80.0,
            "preprocess_s": seconds[1], "preprocess_peak_mb": preprocess,
            "fixed_preprocess_mb": 60.0}


def test_folder_memory_is_counted_beyond_the_stages_fixed_cost():
    figures = folder_figures()
    assert folders.beyond(figures, "download") == pytest.approx(1.8)    # (260 - 80) / 100
    assert folders.beyond(figures, "preprocess") == pytest.approx(2.7)  # (330 - 60) / 100


def test_folder_goals():
    results = {"quick": False, "fashion_png": folder_figures(preprocess=200.0),
               "colour": folder_figures(),
               "fashion_accuracy": {"from_png": 0.8990, "from_idx": 0.9015}}
    (seconds, *memory, accuracy) = folders.goals(results)
    assert seconds[1] == "12.0 s + 6.0 s = 18.0 s" and seconds[2] is True
    assert [met for _, _, met in memory] == [True, False]  # 1.8x and 1.4x; 1.8x and 2.7x
    assert accuracy[1].endswith("0.25 point") and accuracy[2] is True
    slow = {**results, "fashion_png": folder_figures(seconds=(25.0, 6.0))}
    assert folders.goals(slow)[0][2] is False
    # A quick run reads fewer pictures and trains nothing: only the memory goals are judged.
    quick = {"quick": True, "colour": folder_figures()}
    assert [goal for goal, _, _ in folders.goals(quick)] == [memory[1][0]]


def test_the_operators_part_gets_its_own_command_line_and_its_printed_section(monkeypatch):
    def main():  # a stand-in for bench/operators.py, which reads its command line
        argparse.ArgumentParser().parse_args()
        print("## Operators\n\n| metrics | requests/s |")
        return {"requests_per_s": 1}

    monkeypatch.setitem(sys.modules, "bench.operators", types.SimpleNamespace(main=main))
    monkeypatch.setattr(sys, "argv", ["python -m bench", "--only", "operators"])
    sections, rows = measure_operators()
    assert sections == [["## Operators", "", "| metrics | requests/s |"]] and rows == []
    assert sys.argv == ["python -m bench", "--only", "operators"]


def test_the_sweep_bench_runs_the_stages_with_this_python_whatever_the_shell_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a shell where the venv is not activated
    env = bench_env(mirror=None)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["GIT_AUTHOR_NAME"] == "bench"
