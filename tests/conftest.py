"""Shared fixtures: a tiny MNIST look-alike, a real HTTP server on 127.0.0.1 serving it, and a
temporary git + DVC copy of this repository pointed at that server."""

import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.digits import synthetic_mnist, write_mirror

REPO = Path(__file__).resolve().parent.parent
# What a pipeline copy needs: the code and the DVC configuration, never data or caches.
PIPELINE_FILES = ["dvc.yaml", "params.yaml", "stages", ".dvc/config", ".dvcignore", ".gitignore"]


@pytest.fixture(scope="session")
def tiny_arrays():
    return synthetic_mnist(n_train=600, n_test=200, seed=0)


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory, tiny_arrays):
    """(directory, checksums): mnist.npz and the four IDX .gz files of the tiny dataset."""
    directory = tmp_path_factory.mktemp("mirror")
    return directory, write_mirror(directory, tiny_arrays)


class ScriptedHandler(SimpleHTTPRequestHandler):
    """Serves files from the server's directory; `server.script[path]` lists, one per request,
    what to do instead: "404", "500", "slow" (stall past the client's timeout), "truncate"
    (announce the full length, send half, hang up). When a path's list is used up, serve it."""

    def do_GET(self):
        self.server.requests.append(self.path)
        plan = self.server.script.get(self.path, [])
        action = plan.pop(0) if plan else "ok"
        if action in ("404", "500"):
            self.send_error(int(action))
        elif action == "slow":
            time.sleep(self.server.slow_s)
            self.send_error(503)
        elif action == "truncate":
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """Start servers on 127.0.0.1; call with (directory, script=None) -> base URL."""
    servers = []

    def start(directory, script=None, slow_s=3.0):
        handler = lambda *a, **kw: ScriptedHandler(*a, directory=str(directory), **kw)  # noqa: E731
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.script = {k: list(v) for k, v in (script or {}).items()}
        server.requests = []
        server.slow_s = slow_s
        # A short poll interval makes shutdown() quick (the default waits up to 0.5 s).
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        start.last = server
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def tiny_params(checksums, **train_overrides):
    """params.yaml of the repo, switched to the tiny dataset, no public sources, quick training."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(public_sources=False, mirrors=[], checksums=checksums,
                          timeout_s=5, retries=1, backoff_s=0.1)
    params["train"].update(epochs=5, batch_size=32, warmup_epochs=0.5)
    params["train"].update(train_overrides)
    return params


def run(cmd, cwd, env=None, check=True):
    """Run a command, returning CompletedProcess; on failure show its output in the test report."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                             f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


class PipelineRepo:
    """A temporary git repository holding a copy of the pipeline, configured for tiny data."""

    def __init__(self, path, mirror_url):
        self.path = path
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # `python` = this venv's
            "MNIST_MIRROR": mirror_url,
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
        }
        self.dvc_bin = str(Path(sys.executable).parent / "dvc")

    def dvc(self, *args, check=True):
        return run([self.dvc_bin, *args], self.path, self.env, check)

    def git(self, *args, check=True):
        return run(["git", *args], self.path, self.env, check)

    def python(self, *args, check=True):
        return run([sys.executable, *args], self.path, self.env, check)

    def params(self):
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, params):
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def set_param(self, dotted, value):
        params = self.params()
        section, key = dotted.split(".")
        params[section][key] = value
        self.set_params(params)

    def repro(self, *args):
        """`dvc repro`; returns the names of the stages that ran."""
        out = self.dvc("repro", *args).stdout
        return [line.split("'")[1] for line in out.splitlines()
                if line.startswith("Running stage '")]


@pytest.fixture
def pipeline_repo(tmp_path, tiny_mirror, http_server):
    """A committed git + DVC repo with this pipeline, downloading the tiny dataset over HTTP."""
    mirror_dir, checksums = tiny_mirror
    path = tmp_path / "repo"
    path.mkdir()
    for name in PIPELINE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, path / name)
    repo = PipelineRepo(path, http_server(mirror_dir))
    repo.set_params(tiny_params(checksums))
    repo.git("init", "-q", "-b", "main")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "pipeline")
    return repo
