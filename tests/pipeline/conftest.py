"""The pipeline tests' shared experiments: two, made once per test run in a copy of the
session's reproduced repo. Every test works in a copy of that repo
(experimented_repo), so that no two dvc commands of tests that run at once share a repo."""

import json
import math
import time

import pytest

from tests.conftest import REPO, PipelineRepo, built_once, read_yaml

FASHION = read_yaml(REPO / "datasets/fashion-mnist/dataset.yaml")["classes"]

# The shared experiments, {name: {param: value}}: the first three each change one param the
# README names, as a user tries one idea at a time (the first runs in the workspace, the others
# queued); the last trains on the other dataset, for one epoch, through DVC's queue.
EXPERIMENTS = {
    "fewer-epochs": {"train.mlp.epochs": 3},
    "less-dropout": {"train.mlp.dropout": 0.1},
    "other-seed": {"train.seed": 7},
    "fashion": {"data.dataset": "fashion-mnist", "train.mlp.epochs": 1},
}
FIRST_RUN = "first-run.txt"  # what `dvc exp run` printed for the first: the stages it ran
FASHION_LOG = "fashion-log.txt"  # what `dvc queue logs fashion` printed


def set_args(params):
    """`-S key=value` for each param, as `dvc exp run` takes them."""
    return [part for key, value in params.items() for part in ("-S", f"{key}={value}")]


def lock_md5s(repo):
    """{out path: md5} for every output of every stage in dvc.lock."""
    lock = read_yaml(repo.path / "dvc.lock")
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", [])}


def epochs_trained(repo):
    """How many epochs the model in the workspace trained: the rows of a DVCLive curve."""
    curve = repo.path / "metrics/train/plots/metrics/train_loss.tsv"
    return len(curve.read_text().splitlines()) - 1


def wait_for_the_queue(repo, experiments, timeout_s=300):
    """`dvc queue status` once nothing in it is queued or running. Each experiment that ends
    leaves a ref named after it, which git lists in milliseconds; `dvc queue status` costs a
    second of CPU, so it is asked when all `experiments` (names) have theirs, or every 10 s
    (a failed one has none)."""
    deadline, asked = time.monotonic() + timeout_s, -math.inf
    while time.monotonic() < deadline:
        names = set(repo.git("for-each-ref", "--format=%(refname:lstrip=-1)",
                             "refs/exps").stdout.split())
        if names >= set(experiments) or time.monotonic() - asked >= 10:
            asked = time.monotonic()
            status = repo.dvc("queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                return status
        time.sleep(0.5)
    raise AssertionError(f"DVC's queue still busy after {timeout_s} s:\n{status}")


@pytest.fixture(scope="session")
def experimented(reproduced, tmp_path_factory, worker_id):
    """A copy of the session's repo with the experiments: the first run in the workspace (then
    back to the committed results), the others queued, then run by `dvc queue start`."""
    def build(folder):
        repo = reproduced.copy(folder / "repo")
        (first, params), *queued = EXPERIMENTS.items()
        ran = repo.dvc("exp", "run", "-n", first, *set_args(params))
        (folder / FIRST_RUN).write_text(ran.stdout)
        repo.git("checkout", "--", "params.yaml", "dvc.lock", "metrics")
        repo.dvc("checkout")
        for name, params in queued:
            repo.dvc("exp", "run", "--queue", "-n", name, *set_args(params))
        repo.dvc("queue", "start", "--jobs", "1")  # as the README says
        try:
            status = wait_for_the_queue(repo, EXPERIMENTS)
        finally:
            repo.dvc("queue", "stop", "--kill", check=False)  # no worker outlives the test
        assert status.count("Success") == len(queued) and "Failed" not in status, status
        # The queue's logs stay in .dvc/tmp, which copies leave out.
        (folder / FASHION_LOG).write_text(repo.dvc("queue", "logs", "fashion").stdout)

    folder = built_once(tmp_path_factory, worker_id, "experiments", build)
    return folder


@pytest.fixture
def experimented_repo(experimented, reproduced, tmp_path):
    """A copy of the repo with the two experiments, for one test; `first_run` holds what the
    first experiment's `dvc exp run` printed, `fashion_log` what the queue logged of its run."""
    repo = PipelineRepo(experimented / "repo", reproduced.mirrors).copy(tmp_path / "repo")
    repo.first_run = (experimented / FIRST_RUN).read_text()
    repo.fashion_log = (experimented / FASHION_LOG).read_text()
    return repo


def shown_experiments(repo):
    """{name: {"params": {dotted key: value}, "test": metrics/test.json}} from exp show."""
    found = {}
    for baseline in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "test": data["metrics"]["metrics/test.json"]["data"]}
    return found
