"""Decode a picture file into grey levels: how predict and the server read every picture, in a
process whose memory and CPU time the operating system bounds (pictures/sandbox.py).

The header is the fast first refusal: a PNG, JPEG or BMP, at most MAX_PIXELS, at most
MAX_DECODE_BYTES as Pillow holds the decoded picture. A header cannot say all that decoding
costs (a JPEG's scans repeated a thousand times, its coefficients kept for every scan, thousands
of segments stored one by one): that is the sandbox's bound, not a guess made here.

A legitimate large picture stays cheap: a JPEG is decoded at the scale needed and in grey
(Pillow's draft mode: libjpeg's DCT scaling by 1/2, 1/4 or 1/8), and the picture becomes float
grey levels strip by strip, each strip averaged down at once by the same integer factor, so that
no full-size float copy is made. The result keeps its longer side at KEEP_SIDE or more and its
shorter side at MIN_SIDE or more, so the digit's search sees what it would in the full picture.
"""

import io
import math
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 10 * 2**20  # a phone photo is 2-8 MB; a drawing from the page a few KB
MAX_PIXELS = 40_000_000
# Memory for the decoded picture as Pillow holds it: a 40-megapixel grey or palette PNG, a
# 16-megapixel colour one; a JPEG of any allowed size, drafted.
MAX_DECODE_BYTES = 64 * 2**20
KEEP_SIDE = 800  # twice what the digit is searched at (pictures/digit.py's WORK_SIDE)
MIN_SIDE = 8  # narrower than this, a picture cannot hold a readable digit
STRIP_PIXELS = 2**18  # converted to float 1 MB at a time (and a few copies on the way)
MAX_GREY_PIXELS = 4 * 2**20  # the float result: 16 MB, for the thinnest of pictures

FORMATS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP"}
# What Pillow raises for a file of a known format that it cannot decode.
DAMAGE = (OSError, SyntaxError, ValueError, EOFError, struct.error)
ORIENTATIONS = {  # EXIF orientation -> what makes the picture upright (as ImageOps does)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
# Pillow's reasons that name its own code, in the product's words.
PILLOW_WORDS = {"MAX_TEXT_CHUNK": "a text chunk over the size allowed",
                "MAX_TEXT_MEMORY": "more text than allowed"}


class InputError(ValueError):
    """An input that cannot be predicted; the message says why."""


class NotAnImage(InputError):
    """Not a PNG, JPEG or BMP file at all."""


class Damaged(InputError):
    """A PNG, JPEG or BMP file that cannot be decoded: cut short, a bad checksum, ..."""


class TooCostly(InputError):
    """A picture over the limits: its size, or the memory or time its decoding takes."""


def read_picture(source: str | os.PathLike | BinaryIO) -> Image.Image:
    """A picture file (a path or a binary file) decoded whole: a loaded Pillow image in its own
    mode and size, upright as its EXIF orientation says, if its header passes the checks.
    Raises an InputError subclass that says what is wrong. It bounds only what a header shows:
    run it where memory and CPU time are bounded (pictures/sandbox.py)."""
    with opened(source) as (image, kind):
        check(image, kind)
        image.load()
        return ImageOps.exif_transpose(image)


def read_grey(source: bytes | BinaryIO) -> np.ndarray:
    """A picture (its bytes, or a binary file) -> 2-D float32 grey levels 0-255, transparent
    parts white, upright as its EXIF orientation says, averaged down by an integer factor if it
    is much larger than the digit's search needs. Raises an InputError subclass."""
    with opened(io.BytesIO(source) if isinstance(source, bytes) else source) as (image, kind):
        if kind == "JPEG":  # decoded smaller, and in grey: libjpeg skips the colour
            scale = max(s for s in (8, 4, 2, 1) if s <= reduction(*image.size))
            image.draft("L", (image.width // scale, image.height // scale))
        check(image, kind)
        image.load()
        orientation = image.getexif().get(ExifTags.Base.Orientation)
        grey = reduced_grey(image, reduction(*image.size))
    if orientation in ORIENTATIONS:
        grey = np.asarray(Image.fromarray(grey).transpose(ORIENTATIONS[orientation]))
    return grey


@contextmanager
def opened(source: str | os.PathLike | BinaryIO) -> Iterator[tuple[Image.Image, str]]:
    """The picture in `source` as Pillow opens it (its header read, not decoded) and its format;
    Pillow's errors, there and in the block, as InputErrors."""
    with open(source, "rb") if isinstance(source, str | os.PathLike) else nullcontext(source) \
            as file:
        head = file.read(8)
        file.seek(0)
        kind = next((k for magic, k in FORMATS.items() if head.startswith(magic)), None)
        if kind is None:
            raise NotAnImage("not a PNG, JPEG or BMP image" + ("" if head else
                                                               " (the file is empty)"))
        with warnings.catch_warnings():
            # Pillow's own bomb warning starts at 89 megapixels; MAX_PIXELS is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow warns of damaged EXIF data; that costs the orientation only.
            warnings.simplefilter("ignore", UserWarning)
            coefficients = 0  # what libjpeg keeps of the whole picture for a multi-scan JPEG
            try:
                with Image.open(file, formats=[kind]) as image:
                    coefficients = image.width * image.height * len(image.getbands()) * 2
                    yield image, kind
            except InputError:
                raise
            except Image.DecompressionBombError:  # over twice Pillow's limit: refused at open
                raise TooCostly(f"the image is over the {MAX_PIXELS // 1_000_000}-megapixel "
                                "limit") from None
            except DAMAGE as error:
                # libjpeg's every error reads "broken data stream", running out of memory
                # among them: likely that, when its coefficients would fill the memory given.
                if kind == "JPEG" and "broken data stream" in str(error) \
                        and coefficients > MAX_DECODE_BYTES:
                    raise TooCostly("this JPEG cannot be decoded within the memory a picture "
                                    "may take") from None
                raise Damaged(f"a damaged {kind} image ({cause(error)})") from None


def cause(error: Exception) -> str:
    """Pillow's reason, in a line, without the file object it names when it cannot read a
    header, and without the names of its own code."""
    if isinstance(error, UnidentifiedImageError):
        return "its header cannot be read"
    reason = str(error).split("\n")[0][:200] or type(error).__name__
    return next((words for name, words in PILLOW_WORDS.items() if name in reason), reason)


def check(image: Image.Image, kind: str) -> None:
    """Refuse a picture whose header says it is too large to decode."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise TooCostly(f"{width}x{height} pixels is over the "
                        f"{MAX_PIXELS // 1_000_000}-megapixel limit")
    cost = width * height * bytes_per_pixel(image.mode)
    if cost > MAX_DECODE_BYTES:
        raise TooCostly(f"decoding this {width}x{height} {image.mode} {kind} takes "
                        f"{cost / 2**20:.0f} MB, over the {MAX_DECODE_BYTES // 2**20} MB limit: "
                        "send a smaller picture, or a JPEG")


def bytes_per_pixel(mode: str) -> int:
    """As Pillow holds a picture: a byte for bilevel, grey and palette pictures, two for 16-bit
    grey, four for the rest (colour is padded to four)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def reduction(width: int, height: int) -> int:
    """The integer factor a picture can be averaged down by: its longer side kept at KEEP_SIDE
    or more, its shorter side at MIN_SIDE or more; and, for the thinnest pictures, the result
    under MAX_GREY_PIXELS."""
    longer, shorter = max(width, height), min(width, height)
    factor = max(1, min(longer // KEEP_SIDE, shorter // MIN_SIDE))
    return max(factor, math.ceil(math.sqrt(width * height / MAX_GREY_PIXELS)))


def reduced_grey(image: Image.Image, factor: int) -> np.ndarray:
    """grey_levels of `image` averaged over factor x factor blocks, a strip at a time."""
    width, height = image.size
    rows = factor * max(1, STRIP_PIXELS // (width * factor))
    return np.vstack([block_mean(grey_levels(image.crop((0, top, width, min(height, top + rows)))),
                                 factor) for top in range(0, height, rows)])


def grey_levels(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> 2-D float32 grey levels 0-255; transparent parts become white paper."""
    if image.mode.startswith("I"):  # 16-bit greyscale PNG, 0-65535
        return np.asarray(image, dtype=np.float32) / 257
    if image.has_transparency_data:
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32)


def block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each factor x factor block; the last row and column of blocks are filled
    out with the edge's pixels."""
    if factor == 1:
        return pixels
    height, width = pixels.shape
    padded = np.pad(pixels, ((0, -height % factor), (0, -width % factor)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)
