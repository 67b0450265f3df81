"""DVC's S3 remote against a real S3 server on 127.0.0.1 (moto), with the real dvc and git CLIs:
the commands of the README's S3 section, a server outage, experiments shared through git and S3,
and the GitHub workflow's pull step. The bucket is s3://mnist-dvc, the remote `s3`, as there."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, PipelineRepo, read_yaml, run
from tests.pipeline.conftest import lock_md5s
from tests.s3_server import BUCKET, S3Server, s3_env

pytestmark = [pytest.mark.slow, pytest.mark.s3]

URL = f"s3://{BUCKET}/store"
WORKFLOW = REPO / ".github/workflows/pipeline.yml"
# The workflow's secrets this test gives values to, as a user would in the repository settings.
WORKFLOW_SECRETS = ["DVC_REMOTE_URL", "DVC_REMOTE_ENDPOINT", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY"]


@pytest.fixture
def s3_server():
    """A running moto server holding an empty bucket BUCKET; emptied and stopped afterwards."""
    server = S3Server()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    if not server.running:
        server.start()
    server.reset()
    server.stop()


def add_s3_remote(repo, endpoint, *flags):
    """The README's two commands; flags: () to share the remote in .dvc/config, ("--local",)
    to keep it in .dvc/config.local."""
    repo.dvc("remote", "add", *flags, "-d", "s3", URL)
    repo.dvc("remote", "modify", *flags, "s3", "endpointurl", endpoint)


def committed(repo):
    """The reproduced pipeline, with what the test changed (a remote) committed."""
    assert repo.repro() == []
    repo.commit_all("remote")


def clone(repo, source, path, env):
    """A fresh `git clone` of source: code, dvc.lock and committed metrics, and no DVC cache."""
    repo.git("clone", "-q", str(source), str(path))
    copy = PipelineRepo(path, repo.mirrors)
    copy.env = env
    return copy


def cloud_status(repo):
    """`dvc status -c` as JSON: {} when the remote holds everything the workspace uses."""
    return json.loads(repo.dvc("status", "-c", "--json").stdout)


def contents(repo):
    """{path: sha256} of every file in the outputs of dvc.lock, as they are in the workspace."""
    digests = {}
    for out in lock_md5s(repo):
        path = repo.path / out
        assert path.exists(), f"{out} is missing"
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                         if p.is_file()):
            digests[str(file.relative_to(repo.path))] = hashlib.sha256(file.read_bytes()).digest()
    return digests


def test_a_push_fails_while_s3_is_down_then_a_fresh_clone_pulls_everything(reproduced_repo,
                                                                           s3_server,
                                                                           tmp_path):
    repo = reproduced_repo
    repo.env = s3_env(repo.env, tmp_path, credentials=False)
    add_s3_remote(repo, s3_server.endpoint)
    # Credentials in .dvc/config.local, which git ignores.
    repo.dvc("remote", "modify", "--local", "s3", "access_key_id", "testing")
    repo.dvc("remote", "modify", "--local", "s3", "secret_access_key", "testing")
    committed(repo)

    # While the server is down: DVC's own message, and nothing in the bucket once it is back.
    s3_server.stop()
    failed = repo.dvc("push", check=False)
    assert failed.returncode != 0
    assert f'Could not connect to the endpoint URL: "{s3_server.endpoint}/' in failed.stderr
    s3_server.start()
    assert s3_server.object_keys() == set()

    assert "files pushed" in repo.dvc("push").stdout
    assert cloud_status(repo) == {}
    keys = s3_server.object_keys()
    assert keys and all(key.startswith("store/files/md5/") for key in keys)

    # The clone has the remote from git, but no credentials: those never left the first repo.
    copy = clone(repo, repo.path, tmp_path / "clone", repo.env)
    assert "endpointurl" in (copy.path / ".dvc/config").read_text()
    assert "access_key_id" not in (copy.path / ".dvc/config").read_text()
    assert not (copy.path / ".dvc/config.local").exists()
    refused = copy.dvc("pull", check=False)
    assert refused.returncode != 0
    assert "Unable to locate credentials" in refused.stderr

    copy.env = s3_env(repo.env, tmp_path)  # credentials from the environment
    copy.dvc("pull")
    assert cloud_status(copy) == {}
    assert copy.repro() == []
    assert contents(copy) == contents(repo)
    assert s3_server.object_keys() == keys


def test_an_experiment_travels_through_git_and_s3(experimented_repo, s3_server, tmp_path):
    """One of the session's experiments, pushed to a git remote and S3 by `dvc exp push`, and
    pulled into a fresh clone, where each machine names the S3 remote in its own
    .dvc/config.local (the README's commands with --local)."""
    repo = experimented_repo
    repo.env = s3_env(repo.env, tmp_path)
    origin = tmp_path / "origin.git"
    repo.git("init", "-q", "--bare", "-b", "main", str(origin))
    repo.git("remote", "add", "origin", str(origin))
    add_s3_remote(repo, s3_server.endpoint, "--local")
    repo.git("push", "-q", "origin", "main")
    repo.dvc("push")

    # The experiment's model is in this repo's cache alone until `dvc exp push`.
    repo.dvc("exp", "apply", "fewer-epochs")
    model_md5 = lock_md5s(repo)["model/model.keras"]
    model_key = f"store/files/md5/{model_md5[:2]}/{model_md5[2:]}"
    assert model_key not in s3_server.object_keys()
    repo.dvc("exp", "push", "origin", "fewer-epochs")
    assert model_key in s3_server.object_keys()

    copy = clone(repo, origin, tmp_path / "clone", repo.env)
    add_s3_remote(copy, s3_server.endpoint, "--local")
    assert "fewer-epochs" not in copy.dvc("exp", "show", "--csv").stdout
    copy.dvc("exp", "pull", "origin", "fewer-epochs")
    assert "fewer-epochs" in copy.dvc("exp", "show", "--csv").stdout
    # apply checks the outputs out from the cache, which only `dvc exp pull` filled, from S3.
    copy.dvc("exp", "apply", "fewer-epochs")
    assert copy.params()["train"]["mlp"]["epochs"] == 3
    assert lock_md5s(copy)["model/model.keras"] == model_md5
    assert contents(copy) == contents(repo)
    assert cloud_status(copy) == {}
    assert copy.repro() == []


def workflow_step(name):
    steps = read_yaml(WORKFLOW)["jobs"]["repro"]["steps"]
    return next(step for step in steps if step.get("name") == name)


def test_the_workflow_pulls_from_an_s3_compatible_store(reproduced_repo, s3_server, tmp_path):
    """The workflow's "Pull from the DVC remote" step, its script run as GitHub runs it, in a
    fresh clone, given the secrets DVC_REMOTE_URL (s3://), DVC_REMOTE_ENDPOINT and AWS keys."""
    step = workflow_step("Pull from the DVC remote")
    workflow_env = {**read_yaml(WORKFLOW)["env"], **step.get("env", {})}
    for name in WORKFLOW_SECRETS:
        wired = workflow_env.get(name) == f"${{{{ secrets.{name} }}}}"
        assert wired, f"the workflow does not pass secrets.{name} as ${name}"
    secrets = {"DVC_REMOTE_URL": URL, "DVC_REMOTE_ENDPOINT": s3_server.endpoint,
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    # What the step sets itself (the checksum settings), as it sets it.
    literal = {k: str(v) for k, v in step.get("env", {}).items() if "${{" not in str(v)}

    # A developer pushes with a remote of their own (.dvc/config.local), as the README shows.
    repo = reproduced_repo
    repo.env = s3_env(repo.env, tmp_path)
    add_s3_remote(repo, s3_server.endpoint, "--local")
    (repo.path / "requirements-s3.txt").write_text((REPO / "requirements-s3.txt").read_text())
    committed(repo)
    repo.dvc("push")

    # The runner: a checkout with the venv `make venv` built, and nothing else. pip may not
    # reach an index: requirements-s3.txt must be what this venv has.
    copy = clone(repo, repo.path, tmp_path / "checkout", {
        **s3_env(repo.env, tmp_path, credentials=False), **literal, **secrets,
        "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    (copy.path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    assert not (copy.path / ".dvc/config.local").exists()
    run(["bash", "-e", "-c", step["run"]], copy.path, copy.env)  # GitHub's default shell

    assert copy.dvc("remote", "default").stdout.strip() == "ci"
    assert cloud_status(copy) == {}
    assert copy.repro() == []
    assert contents(copy) == contents(repo)
