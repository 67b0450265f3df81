"""Fashion-MNIST by one param, on a tiny look-alike made here: ten silhouettes of clothing, bright
on black as Fashion-MNIST's images are, served as re-compressed IDX files the way Debian's
package holds them. Checked: its own mirror variable and hashes, a re-gzipped mirror accepted by
content and a corrupt one refused, and the class names end to end, from `dvc repro` to predict.
"""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.transform import to_fashion_form
from stages import download
from stages.runner import StageError
from tests.conftest import REPO, repo_params, tiny_params
from tests.digits import IDX_NAMES, synthetic_dataset, write_mirror

FASHION = repo_params()["data"]["fashion-mnist"]["class_names"]

# One silhouette per class, as polygons in a 28x28 field.
SHAPES = {
    0: [(6, 6), (22, 6), (26, 11), (21, 12), (20, 24), (8, 24), (7, 12), (2, 11)],  # T-shirt
    1: [(9, 3), (19, 3), (20, 25), (15, 25), (14, 10), (13, 25), (8, 25)],          # trouser
    2: [(8, 5), (20, 5), (26, 22), (22, 23), (19, 12), (19, 24), (9, 24), (9, 12),
        (6, 23), (2, 22)],                                                           # pullover
    3: [(11, 3), (17, 3), (18, 10), (23, 25), (5, 25), (10, 10)],                    # dress
    4: [(7, 3), (21, 3), (25, 25), (16, 25), (14, 8), (12, 25), (3, 25)],            # coat
    5: [(2, 17), (26, 17), (26, 21), (2, 21), (2, 19), (20, 18), (8, 14), (12, 13)],  # sandal
    6: [(7, 4), (21, 4), (24, 14), (21, 14), (20, 25), (8, 25), (7, 14), (4, 14)],   # shirt
    7: [(2, 15), (12, 12), (20, 14), (26, 18), (26, 22), (2, 22)],                   # sneaker
    8: [(4, 10), (24, 10), (25, 25), (3, 25), (4, 10), (9, 10), (10, 4), (18, 4),
        (19, 10)],                                                                   # bag
    9: [(10, 3), (18, 3), (18, 16), (26, 19), (26, 25), (10, 25)],                   # ankle boot
}


def photo_of(label, rng, zoom=4):
    """A product photo of class `label`: a dark silhouette on white, a little distorted."""
    canvas = Image.new("L", (28 * zoom, 28 * zoom), 255)
    stretch = rng.uniform(0.9, 1.1, size=2)
    polygon = [(x * zoom * stretch[0], y * zoom * stretch[1]) for x, y in SHAPES[label]]
    ImageDraw.Draw(canvas).polygon(polygon, fill=int(rng.integers(0, 136)))
    return np.asarray(canvas, np.uint8)


def clothing(label, rng):
    """A 28x28 image of class `label` made the way Fashion-MNIST's were, from a photo."""
    return to_fashion_form(photo_of(label, rng))


def synthetic_fashion(n_train=600, n_test=200, seed=0):
    return synthetic_dataset(clothing, n_train, n_test, seed)


def recompress(directory):
    """Re-gzip every IDX file, as Debian's package did: other .gz bytes, the same data."""
    for name in IDX_NAMES.values():
        data = gzip.decompress((directory / name).read_bytes())
        (directory / name).write_bytes(gzip.compress(data, compresslevel=9, mtime=1_590_000_000))


@pytest.fixture(scope="module")
def fashion_mirror(tmp_path_factory):
    """(directory, checksums as published, arrays): IDX files only, re-compressed after their
    hashes were taken, so their .gz MD5s no longer match and only the content's do."""
    directory = tmp_path_factory.mktemp("fashion")
    arrays = synthetic_fashion()
    checksums = write_mirror(directory, arrays, npz=None)
    recompress(directory)
    return directory, checksums, arrays


def fashion_data(checksums):
    data = repo_params()["data"]
    data.update(dataset="fashion-mnist", public_sources=False, timeout_s=2, retries=0)
    data["fashion-mnist"]["checksums"] = checksums
    return data


def test_a_recompressed_fashion_mirror_is_accepted_by_content(fashion_mirror, tmp_path):
    directory, checksums, arrays = fashion_mirror
    got = download.download(fashion_data(checksums), {"FASHION_MNIST_MIRROR": str(directory),
                                                      "MNIST_MIRROR": "/nowhere"}, tmp_path)
    for key, array in arrays.items():
        np.testing.assert_array_equal(got[key], array)
    assert got["class_names"].tolist() == FASHION


def test_a_corrupt_fashion_mirror_is_refused_with_the_same_clear_error(fashion_mirror, tmp_path):
    directory, checksums, _ = fashion_mirror
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in IDX_NAMES.values():
        (corrupt / name).write_bytes((directory / name).read_bytes())
    images = bytearray(gzip.decompress((corrupt / "t10k-images-idx3-ubyte.gz").read_bytes()))
    images[5000] ^= 0x40  # one pixel changed
    (corrupt / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(images), mtime=0))
    with pytest.raises(StageError, match="checksum mismatch for t10k-images-idx3-ubyte.gz: "
                                         "expected md5:[0-9a-f]{32} of the .gz or sha256:"):
        (tmp_path / "work").mkdir()
        download.download(fashion_data(checksums), {"FASHION_MNIST_MIRROR": str(corrupt)},
                          tmp_path / "work")


def test_the_fashion_transform_keeps_the_whole_item_on_black():
    """A sneaker photographed on white: trimmed, the longer side scaled to 28, negated."""
    photo = np.full((300, 400), 250, np.float32)
    photo[120:220, 40:360] = 60   # a dark, wide shoe
    out = to_fashion_form(photo)
    rows, cols = np.flatnonzero(out.max(axis=1) > 100), np.flatnonzero(out.max(axis=0) > 100)
    assert cols[0] == 0 and cols[-1] == 27, "the longer side fills the field"
    assert 8 <= len(rows) <= 10 and abs((rows[0] + rows[-1]) / 2 - 13.5) <= 1, "centred"
    assert out[0, 0] == 0 and out[rows[0] + 2, 14] > 150, "black background, bright item"


@pytest.mark.slow
def test_one_param_switches_the_whole_pipeline_to_fashion(pipeline_repo, fashion_mirror,
                                                          http_server, tmp_path):
    """`data.dataset: fashion-mnist` reruns every stage; the names of the classes reach the
    metrics and predict's answer."""
    repo = pipeline_repo
    directory, checksums, arrays = fashion_mirror
    assert repo.repro()[0] == "download"
    params = repo.params()
    params["data"]["dataset"] = "fashion-mnist"
    params["data"]["fashion-mnist"] = tiny_params(checksums, "fashion-mnist")["data"][
        "fashion-mnist"]
    repo.set_params(params)
    repo.env["FASHION_MNIST_MIRROR"] = http_server(directory)
    assert repo.repro() == ["download", "preprocess", "train", "evaluate", "export"]

    assert (repo.path / "data/fashion-mnist.npz").is_file()
    metadata = json.loads((repo.path / "model/metadata.json").read_text())
    assert metadata["dataset"] == "fashion-mnist" and metadata["class_names"] == FASHION
    per_class = (repo.path / "metrics/per_class.csv").read_text().splitlines()
    assert per_class[8] == "7,Sneaker," + per_class[8].split(",", 2)[2]
    assert "Ankle boot" in (repo.path / "metrics/confusion.csv").read_text()

    # A photo of a sneaker, dark on white, ten times the size: predict names it.
    Image.fromarray(photo_of(7, np.random.default_rng(5), zoom=10)).save(tmp_path / "sneaker.png")
    result = subprocess.run([sys.executable, "-m", "app.predict", "--json", "--model",
                             repo.path / "model/model.onnx", tmp_path / "sneaker.png"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [answer] = json.loads(result.stdout)
    assert answer["digit"] == "Sneaker"
