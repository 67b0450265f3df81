"""Bring a picture of a digit to MNIST form: the one transform predict, the API and the page use.

MNIST was made this way: grey levels, white ink on black, cropped to the ink, scaled to fit a
20x20 box keeping the aspect ratio, then placed in a 28x28 field with the ink's centre of mass
at the centre. A clean scan gets exactly that. A phone photo first needs the digit found, which
OpenCV does (find_digit):

1. The paper's own level is estimated around every pixel (a median over a window a third of the
   picture wide), so light that falls off across the page is not taken for ink; a median also
   follows a darker desk around a sheet of paper, where a mean would see the desk as ink.
2. Ink is what stands out from that level by more than a threshold chosen from the picture
   (Otsu's), and more than its noise.
3. Its connected regions are sorted: specks, and regions touching the picture's border (a desk,
   the page's edge), are set aside; the digit is the main region near the middle, with the
   pieces close to it (the bar of a 5).
4. Both polarities are tried, dark ink on light paper and light on dark; the one whose digit
   stands out more wins.
A picture with no such region, or with several of a size, is refused with a message that says so.
"""

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

FORMATS = ("PNG", "JPEG", "BMP")
MAX_PIXELS = 40_000_000  # larger images are refused from their header, before decoding
FIELD, BOX = 28, 20      # MNIST digits fit a 20x20 box, centred by mass in a 28x28 field
WORK_SIDE = 400          # photos are searched at most this large: plenty for a digit
MIN_SIDE = 8             # narrower than this, a picture cannot hold a readable digit
MIN_CONTRAST = 32        # grey levels between paper and ink; less is no ink at all
NOISE_MARGIN = 4         # ink must stand out by this many times the paper's noise
INK_LEVEL = 0.1          # of the darkest ink; fainter pixels are paper (noise, texture, JPEG)
MIN_SHARE = 0.1          # pieces with less than this share of the digit's ink are specks
RIVAL_SHARE = 0.35       # another region with this share of the digit's ink: several digits


class InputError(ValueError):
    """An input that cannot be predicted; the message says why."""


class TooManyPixels(InputError):
    """An image over MAX_PIXELS, refused from its header before it is decoded."""


@dataclass
class Found:
    """Where find_digit saw the digit, in the picture's own pixels."""
    ink: np.ndarray     # float32 0-255, the digit's ink cropped to `box`, white on black
    box: tuple          # (x0, y0, x1, y1), x1 and y1 exclusive
    polarity: str       # "dark" ink on light paper, or "light" ink on a dark ground


def read_image(source):
    """Decode an image (a path or a binary file object) into 2-D float32 grey levels 0-255,
    refusing huge ones from their header, unread."""
    with warnings.catch_warnings():
        # Pillow only warns between its own limit and twice that; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Pillow warns of damaged EXIF data; that costs us the orientation only.
        warnings.simplefilter("ignore", UserWarning)
        with Image.open(source, formats=FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise TooManyPixels(f"{image.width}x{image.height} pixels is over the "
                                    f"{MAX_PIXELS // 1_000_000}-megapixel limit")
            image.load()
            return grey_levels(ImageOps.exif_transpose(image))


def grey_levels(image):
    """Any Pillow image -> 2-D float32 grey levels 0-255; transparent parts become white paper."""
    if image.mode.startswith("I"):  # 16-bit greyscale PNG, 0-65535
        return np.asarray(image, dtype=np.float32) / 257
    if image.has_transparency_data:
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32)


def to_mnist_form(grey):
    """2-D grey levels (0-255, any size) -> 28x28 uint8 white digit on black, as MNIST was made.
    Raises InputError when there is no digit, or no single one, to read."""
    return fit_and_centre(find_digit(grey).ink)


FASHION_TRIM = 0.05 * 255  # Fashion-MNIST trimmed edges within 5 % of the corner colour


def to_fashion_form(grey):
    """2-D grey levels -> 28x28 uint8 the way Fashion-MNIST was made from product photos: the
    edges that are the background's colour trimmed, the longer side scaled to 28 (the whole
    item, not a 20x20 box, and no centring by mass), centred, and negated so that the
    background is black. A picture on a dark background is taken as already negated."""
    grey = np.asarray(grey, dtype=np.float32)
    background = float(np.median(border(grey)))
    item = np.abs(grey - background) > FASHION_TRIM
    rows, cols = np.flatnonzero(item.any(axis=1)), np.flatnonzero(item.any(axis=0))
    if not len(rows):
        raise InputError("nothing found: the image is one colour")
    crop = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if background > 127:  # a light background, as in product photos: negate, as they did
        crop = 255 - crop
    scale = FIELD / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    field = np.zeros((FIELD, FIELD), np.float32)
    top, left = (FIELD - size[1]) // 2, (FIELD - size[0]) // 2
    field[top:top + size[1], left:left + size[0]] = small
    return field.clip(0, 255).round().astype(np.uint8)


def to_model_form(grey, dataset):
    """The transform for the data the model was trained on (its metadata's `dataset`)."""
    return to_fashion_form(grey) if dataset == "fashion-mnist" else to_mnist_form(grey)


# --- finding the digit ----------------------------------------------------------------------------

def find_digit(grey):
    """The digit in a picture: its ink (white on black), its box and its polarity."""
    grey = np.asarray(grey, dtype=np.float32)
    height, width = grey.shape
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{width}x{height} pixels is too small to hold a digit")
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # never 0 wide
    small = grey if scale == 1 else cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    uniform = plain_paper(small)
    tries = [search(small, polarity, uniform) for polarity in ("dark", "light")]
    found = [t for t in tries if isinstance(t, Found)]
    if not found:
        raise InputError(tries[0])
    best = max(found, key=lambda f: f.ink.sum())
    x0, y0, x1, y1 = best.box
    ink = soft_ink(best.ink[y0:y1, x0:x1], uniform)
    x_scale, y_scale = size[0] / width, size[1] / height
    box = tuple(min(round(v / s), limit) for v, s, limit in
                zip(best.box, (x_scale, y_scale) * 2, (width, height) * 2))
    return Found(ink, box, best.polarity)


def border(image):
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def plain_paper(image):
    """Whether the picture is a clean scan or drawing: small, or its border all one level. Its
    paper then has one level everywhere, as MNIST's own digits were found."""
    edge = border(image)
    return min(image.shape) < 64 or float(np.percentile(edge, 95) - np.percentile(edge, 5)) < 16


def paper_level(image, plain):
    """The paper's level around every pixel: one level (the border's median) for plain paper;
    for a photo, a median over a window a third of the picture wide, which strokes never fill
    to half."""
    if plain:
        return np.full(image.shape, np.median(border(image)), np.float32)
    side = max(3, min(255, (min(image.shape) // 3) | 1))  # odd, and what medianBlur takes
    return cv2.medianBlur(np.clip(image, 0, 255).astype(np.uint8), side).astype(np.float32)


def search(image, polarity, plain):
    """The digit in `image` for one polarity, as a Found whose ink is the contrast of its
    regions (the whole picture's size), or the reason there is none (a string)."""
    dark_ink = image if polarity == "dark" else 255 - image
    contrast = np.clip(paper_level(dark_ink, plain) - dark_ink, 0, None)
    otsu, _ = cv2.threshold(contrast.astype(np.uint8), 0, 255,
                            cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # The paper's grain and the camera's noise, from how far pixels stray from their
    # neighbourhood (a robust deviation); plain paper has none worth counting.
    noise = 0.0 if plain else 1.4826 * float(
        np.median(np.abs(dark_ink - cv2.GaussianBlur(dark_ink, (0, 0), 2))))
    threshold = max(otsu, MIN_CONTRAST, NOISE_MARGIN * noise)
    count, labels, stats, centres = cv2.connectedComponentsWithStats(
        (contrast > threshold).astype(np.uint8), connectivity=8)
    height, width = image.shape
    regions = []
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        touches = x == 0 or y == 0 or x + w == width or y + h == height
        regions.append({"label": label, "box": (x, y, x + w, y + h), "touches": touches,
                        "ink": float(contrast[labels == label].sum()), "centre": centres[label]})
    # The page's edge and a desk reach the border; a digit does not, unless nothing else is
    # there (a picture cropped close to its digit).
    regions = [r for r in regions if not r["touches"]] or regions
    total = sum(r["ink"] for r in regions)
    regions = [r for r in regions if r["ink"] >= 0.02 * total]  # specks of noise
    if not regions:
        return "no digit found: the image is blank"

    middle = np.array([width / 2, height / 2])

    def weight(region):  # much ink, near the middle
        off = float((np.abs(region["centre"] - middle) / middle).max())
        return region["ink"] / (1 + 2 * off)

    regions.sort(key=weight, reverse=True)
    digit, box = [regions[0]], regions[0]["box"]
    reach = 0.25 * max(box[2] - box[0], box[3] - box[1])
    for region in regions[1:]:  # the pieces close to it: the bar of a 5, a broken stroke
        if region["ink"] >= MIN_SHARE * digit[0]["ink"] and near(region["box"], box, reach):
            digit.append(region)
            box = union(box, region["box"])
    ink = sum(r["ink"] for r in digit)
    rivals = [r for r in regions if r not in digit and r["ink"] >= RIVAL_SHARE * ink]
    if rivals:
        return (f"several candidate digits ({len(rivals) + 1} regions of ink of a size): "
                "crop the image to one digit")
    x0, y0, x1, y1 = box
    if len(digit) > 1 and (x1 - x0) > 1.6 * (y1 - y0):
        return "several digits side by side? crop the image to one digit"
    core = np.isin(labels, [r["label"] for r in digit])
    # Hysteresis: the faint edges of the strokes (anti-aliasing, blur) joined to the strong
    # core are ink too, down to INK_LEVEL of the strongest ink or the noise, whichever is more.
    low = max(INK_LEVEL * float(contrast[core].max()), 3 * noise)
    _, edges = cv2.connectedComponents((contrast > low).astype(np.uint8), connectivity=8)
    mask = np.isin(edges, np.unique(edges[core]))
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Found(np.where(mask, contrast, 0).astype(np.float32), box, polarity)


def near(a, b, reach):
    """Whether boxes a and b, each (x0, y0, x1, y1), come within `reach` of each other."""
    return (a[0] < b[2] + reach and b[0] < a[2] + reach
            and a[1] < b[3] + reach and b[1] < a[3] + reach)


def union(a, b):
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def soft_ink(contrast, plain):
    """Contrast -> ink 0-255 as MNIST shows it: the strongest ink 255, anything fainter than
    INK_LEVEL of it 0 (paper texture, noise, JPEG), anti-aliased edges kept in between. In a
    photo the strongest ink is the 99th percentile: a speck of noise does not set it."""
    if not contrast.any():
        raise InputError("no digit found: the image is blank")
    peak = float(contrast.max() if plain else np.percentile(contrast[contrast > 0], 99))
    if peak < MIN_CONTRAST:
        raise InputError("no digit found: the image is blank")
    return np.clip((contrast / peak - INK_LEVEL) / (1 - INK_LEVEL), 0, 1).astype(np.float32) * 255


# --- MNIST's own steps ----------------------------------------------------------------------------

def fit_and_centre(ink):
    """Ink (float 0-255) -> 28x28 uint8: cropped to the ink, the longer side scaled to 20
    pixels, the centre of mass on pixel (14, 14), the whole digit kept inside the field."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        raise InputError("no digit found: the image is blank")
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = BOX / max(ink.shape)  # Lanczos antialiases both ways
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS)).clip(0, 255)
    field = np.zeros((FIELD, FIELD), np.float32)
    top, left = (int(np.clip(round(FIELD / 2 - c), 0, FIELD - n))
                 for c, n in zip(centre_of_mass(digit), digit.shape))
    field[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return field.round().astype(np.uint8)


def centre_of_mass(pixels):
    """(row, column) of the intensity-weighted mean position, in pixel indices."""
    total = pixels.sum()
    rows, cols = np.indices(pixels.shape)
    return (rows * pixels).sum() / total, (cols * pixels).sum() / total
