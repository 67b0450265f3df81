"""Folders of labelled pictures, as people have them, made by the tests: every format and mode a
picture comes in, and the careless things a folder holds."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def shape_picture(shape: str, rng: np.random.Generator, size: tuple = (48, 40),
                  colour: bool = True, ink: tuple | None = None,
                  ground: tuple | None = None) -> Image.Image:
    """A dark shape on a light ground, of `size`, their colours drawn at random unless given."""
    ground = ground or (tuple(int(v) for v in rng.integers(170, 256, 3)) if colour else (235,) * 3)
    ink = ink or (tuple(int(v) for v in rng.integers(0, 100, 3)) if colour else (20,) * 3)
    picture = Image.new("RGB", size, ground)
    draw = ImageDraw.Draw(picture)
    side = 0.7 * min(size)
    x0, y0 = (size[0] - side) / 2 + rng.uniform(-2, 2), (size[1] - side) / 2 + rng.uniform(-2, 2)
    box = (x0, y0, x0 + side, y0 + side)
    if shape == "circle":
        draw.ellipse(box, fill=ink)
    elif shape == "square":
        draw.rectangle(box, fill=ink)
    else:
        draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)], fill=ink)
    return picture if colour else picture.convert("L")


def shapes_folder(root: Path, per_class: int = 20, seed: int = 0, colour: bool = True,
                  split: bool = False, size: tuple = (48, 40)) -> Path:
    """root/<shape>/<n>.<ext> (or root/train/... and root/test/... with `split`): pictures of
    three shapes, in PNG, JPEG, BMP and WebP by turns."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        for n in range(per_class):
            folder = root / ("test" if split and n % 4 == 3 else "train") / shape if split \
                else root / shape
            folder.mkdir(parents=True, exist_ok=True)
            extension = (".png", ".jpg", ".bmp", ".webp")[n % 4]
            shape_picture(shape, rng, size, colour).save(folder / f"{n}{extension}")
    return root


def encoded(picture: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=format, **options)
    return buffer.getvalue()


def every_kind(rng: np.random.Generator) -> dict[str, bytes]:
    """{file name: bytes} of one picture of each format and mode people have, each a dark disc
    on a light ground."""
    disc = shape_picture("circle", rng, (40, 40), ink=(30, 40, 60), ground=(240, 225, 210))
    grey = disc.convert("L")
    rgba = disc.convert("RGBA")
    rgba.putalpha(Image.new("L", disc.size, 255).point(lambda v: v))
    transparent = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(transparent).ellipse((6, 6, 34, 34), fill=(20, 20, 20, 255))
    sixteen = Image.fromarray((np.asarray(grey, np.uint16) * 257).astype(np.uint16))
    return {
        "grey.png": encoded(grey, "PNG"),
        "colour.jpg": encoded(disc, "JPEG", quality=90),
        "colour.bmp": encoded(disc, "BMP"),
        "palette.gif": encoded(disc.quantize(16), "GIF"),
        "colour.webp": encoded(disc, "WEBP", lossless=True),
        "colour.tiff": encoded(disc, "TIFF"),
        "transparent.png": encoded(transparent, "PNG"),
        "palette-transparent.png": encoded(transparent.quantize(8), "PNG"),
        "sixteen-bit.png": encoded(sixteen, "PNG"),
        "cmyk.jpg": encoded(disc.convert("CMYK"), "JPEG"),
        "tiny.png": encoded(disc.resize((8, 8)), "PNG"),
        "phone.jpg": encoded(disc.resize((4000, 3000)), "JPEG", quality=80),
    }


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixel_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG of a few bytes whose header declares width x height grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def careless(good_png: bytes) -> dict[str, bytes | None]:
    """{name: bytes} of what a careless folder holds inside a class folder (None: an empty
    folder)."""
    return {
        "truncated.png": good_png[:len(good_png) // 2],
        "notes.png": b"these are my cats\n",
        "empty.jpg": b"",
        "bomb.png": pixel_bomb(),
        "notes.txt": b"not a picture\n",
    }
