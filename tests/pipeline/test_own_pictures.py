"""Your own pictures by one param, with the real dvc and git CLIs: a folder of colour pictures of
three shapes tracked with `dvc add`, trained on with `dvc exp run -S data.dataset=shapes`, the
model then answering through the app; one picture changed reruns from the first stage, and the
same content gives the same bytes in another clone."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PipelineRepo, built_once, stages_run
from tests.folders import SHAPES, shape_picture, shapes_folder
from tests.pipeline.conftest import lock_md5s

pytestmark = pytest.mark.slow

# A CNN small enough to learn three shapes in seconds.
RECIPE = ["-S", "data.dataset=shapes", "-S", "train.model=cnn", "-S", "train.cnn.epochs=8",
          "-S", "train.cnn.batch_size=16", "-S", "train.cnn.augment=none",
          "-S", "train.cnn.learning_rate=0.003", "-S", "data.image_size=24"]


@pytest.fixture(scope="session")
def own_pictures(reproduced, tmp_path_factory, worker_id):
    """A copy of the session's repo with datasets/shapes added (`dvc add`), committed, and an
    experiment trained on it applied to the workspace."""
    def build(folder):
        repo = reproduced.copy(folder / "repo")
        shapes_folder(repo.path / "datasets/shapes", per_class=40, seed=3)
        repo.dvc("add", "datasets/shapes")
        repo.commit_all("my shapes")
        ran = repo.dvc("exp", "run", "-n", "shapes", *RECIPE)
        (folder / "ran.txt").write_text(ran.stdout + ran.stderr)

    folder = built_once(tmp_path_factory, worker_id, "own-pictures", build)
    repo = PipelineRepo(folder / "repo", reproduced.mirrors)
    repo.ran = (folder / "ran.txt").read_text()
    return repo


@pytest.fixture
def own_pictures_repo(own_pictures, tmp_path):
    copy = own_pictures.copy(tmp_path / "repo")
    copy.ran = own_pictures.ran
    return copy


def test_one_param_trains_every_stage_on_the_folder(own_pictures):
    repo = own_pictures
    assert stages_run(repo.ran) == ["download", "preprocess", "train", "evaluate", "export"]
    metadata = json.loads((repo.path / "model/metadata.json").read_text())
    assert metadata["class_names"] == list(SHAPES) and metadata["input_shape"] == [24, 24, 3]
    assert metadata["prepare"] == "picture" and metadata["dataset"] == "shapes"
    test = json.loads((repo.path / "metrics/test.json").read_text())
    assert test["test_accuracy"] >= 0.8, "three shapes are easy"
    per_class = (repo.path / "metrics/per_class.csv").read_text()
    assert all(f",{shape}," in per_class for shape in SHAPES), "the names reach the plots"
    assert "channels auto: 3" in repo.ran


def test_one_picture_changed_reruns_from_the_first_stage(own_pictures_repo):
    repo = own_pictures_repo
    picture = repo.path / "datasets/shapes/circle/0.png"
    picture.unlink()  # DVC may have linked it from its cache: a new file, not a write into it
    shape_picture("circle", np.random.default_rng(99)).save(picture)
    repo.dvc("add", "datasets/shapes")
    assert stages_run(repo.dvc("repro").stdout)[:2] == ["download", "preprocess"]


def test_the_same_pictures_give_the_same_bytes_in_another_clone(own_pictures, tmp_path):
    repo = own_pictures.copy(tmp_path / "first")
    repo.dvc("exp", "apply", "shapes")
    repo.commit_all("trained on my shapes")
    repo.dvc("push")  # the pictures travel through the DVC remote, as they would to a teammate
    clone = PipelineRepo(tmp_path / "clone", repo.mirrors)
    repo.git("clone", "-q", str(repo.path), str(clone.path))  # the same remote: ../../ of .dvc
    clone.dvc("pull", "datasets/shapes.dvc")
    assert clone.repro("-f") == ["download", "preprocess", "train", "evaluate", "export"]
    assert lock_md5s(clone) == lock_md5s(repo)


def test_a_bad_picture_added_stops_the_run_in_one_line(own_pictures_repo):
    repo = own_pictures_repo
    (repo.path / "datasets/shapes/square/scan.png").write_bytes(b"not really a picture")
    repo.dvc("add", "datasets/shapes")
    failed = repo.dvc("exp", "run", *RECIPE, check=False)
    assert failed.returncode != 0
    assert ("error: datasets/shapes/square/scan.png: not a picture (BMP, GIF, JPEG, PNG, TIFF, "
            "WEBP) (data.on_bad_file: skip leaves it out)") in failed.stderr + failed.stdout
    skipped = repo.dvc("exp", "run", *RECIPE, "-S", "data.on_bad_file=skip")
    assert stages_run(skipped.stdout)[0] == "download"
    assert json.loads((repo.path / "metrics/data.json").read_text())["skipped_files"] == 1
    with Image.open(repo.path / "metrics/errors.png") as grid:
        assert grid.mode == "RGB"


def test_the_app_follows_the_model_through_the_cli_and_the_api(own_pictures, tmp_path):
    """The exported model of the shapes answers in their names, from a picture of any size
    and format, through `mnist-predict` and the API: the app was told nothing but the model."""
    from tests.serving import free_port, post_file, request, wait_until_answering

    repo = own_pictures.copy(tmp_path / "repo")
    repo.dvc("exp", "apply", "shapes")
    model = repo.path / "model/model.onnx"
    rng = np.random.default_rng(7)
    pictures = {}
    for shape in SHAPES:  # new pictures, larger than those trained on, and in other formats
        path = tmp_path / f"{shape}.jpg"
        shape_picture(shape, rng, size=(300, 220)).save(path, quality=90)
        pictures[shape] = path
    out = repo.python("-m", "app.cli", "--model", str(model), "--json",
                      *map(str, pictures.values())).stdout
    read = {Path(r["file"]).stem: r["label"] for r in json.loads(out)}
    assert sum(read[shape] == shape for shape in SHAPES) >= 2, read
    # The server as mnist-serve starts it, in a process of its own.
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "app.server.main"], cwd=repo.path,
                              env={**repo.env, "MODEL": str(model), "PORT": str(port),
                                   "WORKERS": "1"}, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(url)
        health = request(f"{url}/health").json()
        assert health["class_names"] == list(SHAPES) and health["prepare"] == "picture"
        assert health["refusal"] == "uncertainty" and health["input_shape"] == [24, 24, 3]
        answer = post_file(url, pictures["circle"].read_bytes(), "c.jpg", "image/jpeg").json()
        assert {t["label"] for t in answer["top"]} == set(SHAPES), answer
        assert answer["label"] == read["circle"] or answer["refusal"]
    finally:
        server.terminate()
        server.wait(timeout=30)
