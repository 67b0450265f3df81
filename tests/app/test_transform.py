"""The transform's harder cases: a sheet of paper lying wholly inside a photo is found as paper and
its digit read (not the sheet taken for ink), a digit in a very long strip is found, and the
debug view (docs/debug_view.py) shows what was taken as the page and as the ink."""

import io

import numpy as np
import pytest
from PIL import Image

from app.pictures.decode import InputError
from app.pictures.digit import find_digit, to_mnist_form
from docs.debug_view import INK, PAGE, debug_view
from tests.app.test_photos import overlap
from tests.digits import draw_digit
from tests.photos import KINDS, desk, make_photo, shadow, texture
from tests.readings import DIGIT_MODEL

SHEETS = [make_photo(i % 10, "sheet-in-frame", 500 + i) for i in range(10)]


def test_a_sheet_inside_the_picture_is_the_page_and_its_digit_the_ink():
    for photo in SHEETS:
        found = find_digit(photo.image)
        x0, y0 = found.page.min(axis=0)
        x1, y1 = found.page.max(axis=0)
        assert overlap((x0, y0, x1, y1), photo.page) >= 0.9, photo.name
        assert found.polarity == "dark" and overlap(found.box, photo.box) >= 0.6, photo.name


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("sheet-on-desk", "sheet-in-frame")])
def test_no_page_is_seen_where_there_is_none(kind):
    """A digit's own loops (a 0, an 8) enclose a region too: it is no sheet of paper."""
    for i in range(10):
        assert find_digit(make_photo(i, kind, 700 + i).image).page is None


def blank_sheet(seed):
    """A photo of a sheet with nothing on it, on a desk, with a shadow across."""
    rng = np.random.default_rng(seed)
    shape = (480, 560)
    image = desk(shape, rng)
    image[120:380, 150:420] = 220 + texture((260, 270), rng, 4)
    image = image * shadow(shape, rng, (280, 250)) + rng.normal(0, 6, shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_a_blank_sheet_is_blank_not_a_filled_rectangle():
    for seed in range(5):
        with pytest.raises(InputError, match="no digit found"):
            to_mnist_form(blank_sheet(seed))


def strip(shape, at):
    """White paper of `shape` with a dark digit, as tall as the strip allows, at `at` (x, y);
    and the box of its ink."""
    side = min(shape) - 4
    digit = Image.fromarray(draw_digit(7, np.random.default_rng(0))).resize((side, side))
    picture = np.full(shape, 255, np.float32)
    x, y = at
    picture[y:y + side, x:x + side] = 255 - np.asarray(digit, np.float32)
    ys, xs = np.nonzero(picture < 128)
    return picture, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.parametrize("shape", [(30, 30000), (30000, 30), (1000, 40000)])
def test_a_digit_in_a_very_long_strip_is_found(shape):
    long_side = max(shape)
    at = (long_side // 3, 2) if shape[1] > shape[0] else (2, long_side // 3)
    picture, where = strip(shape, at)
    found = find_digit(picture)
    assert overlap(found.box, where) >= 0.6, (found.box, where)
    assert to_mnist_form(picture).max() == 255


def test_a_strip_too_long_to_search_is_refused_as_such():
    picture, _ = strip((50, 45000), (100, 2))
    with pytest.raises(InputError, match="too wide"):
        find_digit(picture)
    with pytest.raises(InputError, match="too tall"):
        find_digit(picture.T)


def colour_share(view, colour):
    pixels = np.asarray(view)
    return float((np.abs(pixels.astype(int) - colour).sum(axis=2) < 60).mean())


def png_of(pixels):
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_debug_view_outlines_the_page_and_the_ink():
    photo = SHEETS[0]
    view = debug_view(png_of(photo.image), DIGIT_MODEL, caption="read: 0")
    assert view.mode == "RGB" and view.width > 280 and view.height > 280
    assert colour_share(view, PAGE) > 0 and colour_share(view, INK) > 0
    # the 28x28 the model saw, beside the picture, ten times enlarged
    seen = np.asarray(view.convert("L"))[:280, -280:]
    assert np.array_equal(seen[::10, ::10], to_mnist_form(photo.image))


def test_the_debug_view_of_a_picture_without_a_page_or_a_digit():
    plain = make_photo(3, "noise-jpeg", 1)
    view = debug_view(png_of(plain.image), DIGIT_MODEL)
    assert colour_share(view, INK) > 0 and colour_share(view, PAGE) == 0
    blank = debug_view(png_of(np.full((200, 300), 210)), DIGIT_MODEL)
    assert colour_share(blank, INK) == 0 and colour_share(blank, PAGE) == 0
