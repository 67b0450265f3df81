"""Decode a picture file, as predict, the server and the pipeline's download read every picture,
in a process the operating system bounds (sandbox.py). The header gives the fast first refusal:
a PNG, JPEG, BMP, GIF, WebP or TIFF of at most MAX_PIXELS. What else decoding costs (scans
repeated a thousand times, coefficients kept for every scan, segments stored one by one) no
header tells truly: the sandbox's bounds stop it. A large picture stays cheap: a JPEG is decoded
at the scale needed, in grey (draft mode), and any picture is averaged down by an integer
factor, keeping KEEP_SIDE on its longer side and MIN_SIDE on its shorter.
"""

import io
import math
import os
import resource
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 10 * 2**20  # a phone photo is 2-8 MB; a drawing from the page a few KB
MAX_PIXELS = 40_000_000
MEMORY_BYTES = 128 * 2**20  # what decoding one picture may take (sandbox.py's bound)
KEEP_SIDE = 800  # twice what the digit is searched at (digit.py's WORK_SIDE)
MIN_SIDE = 8  # narrower than this, a picture cannot hold a readable digit
MAX_GREY_PIXELS = 4 * 2**20  # the float result: 16 MB, for the thinnest of pictures

FORMATS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"GIF8": "GIF",
           b"RIFF": "WEBP", b"II*\0": "TIFF", b"MM\0*": "TIFF"}
DAMAGE = (OSError, SyntaxError, ValueError, EOFError, struct.error)  # Pillow's, for bad files
# Pillow's own limit refuses a picture before its size can be read: ours (MAX_PIXELS) says it.
Image.MAX_IMAGE_PIXELS = None
PILLOW_WORDS = {"MAX_TEXT_CHUNK": "a text chunk over the size allowed",  # names of its code
                "MAX_TEXT_MEMORY": "more text than allowed"}


class InputError(ValueError):
    """An input that cannot be predicted; the message says why."""


class NotAnImage(InputError):
    """Not a picture in any of FORMATS."""


class Damaged(InputError):
    """A picture of a known format that cannot be decoded: cut short, a bad checksum, ..."""


class TooCostly(InputError):
    """A picture over the limits: its size, or the memory or time its decoding takes."""


def read_grey(source: bytes | BinaryIO) -> np.ndarray:
    """A picture (its bytes, or a binary file) -> 2-D float32 grey levels 0-255, transparent
    parts white, upright, averaged down by an integer factor (Pillow's reduce, a box filter in
    C) if it is much larger than the digit's search needs. Raises an InputError subclass."""
    with opened(io.BytesIO(source) if isinstance(source, bytes) else source) as (image, kind):
        factor = reduction(*image.size)
        if kind == "JPEG":  # decoded at the scale needed, in grey: libjpeg's DCT scaling
            scale = max(s for s in (8, 4, 2, 1) if s <= factor)
            image.draft("L", (image.width // scale, image.height // scale))
            factor = reduction(*image.size)
        grey = flattened(image, "L")
        grey = grey.reduce(factor) if factor > 1 else grey
        grey.info["exif"] = image.getexif().tobytes()  # its orientation, for exif_transpose
    return np.asarray(ImageOps.exif_transpose(grey), dtype=np.float32)


@contextmanager
def opened(source: str | os.PathLike | BinaryIO) -> Iterator[tuple[Image.Image, str]]:
    """The picture in `source` as Pillow opens it (its header read and checked, not decoded)
    and its format; Pillow's errors, there and in the block, as InputErrors."""
    with open(source, "rb") if isinstance(source, str | os.PathLike) else nullcontext(source) \
            as file:
        head = file.read(8)
        file.seek(0)
        kind = next((k for magic, k in FORMATS.items() if head.startswith(magic)), None)
        if kind is None:
            raise NotAnImage(f"not a picture ({', '.join(sorted(set(FORMATS.values())))})"
                             if head else "an empty file")
        with warnings.catch_warnings():
            # Pillow warns of damaged EXIF data, which costs the orientation only.
            warnings.simplefilter("ignore", UserWarning)
            coefficients = 0  # what libjpeg keeps of a JPEG of several scans
            try:
                with Image.open(file, formats=[kind]) as image:
                    width, height = image.size
                    if width * height > MAX_PIXELS:
                        raise TooCostly(f"{width}x{height} pixels is over the "
                                        f"{MAX_PIXELS // 1_000_000}-megapixel limit")
                    coefficients = width * height * len(image.getbands()) * 2
                    yield image, kind
            except InputError:
                raise
            except DAMAGE as error:
                # Every error of libjpeg reads "broken data stream", running out of memory
                # among them: that, most likely, when its coefficients would fill the bound.
                if kind == "JPEG" and "broken data stream" in str(error) \
                        and coefficients > MEMORY_BYTES:
                    raise TooCostly("this JPEG cannot be decoded within the memory a picture "
                                    "may take") from None
                # Pillow's reason in a line, without the file object or its own code's names.
                reason = "its header cannot be read" if isinstance(error, UnidentifiedImageError) \
                    else str(error).split("\n")[0][:200] or type(error).__name__
                reason = next((w for name, w in PILLOW_WORDS.items() if name in reason), reason)
                raise Damaged(f"a damaged {kind} image ({reason})") from None


def reduction(width: int, height: int) -> int:
    """The integer factor a picture can be averaged down by: its longer side kept at KEEP_SIDE
    or more, its shorter at MIN_SIDE or more; the thinnest brought under MAX_GREY_PIXELS."""
    factor = max(1, min(max(width, height) // KEEP_SIDE, min(width, height) // MIN_SIDE))
    return max(factor, math.ceil(math.sqrt(width * height / MAX_GREY_PIXELS)))


def flattened(image: Image.Image, mode: str) -> Image.Image:
    """A decoded picture in mode L or RGB, as it shows: 16 bits per sample scaled to 8,
    transparent parts white, CMYK and palettes as the colours they are."""
    if image.mode.startswith("I") or image.mode == "F":  # 16-bit (or 32-bit) grey levels
        levels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or levels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(levels * 255 / peak, 0, 255).round().astype(np.uint8))
    if image.has_transparency_data:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"),
                                      image.convert("RGBA"))
    return image.convert(mode)


def limit_memory(extra_bytes: int) -> None:
    """Cap this process's heap and private mappings (RLIMIT_DATA, where decoders allocate) at
    what it holds now plus `extra_bytes`: a picture that needs more is a MemoryError.
    (RLIMIT_AS would count what NumPy's and OpenCV's libraries reserve and never touch.)"""
    with open("/proc/self/status") as status:  # VmData: Linux's count of the same
        now = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    resource.setrlimit(resource.RLIMIT_DATA, (now + extra_bytes, hard))
