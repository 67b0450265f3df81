"""A picture as a model trained on a folder of pictures takes it: an array of the model's size
and channels, aspect kept. The download stage reads every picture of a folder with this, and
the app prepares a picture for such a model with it too, so that training and serving see
pictures made the same way.

Any picture a person has is read right: PNG, JPEG, BMP, GIF, WebP, TIFF; grey or colour;
transparency over white, a palette, 16 bits per sample, CMYK; upright as its EXIF orientation
says. It is scaled, keeping its aspect, until its longer side fits the square, and the rest of
the square is filled with the colour of its edge (padded, never stretched).
"""

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# A picture over this many pixels is refused from its header, before it is decoded: 40
# megapixels is a phone photo of the largest kind; a few KB can declare 30,000x30,000.
MAX_PIXELS = 40_000_000
# Pillow's own limit refuses a picture before its size can be read: ours says how large it is.
Image.MAX_IMAGE_PIXELS = None
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class PictureError(ValueError):
    """A file that is no picture we can read, or one over the limits; the message says why."""


def open_picture(source: str | Path | BinaryIO) -> Image.Image:
    """The picture in `source` (a path or a binary file), opened but not decoded, its size
    checked against MAX_PIXELS. Raises PictureError."""
    try:
        image = Image.open(source, formats=FORMATS)
    except (OSError, SyntaxError, ValueError) as error:
        empty = isinstance(error, Image.UnidentifiedImageError) and picture_size(source) == 0
        raise PictureError("an empty file" if empty else
                           f"not a picture ({', '.join(FORMATS)})") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise PictureError(f"{width}x{height} pixels is over the "
                           f"{MAX_PIXELS // 1_000_000}-megapixel limit")
    return image


def picture_size(source: str | Path | BinaryIO) -> int:
    if isinstance(source, (str, Path)):
        return Path(source).stat().st_size
    return source.seek(0, 2)


def is_grey(image: Image.Image) -> bool:
    """Whether the picture holds grey levels only, from its mode (and palette), undecoded."""
    if image.mode in ("P", "PA"):
        colours = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
        return bool((colours == colours[:, :1]).all())
    return image.mode in GREY_MODES


def decoded(image: Image.Image, size: int, channels: int) -> Image.Image:
    """The picture decoded upright in mode L (1 channel) or RGB (3): 16 bits scaled to 8,
    transparent parts white, CMYK and palettes as the colours they show. A JPEG is decoded no
    larger than it needs to be for `size` (libjpeg's DCT scaling)."""
    mode = "L" if channels == 1 else "RGB"
    try:
        image.draft(mode, (size, size))  # JPEG only; a no-op for every other format
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I") or image.mode == "F":  # 16-bit (or 32-bit) grey levels
            levels = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if levels.max() > 255 or image.mode.startswith("I;16") else 255.0
            image = Image.fromarray(np.clip(levels * 255 / peak, 0, 255).round().astype(np.uint8))
        if image.has_transparency_data:
            white = Image.new("RGBA", image.size, "white")
            image = Image.alpha_composite(white, image.convert("RGBA"))
        return image.convert(mode)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise PictureError(f"a damaged {image.format or 'picture'} ({first_line(error)})") \
            from None


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


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


def fit(source: str | Path | BinaryIO, size: int, channels: int) -> np.ndarray:
    """The picture in `source` as uint8 (size, size, channels). Raises PictureError."""
    with open_picture(source) as image:
        return letterboxed(decoded(image, size, channels), size)
