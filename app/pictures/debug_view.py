"""What the transform saw in a picture, drawn for a person (`predict --debug`): the sheet it took
as the page (blue), the ink it took as the digit (red), and beside it the 28x28 the model saw."""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.pictures.decode import InputError, read_grey
from app.pictures.digit import FIELD, find_digit, fit_and_centre, to_fashion_form

PANEL = (800, 400)   # the picture is scaled to fit this box (width, height)
ZOOM, GAP, CAPTION = 10, 12, 16  # the 28x28 at 280x280; px between; the captions' font size
PAGE, INK = (40, 110, 255), (230, 30, 30)


def debug_png(picture: bytes, dataset: str, caption: str) -> bytes:
    """debug_view of a picture file's bytes, as a PNG file's (run in a decode process)."""
    buffer = io.BytesIO()
    debug_view(read_grey(picture), dataset, caption).save(buffer, "PNG")
    return buffer.getvalue()


def debug_view(grey: np.ndarray, dataset: str = "mnist", caption: str = "") -> Image.Image:
    """The picture (2-D grey levels) with the page's outline and the ink's box, the 28x28 the
    model saw beside it, and below a legend (or why no digit was found) and `caption`."""
    grey = np.asarray(grey, dtype=np.float32)
    page = box = pixels = None
    try:
        if dataset == "fashion-mnist":  # the whole item is taken: no ink to outline
            pixels = to_fashion_form(grey)
        else:
            found = find_digit(grey)
            page, box, pixels = found.page, found.box, fit_and_centre(found.ink)
        legend = ", ".join(["blue: the sheet of paper"] * (page is not None)
                           + ["red: the ink read as the digit"] * bool(box)
                           + ["right: the 28x28 the model saw"])
    except InputError as error:
        legend = str(error)
    scale = min(PANEL[0] / grey.shape[1], PANEL[1] / grey.shape[0])
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    picture = Image.fromarray(grey.clip(0, 255).astype(np.uint8)).resize(
        size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(picture)
    if page is not None:
        draw.polygon([tuple(xy) for xy in page * scale], outline=PAGE, width=3)
    if box:
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=INK, width=2)
    side, lines = FIELD * ZOOM, [line for line in (legend, caption) if line]
    top = max(size[1], side) + GAP
    view = Image.new("RGB", (size[0] + GAP + side, top + len(lines) * (CAPTION + 4)), "white")
    view.paste(picture, (0, 0))
    if pixels is not None:
        view.paste(Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
                   .convert("RGB"), (size[0] + GAP, 0))
    text, font = ImageDraw.Draw(view), ImageFont.load_default(size=CAPTION)
    for i, line in enumerate(lines):
        text.text((0, top + i * (CAPTION + 4)), line, fill="black", font=font)
    return view
