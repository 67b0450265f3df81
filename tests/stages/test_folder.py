"""Your own pictures as the dataset: folders of every kind, good and careless, read by the real
download stage as DVC runs it (`python -m stages.download`), or by its reader."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from stages.common.folder import list_folder, read_folder
from stages.common.params import Data
from stages.common.runner import StageError
from tests.conftest import one_error_line, run_stage, stage_dir
from tests.folders import careless, encoded, every_kind, shape_picture, shapes_folder


def data(**values: object) -> Data:
    return Data(**{"dataset": "pets", "image_size": "auto", "channels": "auto",
                   "on_bad_file": "error", **values})


def raw(cwd) -> dict:
    with np.load(cwd / "data/raw.npz", allow_pickle=False) as archive:
        return dict(archive)


def test_a_folder_of_three_shapes_becomes_the_dataset(tmp_path):
    cwd = stage_dir(tmp_path / "stage", data={"dataset": "shapes"})
    shapes_folder(cwd / "datasets/shapes", per_class=8)
    status, _, err = run_stage("download", cwd)
    assert status == 0, err
    arrays = raw(cwd)
    assert arrays["class_names"].tolist() == ["circle", "square", "triangle"]  # sorted
    assert arrays["x_train"].shape == (24, 48, 48, 3) and arrays["x_train"].dtype == np.uint8
    assert np.bincount(arrays["y_train"]).tolist() == [8, 8, 8]
    assert arrays["x_test"].shape == (0, 48, 48, 3)  # no test/: preprocess holds one out
    assert str(arrays["prepare"]) == "picture"
    assert arrays["files_train"][0] == "circle/0.png"
    # The defaults come from the data, and the log says so.
    assert "image_size auto: 48" in err and "channels auto: 3 (24 of 24" in err


def test_train_and_test_folders_are_the_splits(tmp_path):
    root = shapes_folder(tmp_path / "shapes", per_class=8, split=True)
    arrays = read_folder(root, data(image_size=16, channels=1))
    assert arrays["x_train"].shape == (18, 16, 16, 1) and arrays["x_test"].shape == (6, 16, 16, 1)
    assert all(name.startswith("train/") for name in arrays["files_train"])
    assert all(name.startswith("test/") for name in arrays["files_test"])


def test_every_kind_of_picture_is_read_right(tmp_path):
    """PNG, JPEG, BMP, GIF, WebP, TIFF; grey, colour, palette, transparency, 16 bits, CMYK;
    8x8 to 4000x3000: each is the same dark disc on light ground, and reads so."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        for name, content in every_kind(rng).items():
            (tmp_path / "kinds" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "kinds" / label / name).write_bytes(content)
    arrays = read_folder(tmp_path / "kinds", data(image_size=16, channels=1))
    pictures, names = arrays["x_train"][..., 0].astype(int), arrays["files_train"]
    assert len(names) == 24 and arrays["skipped"].size == 0
    for picture, name in zip(pictures, names):
        assert picture[8, 8] < 60, f"{name}: the disc is dark"
        assert picture[0, 0] > 200, f"{name}: the ground is light (transparency over white)"
    # Aspect kept: the 4000x3000 photo is padded top and bottom with its edge's colour.
    phone = pictures[list(names).index("a/phone.jpg")]
    assert phone[0, 8] > 200 and phone[8, 8] < 60


def test_colour_is_kept_when_a_picture_has_it(tmp_path):
    root = tmp_path / "colours"
    for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / label).mkdir(parents=True)
        for n in range(3):
            Image.new("RGB", (20, 10), colour).save(root / label / f"{n}.png")
    arrays = read_folder(root, data())
    assert arrays["x_train"].shape[1:] == (20, 20, 3)
    blue, red = arrays["x_train"][0, 10, 10], arrays["x_train"][3, 10, 10]
    assert blue[2] > 200 > blue[0] and red[0] > 200 > red[2]


def test_the_size_defaults_to_the_median_side_at_most_64(tmp_path):
    root = shapes_folder(tmp_path / "big", per_class=2, size=(300, 200), colour=False)
    arrays = read_folder(root, data())
    assert arrays["x_train"].shape[1:] == (64, 64, 1)  # grey pictures: one channel


@pytest.mark.parametrize("name, why", [
    ("truncated.png", "a damaged PNG image"),
    ("notes.png", "not a picture (BMP, GIF, JPEG, PNG, TIFF, WEBP)"),
    ("empty.jpg", "an empty file"),
    ("bomb.png", "30000x30000 pixels is over the 40-megapixel limit"),
    ("notes.txt", "not a picture's name"),
])
def test_a_bad_file_stops_the_stage_in_one_line_naming_it(tmp_path, name, why):
    cwd = stage_dir(tmp_path / "stage", data={"dataset": "pets"})
    root = shapes_folder(cwd / "datasets/pets", per_class=3)
    good = (root / "circle/0.png").read_bytes()
    (root / "square" / name).write_bytes(careless(good)[name])
    status, _, err = run_stage("download", cwd)
    assert status == 1
    line = one_error_line(err)
    assert line.startswith(f"error: datasets/pets/square/{name}: {why}"), line
    assert "data.on_bad_file: skip leaves it out" in line
    assert not (cwd / "data/raw.npz").exists() and not list((cwd / "data").glob(".*"))


def test_with_skip_bad_files_are_left_out_and_counted(tmp_path):
    root = shapes_folder(tmp_path / "pets", per_class=3)
    good = (root / "circle/0.png").read_bytes()
    for name, content in careless(good).items():
        (root / "square" / name).write_bytes(content)
    (root / "README.md").write_text("my pictures\n")
    arrays = read_folder(root, data(on_bad_file="skip"))
    assert len(arrays["y_train"]) == 9
    assert len(arrays["skipped"]) == 6
    assert any(s.endswith("README.md: a file beside the class folders: every picture goes in "
                          "its class's folder") for s in arrays["skipped"])


@pytest.mark.parametrize("make, message", [
    (lambda root: (root / "square").mkdir(), "square: no pictures in this class's folder"),
    (lambda root: shutil.rmtree(root / "triangle"), "1 class folder (circle)"),
    (lambda root: (root / "README").write_text("hi"), "README: a file beside the class folders"),
    (lambda root: (root / "circle/more").mkdir(), "circle/more: a folder inside a class folder"),
    (lambda root: os.symlink("loop.png", root / "circle/loop.png"),
     "circle/loop.png: too many levels of symbolic links"),
])
def test_a_careless_folder_gets_one_clear_line(tmp_path, make, message):
    root = tmp_path / "pets"
    for shape in ("circle", "triangle"):
        (root / shape).mkdir(parents=True)
        shape_picture(shape, np.random.default_rng(0)).save(root / shape / "0.png")
    make(root)
    with pytest.raises(StageError, match="^" + str(root)) as error:
        read_folder(root, data())
    assert message in str(error.value) and "\n" not in str(error.value)


def test_test_and_train_must_hold_the_same_classes(tmp_path):
    root = shapes_folder(tmp_path / "shapes", per_class=4, split=True)
    (root / "test/zebra").mkdir()
    Image.new("L", (8, 8)).save(root / "test/zebra/0.png")
    with pytest.raises(StageError) as error:
        list_folder(root)
    assert str(error.value) == (f"{root}/test/zebra: a class train/ lacks; train/ and test/ must "
                                "hold the same class folders")


def test_a_folder_that_is_not_there_says_where_to_put_it(tmp_path):
    cwd = stage_dir(tmp_path / "stage", data={"dataset": "holiday/photos"})
    status, _, err = run_stage("download", cwd)
    assert status == 1
    assert one_error_line(err) == (
        "error: datasets/holiday/photos: no such folder; put your pictures in "
        "datasets/holiday/photos/<class>/ and track them with `dvc add datasets/holiday/photos`")


def test_hidden_files_are_ignored_and_links_are_followed(tmp_path):
    root = shapes_folder(tmp_path / "shapes", per_class=2)
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "circle/.thumbnail.png").write_bytes(b"junk")
    os.symlink(root / "square/0.png", root / "circle/linked.png")  # DVC may link its cache
    arrays = read_folder(root, data(image_size=8))
    assert "circle/linked.png" in arrays["files_train"].tolist() and len(arrays["y_train"]) == 7


def test_the_same_folder_gives_the_same_bytes(tmp_path):
    root = shapes_folder(tmp_path / "shapes", per_class=5)
    first, second = (read_folder(root, data()) for _ in range(2))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_a_picture_made_for_the_app_matches_the_training_data(tmp_path):
    """The app prepares a picture for a folder's model with the same code: the same array."""
    from app.pictures.fit import fit

    root = shapes_folder(tmp_path / "shapes", per_class=2)
    arrays = read_folder(root, data(image_size=24, channels=3))
    with open(root / "triangle/1.jpg", "rb") as f:
        np.testing.assert_array_equal(fit(f, 24, 3), arrays["x_train"][5])


def test_a_colour_picture_reads_as_grey_for_a_grey_model(tmp_path):
    picture = shape_picture("square", np.random.default_rng(1))
    (tmp_path / "p.png").write_bytes(encoded(picture, "PNG"))
    from app.pictures.fit import fit

    grey = fit(tmp_path / "p.png", 16, 1)
    assert grey.shape == (16, 16, 1) and grey[8, 8, 0] < 80
