"""Shared fixtures: tiny MNIST and Fashion-MNIST look-alikes served over HTTP on 127.0.0.1,
folders to run stages in as DVC does, temporary git + DVC copies of this repository pointed at
those servers, and a real model exported by the pipeline's own code."""

import gc
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import dvc_cli
from tests.digits import synthetic_mnist, write_mirror
from tests.serving import browser_fixture  # noqa: F401  (`browser`, shared by every test)

REPO = Path(__file__).resolve().parent.parent
# What a serving host does not have (app/requirements.txt holds none of them): importing any of
# them fails in a process that runs this code first, as it would there.
TRAINING_ONLY = ["tensorflow", "keras", "tf2onnx", "onnx", "dvc", "dvclive", "ruamel", "yaml"]
WITHOUT_TRAINING_PACKAGES = "".join(f"sys.modules[{name!r}] = None\n" for name in TRAINING_ONLY)
# What a pipeline copy needs: the code and the DVC configuration, never data or caches.
PIPELINE_FILES = ["dvc.yaml", "params.yaml", "stages", "app", ".dvc/config", ".dvc/.gitignore",
                  ".dvc/plots/bars_by_class.json", ".dvc/plots/confusion_by_class.json",
                  ".dvcignore", ".gitignore", "data/.gitignore"]
CATALOGUE = ("mnist", "fashion-mnist")
# Quick settings for the tiny datasets: a few epochs of small batches, and a CNN small enough
# to train in seconds (the real one takes minutes).
TINY_TRAINING = {
    "mlp": {"epochs": 5, "batch_size": 32, "warmup_epochs": 0.5},
    "cnn": {"filters": [8, 16], "final_filters": [16], "epochs": 3, "batch_size": 32,
            "warmup_epochs": 0.5, "threads": 0},
}


def read_yaml(path: Path) -> object:
    """A YAML file read with DVC's own loader (ruamel, YAML 1.2)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(Path(path).read_text())


def write_yaml(path: Path, values: object) -> None:
    """Plain values written as `dvc exp run -S` writes params.yaml back (block style)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(values, f)


def repo_params() -> dict:
    """The repository's params.yaml as plain values, read as the stages (and DVC) read it."""
    return read_yaml(REPO / "params.yaml")


def tiny_params(**sections: dict) -> dict:
    """params.yaml of the repo with quick training, and `sections` updated."""
    params = repo_params()
    for family, overrides in TINY_TRAINING.items():
        params["train"][family].update(overrides)
    for section, values in sections.items():
        params[section].update(values)
    return params


def catalogue_entry(name: str, checksums: dict, urls: tuple = ()) -> dict:
    """The repository's catalogue entry `name` with `checksums` and `urls` (none by default:
    a test never reaches the public sources)."""
    entry = read_yaml(REPO / "datasets" / name / "dataset.yaml")
    return {**entry, "urls": list(urls), "files": dict(checksums)}


def write_catalogue(root: Path, checksums: dict) -> None:
    """datasets/<name>/dataset.yaml under `root` for each of `checksums` ({name: files})."""
    for name, files in checksums.items():
        write_yaml(root / "datasets" / name / "dataset.yaml", catalogue_entry(name, files))


@pytest.fixture(scope="session")
def tiny_arrays() -> dict:
    return synthetic_mnist(n_train=600, n_test=200, seed=0)


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory: pytest.TempPathFactory, tiny_arrays: dict) -> tuple:
    """(folder, checksums): the four IDX .gz files of the tiny MNIST look-alike."""
    directory = tmp_path_factory.mktemp("mirror")
    return directory, write_mirror(directory, tiny_arrays)


@pytest.fixture(scope="session")
def fashion_mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(folder, checksums, arrays): the tiny Fashion-MNIST look-alike's IDX files, re-gzipped
    after their hashes were taken, as Debian's package is."""
    from tests.fashion import write_fashion_mirror

    directory = tmp_path_factory.mktemp("fashion")
    return directory, *write_fashion_mirror(directory)


@pytest.fixture(scope="session")
def tiny_checksums(tiny_mirror: tuple, fashion_mirror: tuple) -> dict:
    return {"mnist": tiny_mirror[1], "fashion-mnist": fashion_mirror[1]}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve(directory: Path) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 serving `directory`, in a thread; `.url` its address."""
    handler = lambda *a, **kw: QuietHandler(*a, directory=str(directory), **kw)  # noqa: E731
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    return server


@pytest.fixture(scope="session")
def mirrors(tiny_mirror: tuple, fashion_mirror: tuple) -> dict:
    """The environment that points download at the tiny MNIST and Fashion-MNIST look-alikes,
    each served over HTTP on 127.0.0.1 for the whole session."""
    servers = [serve(tiny_mirror[0]), serve(fashion_mirror[0])]
    yield {"MNIST_MIRROR": servers[0].url, "FASHION_MNIST_MIRROR": servers[1].url}
    for server in servers:
        server.shutdown()
        server.server_close()


# --- stages, run as DVC runs them -----------------------------------------------------------------

def stage_dir(path: Path, checksums: dict | None = None, **sections: dict) -> Path:
    """A folder to run stages in as DVC does (`python -m stages.<name>`): the code, params.yaml
    with quick training and `sections` updated, and the catalogue with `checksums`."""
    path.mkdir(parents=True)
    for code in ("stages", "app"):
        (path / code).symlink_to(REPO / code, target_is_directory=True)
    params = tiny_params(**sections)
    params["train"]["mlp"].update(epochs=1, batch_size=64)
    write_yaml(path / "params.yaml", params)
    write_catalogue(path, checksums or {})
    return path


def start_stage(name: str, cwd: Path, niceness: int = 0,
                env: dict | None = None) -> subprocess.Popen:
    """The stage as a process; a positive `niceness` lets the test process, which watches it,
    run first on a busy machine."""
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=cwd,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
                            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_stage(name: str, cwd: Path, env: dict | None = None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the stage run to its end."""
    process = start_stage(name, cwd, env=env)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def run_stage_telling_imports(name: str, cwd: Path, env: dict | None = None) -> tuple:
    """(exit status, which of TensorFlow and Keras it imported, stderr) of the stage run to its
    end as DVC runs it, in a process that says at its end what it imported."""
    code = (f"import runpy, sys\ntry: runpy.run_module('stages.{name}', run_name='__main__')\n"
            "finally: print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **(env or {})})
    lines = result.stdout.splitlines()
    return result.returncode, lines[-1] if lines else None, result.stderr


def one_error_line(err: str) -> str:
    """A stage's last stderr line, checked to be its only complaint and not a traceback."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    return line


# --- pipeline repositories: real git and dvc ------------------------------------------------------

def checked(result: subprocess.CompletedProcess,
            check: bool = True) -> subprocess.CompletedProcess:
    """A finished CompletedProcess; with `check`, a failure shows its output in the report."""
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
                             f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def run(cmd: list, cwd: Path, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, returning CompletedProcess; on failure show its output in the report."""
    return checked(subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True), check)


class PipelineRepo:
    """A temporary git repository holding a copy of the pipeline, configured for tiny data."""

    def __init__(self, path: Path, mirrors: dict):
        """`mirrors`: the environment variables that point download at its mirrors."""
        self.path = path
        self.env = {
            **os.environ,
            # `python` = this venv's, as the stages run it.
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            **mirrors,
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
        }

    @property
    def mirrors(self) -> dict:
        return {k: v for k, v in self.env.items() if k.endswith("MNIST_MIRROR")}

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return checked(dvc_cli.dvc(args, self.path, self.env), check)

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["git", *args], self.path, self.env, check)

    def python(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([sys.executable, *args], self.path, self.env, check)

    def copy(self, path: Path) -> "PipelineRepo":
        """A copy of this repo at `path`, git history and DVC cache included."""
        shutil.copytree(self.path, path, symlinks=True,
                        ignore=shutil.ignore_patterns("tmp"))  # .dvc/tmp: locks, indexes
        return PipelineRepo(path, self.mirrors)

    def params(self) -> dict:
        return read_yaml(self.path / "params.yaml")

    def set_params(self, params: dict) -> None:
        write_yaml(self.path / "params.yaml", params)

    def set_param(self, dotted: str, value: object) -> None:
        """set_param("train.mlp.epochs", 4): one value, the rest of params.yaml as it was."""
        params = self.params()
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node[section]
        node[key] = value
        self.set_params(params)

    def commit_all(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def repro(self, *args: str) -> list[str]:
        """`dvc repro`; returns the names of the stages that ran."""
        return stages_run(self.dvc("repro", *args).stdout)


def stages_run(dvc_output: str) -> list[str]:
    """The stages that `dvc repro` or `dvc exp run` ran, in order, from what it printed."""
    return [line.split("'")[1] for line in dvc_output.splitlines()
            if line.startswith("Running stage '")]


def new_pipeline_repo(path: Path, mirrors: dict, checksums: dict) -> PipelineRepo:
    """A committed git + DVC repo at `path` with this pipeline, set for the tiny datasets."""
    path.mkdir()
    for name in PIPELINE_FILES:
        source, target = REPO / name, path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    write_catalogue(path, checksums)
    offline = REPO / ".dvc/plots/offline.html"
    if offline.is_file():  # as `make` leaves a clone: the page that draws offline, named in
        shutil.copy2(offline, path / ".dvc/plots")  # the clone's own config
        (path / ".dvc/config.local").write_text("[plots]\n    html_template = plots/offline.html\n")
    repo = PipelineRepo(path, mirrors)
    repo.set_params(tiny_params())
    repo.git("init", "-q", "-b", "main")
    repo.commit_all("pipeline")
    return repo


@pytest.fixture
def pipeline_repo(tmp_path: Path, mirrors: dict, tiny_checksums: dict) -> PipelineRepo:
    """A fresh pipeline repo, downloading the tiny datasets over HTTP: nothing run yet."""
    return new_pipeline_repo(tmp_path / "repo", mirrors, tiny_checksums)


def built_once(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str,
               build: object) -> Path:
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
def reproduced(tmp_path_factory: pytest.TempPathFactory, worker_id: str, mirrors: dict,
               tiny_checksums: dict) -> PipelineRepo:
    """One pipeline repo whose `dvc repro` has run and whose results are committed, built once
    per test run. Read its files, clone it; run dvc only in a copy (reproduced_repo): other
    tests read it at the same time."""
    def build(folder: Path) -> None:
        repo = new_pipeline_repo(folder / "repo", mirrors, tiny_checksums)
        (folder / "tmp").mkdir()  # the temporary folder of the run, empty after it (a test)
        repo.env["TMPDIR"] = str(folder / "tmp")
        # As on most machines (this one sets it): Python writes bytecode for what it imports.
        repo.env.pop("PYTHONDONTWRITEBYTECODE", None)
        repo.repro()
        repo.commit_all("results")

    folder = built_once(tmp_path_factory, worker_id, "reproduced", build)
    return PipelineRepo(folder / "repo", mirrors)


@pytest.fixture
def reproduced_repo(reproduced: PipelineRepo, tmp_path: Path) -> PipelineRepo:
    """A copy of the session's reproduced repo, its DVC cache included, for a test to change."""
    return reproduced.copy(tmp_path / "repo")


# --- a real model ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    return built_once(tmp_path_factory, worker_id, "model", make_model)


def make_model(directory: Path) -> None:
    """A real model as the pipeline leaves it: model.keras and metadata.json, and the ONNX
    export that carries that metadata. A small MLP trained here on 1,000 drawn digits in MNIST
    form, standardised inside the model as preprocess's constants say, so that the export gets
    nothing right unless its graph normalises as training did."""
    import keras
    import numpy as np

    from stages.common.files import write_json
    from stages.common.keras_file import save_model_reproducibly
    from stages.common.models import build_model
    from stages.common.params import MLP
    from stages.export import export_onnx
    from stages.preprocess import normalization
    from tests.digits import mnist_form_digits

    x, y = mnist_form_digits(1000, seed=1)
    x = x[..., None]
    constants = normalization(x, np.arange(len(x)), "standardize")
    keras.utils.set_random_seed(0)
    recipe = MLP.model_validate({**repo_params()["train"]["mlp"], "hidden_units": [64],
                                 "dropout": 0.0})
    model = build_model("mlp", recipe, 0, (28, 28, 1), 10, constants, "mnist")
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=15, batch_size=32, verbose=0)

    metadata = {"class_names": [str(d) for d in range(10)], "dataset": "mnist", "family": "mlp",
                "input_shape": [28, 28, 1], "prepare": "digit"}
    save_model_reproducibly(model, directory / "model.keras")
    write_json(directory / "metadata.json", metadata)
    export_onnx(model, directory / "model.onnx", {**metadata, "refusal": {"kind": "digit"}})


@pytest.fixture(scope="session")
def picture_model_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A model of your own pictures, as the pipeline exports it: colour pictures of three
    shapes (tests/folders.py), 24x24x3, its refusal its own uncertainty threshold."""
    return built_once(tmp_path_factory, worker_id, "picture-model", make_picture_model)


def make_picture_model(directory: Path) -> None:
    import keras
    import numpy as np

    from stages.common.folder import read_folder
    from stages.common.models import build_model
    from stages.common.params import CNN, Data
    from stages.export import export_onnx
    from tests.folders import SHAPES, shapes_folder

    root = shapes_folder(directory / "shapes", per_class=40, seed=5)
    data = read_folder(root, Data(dataset="shapes", image_size=24, channels=3,
                                  on_bad_file="error"))
    keras.utils.set_random_seed(0)
    recipe = CNN.model_validate({**repo_params()["train"]["cnn"], "filters": [8, 16],
                                 "final_filters": [], "dropout": 0.0})
    model = build_model("cnn", recipe, 0, (24, 24, 3), 3, {"mean": 0.0, "std": 1.0}, "shapes")
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    model.fit(data["x_train"].astype(np.float32), data["y_train"], epochs=20, batch_size=16,
              verbose=0)
    export_onnx(model, directory / "model.onnx", {
        "class_names": list(SHAPES), "dataset": "shapes", "family": "cnn",
        "input_shape": [24, 24, 3], "prepare": "picture",
        "refusal": {"kind": "uncertainty", "threshold": 0.9}})


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session: pytest.Session) -> object:
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
                 "tests/pipeline/test_own_pictures.py", "tests/pipeline/test_s3_remote.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST)
                     if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))
    items.sort(key=rank)  # stable: each group keeps its own order
