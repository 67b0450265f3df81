"""Bring a picture of a digit to MNIST form, as MNIST was made: grey levels, white ink on black,
cropped to the ink, scaled into a 20x20 box, its centre of mass at the centre of 28x28. In a
photo the digit is found first (find_digit; docs/photos.md tells how), in a copy at most 400 px
on its long side. A picture with no such digit, or several, is refused in a line that says so.
"""

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from app.pictures.decode import MIN_SIDE, InputError

cv2.setNumThreads(1)  # its pool costs more than it saves at WORK_SIDE; processes use the cores

FIELD, BOX = 28, 20      # MNIST digits fit a 20x20 box, centred by mass in a 28x28 field
WORK_SIDE = 400          # photos are searched at most this large: plenty for a digit
WORK_SHORT_SIDE = 56     # but a strip keeps this much across, twice MNIST's field, for its digit
WORK_PIXELS = 1_200_000  # a strip searched at that size may hold this many pixels (30000x40)
SMALL = 64               # a picture narrower than this is a drawing or a crop, not a photo
MIN_CONTRAST = 32        # grey levels between paper and ink; less is no ink at all
NOISE_MARGIN = 4         # ink must stand out by this many times the paper's noise
INK_LEVEL = 0.1          # of the darkest ink; fainter pixels are paper (noise, texture, JPEG)
MIN_SHARE = 0.1          # pieces with less than this share of the digit's ink are specks
RIVAL_SHARE = 0.35       # another region with this share of the digit's ink: several digits
FASHION_TRIM = 0.05 * 255  # Fashion-MNIST trimmed edges within 5 % of the corner colour


@dataclass
class Found:
    """Where find_digit saw the digit, in the picture's own pixels."""
    ink: np.ndarray     # float32 0-255, the digit's ink cropped to `box`, white on black
    box: tuple          # (x0, y0, x1, y1), x1 and y1 exclusive
    polarity: str       # "dark" ink on light paper, or "light" ink on a dark ground
    page: np.ndarray = None  # the corners (x, y) of the sheet it is written on, if any


def to_mnist_form(grey: np.ndarray) -> np.ndarray:
    """2-D grey levels (0-255, any size) -> 28x28 uint8 white digit on black, as MNIST was made.
    Raises InputError when there is no digit, or no single one, to read."""
    return fit_and_centre(find_digit(grey).ink)


def to_fashion_form(grey: np.ndarray) -> np.ndarray:
    """2-D grey levels -> 28x28 uint8 as Fashion-MNIST was made from product photos: trimmed to
    the item, its longer side scaled to 28, centred, negated (a dark background is taken as
    already negated)."""
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


# --- finding the digit ----------------------------------------------------------------------------

def find_digit(grey: np.ndarray) -> Found:
    """The digit in a picture (2-D grey levels): its ink, its box, its polarity and its sheet."""
    grey = np.asarray(grey, dtype=np.float32)
    height, width = grey.shape
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{width}x{height} pixels is too small to hold a digit")
    small = without_rules(work_image(grey))
    page = find_page(small)
    if page is not None:  # a sheet of paper lies in the picture: the digit is written on it
        found = search_page(small, page)
        if not isinstance(found, Found):
            raise InputError(found)
    else:
        # A clean scan or drawing (small, or its border all one level) has one paper level.
        edge = border(small)
        uniform = min(small.shape) < SMALL or np.percentile(edge, 95) - np.percentile(edge, 5) < 16
        tries = [search(small, polarity, uniform) for polarity in ("dark", "light")]
        found = [t for t in tries if isinstance(t, Found)]
        if not found:
            raise InputError(tries[0])
        found = max(found, key=lambda f: f.ink.sum())
        found.ink = soft_ink(found, uniform)
    x_scale, y_scale = small.shape[1] / width, small.shape[0] / height
    found.box = tuple(min(round(v / s), limit) for v, s, limit in
                      zip(found.box, (x_scale, y_scale) * 2, (width, height) * 2))
    if page is not None:
        found.page = page.corners / (x_scale, y_scale)
    return found


def work_image(grey: np.ndarray) -> np.ndarray:
    """The picture at most WORK_SIDE on its long side, but WORK_SHORT_SIDE on its short side; a
    strip then over WORK_PIXELS is refused rather than searched where its digit would vanish."""
    height, width = grey.shape
    scale = min(1.0, max(WORK_SIDE / max(height, width), WORK_SHORT_SIDE / min(height, width)))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size[0] * size[1] > WORK_PIXELS:
        shape = "wide" if width > height else "tall"
        raise InputError(f"{width}x{height} pixels is too {shape} to search for one digit")
    return grey if scale == 1 else cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def search(image: np.ndarray, polarity: str, plain: bool,
           page: np.ndarray | None = None) -> Found | str:
    """The digit in `image` for one polarity, as a Found whose ink is its regions' contrast, or
    why there is none (a string). With a `page` (a mask), only the page is paper."""
    dark_ink = image if polarity == "dark" else 255 - image
    if page is not None:  # around the page, its own level: the desk is neither paper nor ink
        dark_ink = np.where(page, dark_ink, np.median(dark_ink[page]))
    # The paper's level around every pixel: the border's median for plain paper; in a photo, a
    # median over a window a third of the picture wide, which strokes never fill to half.
    side = max(3, min(255, (min(image.shape) // 3) | 1))  # odd, and what medianBlur takes
    level = np.full(image.shape, np.median(border(dark_ink)), np.float32) if plain else \
        cv2.medianBlur(np.clip(dark_ink, 0, 255).astype(np.uint8), side).astype(np.float32)
    contrast = np.clip(level - dark_ink, 0, None)
    if page is not None:
        contrast[~page] = 0
    otsu, _ = cv2.threshold(contrast.astype(np.uint8), 0, 255,
                            cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # The paper's grain and the camera's noise: how far pixels stray from their neighbourhood.
    noise = 0.0 if plain else 1.4826 * float(
        np.median(np.abs(dark_ink - cv2.GaussianBlur(dark_ink, (0, 0), 2))))
    threshold = max(otsu, MIN_CONTRAST, NOISE_MARGIN * noise)
    count, labels, stats, centres = cv2.connectedComponentsWithStats(
        (contrast > threshold).astype(np.uint8), connectivity=8)
    height, width = image.shape
    # A region touching the page's edge is the desk showing through, or a shadow's edge.
    rim = set() if page is None else set(np.unique(labels[page & ~cv2.erode(
        page.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)]))
    # Each region's ink in one pass: thousands of specks (a dot grid) cost seconds one by one.
    inks = np.bincount(labels.ravel(), weights=contrast.ravel(), minlength=count)
    regions = []
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        touches = x == 0 or y == 0 or x + w == width or y + h == height or label in rim
        regions.append({"label": label, "box": (x, y, x + w, y + h), "touches": touches,
                        "ink": float(inks[label]), "centre": centres[label]})
    # The page's edge and a desk reach the border; a digit does not, unless nothing else is
    # there (a picture cropped close to its digit). On a sheet found whole, never.
    regions = [r for r in regions if not r["touches"]] or ([] if page is not None else regions)
    total = sum(r["ink"] for r in regions)
    regions = [r for r in regions if r["ink"] >= 0.02 * total]  # specks of noise
    if not regions:
        return "no digit found: the image is blank"

    middle = np.array([width / 2, height / 2])  # much ink near the middle first
    regions.sort(key=lambda r: r["ink"] / (1 + 2 * float((np.abs(r["centre"] - middle)
                                                          / middle).max())), reverse=True)
    digit, box = [regions[0]], regions[0]["box"]
    reach = 0.25 * max(box[2] - box[0], box[3] - box[1])
    for region in regions[1:]:  # the pieces close to it: the bar of a 5, a broken stroke
        x0, y0, x1, y1 = region["box"]
        if region["ink"] >= MIN_SHARE * digit[0]["ink"] and x0 < box[2] + reach \
                and box[0] < x1 + reach and y0 < box[3] + reach and box[1] < y1 + reach:
            digit.append(region)
            box = (min(box[0], x0), min(box[1], y0), max(box[2], x1), max(box[3], y1))
    ink = sum(r["ink"] for r in digit)
    rivals = [r for r in regions if r not in digit and r["ink"] >= RIVAL_SHARE * ink]
    if rivals:
        return (f"several candidate digits ({len(rivals) + 1} regions of ink of a size): "
                "crop the image to one digit")
    x0, y0, x1, y1 = box
    if len(digit) > 1 and (x1 - x0) > 1.6 * (y1 - y0):
        return "several digits side by side? crop the image to one digit"
    core = np.isin(labels, [r["label"] for r in digit])
    # Hysteresis: the faint edges of the strokes joined to the strong core are ink too.
    low = max(INK_LEVEL * float(contrast[core].max()), 3 * noise)
    _, edges = cv2.connectedComponents((contrast > low).astype(np.uint8), connectivity=8)
    mask = np.isin(edges, np.unique(edges[core]))
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    if polarity == "dark" and not plain:
        # Light falling off and a shadow dim ink and paper alike: contrast relative to the paper.
        contrast = contrast * (float(np.median(level[mask])) / np.maximum(level, 1))
    return Found(np.where(mask, contrast, 0).astype(np.float32), box, polarity)


def soft_ink(found: Found, plain: bool) -> np.ndarray:
    """A Found's contrast, cropped to its box -> ink 0-255 as MNIST shows it: the strongest ink
    (in a photo its 99th percentile) 255, fainter than INK_LEVEL of it 0, edges in between."""
    x0, y0, x1, y1 = found.box
    contrast = found.ink[y0:y1, x0:x1]
    if not contrast.any():
        raise InputError("no digit found: the image is blank")
    peak = float(contrast.max() if plain else np.percentile(contrast[contrast > 0], 99))
    if peak < MIN_CONTRAST:
        raise InputError("no digit found: the image is blank")
    return np.clip((contrast / peak - INK_LEVEL) / (1 - INK_LEVEL), 0, 1).astype(np.float32) * 255


# --- the rules of ruled paper ---------------------------------------------------------------------

RULE_WIDTH = 5        # px: a dark line thinner than this may be a rule (1-2 px); ink is thicker
RULE_CONTRAST = 12    # grey levels darker than the paper around it, for a pixel of a rule
RULE_COVER = 0.4      # of a line across the picture: the rest may be hidden under ink
RULE_SLOPES = np.tan(np.radians(np.arange(-4, 4.5, 0.5)))  # a page turned up to 4 degrees


def without_rules(image: np.ndarray) -> np.ndarray:
    """`image` with the rules of lined or squared paper painted over with the paper beside
    them: thin dark lines, straight, evenly spaced, across most of the picture; rows first,
    then columns. Where a rule crosses a stroke, the stroke is darker and stays."""
    if min(image.shape) < SMALL:
        return image
    for turned in (False, True):
        view = image.T if turned else image
        closed = cv2.morphologyEx(view, cv2.MORPH_CLOSE, np.ones((RULE_WIDTH, 1), np.uint8))
        band = rules(closed - view > RULE_CONTRAST)
        image = view if band is None else np.where(band, closed, view)
        image = np.ascontiguousarray(image.T if turned else image)
    return image


def rules(thin: np.ndarray) -> np.ndarray | None:
    """Where the rules lie among the pixels of thin dark lines lying along the rows (`thin`, a
    mask), a mask; None unless three or more lines, all at one slope, each covering RULE_COVER
    of the width, lie a whole number of periods apart."""
    height, width = thin.shape
    reach = int(np.ceil(width / 2 * RULE_SLOPES.max())) + 2  # how far a slope moves a row
    ys, xs = np.nonzero(thin)

    def profile(slope: float) -> np.ndarray:  # each line's share that is thin and dark
        rows = np.round(ys - (xs - width / 2) * slope).astype(int) + reach
        return np.bincount(rows, minlength=height + 2 * reach) / width

    # The slope at which the lines are sharpest; the smallest of equals.
    slope, cover = max(((s, profile(s)) for s in sorted(RULE_SLOPES, key=abs)),
                       key=lambda found: np.square(found[1]).sum())
    lines = cover >= RULE_COVER
    edges = np.diff(lines.astype(np.int8), prepend=0, append=0)
    centres = (np.flatnonzero(edges == 1) + np.flatnonzero(edges == -1) - 1) / 2
    if len(centres) < 3:
        return None
    periods = np.diff(centres) / np.median(np.diff(centres))
    if np.median(np.diff(centres)) < 4 or (np.abs(periods - np.round(periods)) > 0.2).any():
        return None
    lines |= np.roll(lines, 1) | np.roll(lines, -1)  # and a pixel on either side
    yy, xx = np.indices(thin.shape)
    return lines[np.round(yy - (xx - width / 2) * slope).astype(int) + reach]


# --- the sheet of paper ---------------------------------------------------------------------------

PAGE_STEP = 25           # grey levels from desk to sheet at the least, for its outline to count
PAGE_SMOOTH = 1.5        # the picture is smoothed this much (sigma, px) before edges are sought
PAGE_MIN_AREA = 0.04     # of the picture: a smaller enclosed region is a digit's loop, not a sheet
PAGE_RECTANGULAR = 0.9   # of its turned bounding rectangle, filled; a digit's loop fills 0.83
PAGE_BAND = (4, 10)      # px inside and outside the outline where sheet and desk are compared


@dataclass
class Page:
    """A sheet of paper lying wholly inside the picture, in work-image pixels."""
    mask: np.ndarray     # bool, the picture's size: the sheet and all that is on it
    corners: np.ndarray  # (4, 2) float: its outline's corners (x, y)


def find_page(image: np.ndarray) -> "Page | None":
    """The sheet of paper lying wholly inside the picture, or None: a region that edges
    (Canny's) close around, nearly a rectangle, lighter than the desk around it. What can be
    reached from the border without crossing an edge is desk; a shadow's soft edge crosses the
    sheet and encloses nothing; the desk's grain encloses pockets an opening cuts away."""
    if min(image.shape) < SMALL:
        return None
    smooth = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (0, 0), PAGE_SMOOTH)
    # Canny's thresholds are on the gradient, here about twice the height of the step.
    edges = cv2.Canny(smooth, 0.8 * PAGE_STEP, 2 * PAGE_STEP, L2gradient=True)
    edges = cv2.dilate(edges, np.ones((3, 3), np.uint8))  # an outline with one-pixel gaps closes
    _, open_ground = cv2.connectedComponents((edges == 0).astype(np.uint8), connectivity=4)
    desk = np.isin(open_ground, np.setdiff1d(border(open_ground), [0]))
    enclosed = cv2.morphologyEx((~desk).astype(np.uint8), cv2.MORPH_OPEN,
                                cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(enclosed, connectivity=8)
    if count < 2:
        return None
    label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[label, cv2.CC_STAT_AREA] < PAGE_MIN_AREA * image.size:
        return None
    mask = labels == label
    outline = max(cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)[0], key=cv2.contourArea)
    rectangle = cv2.minAreaRect(outline)
    if cv2.contourArea(outline) < PAGE_RECTANGULAR * rectangle[1][0] * rectangle[1][1]:
        return None
    inside, outside = (band(mask, inward) for inward in (True, False))
    if not inside.any() or np.median(image[inside]) - np.median(image[outside]) < PAGE_STEP:
        return None  # not lighter than the desk: a dark shape is ink, not paper
    return Page(mask, cv2.boxPoints(rectangle))


def band(mask: np.ndarray, inward: bool) -> np.ndarray:
    """The pixels PAGE_BAND[0] to PAGE_BAND[1] px inside a mask's edge (or outside it)."""
    near, far = (cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
                 for r in PAGE_BAND)
    grow = cv2.erode if inward else cv2.dilate
    region = mask.astype(np.uint8)
    return (grow(region, near) & ~grow(region, far)).astype(bool) if inward else \
        (grow(region, far) & ~grow(region, near)).astype(bool)


def search_page(image: np.ndarray, page: "Page") -> Found | str:
    """The digit written on `page` in dark ink, as a Found with soft ink, or why none (a string)."""
    ys, xs = np.nonzero(page.mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    region, mask = image[y0:y1, x0:x1], page.mask[y0:y1, x0:x1]
    # A clean sheet is of one level along its edge; a photographed one is not.
    near_edge = region[band(mask, True)]
    plain = float(np.percentile(near_edge, 95) - np.percentile(near_edge, 5)) < 16
    found = search(region, "dark", plain, mask)
    if not isinstance(found, Found):
        return found
    found.ink = soft_ink(found, plain)
    bx0, by0, bx1, by1 = found.box
    found.box = (bx0 + x0, by0 + y0, bx1 + x0, by1 + y0)
    return found


# --- MNIST's own steps ----------------------------------------------------------------------------

def fit_and_centre(ink: np.ndarray) -> np.ndarray:
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


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted mean position, in pixel indices."""
    total = pixels.sum()
    rows, cols = np.indices(pixels.shape)
    return (rows * pixels).sum() / total, (cols * pixels).sum() / total
