"""What the transform saw in a picture, drawn for a person (`predict --debug`): the sheet of paper
it took as the page, the ink it took as the digit, and the 28x28 image the model was given. When
a photo is refused or misread, this shows why."""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.pictures.decode import InputError, read_grey
from app.pictures.digit import FIELD, find_digit, fit_and_centre, to_fashion_form

PANEL = (800, 400)   # the picture is scaled to fit this box (width, height), small ones enlarged
ZOOM = 10            # the 28x28 image is shown at 280x280, each pixel a square
PAGE, INK = (40, 110, 255), (230, 30, 30)  # outline colours: the page blue, the ink red
CAPTION = 16         # px: the caption's font size
GAP = 12


def debug_png(picture: bytes, dataset: str, caption: str) -> bytes:
    """debug_view of a picture file's bytes, as a PNG file's: what predict --debug runs in a
    decode process (sandbox.py)."""
    buffer = io.BytesIO()
    debug_view(read_grey(picture), dataset, caption).save(buffer, "PNG")
    return buffer.getvalue()


def debug_view(grey: np.ndarray, dataset: str = "mnist", caption: str | None = None) -> Image.Image:
    """A PIL image (RGB): the picture (2-D grey levels 0-255) with the page's outline and the
    ink's box drawn on it, and beside it the 28x28 image the model saw; below, a legend, or the
    transform's reason when it found no digit, and `caption` (e.g. what the model answered)."""
    grey = np.asarray(grey, dtype=np.float32)
    page = box = pixels = None
    try:
        if dataset == "fashion-mnist":  # the whole item is taken: there is no ink to outline
            pixels = to_fashion_form(grey)
        else:
            found = find_digit(grey)
            page, box, pixels = found.page, found.box, fit_and_centre(found.ink)
        legend = ["blue: the sheet of paper" if page is not None else "",
                  "red: the ink read as the digit" if box else "",
                  "right: the 28x28 the model saw"]
        legend = ", ".join(part for part in legend if part)
    except InputError as error:
        legend = str(error)

    height, width = grey.shape
    scale = min(PANEL[0] / width, PANEL[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = Image.fromarray(grey.clip(0, 255).astype(np.uint8)).resize(
        size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(picture)
    if page is not None:
        draw.polygon([tuple(xy) for xy in page * scale], outline=PAGE, width=3)
    if box:
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=INK, width=2)

    font = ImageFont.load_default(size=CAPTION)
    lines = [legend] + ([caption] if caption else [])
    seen_side = FIELD * ZOOM
    view = Image.new("RGB", (size[0] + GAP + seen_side, max(size[1], seen_side) + GAP
                             + len(lines) * (CAPTION + 4)), "white")
    view.paste(picture, (0, 0))
    if pixels is not None:
        seen = Image.fromarray(pixels).resize((seen_side, seen_side), Image.Resampling.NEAREST)
        view.paste(seen.convert("RGB"), (size[0] + GAP, 0))
    text = ImageDraw.Draw(view)
    top = max(size[1], seen_side) + GAP
    for i, line in enumerate(lines):
        text.text((0, top + i * (CAPTION + 4)), line, fill="black", font=font)
    return view
