"""A model by name from a DVC registry: `mnist-serve --artifact` against a bare git repository and
its DVC remote on this machine, made with the real `git` and `dvc` (run as processes: this test
process serves too, tests/dvc_cli.py's fork server would break its decode processes). The
registry declares `classifier` under `artifacts:` as the pipeline's dvc.yaml does and versions
it with GTO's tags: v1.0.0 the fixture model, v1.1.0 the same with a batch fixed at 1 (another
SHA-256), the stage prod at v1.0.0.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import WITHOUT_TRAINING_PACKAGES
from tests.serving import request, served_process, wait_for, wait_until_answering

# Real `git` and `dvc` processes, as the pipeline's tests: in `make test-full`, not the quick loop.
pytestmark = pytest.mark.slow

GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
           "DVC_NO_ANALYTICS": "1"}
DVC_YAML = "artifacts:\n  classifier:\n    path: model.onnx\n    type: model\n"


def run(*command, cwd):
    done = subprocess.run(command, cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"


def publish(work, model, version):
    """`model` as classifier@`version`: committed, tagged, pushed to the DVC remote and to the
    bare repository."""
    shutil.copy(model, work / "model.onnx")
    run(sys.executable, "-m", "dvc", "add", "-q", "model.onnx", cwd=work)
    run(sys.executable, "-m", "dvc", "push", "-q", cwd=work)
    run("git", "add", "-A", cwd=work)
    run("git", "commit", "-q", "-m", f"classifier {version}", cwd=work)
    run("git", "tag", "-a", f"classifier@{version}", "-m", version, cwd=work)
    run("git", "push", "-q", "--tags", "origin", "main", cwd=work)


def make_registry(tmp_path, model_dir, model_variants):
    """(the bare repository, the clone that publishes to it)."""
    bare, work = tmp_path / "registry.git", tmp_path / "work"
    run("git", "init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    run("git", "clone", "-q", str(bare), str(work), cwd=tmp_path)
    run(sys.executable, "-m", "dvc", "init", "-q", cwd=work)
    run(sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"),
        cwd=work)
    (work / "dvc.yaml").write_text(DVC_YAML)
    publish(work, model_dir / "model.onnx", "v1.0.0")
    publish(work, model_variants["fixed-batch"], "v1.1.0")
    run("git", "tag", "-a", "classifier#prod#1", "classifier@v1.0.0^{}", "-m", "prod",
        cwd=work)  # as `gto assign classifier --version v1.0.0 --stage prod` writes it
    run("git", "push", "-q", "--tags", "origin", cwd=work)
    return bare, work


@pytest.fixture(scope="module")
def registry(tmp_path_factory, model_dir, model_variants):
    return make_registry(tmp_path_factory.mktemp("registry"), model_dir, model_variants)[0]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("artifact, version", [
    ("classifier@v1.0.0", "v1.0.0"), ("classifier", "v1.1.0"), ("classifier#prod", "v1.0.0")])
def test_a_version_a_stage_or_the_latest_is_fetched_and_served(
        registry, tmp_path, model_dir, model_variants, artifact, version):
    model = model_dir / "model.onnx" if version == "v1.0.0" else model_variants["fixed-batch"]
    with served_process(tmp_path / "unused.onnx", tmp_path / "log",
                        args=["--artifact", artifact, "--registry", str(registry)]) as (_, url):
        wait_until_answering(url)
        health = request(f"{url}/health").json()
        metrics = request(f"{url}/metrics").text
        metadata = request(f"{url}/v2/models/classifier/versions/{version}").json()

    assert (health["model"], health["version"]) == (f"classifier@{version}.onnx", version)
    assert health["sha256"] == sha256(model)
    assert f'name="classifier",sha256="{sha256(model)}",version="{version}"' in metrics
    assert metadata["versions"] == [version]


def test_sighup_serves_the_latest_version_once_it_is_published(tmp_path, model_dir,
                                                                model_variants):
    registry, work = make_registry(tmp_path, model_dir, model_variants)
    with served_process(tmp_path / "unused.onnx", tmp_path / "log", workers=2,
                        args=["--artifact", "classifier", "--registry", str(registry)]) as (
            server, url):
        wait_until_answering(url, workers=2)
        before = request(f"{url}/health").json()["version"]
        publish(work, model_dir / "model.onnx", "v1.2.0")
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: (tmp_path / "log").read_text().count("serving classifier@v1.2.0") == 2,
                 "the workers did not switch")
        after = {request(f"{url}/health").json()["version"] for _ in range(10)}

    assert (before, after) == ("v1.1.0", {"v1.2.0"})


def serve_refused(args, code=""):
    """`mnist-serve` with `args` that it refuses: (exit status, what it wrote)."""
    program = f"import sys\n{code}from app.server.main import main\nmain()"
    done = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PORT": "0"})
    return done.returncode, done.stderr.strip().splitlines()


def test_what_cannot_be_fetched_stops_the_start_in_one_line(registry):
    unknown = serve_refused(["--artifact", "classifier@v9.0.0", "--registry", str(registry)])
    no_dvc = serve_refused(["--artifact", "classifier"], WITHOUT_TRAINING_PACKAGES)

    assert unknown[0] != 0 and len(unknown[1]) == 1, unknown
    assert unknown[1][0].startswith("error: classifier@v9.0.0: ")
    assert no_dvc == (1, ["error: --artifact fetches the model with DVC, which is not "
                          "installed: pip install dvc"])
