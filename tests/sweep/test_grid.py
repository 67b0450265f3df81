"""The grid is DVC's: the same trials, names and params as `dvc exp run --queue -S` queues; and
what the head makes of it (CPUs per trial, the table) from plain values."""

import json

import pytest

from sweep import grid, report
from sweep.repo import error_line, metric_of
from sweep.trial import Outcome, failure_reason, training_seconds

# Each syntax of DVC's grid: a list, a range, a choice, and a value every trial shares.
GRID = ["train.mlp.learning_rate=0.001,0.003", "train.seed=range(1,3)",
        "train.model=choice(mlp,cnn)", "train.mlp.epochs=3"]


def queued_params(repo):
    """{name: params.yaml} of the experiments in DVC's queue, from `dvc exp show --json`."""
    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    return {rev["name"]: rev["data"]["params"]["params.yaml"]["data"]
            for baseline in shown for experiment in baseline.get("experiments") or []
            for rev in experiment["revs"]}


def test_the_trials_are_those_dvc_queues_with_the_same_names_and_params(pipeline_repo):
    repo = pipeline_repo
    repo.dvc("exp", "run", "--queue", "-n", "g", *[part for arg in GRID for part in ("-S", arg)])
    try:
        queued = queued_params(repo)
    finally:
        repo.dvc("queue", "remove", "--all")
    trials = grid.trials("g", GRID, {"params.yaml": (repo.path / "params.yaml").read_text()})

    assert len(trials) == 8
    assert {t.name: t.params["params.yaml"] for t in trials} == queued


def trial(params, name="t-1"):
    return grid.Trial(name, {}, {"params.yaml": params})


@pytest.mark.parametrize("family, threads, node_cpus, cpus", [
    ("mlp", 2, 4, 2),
    ("mlp", 8, 4, 4),  # capped: Ray would wait forever for an 8-CPU node
    ("mlp", 0, 4, 4),  # TensorFlow's "all cores": a node to itself
    ("cnn", 1, 4, 1),  # the family's own section counts
])
def test_a_trial_asks_for_the_cpus_its_recipe_trains_with(family, threads, node_cpus, cpus):
    params = {"train": {"model": family, "mlp": {"threads": 3}, "cnn": {"threads": 3},
                        family: {"threads": threads}}}
    assert grid.cpus(trial(params), node_cpus) == cpus


def test_params_that_do_not_say_ask_for_one_cpu():
    assert grid.cpus(trial({"train": {"model": "mlp"}}), 8) == 1
    assert grid.cpus(trial({}), 8) == 1


def test_the_table_shows_what_tells_trials_apart():
    trials = grid.trials("s", ["train.seed=1,2", "train.mlp.epochs=3"],
                         {"params.yaml": "train:\n  seed: 0\n  mlp:\n    epochs: 1\n"})
    assert grid.changed_params(trials) == {"s-1": "train.seed=1", "s-2": "train.seed=2"}
    one = grid.trials("s", ["train.seed=1"], {"params.yaml": "train:\n  seed: 0\n"})
    assert grid.changed_params(one) == {"s-1": "train.seed=1"}


def test_a_failed_command_is_told_by_its_most_telling_line():
    stage = ("Running stage 'train':\n> python -m stages.train\nerror: params.yaml: "
             "train.mlp.epochs = 0 is not allowed\nERROR: failed to reproduce 'train'\n")
    assert failure_reason(stage) == "params.yaml: train.mlp.epochs = 0 is not allowed"
    assert failure_reason("x\nERROR: failed to push data to the cloud\n") == \
        "failed to push data to the cloud"
    assert failure_reason("fatal: repository 'x' does not exist\n\n") == \
        "fatal: repository 'x' does not exist"
    assert failure_reason("") == "no output"
    assert error_line("fatal: 'origin' does not appear to be a git repository\nfatal: Could "
                      "not read from remote repository.\n\nPlease make sure ...\n") == \
        "fatal: 'origin' does not appear to be a git repository"


def test_training_time_comes_from_trains_own_line():
    assert training_seconds("train: epoch 2/2 ...\ntrain: trained 2 epochs in 10.1 s\n") == 10.1
    assert training_seconds("Stage 'train' is cached - skipping run") is None


def test_metrics_are_read_from_dvc_exp_show():
    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "abc", "experiments": [
                 {"revs": [{"name": "s-1", "data": {"metrics": {
                     "metrics/accuracy.json": {"data": {"accuracy": 0.98}}}}}]},
                 {"revs": [{"name": "s-2", "data": {"metrics": {}}}]},
                 {"revs": [{"name": "other", "data": {}}]}]}]
    assert metric_of(shown, ["s-1", "s-2", "s-3"], ("metrics/accuracy.json", "accuracy")) == \
        {"s-1": 0.98, "s-2": None, "s-3": None}


def test_the_table_puts_the_best_first_and_failures_last():
    outcomes = [Outcome("s-1", "n", None, 10.0, 20.0, 30.0),
                Outcome("s-2", "n", "params.yaml: train.mlp.epochs = 0 is not allowed"),
                Outcome("s-3", "n", None, 9.0, 19.0, 29.0),
                Outcome("s-4", "n", None, None, 5.0, 6.0)]
    changed = {f"s-{k}": f"train.seed={k}" for k in range(1, 5)}
    lines = report.table(changed, outcomes, {"s-1": 0.97, "s-3": 0.98, "s-4": None}).splitlines()

    assert lines[0].split() == ["trial", "changed", "params", "test", "accuracy", "training",
                                "trial", "time"]
    assert [line.split()[0] for line in lines[1:5]] == ["s-3", "s-1", "s-4", "s-2"]
    assert lines[1].split() == ["s-3", "train.seed=3", "0.9800", "9.0", "s", "29.0", "s"]
    assert lines[3].split()[2:] == ["-", "-", "6.0", "s"]
    assert lines[4].endswith("failed: params.yaml: train.mlp.epochs = 0 is not allowed")
    assert "`dvc exp apply s-3`" in lines[-1]
