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

from stages import params as params_module
from tests.digits import synthetic_mnist, write_mirror

REPO = Path(__file__).resolve().parent.parent
# What a serving host does not have (app/requirements.txt holds none of them): importing any of
# them fails in a process that runs this code first, as it would there.
TRAINING_ONLY = ["tensorflow", "keras", "tf2onnx", "onnx", "dvc", "dvclive", "ruamel", "yaml"]
WITHOUT_TRAINING_PACKAGES = "".join(f"sys.modules[{name!r}] = None\n" for name in TRAINING_ONLY)
# What a pipeline copy needs: the code and the DVC configuration, never data or caches.
PIPELINE_FILES = ["dvc.yaml", "params.yaml", "stages", ".dvc/config", ".dvcignore", ".gitignore",
                  "data/.gitignore"]


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
    (announce the full length, send half, hang up), "bad-length" (a Content-Length of "abc"),
    "trickle" (no Content-Length, then one byte every 0.1 s for as long as the client reads).
    When a path's list is used up, serve the file."""

    def do_GET(self):
        self.server.requests.append(self.path)
        plan = self.server.script.get(self.path, [])
        action = plan.pop(0) if plan else "ok"
        if action in ("404", "500"):
            self.send_error(int(action))
        elif action == "slow":
            time.sleep(self.server.slow_s)
            self.send_error(503)
        elif action in ("truncate", "bad-length"):
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", "abc" if action == "bad-length" else str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if action == "truncate" else body)
            self.wfile.flush()
            self.close_connection = True
        elif action == "trickle":
            self.send_response(200)
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(600):  # at most a minute
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up: what it should do
                pass
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


def read_yaml(path):
    """A YAML file (dvc.lock, a workflow) read with DVC's own loader."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(Path(path).read_text())


def repo_params():
    """The repository's params.yaml, read as the stages (and DVC) read it."""
    return params_module.read_params(REPO / "params.yaml")


# Quick settings for the tiny dataset: a few epochs of small batches, and a CNN small enough to
# train in seconds (the real one takes minutes).
TINY_TRAINING = {
    "mlp": {"epochs": 5, "batch_size": 32, "warmup_epochs": 0.5},
    "cnn": {"filters": [8, 16], "final_filters": [16], "epochs": 3, "batch_size": 32,
            "warmup_epochs": 0.5, "threads": 0},
}


def tiny_params(checksums, dataset="mnist"):
    """params.yaml of the repo, switched to the tiny dataset, no public sources, quick training."""
    params = repo_params()
    params["data"].update(dataset=dataset, public_sources=False, timeout_s=5, retries=1,
                          backoff_s=0.1)
    params["data"][dataset].update(mirrors=[], checksums=checksums)
    for family, overrides in TINY_TRAINING.items():
        params["train"][family].update(overrides)
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
        return params_module.read_params(self.path / "params.yaml")

    def set_params(self, params):
        params_module.save(params, self.path / "params.yaml")

    def set_param(self, dotted, value):
        """set_param("train.mlp.epochs", 4): one value, the rest of params.yaml as it was."""
        params = self.params()
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node[section]
        node[key] = value
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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A real model as the pipeline leaves it: model.keras and metadata.json, and the ONNX
    export that carries that metadata and the normalisation in its graph.
    A small MLP trained here on 1,000 drawn digits in MNIST form, standardised, so that
    the export gets nothing right unless its graph normalises as preprocess did."""
    import keras

    from stages.export import export_onnx
    from stages.fileio import write_json
    from stages.keras_file import save_model_reproducibly
    from stages.models import build_model
    from stages.normalization import fit_normalization, normalize
    from tests.digits import mnist_form_digits

    x, y = mnist_form_digits(1000, seed=1)
    constants = fit_normalization(x, "standardize")
    keras.utils.set_random_seed(0)
    model = build_model("mlp", {"hidden_units": [64], "activation": "relu", "dropout": 0.0,
                                "seed": 0})
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(normalize(x, constants), y, epochs=15, batch_size=32, verbose=0)

    directory = tmp_path_factory.mktemp("model")
    metadata = {"class_names": [str(d) for d in range(10)], "dataset": "mnist", "family": "mlp",
                "input_shape": [28, 28]}
    save_model_reproducibly(model, directory / "model.keras")
    write_json(directory / "metadata.json", {**metadata, "normalization": constants})
    export_onnx(model, constants, directory / "model.onnx", metadata)
    return directory
