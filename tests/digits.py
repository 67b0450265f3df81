"""A tiny MNIST look-alike the tests make themselves: digits drawn with Pillow's bundled font.

Each image is a white digit on black, 28x28 uint8, drawn at a random size, offset and stroke
width, so a small model can learn it in seconds and predict tests see MNIST-shaped input.
`mnist_form_digits` also fits and centres them the way MNIST's own digits were.
"""

import gzip
import hashlib
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.pictures.digit import to_mnist_form


def draw_digit(digit, rng):
    size = int(rng.integers(16, 23))
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    x = (28 - (right - left)) / 2 - left + rng.integers(-2, 3)
    y = (28 - (bottom - top)) / 2 - top + rng.integers(-2, 3)
    draw.text((x, y), str(digit), fill=255, font=font, stroke_width=int(rng.integers(0, 2)),
              stroke_fill=255)
    return np.asarray(canvas, dtype=np.uint8)


def synthetic_mnist(n_train=600, n_test=200, seed=0):
    """Arrays in the Keras layout, every digit equally often."""
    return synthetic_dataset(draw_digit, n_train, n_test, seed)


def synthetic_dataset(draw, n_train, n_test, seed):
    """Arrays in the Keras layout, every class of ten equally often, each image made by
    `draw(label, rng)` as a 28x28 uint8."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        rng.shuffle(labels)
        arrays[f"x_{split}"] = np.stack([draw(label, rng) for label in labels]) if n else \
            np.zeros((0, 28, 28), np.uint8)
        arrays[f"y_{split}"] = labels
    return arrays


def mnist_form_digits(n, seed=0):
    """(x, y): n drawn digits, each digit equally often, passed through predict's to_mnist_form,
    so they fit a 20x20 box centred by mass in 28x28 as real MNIST digits do."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % 10
    rng.shuffle(labels)
    return np.stack([to_mnist_form(draw_digit(d, rng)) for d in labels]), labels


def idx_bytes(array):
    """Encode a uint8 array as an IDX file (what stages.common.catalogue.parse_idx reads)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def write_mirror(directory, arrays):
    """Write the four IDX .gz files; return the SHA-256 of each one's content, as a catalogue
    entry's `files` holds them."""
    directory.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for key, name in IDX_NAMES.items():
        # mtime=0: the same arrays always give the same .gz bytes.
        with open(directory / name, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
            gz.write(idx_bytes(arrays[key]))
        checksums[name] = hashlib.sha256(idx_bytes(arrays[key])).hexdigest()
    return checksums


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
