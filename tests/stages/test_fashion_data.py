"""Fashion-MNIST's download and transform, on the tiny look-alike of tests/fashion.py: its own
mirror variable and hashes, a re-gzipped mirror accepted by content and a corrupt one refused, and
the whole item kept by the transform. (The whole pipeline on it: tests/pipeline/
test_experiments.py.)"""

import gzip

import numpy as np
import pytest

from app.pictures.digit import to_fashion_form
from stages import download
from stages.catalogue import Catalogue
from stages.params import checked
from stages.runner import StageError
from tests.conftest import FASHION, tiny_catalogue
from tests.digits import IDX_NAMES


def fashion_catalogue(checksums):
    return checked(Catalogue, tiny_catalogue(checksums, "fashion-mnist"), "datasets.yaml")


def test_a_recompressed_fashion_mirror_is_accepted_by_content(fashion_mirror, tmp_path):
    directory, checksums, arrays = fashion_mirror
    got = download.download("fashion-mnist", fashion_catalogue(checksums), {
        "FASHION_MNIST_MIRROR": str(directory), "MNIST_MIRROR": "/nowhere"}, tmp_path)
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
        download.download("fashion-mnist", fashion_catalogue(checksums),
                          {"FASHION_MNIST_MIRROR": str(corrupt)}, tmp_path / "work")


def test_the_fashion_transform_keeps_the_whole_item_on_black():
    """A sneaker photographed on white: trimmed, the longer side scaled to 28, negated."""
    photo = np.full((300, 400), 250, np.float32)
    photo[120:220, 40:360] = 60   # a dark, wide shoe
    out = to_fashion_form(photo)
    rows, cols = np.flatnonzero(out.max(axis=1) > 100), np.flatnonzero(out.max(axis=0) > 100)
    assert cols[0] == 0 and cols[-1] == 27, "the longer side fills the field"
    assert 8 <= len(rows) <= 10 and abs((rows[0] + rows[-1]) / 2 - 13.5) <= 1, "centred"
    assert out[0, 0] == 0 and out[rows[0] + 2, 14] > 150, "black background, bright item"
