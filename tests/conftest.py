"""Shared fixtures: a tiny MNIST look-alike, a real HTTP server on 127.0.0.1 serving it, and a
temporary git + DVC copy of this repository pointed at that server."""

import gc
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stages.params import save
from stages.yaml12 import read_yaml as read_yaml12
from tests import dvc_cli
from tests.digits import synthetic_mnist, write_mirror
from tests.serving import browser_fixture  # noqa: F401  (`browser`, shared by every test)

REPO = Path(__file__).resolve().parent.parent
# What a serving host does not have (app/requirements.txt holds none of them): importing any of
# them fails in a process that runs this code first, as it would there.
TRAINING_ONLY = ["tensorflow", "keras", "tf2onnx", "onnx", "dvc", "dvclive", "ruamel", "yaml"]
WITHOUT_TRAINING_PACKAGES = "".join(f"sys.modules[{name!r}] = None\n" for name in TRAINING_ONLY)
# What a pipeline copy needs: the code and the DVC configuration, never data or caches.
PIPELINE_FILES = ["dvc.yaml", "params.yaml", "datasets.yaml", "stages", ".dvc/config",
                  ".dvc/.gitignore", ".dvc/plots/offline.html", ".dvcignore", ".gitignore",
                  "data/.gitignore"]


@pytest.fixture(scope="session")
def tiny_arrays():
    return synthetic_mnist(n_train=600, n_test=200, seed=0)


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory, tiny_arrays):
    """(directory, checksums): mnist.npz and the four IDX .gz files of the tiny dataset."""
    directory = tmp_path_factory.mktemp("mirror")
    return directory, write_mirror(directory, tiny_arrays)


FASHION = read_yaml12(REPO / "datasets.yaml")["datasets"]["fashion-mnist"]["class_names"]


@pytest.fixture(scope="session")
def fashion_mirror(tmp_path_factory):
    """(directory, checksums, arrays): the tiny Fashion-MNIST look-alike's IDX files, re-gzipped
    after their hashes were taken (as Debian's package is): only their contents' match."""
    from tests.fashion import write_fashion_mirror

    directory = tmp_path_factory.mktemp("fashion")
    return directory, *write_fashion_mirror(directory)


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


def serve(directory, script=None, slow_s=3.0):
    """An HTTP server on 127.0.0.1 serving `directory` (see ScriptedHandler), in a thread."""
    handler = lambda *a, **kw: ScriptedHandler(*a, directory=str(directory), **kw)  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.script = {k: list(v) for k, v in (script or {}).items()}
    server.requests = []
    server.slow_s = slow_s
    # A short poll interval makes shutdown() quick (the default waits up to 0.5 s).
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    return server


@pytest.fixture
def http_server():
    """Start servers on 127.0.0.1; call with (directory, script=None) -> base URL."""
    servers = []

    def start(directory, script=None, slow_s=3.0):
        servers.append(serve(directory, script, slow_s))
        start.last = servers[-1]
        return servers[-1].url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def read_yaml(path):
    """A YAML file (dvc.lock, a workflow) read with DVC's own loader."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(Path(path).read_text())


def repo_params():
    """The repository's params.yaml as plain values, read as the stages (and DVC) read it."""
    return read_yaml12(REPO / "params.yaml")


def repo_catalogue():
    """The repository's data catalogue, datasets.yaml, as plain values."""
    return read_yaml12(REPO / "datasets.yaml")


# Quick settings for the tiny dataset: a few epochs of small batches, and a CNN small enough to
# train in seconds (the real one takes minutes).
TINY_TRAINING = {
    "mlp": {"epochs": 5, "batch_size": 32, "warmup_epochs": 0.5},
    "cnn": {"filters": [8, 16], "final_filters": [16], "epochs": 3, "batch_size": 32,
            "warmup_epochs": 0.5, "threads": 0},
}


def tiny_params():
    """params.yaml of the repo, with quick training."""
    params = repo_params()
    for family, overrides in TINY_TRAINING.items():
        params["train"][family].update(overrides)
    return params


def tiny_catalogue(checksums, dataset="mnist"):
    """datasets.yaml of the repo for the tiny `dataset`: its checksums, no public sources, and
    quick retries."""
    catalogue = repo_catalogue()
    catalogue["download"].update(public_sources=False, timeout_s=5, retries=1, backoff_s=0.1)
    catalogue["datasets"][dataset].update(mirrors=[], checksums=checksums)
    return catalogue


def stage_dir(path, catalogue=None, **sections):
    """A folder to run stages in as DVC does (`python -m stages.<name>`): the code, the repo's
    params.yaml with `sections` updated (train.mlp set to 1 quick epoch), and `catalogue` (plain
    values) or the repo's as datasets.yaml."""
    path.mkdir(parents=True)
    (path / "stages").symlink_to(REPO / "stages", target_is_directory=True)
    params = repo_params()
    params["train"]["mlp"].update(epochs=1, batch_size=64)
    for section, values in sections.items():
        params[section].update(values)
    save(params, path / "params.yaml")
    save(catalogue or repo_catalogue(), path / "datasets.yaml")
    return path


def start_stage(name, cwd, niceness=0, env=None):
    """The stage as a process; a positive `niceness` lets the test process, which watches it,
    run first on a busy machine."""
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=cwd,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
                            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_stage(name, cwd, env=None):
    """(exit status, stdout, stderr) of the stage run to its end."""
    proc = start_stage(name, cwd, env=env)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def run_stage_telling_imports(name, cwd, env=None):
    """(exit status, the last line on stdout, stderr) of the stage run to its end as DVC runs
    it, in a process that then prints which of TensorFlow and Keras it imported ("[]": none).
    A stage that imported TensorFlow ends without Python's teardown (runner.end), so prints
    nothing: its last line is then one of its own, or None."""
    code = (f"import runpy, sys\ntry: runpy.run_module('stages.{name}', run_name='__main__')\n"
            "finally: print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                            text=True, timeout=60, env={**os.environ, **(env or {})})
    lines = result.stdout.splitlines()
    return result.returncode, lines[-1] if lines else None, result.stderr


def one_error_line(err):
    """A stage's last stderr line, checked to be its only complaint and not a traceback."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    return line


def run(cmd, cwd, env=None, check=True):
    """Run a command, returning CompletedProcess; on failure show its output in the test report."""
    return checked(subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True), check)


def checked(result, check=True):
    """A finished CompletedProcess; with `check`, a failure shows its output in the report."""
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
                             f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


class PipelineRepo:
    """A temporary git repository holding a copy of the pipeline, configured for tiny data."""

    def __init__(self, path, mirrors):
        """`mirrors`: the environment variables that point download at its mirrors."""
        self.path = path
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # `python` = this venv's
            **mirrors,
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
        }
        self.dvc_bin = dvc_cli.SCRIPT

    def dvc(self, *args, check=True):
        return checked(dvc_cli.dvc(args, self.path, self.env), check)

    def git(self, *args, check=True):
        return run(["git", *args], self.path, self.env, check)

    @property
    def mirrors(self):
        return {k: v for k, v in self.env.items() if k.endswith("MNIST_MIRROR")}

    def copy(self, path):
        """A copy of this repo at `path`, git history and DVC cache included."""
        shutil.copytree(self.path, path, symlinks=True,
                        ignore=shutil.ignore_patterns("tmp"))  # .dvc/tmp: locks, indexes
        return PipelineRepo(path, self.mirrors)

    def python(self, *args, check=True):
        return run([sys.executable, *args], self.path, self.env, check)

    def params(self):
        return read_yaml12(self.path / "params.yaml")

    def set_params(self, params):
        save(params, self.path / "params.yaml")

    def set_catalogue(self, catalogue):
        save(catalogue, self.path / "datasets.yaml")

    def set_param(self, dotted, value):
        """set_param("train.mlp.epochs", 4): one value, the rest of params.yaml as it was."""
        params = self.params()
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node[section]
        node[key] = value
        self.set_params(params)

    def commit_all(self, message):
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def repro(self, *args):
        """`dvc repro`; returns the names of the stages that ran."""
        return stages_run(self.dvc("repro", *args).stdout)


def stages_run(dvc_output):
    """The stages that `dvc repro` or `dvc exp run` ran, in order, from what it printed."""
    return [line.split("'")[1] for line in dvc_output.splitlines()
            if line.startswith("Running stage '")]


@pytest.fixture(scope="session")
def mirrors(tiny_mirror, fashion_mirror):
    """The environment that points download at the tiny MNIST and Fashion-MNIST look-alikes,
    each served over HTTP on 127.0.0.1 for the whole session."""
    servers = [serve(tiny_mirror[0]), serve(fashion_mirror[0])]
    yield {"MNIST_MIRROR": servers[0].url, "FASHION_MNIST_MIRROR": servers[1].url}
    for server in servers:
        server.shutdown()
        server.server_close()


def new_pipeline_repo(path, mirrors, checksums):
    """A committed git + DVC repo at `path` with this pipeline, set for the tiny datasets:
    `checksums` maps each dataset to its files' checksums."""
    path.mkdir()
    for name in PIPELINE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, path / name)
    repo = PipelineRepo(path, mirrors)
    repo.set_params(tiny_params())
    catalogue = tiny_catalogue(checksums["mnist"])
    catalogue["datasets"]["fashion-mnist"]["checksums"] = checksums["fashion-mnist"]
    repo.set_catalogue(catalogue)
    repo.git("init", "-q", "-b", "main")
    repo.commit_all("pipeline")
    return repo


@pytest.fixture(scope="session")
def tiny_checksums(tiny_mirror, fashion_mirror):
    return {"mnist": tiny_mirror[1], "fashion-mnist": fashion_mirror[1]}


@pytest.fixture
def pipeline_repo(tmp_path, mirrors, tiny_checksums):
    """A fresh pipeline repo, downloading the tiny datasets over HTTP: nothing run yet."""
    return new_pipeline_repo(tmp_path / "repo", mirrors, tiny_checksums)


def built_once(tmp_path_factory, worker_id, name, build):
    """`build(folder)` run once for the whole test run, however many pytest-xdist workers share
    it: the first to get here builds, under a file lock, and the others wait and reuse. Returns
    the folder, which nobody may change afterwards."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # the run's own folder, which its workers share
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, worker_id, mirrors, tiny_checksums):
    """One pipeline repo whose `dvc repro` has run and whose results are committed, built once
    per test run. Read its files, clone it; run dvc only in a copy (reproduced_repo): other
    tests read it at the same time."""
    def build(folder):
        repo = new_pipeline_repo(folder / "repo", mirrors, tiny_checksums)
        (folder / "tmp").mkdir()  # the temporary folder of the run, empty after it (a test)
        repo.env["TMPDIR"] = str(folder / "tmp")
        repo.repro()
        repo.commit_all("results")

    folder = built_once(tmp_path_factory, worker_id, "reproduced", build)
    return PipelineRepo(folder / "repo", mirrors)


@pytest.fixture
def reproduced_repo(reproduced, tmp_path):
    """A copy of the session's reproduced repo, its DVC cache included, for a test to change."""
    return reproduced.copy(tmp_path / "repo")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, worker_id):
    return built_once(tmp_path_factory, worker_id, "model", make_model)


def make_model(directory):
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
    from stages.params import MLP
    from tests.digits import mnist_form_digits

    x, y = mnist_form_digits(1000, seed=1)
    constants = fit_normalization(x, "standardize")
    keras.utils.set_random_seed(0)
    recipe = MLP.model_validate({**repo_params()["train"]["mlp"], "hidden_units": [64],
                                 "dropout": 0.0})
    model = build_model("mlp", recipe, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(normalize(x, constants), y, epochs=15, batch_size=32, verbose=0)

    metadata = {"class_names": [str(d) for d in range(10)], "dataset": "mnist", "family": "mlp",
                "input_shape": [28, 28]}
    save_model_reproducibly(model, directory / "model.keras")
    write_json(directory / "metadata.json", {**metadata, "normalization": constants})
    export_onnx(model, constants, directory / "model.onnx", metadata)


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session):
    """Collecting imports TensorFlow, Ray and the app: millions of objects that live until the
    run ends. Without the cyclic collector the import takes a third less CPU, and frozen, they
    are skipped by every collection during the tests (the stages import TensorFlow so too)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


# The longest tests first, so that pytest-xdist's workers do not end the run waiting on one of
# them; among them, those that build the shared experiments early, which others wait for.
LONGEST_FIRST = ("tests/sweep/test_cluster.py", "tests/sweep/test_local.py",
                 "tests/pipeline/test_dvc_promises.py::test_a_train_param",
                 "tests/pipeline/test_experiments.py", "tests/pipeline/test_dvc_promises.py",
                 "tests/pipeline/test_s3_remote.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        return next((i for i, prefix in enumerate(LONGEST_FIRST)
                     if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))
    items.sort(key=rank)  # stable: each group keeps its own order
