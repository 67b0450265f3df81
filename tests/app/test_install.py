"""The app stands alone: app/ and a model.onnx in an empty folder, in a fresh virtual
environment holding app/requirements.txt and nothing else (no TensorFlow, no DVC, no stages/),
predicts and serves; and `pip install .` gives `mnist-predict` and `mnist-serve`, which work
from any folder. Slow: installing the requirements takes ten seconds, from pip's cache."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from app.server.settings import Settings
from tests.conftest import REPO
from tests.digits import draw_digit
from tests.serving import free_port, post_file, wait_until_answering

pytestmark = pytest.mark.slow

INSTALL_TIMEOUT_S = 600


def run(cmd, **options):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120,
                          **options)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def pip_install(venv, *args):
    """This interpreter's pip installing into `venv` (which needs no pip of its own), without
    compiling what it installs: a third of the time."""
    subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin/python", "install",
                    "--quiet", "--no-compile", *args], check=True, timeout=INSTALL_TIMEOUT_S)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment with the app's requirements installed, and nothing else."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True,
                   timeout=120)
    pip_install(venv, "-r", REPO / "app/requirements.txt")
    return venv


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model_dir):
    """An empty folder, then app/ (as git has it, without caches) and model.onnx in it, and a
    picture of a 7."""
    folder = tmp_path_factory.mktemp("alone")
    shutil.copytree(REPO / "app", folder / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(model_dir / "model.onnx", folder / "model.onnx")
    seven = draw_digit(7, np.random.default_rng(0))
    Image.fromarray(255 - seven).resize((140, 140)).save(folder / "seven.png")
    return folder


def assert_serves(command, cwd, model, picture, home):
    """`command`, run in `cwd`, serves on a free port: `picture` of a 7 is read as a 7, and
    nothing is written in `home`."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "MODEL": str(model), "PORT": str(port)}
    server = subprocess.Popen([str(c) for c in command], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url, Settings().workers)  # as many as it starts here
        answer = post_file(url, picture.read_bytes())
        assert answer.status == 200 and answer.json()["label"] == "7", answer.body
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "Traceback" not in output, output
    assert list(home.rglob("*")) == []


def test_app_alone_predicts_and_serves_from_its_folder(venv, folder, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    python = venv / "bin/python"

    predicted = run([python, "-m", "app.cli", "seven.png", "--model", "model.onnx"],
                    cwd=folder, env={"HOME": str(home)})

    assert predicted.stdout.startswith("seven.png: 7 (")
    assert_serves([python, "-m", "app.server.main"], folder, "model.onnx", folder / "seven.png",
                  home)


def test_pip_install_gives_two_commands_that_work_from_any_folder(venv, folder, tmp_path):
    source = tmp_path / "source"  # what pip builds from: pyproject.toml and app/ alone
    shutil.copytree(folder / "app", source / "app")
    shutil.copy(REPO / "pyproject.toml", source)
    pip_install(venv, source)
    elsewhere, home = tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    home.mkdir()

    predicted = run([venv / "bin/mnist-predict", folder / "seven.png", "--model",
                     folder / "model.onnx"], cwd=elsewhere, env={"HOME": str(home)})

    assert predicted.stdout.startswith(f"{folder / 'seven.png'}: 7 (")
    assert_serves([venv / "bin/mnist-serve"], elsewhere, folder / "model.onnx",
                  folder / "seven.png", home)
