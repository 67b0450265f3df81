"""Decode a picture into grey levels within known bounds of time and memory, judged from its
header before a pixel is decoded: what predict and the server read images with.

A hostile file is small and costly: a 200 KB progressive JPEG of 6000x6000 with one scan
repeated 1,000 times took 46 s to decode; a 309 KB 16-bit RGBA PNG of 6300x6300 took 760 MB.
Yet the transform (digit.py) searches a picture at most WORK_SIDE (400) pixels wide. So:

1. The header says what decoding will cost, and the picture is refused (TooManyPixels,
   TooCostly) before any work if that is over a limit: MAX_PIXELS; MAX_DECODE_BYTES of memory,
   the decoded picture as Pillow holds it (pixels x 1, 2 or 4 bytes) plus, for a progressive
   JPEG, libjpeg's coefficients for the whole picture; and MAX_JPEG_SCANS, counted from the
   file's markers, since every scan is one more pass over the whole picture.
2. A JPEG is decoded at the scale needed and in grey (Pillow's draft mode, libjpeg's DCT
   scaling by 1/2, 1/4 or 1/8): a 40-megapixel photo costs what a 0.6-megapixel one does.
3. The picture becomes float grey levels strip by strip, each strip averaged down at once by
   the same integer factor, so no full-size float copy is ever made. The result keeps its
   longer side at 2 x WORK_SIDE or more and its shorter side at MIN_SIDE or more, so the
   transform sees what it would have seen in the full picture.
4. Every read of the file and every strip checks a deadline (PastDeadline).

Small pictures (under 1600 pixels on their longer side) come out exactly as
app.pictures.digit.read_image gives them.
"""

import io
import math
import os
import re
import struct
import time
import warnings
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.pictures.digit import (
    FORMATS,
    MAX_PIXELS,
    MIN_SIDE,
    WORK_SIDE,
    InputError,
    TooManyPixels,
    grey_levels,
)

# Memory to decode one picture. Even four decoding at once (a pool of four threads) keep a
# worker, 120 MB at rest, under 500 MB. It lets through a 40-megapixel grey or palette PNG
# (a byte per pixel), a colour PNG or BMP of up to 16 megapixels, a progressive colour JPEG
# of up to about 20, and a baseline JPEG of any allowed size (drafted).
MAX_DECODE_BYTES = 64 * 2**20
# An encoder's progressive JPEG has 6 (grey) to 10 (colour) scans, a baseline one 1 to 3. A
# scan of 40 megapixels takes about 50 ms here: 20 of them, a second.
MAX_JPEG_SCANS = 20
STRIP_PIXELS = 2**18  # converted to float 1 MB at a time (and a few copies on the way)
MAX_GREY_PIXELS = 4 * 2**20  # the float result: 16 MB, for the thinnest of pictures

SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP"}
# What Pillow raises for a file of a known format that it cannot decode.
DAMAGE = (OSError, SyntaxError, ValueError, EOFError, struct.error)
# A marker: 0xFF then a code that is not stuffing (00), a restart (D0-D7) or fill (FF).
JPEG_MARKER = re.compile(rb"\xff([\x01-\xcf\xd8-\xfe])")
SOS, EOI = 0xDA, 0xD9
ORIENTATIONS = {  # EXIF orientation -> what makes the picture upright (as ImageOps does)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


class NotAnImage(InputError):
    """Not a PNG, JPEG or BMP file at all."""


class Damaged(InputError):
    """A PNG, JPEG or BMP file that cannot be decoded: cut short, a bad checksum, ..."""


class TooCostly(InputError):
    """A picture whose decoding would cost more memory or time than the limits allow."""


class PastDeadline(Exception):
    """The decode ran past its deadline; not the picture's fault alone (the server may be
    busy), so not an InputError."""


def check_deadline(deadline):
    if time.monotonic() > deadline:
        raise PastDeadline("the picture was not read in time")


class DeadlineFile:
    """A binary file whose reads raise PastDeadline once `deadline` (time.monotonic()) has
    passed. Pillow reads as it decodes, 64 KB at a time, so a decode stops within a block."""

    def __init__(self, file, deadline):
        self.file, self.deadline = file, deadline

    def read(self, size=-1):
        check_deadline(self.deadline)
        return self.file.read(size)

    def seek(self, offset, whence=io.SEEK_SET):
        return self.file.seek(offset, whence)

    def tell(self):
        return self.file.tell()


def read_picture(source: str | os.PathLike | BinaryIO) -> Image.Image:
    """A picture file (a path or a binary file) decoded whole: a loaded Pillow image in its own
    mode and size, upright as its EXIF orientation says, once its header has passed the checks
    read_grey makes (format, pixels, memory to decode). Raises an InputError subclass naming
    what is wrong. For callers that bound the decoding themselves (memory and CPU time, in a
    process of their own)."""
    if not hasattr(source, "read"):
        with open(source, "rb") as file:
            return read_picture(file)
    kind, data, file = opened(source)
    with pillow_errors(kind), Image.open(file, formats=[kind]) as image:
        plan(image, kind, data, draft=False)
        image.load()
        return ImageOps.exif_transpose(image)


def read_grey(file, deadline=math.inf):
    """A picture (a binary file) -> 2-D float32 grey levels 0-255, transparent parts white,
    upright as its EXIF orientation says, averaged down by an integer factor if it is much
    larger than the transform needs. Raises an InputError subclass, or PastDeadline."""
    kind, data, file = opened(file)
    with pillow_errors(kind), Image.open(DeadlineFile(file, deadline), formats=[kind]) as image:
        factor = plan(image, kind, data)
        image.load()
        orientation = image.getexif().get(ExifTags.Base.Orientation)
        grey = reduced_grey(image, factor, deadline)
    if orientation in ORIENTATIONS:
        grey = np.asarray(Image.fromarray(grey).transpose(ORIENTATIONS[orientation]))
    return grey


def opened(file):
    """(the picture's format, its bytes if a JPEG, a file to read it from)."""
    file.seek(0)
    kind = signature(file.read(8))
    file.seek(0)
    if kind != "JPEG":
        return kind, None, file
    data = file.read()  # its scans are counted from the bytes
    return kind, data, io.BytesIO(data)


@contextmanager
def pillow_errors(kind):
    """Pillow's warnings silenced and its errors raised as InputErrors that say what is wrong."""
    with warnings.catch_warnings():
        # Pillow's own bomb warning starts at 89 megapixels; MAX_PIXELS is lower.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow warns of damaged EXIF data; that costs the orientation only.
        warnings.simplefilter("ignore", UserWarning)
        try:
            yield
        except InputError:
            raise
        except Image.DecompressionBombError:  # over twice Pillow's limit: refused at open
            raise TooManyPixels(f"the image is over the {MAX_PIXELS // 1_000_000}-megapixel "
                                "limit") from None
        except DAMAGE as error:
            raise Damaged(f"a damaged {kind} image ({cause(error)})") from None


def signature(head):
    for magic, kind in SIGNATURES.items():
        if head.startswith(magic):
            return kind
    formats = f"{', '.join(FORMATS[:-1])} or {FORMATS[-1]}"
    raise NotAnImage(f"not a {formats} image" + ("" if head else " (the file is empty)"))


def cause(error):
    """Pillow's reason, without the file object it names when it cannot read a header."""
    if isinstance(error, UnidentifiedImageError):
        return "its header cannot be read"
    return str(error).split("\n")[0][:200] or type(error).__name__


def plan(image, kind, data, draft=True):
    """Check what decoding `image` will cost, from its header, against the limits; put a JPEG
    in draft mode at the scale needed. Returns the factor to average the strips down by."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise TooManyPixels(f"{width}x{height} pixels is over the "
                            f"{MAX_PIXELS // 1_000_000}-megapixel limit")
    described = f"this {width}x{height} {image.mode} {kind}"
    coefficients = 0
    if kind == "JPEG":
        scans = count_scans(data)
        if scans > MAX_JPEG_SCANS:
            raise TooCostly(f"{described} has {scans} scans, over the limit of {MAX_JPEG_SCANS} "
                            "(an encoder's progressive JPEG has 6 to 10)")
        if image.info.get("progressive"):  # libjpeg keeps every coefficient until the end
            coefficients = coefficient_bytes(width, height, image.layer)
        scale = max(s for s in (8, 4, 2, 1) if s <= reduction(width, height))
        if draft and scale > 1:  # decoded smaller, and in grey: libjpeg skips the colour
            image.draft("L", (width // scale, height // scale))
    cost = image.width * image.height * bytes_per_pixel(image.mode) + coefficients
    if cost > MAX_DECODE_BYTES:
        cheaper = "a baseline (not progressive) JPEG" if kind == "JPEG" else "a JPEG"
        raise TooCostly(f"decoding {described} takes {cost / 2**20:.0f} MB, over the "
                        f"{MAX_DECODE_BYTES // 2**20} MB limit: send a smaller picture, or "
                        f"{cheaper}")
    return reduction(*image.size)


def count_scans(data):
    """The scans (SOS markers) of a JPEG, walking its segments by their lengths, so that a
    thumbnail inside the EXIF data is not counted."""
    scans, position = 0, 2  # after SOI
    while match := JPEG_MARKER.search(data, position):
        marker = match.group(1)[0]
        if marker == EOI:
            break
        scans += marker == SOS
        # A segment's length counts its own two bytes; a scan's data follows its header up to
        # the next marker, which the next search finds.
        position = match.end() + int.from_bytes(data[match.end():match.end() + 2], "big")
    return scans


def coefficient_bytes(width, height, components):
    """What libjpeg holds for a progressive JPEG: 64 coefficients of 2 bytes for each 8x8
    block of every component, at that component's sampling."""
    h_max = max(h for _, h, _, _ in components)
    v_max = max(v for _, _, v, _ in components)
    return sum(math.ceil(math.ceil(width * h / h_max) / 8)
               * math.ceil(math.ceil(height * v / v_max) / 8) * 128
               for _, h, v, _ in components)


def bytes_per_pixel(mode):
    """As Pillow holds a picture: a byte for bilevel, grey and palette pictures, two for 16-bit
    grey, four for the rest (colour is padded to four)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def reduction(width, height):
    """The integer factor a picture can be averaged down by: its longer side kept at
    2 x WORK_SIDE or more (the transform averages it down to WORK_SIDE itself), its shorter side
    at MIN_SIDE or more (narrower is too thin for a digit); and, for the thinnest pictures, the
    result under MAX_GREY_PIXELS."""
    longer, shorter = max(width, height), min(width, height)
    factor = max(1, min(longer // (2 * WORK_SIDE), shorter // MIN_SIDE))
    return max(factor, math.ceil(math.sqrt(width * height / MAX_GREY_PIXELS)))


def reduced_grey(image, factor, deadline):
    """grey_levels of `image` averaged over factor x factor blocks, a strip at a time."""
    width, height = image.size
    rows = factor * max(1, STRIP_PIXELS // (width * factor))
    strips = []
    for top in range(0, height, rows):
        check_deadline(deadline)
        strip = grey_levels(image.crop((0, top, width, min(height, top + rows))))
        strips.append(block_mean(strip, factor))
    return np.vstack(strips)


def block_mean(pixels, factor):
    """The mean of each factor x factor block; the last row and column of blocks are filled
    out with the edge's pixels."""
    if factor == 1:
        return pixels
    height, width = pixels.shape
    padded = np.pad(pixels, ((0, -height % factor), (0, -width % factor)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)
