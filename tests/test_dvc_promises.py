"""The promises DVC makes, held for this pipeline and checked with the real dvc and git CLIs.

Each test works in a temporary git repo holding a copy of the pipeline, on the tiny dataset
served over 127.0.0.1 (see conftest.py). All are slow: they run `dvc repro` several times.
"""

import json
import time

import pytest
import yaml

from tests.conftest import PipelineRepo

pytestmark = pytest.mark.slow

ALL_STAGES = ["download", "preprocess", "train", "evaluate"]


def lock_md5s(repo):
    """{out path: md5} for every output of every stage in dvc.lock."""
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", [])}


def commit_all(repo, message):
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", message)


def test_a_change_reruns_exactly_the_stages_it_affects(pipeline_repo):
    repo = pipeline_repo
    assert repo.repro() == ALL_STAGES
    assert repo.repro() == []

    repo.set_param("train.epochs", 4)
    assert repo.repro() == ["train", "evaluate"]

    repo.set_param("preprocess.seed", 7)
    assert repo.repro() == ["preprocess", "train", "evaluate"]

    repo.set_param("evaluate.batch_size", 256)
    assert repo.repro() == ["evaluate"]

    # A code change that changes the model reruns train, and evaluate because the model changed.
    train_py = repo.path / "stages/train.py"
    source = train_py.read_text()
    assert 'seed=cfg["seed"] + i)' in source
    train_py.write_text(source.replace('seed=cfg["seed"] + i)', 'seed=cfg["seed"] + i + 1)'))
    assert repo.repro() == ["train", "evaluate"]

    # A comment-only edit reruns train; the model comes out bit-identical, so DVC skips evaluate.
    train_py.write_text(train_py.read_text() + "\n# a comment\n")
    assert repo.repro() == ["train"]
    assert "up to date" in repo.dvc("status").stdout


def test_two_clones_produce_bit_identical_outputs(pipeline_repo, tmp_path):
    first = pipeline_repo
    first.repro()
    commit_all(first, "first run")
    first.repro("-f")
    again = lock_md5s(first)

    clone_path = tmp_path / "second-clone"
    first.git("clone", "-q", str(first.path), str(clone_path))
    second = PipelineRepo(clone_path, first.env["MNIST_MIRROR"])
    assert second.repro("-f") == ALL_STAGES

    md5s = lock_md5s(second)
    assert set(md5s) == {"data/mnist.npz", "data/processed", "model", "metrics/train.json",
                         "metrics/history.csv", "metrics/accuracy.json", "metrics/confusion.csv",
                         "metrics/errors.png"}
    assert md5s == again
    assert second.git("status", "--porcelain").stdout == ""  # dvc.lock and metrics unchanged


def test_run_cache_restores_outputs_without_training(pipeline_repo):
    repo = pipeline_repo
    repo.repro()
    model_md5 = lock_md5s(repo)["model"]

    repo.set_param("train.epochs", 3)
    assert repo.repro() == ["train", "evaluate"]
    timing = repo.path / "metrics/timing.json"
    last_training = timing.stat().st_mtime_ns
    time.sleep(0.05)

    repo.set_param("train.epochs", 5)
    out = repo.dvc("repro").stdout
    assert "Running stage" not in out
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out
    assert timing.stat().st_mtime_ns == last_training, "train.py ran: timing.json was rewritten"
    assert lock_md5s(repo)["model"] == model_md5
    assert "up to date" in repo.dvc("status").stdout


def test_metrics_and_params_diff_across_branches(pipeline_repo):
    repo = pipeline_repo
    repo.repro()
    commit_all(repo, "baseline results")
    base = json.loads((repo.path / "metrics/accuracy.json").read_text())

    repo.git("checkout", "-q", "-b", "more-epochs")
    repo.set_param("train.epochs", 8)
    assert repo.repro() == ["train", "evaluate"]
    commit_all(repo, "8 epochs")
    new = json.loads((repo.path / "metrics/accuracy.json").read_text())
    assert new["accuracy"] != base["accuracy"] or new["loss"] != base["loss"]

    metrics = json.loads(repo.dvc("metrics", "diff", "main", "--json").stdout)
    loss = metrics["metrics/accuracy.json"]["loss"]
    assert loss["old"] == base["loss"] and loss["new"] == new["loss"]
    assert loss["diff"] == pytest.approx(new["loss"] - base["loss"])
    if new["accuracy"] != base["accuracy"]:
        accuracy = metrics["metrics/accuracy.json"]["accuracy"]
        assert (accuracy["old"], accuracy["new"]) == (base["accuracy"], new["accuracy"])
    epochs = metrics["metrics/train.json"]["epochs"]
    assert (epochs["old"], epochs["new"]) == (5, 8)

    params = json.loads(repo.dvc("params", "diff", "main", "--json").stdout)
    assert params["params.yaml"] == {"train.epochs": {"old": 5, "new": 8, "diff": 3}}


def test_experiments_run_show_and_queue(pipeline_repo):
    repo = pipeline_repo
    repo.repro()
    commit_all(repo, "baseline results")

    repo.dvc("exp", "run", "-n", "wide", "-S", "train.hidden_units=[256]", "-S", "train.epochs=3")
    repo.dvc("exp", "run", "--queue", "-n", "lr-low", "-S", "train.learning_rate=0.001")
    repo.dvc("exp", "run", "--queue", "-n", "lr-high", "-S", "train.learning_rate=0.01")
    repo.dvc("queue", "start", "--jobs", "2")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = repo.dvc("queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(2)
    finally:
        repo.dvc("queue", "stop", "--kill", check=False)  # no worker outlives the test
    assert "Failed" not in status, status
    assert status.count("Success") == 2, status

    experiments = {}
    for baseline in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                experiments[rev["name"]] = rev["data"]
    assert {"wide", "lr-low", "lr-high"} <= set(experiments)
    wide = experiments["wide"]
    assert wide["params"]["params.yaml"]["data"]["train"]["hidden_units"] == [256]
    wide_metrics = wide["metrics"]["metrics/train.json"]["data"]
    assert wide_metrics["epochs"] == 3 and wide_metrics["params"] == 784 * 256 + 256 + 2570
    for name in ("lr-low", "lr-high"):
        assert 0 <= experiments[name]["metrics"]["metrics/accuracy.json"]["data"]["accuracy"] <= 1


def test_push_then_fresh_clone_pulls_everything(pipeline_repo, tmp_path):
    repo = pipeline_repo
    repo.repro()
    commit_all(repo, "results")
    storage = tmp_path / "mnist-dvc-storage"  # the default remote: ../../ from .dvc/, beside
    assert "mnist-dvc-storage" in repo.dvc("remote", "list").stdout
    repo.dvc("push")
    assert storage.is_dir() and any(storage.rglob("*"))

    clone = PipelineRepo(tmp_path / "fresh-clone", mirror_url="http://127.0.0.1:9/unused/")
    repo.git("clone", "-q", str(repo.path), str(clone.path))
    clone.dvc("pull")
    assert (clone.path / "model/model.keras").is_file()
    assert "up to date" in clone.dvc("status").stdout
    assert clone.repro() == []
