"""A picture as a model trained on a folder of pictures takes it: uint8 (size, size, channels),
scaled until its longer side fits, aspect kept, the rest filled with its edge's colour (padded,
never stretched). Download reads every picture of a folder with this, and the app prepares a
picture for such a model with it: training and serving see pictures made the same way.
"""

import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from app.pictures.decode import flattened, opened

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def probe(source: str | os.PathLike | BinaryIO) -> tuple[int, bool]:
    """(longer side, whether it holds grey levels only) of a picture, from its header (and
    palette), undecoded. Raises decode.InputError."""
    with opened(source) as (image, _):
        if image.mode in ("P", "PA"):
            colours = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
            return max(image.size), bool((colours == colours[:, :1]).all())
        return max(image.size), Image.getmodebase(image.mode) == "L"  # 1, L, LA, I;16, F...


def letterboxed(image: Image.Image, size: int) -> np.ndarray:
    """The picture scaled to fit a `size` x `size` square, aspect kept, centred on its edge's
    colour: uint8 (size, size, channels)."""
    scale = size / max(image.size)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = np.asarray(image.resize(shape, Image.Resampling.LANCZOS, reducing_gap=3.0))
    small = small.reshape(shape[1], shape[0], -1)
    edge = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    square = np.empty((size, size, small.shape[2]), np.uint8)
    square[:] = np.median(edge, axis=0).round().astype(np.uint8)
    top, left = (size - shape[1]) // 2, (size - shape[0]) // 2
    square[top:top + shape[1], left:left + shape[0]] = small
    return square


def resized(form: np.ndarray, size: int, channels: int) -> np.ndarray:
    """A grey (H, W) or (H, W, 1) uint8 array in a dataset's own form (MNIST's 28x28) at the
    model's size and channels, as download made the dataset: uint8 (size, size, channels)."""
    form = np.asarray(form, np.uint8).reshape(form.shape[:2])
    if form.shape == (size, size) and channels == 1:
        return form[..., np.newaxis]
    return letterboxed(Image.fromarray(form).convert("L" if channels == 1 else "RGB"), size)


def fit(source: str | os.PathLike | BinaryIO, size: int, channels: int) -> np.ndarray:
    """The picture in `source` (a path or a binary file) as uint8 (size, size, channels).
    Raises decode.InputError."""
    mode = "L" if channels == 1 else "RGB"
    with opened(source) as (image, _):
        image.draft(mode, (size, size))  # JPEG: decoded no larger than needed (DCT scaling)
        return letterboxed(flattened(ImageOps.exif_transpose(image), mode), size)
