"""The README tells the truth: the one place the tests assert today's defaults (the recipes'
numbers, the parameter counts, the committed accuracy), and every figure it quotes is one the
committed metrics or the last benchmark run (bench/results.md) hold."""

import json
import re

import pytest

from tests.conftest import REPO, repo_params

README = (REPO / "README.md").read_text()
RESULTS = (REPO / "bench/results.md").read_text()


def row(label):
    """The cells of the README's first table row that starts with `label`."""
    line = next(line for line in README.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_newcomer_can_finish_it():
    assert len(README.splitlines()) <= 250
    for command in ("make repro", "make test-full"):
        assert f"{command}  " in README or f"{command}\n" in README
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", README):
        assert (REPO / link).exists(), link


def test_the_recipes_are_those_of_params_yaml():
    params = repo_params()["train"]
    mlp, cnn = params["mlp"], params["cnn"]
    _, mlp_model, cnn_model = row("Model")
    _, mlp_recipe, cnn_recipe = row("Recipe")
    assert f"Dense {mlp['hidden_units'][0]} ReLU → Dropout {mlp['dropout']}" in mlp_model
    assert f"Adam {mlp['learning_rate']}" in mlp_recipe
    assert f"batch {mlp['batch_size']}, {mlp['epochs']} epochs" in mlp_recipe
    convolutions = " → pool → ".join(f"Conv {f}" for f in cnn["filters"])
    assert convolutions + " → pool → " + " → ".join(
        f"Conv {f}" for f in cnn["final_filters"]) in cnn_model
    assert f"Dropout {cnn['dropout']}" in cnn_model
    assert f"Adam {cnn['learning_rate']}" in cnn_recipe
    assert f"batch {cnn['batch_size']}, {cnn['epochs']} epochs" in cnn_recipe


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_the_parameter_counts_are_the_models(family):
    from stages.common.models import build_model
    from stages.common.params import CNN, MLP

    cfg = {"mlp": MLP, "cnn": CNN}[family].model_validate(repo_params()["train"][family])
    model = build_model(family, cfg, 0, (28, 28, 1), 10, {"mean": 0.0, "std": 1.0}, "mnist")
    cell = row("Model")[1 if family == "mlp" else 2]
    assert f"({model.count_params():,} parameters)" in cell


def test_the_accuracies_and_times_come_from_the_committed_run_and_the_benchmark():
    test = json.loads((REPO / "metrics/test.json").read_text())
    _, mlp_accuracy, cnn_accuracy = row("**MNIST test accuracy**")
    assert mlp_accuracy == f"**{100 * test['test_accuracy']:.2f} %**"
    cnn_line = next(line for line in RESULTS.splitlines()
                    if line.startswith("| this project") and "99." in line)
    assert cnn_accuracy.strip("*").replace(" %", "%") in cnn_line
    _, mlp_time, cnn_time = row("Training, 2-core CPU")
    assert f"| {mlp_time.removesuffix(' s')} |" in RESULTS
    assert f"| {cnn_time.removesuffix(' s')} |" in RESULTS


def test_every_benchmark_figure_is_in_the_benchmarks_results():
    section = README.split("## Performance", 1)[1].split("\n## ", 1)[0]
    figures = re.findall(r"\b\d[\d,]*\.\d+|\b\d{2,}[\d,]*", section)
    missing = [figure for figure in figures if figure.replace(",", "") not in RESULTS.replace(
        ",", "")]
    assert missing == [], "quoted in the README but not in bench/results.md"
