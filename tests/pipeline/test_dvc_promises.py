"""The promises DVC makes, held for this pipeline and checked with the real dvc and git CLIs.

Each test works in a temporary git repo holding a copy of the pipeline, on the tiny dataset
served over 127.0.0.1 (see conftest.py). All are slow: they run `dvc repro` several times.
"""

import json
import time

import pytest

from tests.conftest import PipelineRepo, read_yaml

pytestmark = pytest.mark.slow

ALL_STAGES = ["download", "preprocess", "train", "evaluate", "export"]
AFTER_TRAIN = ["train", "evaluate", "export"]


def lock_md5s(repo):
    """{out path: md5} for every output of every stage in dvc.lock."""
    lock = read_yaml(repo.path / "dvc.lock")
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", [])}


def commit_all(repo, message):
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", message)


def test_a_change_reruns_exactly_the_stages_it_affects(pipeline_repo):
    repo = pipeline_repo
    assert repo.repro() == ALL_STAGES
    assert repo.repro() == []

    repo.set_param("train.mlp.epochs", 4)
    assert repo.repro() == AFTER_TRAIN

    repo.set_param("preprocess.seed", 7)
    assert repo.repro() == ["preprocess"] + AFTER_TRAIN

    repo.set_param("evaluate.batch_size", 256)
    assert repo.repro() == ["evaluate"]

    # Another model family: train, and what reads the model, never the data stages.
    repo.set_param("train.model", "cnn")
    assert repo.repro() == AFTER_TRAIN
    assert json.loads((repo.path / "model/metadata.json").read_text())["family"] == "cnn"
    repo.set_param("train.model", "mlp")
    repo.repro()

    # A code change that changes the model reruns train, and what reads the model.
    models_py = repo.path / "stages/models.py"
    source = models_py.read_text()
    assert 'seed=cfg["seed"] + i)' in source
    models_py.write_text(source.replace('seed=cfg["seed"] + i)', 'seed=cfg["seed"] + i + 1)'))
    assert repo.repro() == AFTER_TRAIN

    # A comment-only edit reruns train; the model comes out bit-identical, so DVC skips the rest.
    train_py = repo.path / "stages/train.py"
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
    # Every output, DVCLive's summary and per-epoch curves included, is declared in dvc.yaml,
    # and each has the same bytes in both clones.
    assert set(md5s) == {"data/mnist.npz", "data/processed", "model/model.keras",
                         "model/metadata.json", "model/model.onnx", "metrics/train/metrics.json",
                         "metrics/train/plots/metrics", "metrics/accuracy.json",
                         "metrics/per_class.csv", "metrics/confusion.csv", "metrics/errors.png",
                         "metrics/export.json"}
    assert md5s == again
    assert second.git("status", "--porcelain").stdout == ""  # dvc.lock and metrics unchanged


def test_run_cache_restores_outputs_without_training(pipeline_repo):
    repo = pipeline_repo
    repo.repro()
    model_md5 = lock_md5s(repo)["model/model.keras"]

    repo.set_param("train.mlp.epochs", 3)
    assert repo.repro() == AFTER_TRAIN
    timing = repo.path / "metrics/timing.json"
    last_training = timing.stat().st_mtime_ns
    time.sleep(0.05)

    repo.set_param("train.mlp.epochs", 5)
    out = repo.dvc("repro").stdout
    assert "Running stage" not in out
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out
    assert timing.stat().st_mtime_ns == last_training, "train.py ran: timing.json was rewritten"
    assert lock_md5s(repo)["model/model.keras"] == model_md5
    assert "up to date" in repo.dvc("status").stdout


def test_metrics_and_params_diff_across_branches(pipeline_repo):
    repo = pipeline_repo
    repo.repro()
    commit_all(repo, "baseline results")
    base = json.loads((repo.path / "metrics/accuracy.json").read_text())

    repo.git("checkout", "-q", "-b", "more-epochs")
    repo.set_param("train.mlp.epochs", 8)
    assert repo.repro() == AFTER_TRAIN
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
    epochs = metrics["metrics/train/metrics.json"]["step"]
    assert (epochs["old"], epochs["new"]) == (5, 8)

    params = json.loads(repo.dvc("params", "diff", "main", "--json").stdout)
    assert params["params.yaml"] == {"train.mlp.epochs": {"old": 5, "new": 8, "diff": 3}}


def test_experiments_run_show_and_queue(pipeline_repo):
    repo = pipeline_repo
    repo.repro()
    commit_all(repo, "baseline results")

    before = (repo.path / "params.yaml").read_text().splitlines()
    repo.dvc("exp", "run", "-n", "wide", "-S", "train.mlp.hidden_units=[256]",
             "-S", "train.mlp.epochs=3")
    # DVC rewrote params.yaml: only the two values it set differ, comments stay where they were.
    after = (repo.path / "params.yaml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(after) == len(before) and changed == [
        ("    - 128", "    - 256"), ("    epochs: 5", "    epochs: 3")], changed
    repo.git("checkout", "params.yaml")
    repo.dvc("exp", "run", "--queue", "-n", "lr-low", "-S", "train.mlp.learning_rate=0.001")
    repo.dvc("exp", "run", "--queue", "-n", "lr-high", "-S", "train.mlp.learning_rate=0.01")
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
    assert wide["params"]["params.yaml"]["data"]["train"]["mlp"]["hidden_units"] == [256]
    wide_metrics = wide["metrics"]["metrics/train/metrics.json"]["data"]
    assert wide_metrics["step"] == 3
    assert wide_metrics["parameter_count"] == 784 * 256 + 256 + 2570
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

    # The model as an artifact: a version is a git tag (GTO's name@version form); anyone can
    # then fetch it by name from the repository and its remote, outside any clone.
    repo.git("tag", "-a", "classifier-onnx@v1.0.0", "-m", "first version")
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    repo.dvc("artifacts", "get", str(repo.path), "classifier-onnx", "-o",
             str(fetched / "model.onnx"))
    assert (fetched / "model.onnx").read_bytes() == (repo.path / "model/model.onnx").read_bytes()


def test_params_dvc_would_read_differently_never_reach_the_run_cache(pipeline_repo):
    """`epochs: 010` is 10 to DVC and 8 to a YAML 1.1 reader: the stage refuses it, so no
    model is trained (and cached) under a value that was never what it seemed."""
    repo = pipeline_repo
    repo.repro()
    commit_all(repo, "results")
    params_file = repo.path / "params.yaml"
    text = params_file.read_text()
    params_file.write_text(text.replace("    epochs: 5\n", "    epochs: 010\n", 1))
    failed = repo.dvc("repro", check=False)
    assert failed.returncode != 0
    assert "train.mlp.epochs is ambiguous: DVC (YAML 1.2) reads 10" in failed.stderr
    params_file.write_text(text.replace("    epochs: 5\n", "    epochs: 10\n", 1))
    assert repo.repro() == AFTER_TRAIN  # trained for real, not restored from the run-cache
    assert json.loads((repo.path / "metrics/train/metrics.json").read_text())["step"] == 10
