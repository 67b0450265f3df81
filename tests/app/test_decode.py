"""Decoding (app/pictures/decode.py): a small picture comes out exactly as a plain reading of it
(Pillow, upright, in grey) gives it, in every colour mode and EXIF orientation; a large one,
averaged down or decoded in draft mode, gives the transform what the full picture would. The
bounds on costly pictures are tested against the real server and CLI (test_server.py,
test_predict.py)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from app.pictures.decode import flattened, read_grey, reduction
from app.pictures.digit import to_mnist_form
from tests.digits import draw_digit


def read_image(source):
    """A picture decoded whole, upright, in grey: what read_grey must give for a small one."""
    with Image.open(source) as image:
        return np.asarray(flattened(ImageOps.exif_transpose(image), "L"), dtype=np.float32)


def digit(size, shape):
    """A black 4 about `size` pixels tall on white paper of `shape` (height, width), off
    centre."""
    ink = Image.fromarray(draw_digit(4, np.random.default_rng(0))).resize((size, size))
    paper = Image.new("L", shape[::-1], 255)
    paper.paste(Image.fromarray(255 - np.asarray(ink)), (shape[1] // 5, shape[0] // 6))
    return paper


def saved(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer


def with_orientation(image, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return saved(image.convert("RGB"), "JPEG", exif=exif, quality=95)


SMALL = digit(90, (120, 100))
SMALL_FILES = {
    "grey PNG": lambda: saved(SMALL, "PNG"),
    "RGBA PNG": lambda: saved(Image.merge("RGBA", [SMALL] * 3 + [Image.eval(SMALL,
                                                                             lambda v: 255 - v)]),
                              "PNG"),
    "palette PNG": lambda: saved(SMALL.convert("P"), "PNG", transparency=255),
    "16-bit PNG": lambda: saved(Image.fromarray(np.asarray(SMALL).astype(np.uint16) * 257),
                                "PNG"),
    "bilevel BMP": lambda: saved(SMALL.convert("1"), "BMP"),
    "CMYK JPEG": lambda: saved(SMALL.convert("CMYK"), "JPEG"),
    **{f"JPEG, orientation {o}": (lambda o=o: with_orientation(SMALL, o)) for o in range(1, 9)},
}


@pytest.mark.parametrize("name", SMALL_FILES)
def test_a_small_picture_is_read_as_the_transform_reads_it(name):
    data = SMALL_FILES[name]().getvalue()

    np.testing.assert_array_equal(read_grey(io.BytesIO(data)), read_image(io.BytesIO(data)))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_large_picture_gives_the_transform_what_the_full_one_would(fmt):
    """4000x3000: averaged down by 5 (PNG), or decoded at 1/4 in draft mode (JPEG): 800 and
    1000 pixels wide, where the transform works at 400."""
    data = saved(digit(1500, (3000, 4000)), fmt).getvalue()

    grey = read_grey(io.BytesIO(data))

    assert grey.shape == ((600, 800) if fmt == "PNG" else (750, 1000))
    seen, full = to_mnist_form(grey), to_mnist_form(read_image(io.BytesIO(data)))
    assert np.abs(seen.astype(int) - full).mean() < 3


@pytest.mark.parametrize("width, height, factor", [
    (1599, 1599, 1), (1600, 1200, 2), (6300, 6300, 7),
    (30000, 30, 3),  # a thin picture keeps 8 pixels or more across
    (2_000_000, 20, 4),  # and the thinnest are brought under 4 megapixels whatever it costs
])
def test_a_picture_is_averaged_down_as_far_as_the_transform_allows(width, height, factor):
    assert reduction(width, height) == factor


