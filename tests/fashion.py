"""A tiny Fashion-MNIST look-alike the tests make themselves: ten silhouettes of clothing, bright
on black as Fashion-MNIST's images are, written as re-compressed IDX files the way Debian's
package holds them."""

import gzip

import numpy as np
from PIL import Image, ImageDraw

from app.pictures.digit import to_fashion_form
from tests.digits import IDX_NAMES, synthetic_dataset, write_mirror

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


def write_fashion_mirror(directory):
    """(checksums, arrays): the IDX files, re-compressed after they were written, as Debian's
    are: other .gz bytes, the same content."""
    arrays = synthetic_fashion()
    checksums = write_mirror(directory, arrays)
    recompress(directory)
    return checksums, arrays
