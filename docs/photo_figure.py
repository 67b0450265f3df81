"""Make a before/after picture (docs/photo.png is the one docs/photos.md shows): photos from the
project's photo set (tests/photos.py) beside the 28x28 image the model saw (app/pictures/digit.py),
with what the trained model read. From the repository root after `make repro`:

    python docs/photo_figure.py OUT.png
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.classifier import load_classifier  # noqa: E402
from app.pictures.digit import to_mnist_form  # noqa: E402
from tests.photos import make_photo  # noqa: E402

CELL, GAP, CAPTION = 200, 12, 22
EXAMPLES = [(4, "sheet-on-desk", 11), (7, "uneven-light", 3), (2, "noise-jpeg", 5),
            (9, "small-off-centre", 8), (3, "chalk", 2)]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: docs/photo_figure.py OUT.png")
    classifier = load_classifier("model/model.onnx")
    font = ImageFont.load_default(size=14)
    figure = Image.new("L", (len(EXAMPLES) * (CELL + GAP) - GAP, 2 * CELL + GAP + CAPTION), 255)
    draw = ImageDraw.Draw(figure)
    for i, (digit, kind, seed) in enumerate(EXAMPLES):
        photo = make_photo(digit, kind, seed)
        seen = to_mnist_form(photo.image)
        probs = classifier.probabilities(seen[np.newaxis, ..., np.newaxis])[0]
        x = i * (CELL + GAP)
        figure.paste(Image.fromarray(photo.image).resize((CELL, CELL)), (x, 0))
        figure.paste(Image.fromarray(seen).resize((CELL, CELL), Image.Resampling.NEAREST),
                     (x, CELL + GAP))
        label = f"{kind}: read {classifier.info.class_names[probs.argmax()]} ({probs.max():.0%})"
        draw.text((x, 2 * CELL + GAP + 4), label, fill=0, font=font)
    figure.save(sys.argv[1])
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
