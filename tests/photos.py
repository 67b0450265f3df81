"""A photo test set of our own: digits written with a pen stroke by stroke, photographed badly.

Each picture is made here, from a seed, with no download: a digit drawn as strokes (a slanted,
jittered hand), on paper, then what phones do to it: sensor noise and JPEG at low quality, light
that falls off across the page, a vignette, the sheet lying on a darker desk, the digit small and
off-centre; chalk on a board (light ink); a sheet wholly inside the picture, turned a little, on
desks of several colours and grains, with a shadow across it; digits on the ruled paper of a
school notebook, lined or squared, scanned clean or photographed; and clean scans as controls.
Every picture comes with its truth: the digit, where its ink is, whether the ink is darker or
lighter than the paper, and for a sheet inside the picture, where the sheet is. Real MNIST
digits are put on ruled paper the same way (mnist_on_paper).

    python -m tests.photos OUT_DIR      # writes the set as PNG/JPEG files to look at
"""

import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


# Strokes of each digit in a unit box (x to the right, y down), as a hand writes them.
def _ellipse(cx, cy, rx, ry, start=0.0, end=1.0, points=24):
    return [(cx + rx * math.sin(2 * math.pi * t), cy - ry * math.cos(2 * math.pi * t))
            for t in np.linspace(start, end, points)]


STROKES = {
    0: [_ellipse(0.5, 0.5, 0.3, 0.46)],
    1: [[(0.35, 0.2), (0.56, 0.04), (0.52, 0.96)]],
    2: [[(0.2, 0.28), (0.3, 0.1), (0.55, 0.04), (0.76, 0.14), (0.78, 0.34), (0.6, 0.55),
         (0.18, 0.95), (0.86, 0.94)]],
    3: [[(0.2, 0.12), (0.5, 0.03), (0.76, 0.14), (0.72, 0.36), (0.45, 0.47), (0.78, 0.6),
         (0.8, 0.82), (0.52, 0.96), (0.18, 0.88)]],
    4: [[(0.62, 0.04), (0.14, 0.66), (0.86, 0.66)], [(0.62, 0.3), (0.62, 0.97)]],
    5: [[(0.8, 0.05), (0.3, 0.05), (0.24, 0.45), (0.5, 0.38), (0.76, 0.5), (0.8, 0.75),
         (0.56, 0.95), (0.2, 0.88)]],
    6: [[(0.72, 0.05), (0.42, 0.24), (0.24, 0.58), (0.3, 0.88), (0.54, 0.96), (0.76, 0.8),
         (0.72, 0.58), (0.46, 0.5), (0.26, 0.64)]],
    7: [[(0.14, 0.08), (0.86, 0.08), (0.44, 0.97)]],
    8: [_ellipse(0.5, 0.27, 0.22, 0.23), _ellipse(0.5, 0.72, 0.28, 0.25)],
    9: [_ellipse(0.5, 0.3, 0.25, 0.24), [(0.75, 0.3), (0.7, 0.65), (0.6, 0.97)]],
}

KINDS = ("clean", "clean-inverse", "noise-jpeg", "uneven-light", "sheet-on-desk",
         "small-off-centre", "chalk", "sheet-in-frame", "lined", "squared", "lined-photo",
         "squared-photo")
RULED = ("lined", "squared", "lined-photo", "squared-photo")
CONTROLS = ("clean", "clean-inverse")


@dataclass
class Photo:
    image: np.ndarray   # uint8 grey levels, (height, width)
    digit: int
    box: tuple          # (x0, y0, x1, y1) of the ink, in pixels, x1 and y1 exclusive
    polarity: str       # "dark" ink on light paper, or "light" ink on a dark ground
    kind: str
    name: str
    page: tuple = None  # (x0, y0, x1, y1) of a sheet lying wholly inside the picture


def ink_mask(digit, shape, box, rng, thickness):
    """The digit's strokes as a float mask 0-1 of `shape`, drawn into `box` (x, y, w, h) with
    the hand's slant and jitter."""
    x, y, w, h = box
    slant = rng.uniform(-0.18, 0.18)
    mask = np.zeros(shape, np.uint8)
    scale = 8  # cv2 draws with sub-pixel precision in fixed point: shift=3
    for stroke in STROKES[digit]:
        points = []
        for px, py in stroke:
            px, py = px + rng.normal(0, 0.02), py + rng.normal(0, 0.02)
            px += slant * (0.5 - py)
            points.append((round((x + px * w) * scale), round((y + py * h) * scale)))
        cv2.polylines(mask, [np.array(points, np.int32)], False, 255, thickness, cv2.LINE_AA,
                      shift=3)
    return mask.astype(np.float32) / 255


def lighting(shape, rng, strength):
    """Light falling off across the page (a gradient from a random side) and a vignette."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(angle) * (xx / width - 0.5) + math.sin(angle) * (yy / height - 0.5))
    gradient = 1 - strength * (ramp - ramp.min()) / (np.ptp(ramp) or 1)
    radius = np.hypot(xx / width - 0.5, yy / height - 0.5) / math.hypot(0.5, 0.5)
    return gradient * (1 - 0.35 * strength * radius ** 2)


def jpeg(image, quality):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def texture(shape, rng, amount):
    """Paper or desk grain: smooth random variation of the given amplitude."""
    small = rng.normal(0, 1, (max(2, shape[0] // 16), max(2, shape[1] // 16))).astype(np.float32)
    return cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC) * amount


def make_photo(digit, kind, seed):
    """One picture of `digit`, as `kind` describes, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    if kind == "sheet-in-frame":
        return sheet_in_frame(digit, rng, f"{kind}-{digit}-{seed}")
    height, width = (int(rng.integers(420, 640)), int(rng.integers(420, 640)))
    if kind in ("clean", "clean-inverse"):
        height, width = int(rng.integers(120, 300)), int(rng.integers(120, 300))
    shape = (height, width)
    side = min(shape)
    size = side * (rng.uniform(0.12, 0.2) if kind == "small-off-centre" else
                   rng.uniform(0.35, 0.6))
    box_w, box_h = size * rng.uniform(0.55, 0.75), size
    if kind == "small-off-centre":  # in a corner region, away from the border
        cx = rng.choice([0.28, 0.72]) * width + rng.uniform(-0.05, 0.05) * width
        cy = rng.choice([0.3, 0.7]) * height + rng.uniform(-0.05, 0.05) * height
    else:
        cx = width / 2 + rng.uniform(-0.08, 0.08) * width
        cy = height / 2 + rng.uniform(-0.08, 0.08) * height
    box = (cx - box_w / 2, cy - box_h / 2, box_w, box_h)
    thickness = max(2, round(size * rng.uniform(0.07, 0.11)))
    mask = ink_mask(digit, shape, box, rng, thickness)

    polarity = "light" if kind in ("clean-inverse", "chalk") else "dark"
    if kind in ("clean", "clean-inverse"):
        paper = np.full(shape, 255.0, np.float32)
        ink = 0.0
    elif kind == "chalk":
        paper = 45 + texture(shape, rng, 6) + rng.uniform(-10, 10)
        ink = rng.uniform(170, 220)
    elif kind in ("lined", "squared"):  # scanned: white paper, straight rules
        paper = ruled(np.full(shape, 255.0, np.float32), rng, kind == "squared")
        ink = rng.uniform(20, 60)
    elif kind in RULED:  # photographed: the rules turned a little, light falling off, JPEG
        paper = ruled(rng.uniform(200, 235) + texture(shape, rng, 4), rng,
                      kind == "squared-photo", angle=rng.uniform(-3, 3))
        ink = rng.uniform(25, 70)
    else:
        paper = rng.uniform(200, 235) + texture(shape, rng, 4)
        ink = rng.uniform(25, 70)
    image = paper * (1 - mask) + ink * mask

    if kind == "sheet-on-desk":  # the page is a rotated rectangle; the desk, darker, around it
        desk = rng.uniform(60, 120) + texture(shape, rng, 10)
        corners = cv2.boxPoints(((cx + rng.uniform(-0.05, 0.05) * width, cy),
                                 (width * rng.uniform(0.6, 0.8), height * rng.uniform(0.65, 0.85)),
                                 rng.uniform(-12, 12)))
        sheet = np.zeros(shape, np.uint8)
        cv2.fillConvexPoly(sheet, corners.astype(np.int32), 255)
        sheet = cv2.GaussianBlur(sheet, (5, 5), 0).astype(np.float32) / 255
        image = desk * (1 - sheet) + image * sheet
    photographed = kind.endswith("-photo")
    if kind in ("uneven-light", "sheet-on-desk", "small-off-centre", "chalk") or photographed:
        image = image * lighting(shape, rng, rng.uniform(0.3, 0.55))
    if kind not in ("clean", "clean-inverse", "lined", "squared"):
        image = image + rng.normal(0, rng.uniform(5, 12), shape)
    image = np.clip(image, 0, 255).round().astype(np.uint8)
    if kind in ("noise-jpeg", "sheet-on-desk", "small-off-centre", "chalk") or photographed:
        image = jpeg(image, int(rng.integers(15, 40)))
    if kind == "clean-inverse":
        image = 255 - image

    rows, cols = np.flatnonzero(mask.max(axis=1) > 0.5), np.flatnonzero(mask.max(axis=0) > 0.5)
    truth = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return Photo(image, digit, truth, polarity, kind, f"{kind}-{digit}-{seed}")


def ruled(paper, rng, squared, angle=0.0):
    """`paper` with a notebook's rules: lines 1-2 px wide, grey 190-230, every 22-28 px, at a
    random phase and turned by `angle` degrees; columns of them too on squared paper."""
    height, width = paper.shape
    grey, spacing, thickness = rng.uniform(190, 230), rng.uniform(22, 28), int(rng.integers(1, 3))
    rules = np.zeros(paper.shape, np.uint8)
    slope = math.tan(math.radians(angle))
    for start in np.arange(rng.uniform(0, spacing), 2 * max(height, width), spacing) - \
            max(height, width) / 2:
        lines = [((0, start), (width, start + slope * width))]
        if squared:
            lines.append(((start, 0), (start - slope * height, height)))
        for (x0, y0), (x1, y1) in lines:
            cv2.line(rules, (round(x0 * 8), round(y0 * 8)), (round(x1 * 8), round(y1 * 8)), 255,
                     thickness, cv2.LINE_AA, shift=3)
    darker = rules.astype(np.float32) / 255
    return np.minimum(paper, paper * (1 - darker) + grey * darker)


def mnist_on_paper(pixels, seed, squared):
    """A real MNIST digit (28x28, white on black) written about 150 px tall in dark ink on
    ruled paper (`squared` or lined), as a scan: grey levels, uint8."""
    rng = np.random.default_rng(seed)
    side = 28 * 150 // 20  # MNIST's digits fill 20 of its 28 pixels
    ink = np.asarray(Image.fromarray(np.asarray(pixels, np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC), np.float32).clip(0, 255) / 255
    height, width = int(rng.integers(240, 360)), int(rng.integers(240, 360))
    top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
    mask = np.zeros((height, width), np.float32)
    mask[top:top + side, left:left + side] = ink
    paper = ruled(np.full(mask.shape, 255.0, np.float32), rng, squared)
    image = paper * (1 - mask) + rng.uniform(20, 60) * mask
    return np.clip(image, 0, 255).round().astype(np.uint8)


# Desks as the camera's grey levels (ITU-R 601 luma of their colour, as read_image converts):
# dark walnut, oak, grey laminate, a green cutting mat, a blue desk, black, light beige.
DESK_COLOURS = {"walnut": (70, 45, 30), "oak": (160, 120, 75), "laminate": (120, 120, 125),
                "cutting-mat": (40, 110, 70), "blue": (50, 80, 140), "black": (30, 30, 30),
                "beige": (175, 165, 150)}
DESK_TEXTURES = ("plain", "wood-grain", "speckled")


def luma(rgb):
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def desk(shape, rng):
    """A desk of one of DESK_COLOURS with one of DESK_TEXTURES."""
    level = luma(list(DESK_COLOURS.values())[rng.integers(len(DESK_COLOURS))])
    surface = np.full(shape, level, np.float32) + texture(shape, rng, 5)
    grain = DESK_TEXTURES[rng.integers(len(DESK_TEXTURES))]
    if grain == "wood-grain":  # streaks along one direction, wavering
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
        angle = rng.uniform(0, math.pi)
        across = -math.sin(angle) * xx + math.cos(angle) * yy
        across = across + 6 * texture(shape, rng, 1)
        surface += 0.12 * level * np.sin(across / rng.uniform(3, 9)) * (0.6 + 0.4 * np.sin(
            across / 37))
    elif grain == "speckled":  # granite, terrazzo: grains of a pixel or two
        surface += cv2.GaussianBlur(rng.normal(0, 0.3 * level, shape).astype(np.float32),
                                    (0, 0), 0.8)
    return surface


def shadow(shape, rng, through):
    """A soft shadow (a hand, the phone) over one side of a line through the point `through`:
    the light it takes, and a penumbra some pixels wide."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    side = math.cos(angle) * (xx - through[0]) + math.sin(angle) * (yy - through[1])
    penumbra = rng.uniform(4, 16)
    return 1 - rng.uniform(0.2, 0.45) * 0.5 * (1 + np.tanh(side / (2 * penumbra)))


def sheet_in_frame(digit, rng, name):
    """A sheet of paper wholly inside the frame, turned a little, on a desk, with a shadow
    across part of it: the digit written on the sheet, which the sheet's outline must not
    hide (a bright region with darker ink in it is the page, not the ink)."""
    height, width = int(rng.integers(420, 640)), int(rng.integers(420, 640))
    shape = (height, width)
    sheet_w, sheet_h = width * rng.uniform(0.35, 0.72), height * rng.uniform(0.4, 0.78)
    angle = rng.uniform(-10, 10)
    # the sheet's centre, far enough from the edges that its turned corners stay inside
    reach_x = (abs(math.cos(math.radians(angle))) * sheet_w
               + abs(math.sin(math.radians(angle))) * sheet_h) / 2
    reach_y = (abs(math.sin(math.radians(angle))) * sheet_w
               + abs(math.cos(math.radians(angle))) * sheet_h) / 2
    margin = 0.04 * min(shape)
    cx = rng.uniform(reach_x + margin, width - reach_x - margin)
    cy = rng.uniform(reach_y + margin, height - reach_y - margin)

    # The digit is written on the sheet upright; then sheet and ink are turned together.
    size = min(sheet_w, sheet_h) * rng.uniform(0.5, 0.75)
    box_w = size * rng.uniform(0.55, 0.75)
    box = (cx - box_w / 2 + rng.uniform(-0.1, 0.1) * sheet_w,
           cy - size / 2 + rng.uniform(-0.08, 0.08) * sheet_h, box_w, size)
    thickness = max(2, round(size * rng.uniform(0.07, 0.11)))
    turn = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    mask = cv2.warpAffine(ink_mask(digit, shape, box, rng, thickness), turn, shape[::-1])
    corners = cv2.boxPoints(((cx, cy), (sheet_w, sheet_h), -angle))
    sheet = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(sheet, np.round(corners * 8).astype(np.int32), 255, cv2.LINE_AA, shift=3)
    sheet = sheet.astype(np.float32) / 255

    paper = rng.uniform(200, 235) + texture(shape, rng, 4)
    ink = rng.uniform(25, 70)
    image = desk(shape, rng) * (1 - sheet) + (paper * (1 - mask) + ink * mask) * sheet
    through = (cx + rng.uniform(-0.3, 0.3) * sheet_w, cy + rng.uniform(-0.3, 0.3) * sheet_h)
    image = image * shadow(shape, rng, through) * lighting(shape, rng, rng.uniform(0.2, 0.4))
    image = image + rng.normal(0, rng.uniform(5, 12), shape)
    image = jpeg(np.clip(image, 0, 255).round().astype(np.uint8), int(rng.integers(15, 40)))
    rows, cols = np.flatnonzero(mask.max(axis=1) > 0.5), np.flatnonzero(mask.max(axis=0) > 0.5)
    truth = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    page = (*np.floor(corners.min(axis=0)).astype(int), *np.ceil(corners.max(axis=0)).astype(int))
    return Photo(image, digit, truth, "dark", "sheet-in-frame", name, tuple(map(int, page)))


def photo_set(per_kind=20, seed=0):
    """`per_kind` pictures of every kind, the ten digits in turn."""
    return [make_photo(i % 10, kind, seed * 100_000 + k * 1000 + i)
            for k, kind in enumerate(KINDS) for i in range(per_kind)]


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for photo in photo_set():
        Image.fromarray(photo.image).save(out / f"{photo.name}.png")
    print(f"wrote {len(KINDS) * 20} pictures to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "photos")
