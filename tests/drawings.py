"""Drawings made the way the page makes them: black round-capped strokes 18 px wide on a white
280x280 canvas (app/server/static/app.js), saved as the PNG the page posts.

Two sets, each from a seed, with no download:
- `scrawls`: what people draw that is not a digit: a tap (a dot), a dash, a scribble, a shape
  coloured in. The page must answer "not a digit" to these.
- `page_digits`: the ten digits written with the page's pen (tests/photos.py's strokes, a
  slanted, jittered hand, at the sizes people draw), which it must still read.

    python -m tests.drawings OUT_DIR      # writes both sets as PNG files to look at
"""

import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tests.photos import STROKES

CANVAS, PEN = 280, 18  # app.js: a 280x280 canvas, lineWidth 18, round caps and joins
SCRAWLS = ("tap", "dash", "scribble", "filled")


@dataclass
class Drawing:
    png: bytes      # the canvas as the page posts it
    kind: str       # one of SCRAWLS, or "digit"
    digit: int      # the digit drawn, or -1
    name: str


def canvas_png(strokes):
    """Strokes (lists of (x, y) canvas points) drawn with the page's pen -> PNG bytes. OpenCV's
    thick lines end in half-discs, as the canvas's round caps and joins do."""
    scale = 16  # sub-pixel precision: shift=4
    image = np.full((CANVAS, CANVAS), 255, np.uint8)
    for stroke in strokes:
        points = np.array([(round(x * scale), round(y * scale)) for x, y in stroke], np.int32)
        if len(points) == 1:  # a tap: the page draws a line 0.1 px long
            points = np.vstack([points, points + [2, 0]])
        cv2.polylines(image, [points], False, 0, PEN, cv2.LINE_AA, shift=4)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def inside(points, margin=PEN / 2 + 1):
    return [(float(np.clip(x, margin, CANVAS - margin)), float(np.clip(y, margin, CANVAS - margin)))
            for x, y in points]


def tap(rng):
    """A single tap, sometimes with a little slip of the finger."""
    x, y = rng.uniform(40, CANVAS - 40, 2)
    slip = rng.uniform(0, 8, 2) * (rng.random() < 0.5)
    return [[(x, y), (x + slip[0], y + slip[1])]]


def dash(rng):
    """A straight stroke: across the canvas at a gentle angle (a minus sign, an underline), or
    short at any angle (a slip)."""
    if rng.random() < 0.7:
        length, angle = rng.uniform(40, 220), rng.uniform(-30, 30)
    else:
        length, angle = rng.uniform(8, 36), rng.uniform(0, 180)
    cx, cy = rng.uniform(70, CANVAS - 70, 2)
    dx, dy = (length / 2 * f(math.radians(angle)) for f in (math.cos, math.sin))
    return [inside([(cx - dx, cy - dy), (cx + dx, cy + dy)])]


def scribble(rng):
    """A tangle: the pen wandering back and forth over a patch, as when testing the pen or
    crossing something out."""
    cx, cy = rng.uniform(100, CANVAS - 100, 2)
    w, h = rng.uniform(60, 200, 2)
    style = rng.integers(3)
    t = np.linspace(0, 1, 200)
    if style == 0:  # random points joined: a tangle
        points = rng.uniform(-0.5, 0.5, (int(rng.integers(7, 16)), 2))
        path = [(cx + px * w, cy + py * h) for px, py in points]
    elif style == 1:  # loops drawn along a line, as a pen tests itself
        turns = rng.uniform(4, 9)
        path = [(cx + w * (s - 0.5) + 0.25 * w * math.cos(2 * math.pi * turns * s),
                 cy + 0.4 * h * math.sin(2 * math.pi * turns * s)) for s in t]
    else:  # a zigzag crossing out
        zigs = int(rng.integers(5, 12))
        path = [(cx + w * (i % 2 - 0.5) + rng.normal(0, 6), cy + h * (i / zigs - 0.5))
                for i in range(zigs + 1)]
    return [inside(path)]


def filled(rng):
    """A shape coloured in: the pen going to and fro across a disc, a box or a triangle, closer
    than its own width."""
    cx, cy = rng.uniform(100, CANVAS - 100, 2)
    r = rng.uniform(30, 90)
    shape = rng.integers(3)
    angle = rng.uniform(0, math.pi)
    along, across = np.array([math.cos(angle), math.sin(angle)]), np.array(
        [-math.sin(angle), math.cos(angle)])
    path = []
    for i, s in enumerate(np.arange(-r, r + 1, PEN * 0.7)):
        if shape == 0:    # a disc
            half = math.sqrt(max(r * r - s * s, 0))
        elif shape == 1:  # a box
            half = r
        else:             # a triangle
            half = r * (s + r) / (2 * r)
        ends = [np.array([cx, cy]) + across * s + along * half * sign for sign in (-1, 1)]
        path.extend(ends if i % 2 == 0 else ends[::-1])
    return [inside(path)]


def scrawls(per_kind=30, seed=0):
    """`per_kind` drawings of each kind in SCRAWLS, reproducible from `seed`."""
    makers = {"tap": tap, "dash": dash, "scribble": scribble, "filled": filled}
    drawings = []
    for k, kind in enumerate(SCRAWLS):
        for i in range(per_kind):
            rng = np.random.default_rng(seed * 100_000 + k * 1000 + i)
            drawings.append(Drawing(canvas_png(makers[kind](rng)), kind, -1, f"{kind}-{i}"))
    return drawings


def page_digit(digit, rng):
    """One digit as a hand writes it on the page: 100 to 230 px tall, slanted and jittered."""
    height = rng.uniform(100, 230)
    width = height * rng.uniform(0.55, 0.8)
    x0 = rng.uniform(PEN, CANVAS - PEN - width)
    y0 = rng.uniform(PEN, CANVAS - PEN - height)
    slant = rng.uniform(-0.18, 0.18)
    strokes = []
    for stroke in STROKES[digit]:
        points = []
        for px, py in stroke:
            px, py = px + rng.normal(0, 0.02), py + rng.normal(0, 0.02)
            points.append((x0 + (px + slant * (0.5 - py)) * width, y0 + py * height))
        strokes.append(inside(points))
    return strokes


def page_digits(count=100, seed=0):
    """`count` digits drawn on the page, the ten in turn."""
    return [Drawing(canvas_png(page_digit(i % 10, np.random.default_rng(seed * 100_000 + i))),
                    "digit", i % 10, f"digit-{i % 10}-{i}") for i in range(count)]


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawings = scrawls() + page_digits()
    for drawing in drawings:
        (out / f"{drawing.name}.png").write_bytes(drawing.png)
    print(f"wrote {len(drawings)} drawings to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "drawings")
