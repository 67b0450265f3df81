"""`python -m sweep` with nothing set up: a Ray cluster of this machine, started for the sweep
and gone after it; the repository itself as the git remote, its own DVC remote and cache.
Real git, dvc, Ray and training on the tiny dataset; the sweep runs as a user runs it."""

import os
import signal

import pytest

from tests.ray_cluster import free_port
from tests.sweep.conftest import (
    MARKER,
    clones,
    exp_metrics,
    exp_refs,
    finish,
    marked_processes,
    ray_temp_dirs,
    start_sweep,
    table_rows,
    wait_for_a_stage_to_have_run,
)

pytestmark = pytest.mark.slow


def nothing_left(repo):
    assert marked_processes(repo.env[MARKER]) == [], "a process of the sweep is still running"
    assert clones(repo.env["TMPDIR"]) == {}, "a trial's clone is left"
    assert ray_temp_dirs(repo) == set(), "the local cluster's folder is left"


@pytest.mark.slow
def test_the_local_default_runs_the_grid_and_a_bad_value_fails_alone(sweep_repo):
    repo = sweep_repo
    # train.mlp.epochs=0 is a value DVC writes without a word and the train stage refuses.
    status, out, err = finish(start_sweep(repo, "-n", "local", "-S", "train.mlp.epochs=0,2"))

    assert status == 1, err
    assert "local-1 failed: params.yaml: train.mlp.epochs = 0 is not allowed" in err
    assert "local-1.log" in err and "Traceback" not in err
    assert (repo.path / ".dvc/tmp/sweeps/local-1.log").is_file()
    rows = table_rows(out)
    assert list(rows) == ["local-2", "local-1"]  # the one that ran first, the failure last
    assert rows["local-2"].split()[0] == "train.mlp.epochs=2"
    assert "failed: params.yaml: train.mlp.epochs = 0" in rows["local-1"]
    assert "`dvc exp apply local-2`" in out

    # A real experiment of HEAD, with its metrics; the failed trial left none.
    accuracy = exp_metrics(repo, ["local-2"])["local-2"]
    assert accuracy is not None and f"{accuracy:.4f}" in rows["local-2"]
    assert list(exp_refs(repo)) == ["local-2"]
    repo.dvc("exp", "apply", "local-2")
    assert repo.params()["train"]["mlp"]["epochs"] == 2
    assert "up to date" in repo.dvc("status").stdout
    nothing_left(repo)


def ctrl_c(sweep):
    os.killpg(sweep.pid, signal.SIGINT)  # to its whole process group, as a terminal's Ctrl-C


def kill(sweep):
    os.kill(sweep.pid, signal.SIGTERM)  # to the head alone, after ray.init set its own handler


@pytest.mark.slow
@pytest.mark.parametrize("stop", [ctrl_c, kill])
def test_a_stop_signal_stops_every_trial_and_leaves_nothing_behind(sweep_repo, stop):
    repo = sweep_repo
    sweep = start_sweep(repo, "-n", "stop", "-S", "train.seed=1,2")
    wait_for_a_stage_to_have_run(repo.env["TMPDIR"], sweep)
    assert len(ray_temp_dirs(repo)) == 1, "the local cluster keeps its files in $RAY_TMPDIR"
    stop(sweep)
    status, out, err = finish(sweep)

    assert status == 130, err
    assert "stopping 2 trials" in err and "stopped" in err and "Traceback" not in err
    assert exp_refs(repo) == {}
    nothing_left(repo)


def test_a_sweep_never_replaces_existing_experiments(sweep_repo):
    repo = sweep_repo
    head = repo.git("rev-parse", "HEAD").stdout.strip()
    repo.git("update-ref", f"refs/exps/{head[:2]}/{head[2:]}/lr-2", "HEAD")
    status, _, err = finish(start_sweep(repo, "-n", "lr", "-S", "train.seed=1,2"))
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        f"error: lr-2 already exist for commit {head[:7]}: choose another --name")


def test_a_cluster_needs_the_baseline_pushed_where_workers_clone(sweep_repo, tmp_path):
    repo = sweep_repo
    repo.git("init", "-q", "--bare", "-b", "main", str(tmp_path / "origin.git"))
    repo.git("remote", "add", "origin", str(tmp_path / "origin.git"))
    head = repo.git("rev-parse", "--short", "HEAD").stdout.strip()
    # Refused before any cluster is reached: nothing listens at this address.
    status, _, err = finish(start_sweep(repo, "--address", "127.0.0.1:9", "-S", "train.seed=1"))
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        f"error: commit {head} is not on origin, where the workers clone from: push it first "
        "(git push origin HEAD)")


def test_an_address_where_nothing_answers_is_said_at_once(sweep_repo, tmp_path):
    repo = sweep_repo
    repo.git("init", "-q", "--bare", "-b", "main", str(tmp_path / "origin.git"))
    repo.git("remote", "add", "origin", str(tmp_path / "origin.git"))
    repo.git("push", "-q", "origin", "main")
    address = f"127.0.0.1:{free_port()}"  # a port just closed (Ray would retry for minutes)
    status, _, err = finish(start_sweep(repo, "--address", address, "-S", "train.seed=1"))
    assert status == 1
    assert err.strip().splitlines()[-1] == \
        f"error: no Ray cluster answers at {address}: Connection refused"


def test_a_param_dvc_would_refuse_stops_the_sweep_before_it_starts(sweep_repo):
    status, _, err = finish(start_sweep(sweep_repo, "-S", "train.mlp.epochs=1,2",
                                        "-S", "train.no_such_key=1"))
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "error: dvc exp run: Invalid `--set-param` value: Could not override "
        "'train.no_such_key'.")
