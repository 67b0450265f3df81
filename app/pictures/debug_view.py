"""What the transform saw in a picture, drawn for a person (`predict --debug`): for a digit model
the sheet it took as the page (blue) and the ink it took as the digit (red), and beside it the
input the model saw."""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.classifier import model_input
from app.metadata import ModelInfo
from app.pictures.decode import InputError, read_grey
from app.pictures.digit import find_digit

PANEL = (800, 400)   # the picture is scaled to fit this box (width, height)
SIDE, GAP, CAPTION = 280, 12, 16  # the model's input shown 280 px square; px between; font size
PAGE, INK = (40, 110, 255), (230, 30, 30)


def debug_png(picture: bytes, info: ModelInfo, caption: str) -> bytes:
    """debug_view of a picture file's bytes, as a PNG file's (run in a decode process)."""
    buffer = io.BytesIO()
    debug_view(picture, info, caption).save(buffer, "PNG")
    return buffer.getvalue()


def debug_view(picture: bytes, info: ModelInfo, caption: str = "") -> Image.Image:
    """The picture with, for a digit model, the page's outline and the ink's box; the input the
    model saw beside it; and below a legend (or why there is no input) and `caption`."""
    grey = read_grey(picture)
    page = box = pixels = None
    try:
        if info.prepare == "digit":
            found = find_digit(grey)
            page, box = found.page, found.box
        pixels = model_input(picture, info)
        legend = ", ".join(["blue: the sheet of paper"] * (page is not None)
                           + ["red: the ink read as the digit"] * bool(box)
                           + ["right: what the model saw"])
    except InputError as error:
        legend = str(error)
    scale = min(PANEL[0] / grey.shape[1], PANEL[1] / grey.shape[0])
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    shown = Image.fromarray(grey.clip(0, 255).astype(np.uint8)).resize(
        size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(shown)
    if page is not None:
        draw.polygon([tuple(xy) for xy in page * scale], outline=PAGE, width=3)
    if box:
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=INK, width=2)
    side, lines = SIDE, [line for line in (legend, caption) if line]
    top = max(size[1], side) + GAP
    view = Image.new("RGB", (size[0] + GAP + side, top + len(lines) * (CAPTION + 4)), "white")
    view.paste(shown, (0, 0))
    if pixels is not None:
        seen = Image.fromarray(pixels.squeeze(axis=2) if pixels.shape[2] == 1 else pixels)
        view.paste(seen.resize((side, side), Image.Resampling.NEAREST).convert("RGB"),
                   (size[0] + GAP, 0))
    text, font = ImageDraw.Draw(view), ImageFont.load_default(size=CAPTION)
    for i, line in enumerate(lines):
        text.text((0, top + i * (CAPTION + 4)), line, fill="black", font=font)
    return view
