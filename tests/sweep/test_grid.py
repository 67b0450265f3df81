"""The grid is DVC's: the same trials, names and params as `dvc exp run --queue -S` queues; and
what the head makes of it (CPUs per trial, the table) and of what commands print, from plain
values."""

import json

import pytest

from sweep import grid, report
from sweep.repo import metric_of
from sweep.trial import Outcome, error_line, training_seconds
from tests.conftest import read_yaml

pytestmark = pytest.mark.slow

# Each syntax of DVC's grid: a list, a range, a choice, and a value every trial shares.
GRID = ["train.mlp.learning_rate=0.001,0.003", "train.seed=range(1,3)",
        "train.model=choice(mlp,cnn)", "train.mlp.epochs=3"]


def queued_params(repo):
    """{name: params.yaml} of the experiments in DVC's queue, from `dvc exp show --json`."""
    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    return {rev["name"]: rev["data"]["params"]["params.yaml"]["data"]
            for baseline in shown for experiment in baseline.get("experiments") or []
            for rev in experiment["revs"]}


def test_the_trials_are_those_dvc_queues_with_the_same_names_and_params(
        pipeline_repo, monkeypatch, tmp_path):
    repo = pipeline_repo
    repo.dvc("exp", "run", "--queue", "-n", "g", *[part for arg in GRID for part in ("-S", arg)])
    try:
        queued = queued_params(repo)
    finally:
        repo.dvc("queue", "remove", "--all")
    monkeypatch.setenv("PATH", repo.env["PATH"])  # the head runs `dvc` as the user does
    head = repo.git("rev-parse", "HEAD").stdout.strip()
    trials = grid.plan(repo.path, head, GRID, "g")

    assert [t.name for t in trials] == [f"g-{k}" for k in range(1, 9)]
    (tmp_path / "params.yaml").write_text(trials[0].files["params.yaml"])
    assert read_yaml(tmp_path / "params.yaml") == queued["g-1"]
    assert {t.name: t.params["train.seed"] for t in trials} == \
        {name: params["train"]["seed"] for name, params in queued.items()}
    assert trials[0].changed == "train.model=mlp train.seed=1 train.mlp.learning_rate=0.001"


@pytest.mark.parametrize("family, threads, node_cpus, cpus", [
    ("mlp", 2, 4, 2),
    ("mlp", 8, 4, 4),  # capped: Ray would wait forever for an 8-CPU node
    ("mlp", 0, 4, 4),  # TensorFlow's "all cores": a node to itself
    ("cnn", 1, 4, 1),  # the family's own section counts
])
def test_a_trial_asks_for_the_cpus_its_recipe_trains_with(family, threads, node_cpus, cpus):
    params = {"train.model": family, "train.mlp.threads": 3, "train.cnn.threads": 3,
              f"train.{family}.threads": threads}
    assert grid.cpus(params, node_cpus) == cpus


def test_params_that_do_not_say_ask_for_one_cpu():
    assert grid.cpus({"train.model": "mlp"}, 8) == 1
    assert grid.cpus({}, 8) == 1


def test_the_table_shows_what_tells_trials_apart():
    params = grid.flat_params({"params.yaml": "train:\n  seed: 0\n  mlp:\n    epochs: 1\n",
                               "other.yaml": "a: 1\n"})
    assert params == {"train.seed": 0, "train.mlp.epochs": 1, "other.yaml:a": 1}
    trials = [{**params, "train.seed": seed, "train.mlp.epochs": 3} for seed in (1, 2)]
    assert grid.changed_params(trials, params) == ["train.seed=1", "train.seed=2"]
    assert grid.changed_params(trials[:1], params) == ["train.seed=1 train.mlp.epochs=3"]
    assert grid.changed_params([params], params) == ["(none)"]


def test_a_failed_command_is_told_by_its_most_telling_line():
    stage = ("Running stage 'train':\n> python -m stages.train\nerror: params.yaml: "
             "train.mlp.epochs = 0 is not allowed\nERROR: failed to reproduce 'train'\n")
    assert error_line(stage) == "params.yaml: train.mlp.epochs = 0 is not allowed"
    assert error_line("x\nERROR: failed to push data to the cloud\n") == \
        "failed to push data to the cloud"
    assert error_line("fatal: 'origin' does not appear to be a git repository\nfatal: Could "
                      "not read from remote repository.\n\nPlease make sure ...\n") == \
        "fatal: 'origin' does not appear to be a git repository"
    assert error_line("warming up\nsomething broke\n\n") == "something broke"
    assert error_line("") == "no output"


def test_training_time_comes_from_the_file_train_writes(tmp_path):
    assert training_seconds(tmp_path) is None  # train did not run: its outputs were cached
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/timing.json").write_text('{"train_seconds": 10.1}')
    assert training_seconds(tmp_path) == 10.1


def test_metrics_are_read_from_dvc_api_exp_show_rows():
    rows = [{"Experiment": None, "rev": "workspace", "accuracy": 0.9},
            {"Experiment": "s-1", "rev": "abc1234", "accuracy": 0.98},
            {"Experiment": "s-2", "rev": "def5678", "accuracy": None},
            {"Experiment": "other", "rev": "0123456"}]
    assert metric_of(rows, ["s-1", "s-2", "s-3"], ("metrics/a.json", "accuracy")) == \
        {"s-1": 0.98, "s-2": None, "s-3": None}
    # Where two metrics files share the key, DVC names the column after the file too.
    rows = [{"Experiment": "s-1", "metrics/a.json:accuracy": 0.97, "b.json:accuracy": 0.5}]
    assert metric_of(rows, ["s-1"], ("metrics/a.json", "accuracy")) == {"s-1": 0.97}


def test_the_table_puts_the_best_first_and_failures_last():
    outcomes = [Outcome("s-1", "n", None, training_s=10.0, wall_s=30.0),
                Outcome("s-2", "n", "params.yaml: train.mlp.epochs = 0 is not allowed"),
                Outcome("s-3", "n", None, training_s=9.0, wall_s=29.0),
                Outcome("s-4", "n", None, training_s=None, wall_s=6.0)]
    changed = {f"s-{k}": f"train.seed={k}" for k in range(1, 5)}
    lines = report.table(changed, outcomes, {"s-1": 0.97, "s-3": 0.98, "s-4": None}).splitlines()

    assert lines[0].split() == ["trial", "changed", "params", "test", "accuracy", "training",
                                "trial", "time"]
    assert [line.split()[0] for line in lines[1:5]] == ["s-3", "s-1", "s-4", "s-2"]
    assert lines[1].split() == ["s-3", "train.seed=3", "0.9800", "9.0", "s", "29.0", "s"]
    assert lines[3].split()[2:] == ["-", "-", "6.0", "s"]
    assert lines[4].endswith("failed: params.yaml: train.mlp.epochs = 0 is not allowed")
    assert "`dvc exp apply s-3`" in lines[-1]
