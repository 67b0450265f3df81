"""The sweep on a Ray cluster of two nodes (two `ray start` process trees on 127.0.0.1), a bare
git remote and a DVC remote on S3 (moto on 127.0.0.1): the trials land as experiments with
their metrics although a worker node is killed mid-trial, and nothing half-pushed remains."""

import hashlib
import json

import pytest

from tests import ray_cluster
from tests.conftest import read_yaml
from tests.s3_server import BUCKET, s3_env
from tests.sweep.conftest import (
    clones,
    exp_metrics,
    exp_refs,
    finish,
    start_sweep,
    table_rows,
    wait_for_a_stage_to_have_run,
)

pytestmark = [pytest.mark.slow, pytest.mark.s3]

# A trial per node: each node has one CPU, and each trial trains on one thread.
GRID = ["-S", "train.seed=1,2"]
NAMES = ["grid-1", "grid-2"]


@pytest.fixture
def shared_repo(sweep_repo, s3_remote, tmp_path):
    """sweep_repo pushed to a bare git remote `origin`, its DVC remote on S3 (committed, as a
    team shares it; the credentials in the environment, as each machine has its own)."""
    repo = sweep_repo
    repo.env = s3_env(repo.env, tmp_path)
    origin = tmp_path / "origin.git"
    repo.git("init", "-q", "--bare", "-b", "main", str(origin))
    repo.git("remote", "add", "origin", str(origin))
    repo.dvc("remote", "add", "-d", "s3", f"s3://{BUCKET}/store")
    repo.dvc("remote", "modify", "s3", "endpointurl", s3_remote.endpoint)
    repo.git("commit", "-q", "-am", "DVC remote on S3")
    repo.git("push", "-q", "origin", "main")
    repo.origin = origin
    return repo


@pytest.fixture
def two_nodes(shared_repo):
    """(head, worker): one CPU each, the environment of the repository (S3 credentials, the
    tiny dataset's mirror); stopped by their process ids, their folders removed."""
    nodes = ray_cluster.start_cluster([1, 1], shared_repo.env)
    yield nodes
    ray_cluster.stop_cluster(nodes)


def test_trials_on_two_nodes_land_as_experiments_though_a_worker_dies(shared_repo, two_nodes):
    repo, (head, worker) = shared_repo, two_nodes
    head_id = head.node_id
    sweep = start_sweep(repo, "--address", head.address, "-n", "grid", *GRID,
                        env={**repo.env, **ray_cluster.LOOPBACK_ENV})
    # A trial on the worker has run a stage: the machine is lost, every process of it at once.
    on_worker = wait_for_a_stage_to_have_run(worker.tmp, sweep)
    worker.kill()
    status, out, err = finish(sweep)

    assert status == 0, err
    rows = table_rows(out)
    assert sorted(rows) == NAMES
    # Ray ran the lost trials again, on the node that was left.
    ended = {line.split()[1]: line for line in err.splitlines() if " done in " in line}
    assert on_worker and all(ended[name].endswith(f"on node {head_id[:8]}") for name in on_worker)

    # Every trial is an experiment of HEAD here, with its metrics, and its ref on the remote.
    accuracy = exp_metrics(repo, NAMES)
    assert None not in accuracy.values()
    assert {name: f"{value:.4f}" in rows[name] for name, value in accuracy.items()} == \
        dict.fromkeys(NAMES, True)
    assert sorted(exp_refs(repo, repo.origin)) == NAMES
    assert exp_refs(repo, repo.origin) == exp_refs(repo)

    # The best one's model comes back from S3 (the cache had only what `dvc exp pull` fetched).
    best = next(iter(rows))
    assert accuracy[best] == max(accuracy.values())
    repo.dvc("exp", "apply", best)
    outs = read_yaml(repo.path / "dvc.lock")["stages"]["train"]["outs"]
    model_md5 = next(o["md5"] for o in outs if o["path"] == "model/model.keras")
    assert hashlib.md5((repo.path / "model/model.keras").read_bytes()).hexdigest() == model_md5
    assert "up to date" in repo.dvc("status").stdout
    assert json.loads(repo.dvc("status", "-c", "--json").stdout) == {}
    assert clones(head.tmp) == {}  # the node that survived kept no clone
