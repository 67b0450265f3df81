"""What the photo search (docs/photos.md) took for what, drawn for a person: each picture with the
sheet taken as the page (blue) and the ink taken as the digit (red), beside the input the model
saw, and under it what the model answered. From the repository root after `make repro`:

    python docs/debug_view.py OUT_DIR PICTURE [PICTURE ...] [--model model/model.onnx]

writes OUT_DIR/NNN-NAME.png, NNN the picture's place among those given (two may share a name),
for each picture it can read (else a line on stderr, and exit status 1). A tool for studying the
search, run in this process: the app reads pictures within bounds.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.classifier import MODEL_FILE, ModelError, answer, load_classifier, model_input  # noqa: E402
from app.cli import printable, reason, text_line  # noqa: E402
from app.metadata import ModelInfo  # noqa: E402
from app.pictures.decode import InputError, read_grey  # noqa: E402
from app.pictures.digit import find_digit  # noqa: E402

PANEL = (800, 400)   # the picture is scaled to fit this box (width, height)
SIDE, GAP, CAPTION = 280, 12, 16  # the model's input shown 280 px square; px between; font size
PAGE, INK = (40, 110, 255), (230, 30, 30)


def debug_view(picture: bytes, info: ModelInfo, caption: str = "",
               pixels: np.ndarray | None = None) -> Image.Image:
    """The picture with, for a digit model, the page's outline and the ink's box; the input the
    model saw beside it (`pixels`, made here if not given); and below a legend (or why there is
    no input) and `caption`."""
    grey = read_grey(picture)
    page = box = None
    try:
        if info.prepare == "digit":
            found = find_digit(grey)
            page, box = found.page, found.box
        pixels = model_input(picture, info) if pixels is None else pixels
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
    lines = [line for line in (legend, caption) if line]
    top = max(size[1], SIDE) + GAP
    view = Image.new("RGB", (size[0] + GAP + SIDE, top + len(lines) * (CAPTION + 4)), "white")
    view.paste(shown, (0, 0))
    if pixels is not None:
        seen = Image.fromarray(pixels.squeeze(axis=2) if pixels.shape[2] == 1 else pixels)
        view.paste(seen.resize((SIDE, SIDE), Image.Resampling.NEAREST).convert("RGB"),
                   (size[0] + GAP, 0))
    text, font = ImageDraw.Draw(view), ImageFont.load_default(size=CAPTION)
    for i, line in enumerate(lines):
        text.text((0, top + i * (CAPTION + 4)), line, fill="black", font=font)
    return view


def main() -> int:
    parser = argparse.ArgumentParser(prog="docs/debug_view.py", description=__doc__)
    parser.add_argument("out", type=Path, metavar="OUT_DIR")
    parser.add_argument("pictures", nargs="+", type=Path, metavar="PICTURE")
    parser.add_argument("--model", type=Path, default=MODEL_FILE)
    args = parser.parse_args()
    try:
        classifier = load_classifier(args.model)
    except ModelError as error:
        sys.exit(f"error: {error}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        sys.exit(f"error: {args.out}: {reason(error)}")
    failed = 0
    for number, path in enumerate(args.pictures, 1):
        try:
            picture = path.read_bytes()
            try:  # what the model answers
                pixels = model_input(picture, classifier.info)
                probs = classifier.probabilities(pixels[np.newaxis])[0]
                line = text_line({"file": str(path), **answer(pixels, probs, classifier, 3)})
            except InputError as error:  # no digit, say: drawn all the same, to show why
                pixels, line = None, f"{printable(str(path))}: {reason(error)}"
            debug_view(picture, classifier.info, line, pixels).save(
                args.out / f"{number:03d}-{path.name}.png")
            print(line)
        except (OSError, InputError, ModelError) as error:  # no picture to draw
            print(f"error: {printable(str(path))}: {reason(error)}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
