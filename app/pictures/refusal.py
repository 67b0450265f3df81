"""Whether a picture holds a digit at all: "not a digit", and why, in one line. A classifier
always names a class (a tap reads "0"); `refusal` weighs the shape of the ink in the 28x28 the
model saw (a dot, a dash, a blot, a scribble are shaped unlike any digit) and the model's
uncertainty (the entropy of its probabilities: 0 when sure, ln 10 when it cannot choose). Shape
alone refuses what no digit looks like; a shape unusual for a digit is refused when the model
is unsure too; any picture when it is very unsure. Every threshold comes from MNIST's 5,999
validation digits (`python -m bench.refusal --calibrate`): it judges digit models only, whose
input is MNIST's form; any other model refuses by its own threshold (app/classifier.answer).
"""

from dataclasses import dataclass

import cv2
import numpy as np

from app.metadata import uncertainty

INK = 128  # of 255: a pixel at least half inked is ink (MNIST's strokes are soft-edged)

# What no digit looks like. Each of these refuses at most 2 of the 5,999 validation digits.
BLOT_WIDTH = 11     # px of 28: 99.9 % of digits' ink is at most 10 thick; a dot, 12 to 20
STRAIGHT = 0.25     # ink spread across its axis / along it (626 of 633 that straight are 1s),
CONVEX_STROKE = (0.8, 2.0)  # or this share of its convex hull, this many times longer than wide
MAX_LEAN = 60       # degrees from upright: straight digits lean at most 49 (a slanted 1)
SHORT_STROKE = (0.85, 9, 3.0)  # convex, this thick (px), less elongated: a short dash, a stub
FLAT_SMEAR = (8, 1.2)  # ink this thick (px) in a box this many times wider than tall
MAX_LOOPS = 4       # holes of 2 px or more: at most 4 in validation; a chain of loops has more
MAX_CROSSINGS = 5   # ink runs along one row or column: at most 5 in validation; a zigzag has more

# What is unusual for a digit, yet shared by 0.1 to 3 % of validation digits: refused only when
# the model is unsure too (UNSURE_IF_ODD).
STUB = (0.75, 2.0)  # this share of its convex hull, less elongated: a block of ink (1.6 %)
THICK = 8           # px: ink this thick is a smudge or a short, fat stroke (1.3 %)
ODD_LOOPS = 3       # holes (0.3 %)
ODD_CROSSINGS = 5   # ink runs along one row or column (0.1 %)
WIDE = 1.3          # the ink's box this many times wider than tall (2.2 %): digits stand
HEAVY = 180         # px of ink of 784 (2.3 %): coloured over and over

# The model's uncertainty (entropy, nats) on validation, read by the default MLP (seed 42):
UNSURE = 1.32       # above it are the 0.1 % least sure validation digits: any picture is refused
UNSURE_IF_ODD = 0.90  # an unusual shape above it is refused: 0.1 % of validation digits


@dataclass(frozen=True)
class InkShape:
    """The shape of the ink in a 28x28 MNIST-form image, in its pixels."""
    widest: float       # the thickest ink: twice the greatest distance from ink to paper
    spread: float       # how far the ink spreads across its main axis / along it: 0 for a line
    lean: float         # degrees the main axis leans from upright: 0 upright, 90 flat
    elongation: float   # long side / short side of the turned rectangle around the ink
    solidity: float     # ink / its convex hull
    loops: int          # holes of 2 px or more that ink encloses
    crossings: int      # the most runs of ink along any one row or column
    aspect: float       # width / height of the ink's box
    pixels: int         # px of ink


def ink_shape(pixels: np.ndarray) -> InkShape | None:
    """The InkShape of a 28x28 image of grey levels 0-255 (white ink on black), or None when
    it holds no ink."""
    ink = (np.asarray(pixels, dtype=np.float32) >= INK).astype(np.uint8)
    ys, xs = np.nonzero(ink)
    if len(xs) < 2:
        return None
    distance = cv2.distanceTransform(np.pad(ink, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    points = np.column_stack([xs, ys]).astype(np.float32)
    variances, axes = np.linalg.eigh(np.cov(points.T))  # ascending: across, then along
    across, along = np.sqrt(np.maximum(variances, 0))
    hull = np.zeros_like(ink)
    cv2.fillConvexPoly(hull, cv2.convexHull(points.astype(np.int32)), 1)
    _, (w, h), _ = cv2.minAreaRect(points)
    w, h = w + 1, h + 1  # from pixel centres to pixel edges
    return InkShape(
        widest=2 * float(distance.max()),
        spread=float(across / along) if along else 1.0,
        lean=float(np.degrees(np.arctan2(abs(axes[0, 1]), abs(axes[1, 1])))),
        elongation=float(max(w, h) / min(w, h)),
        solidity=float(len(xs) / hull.sum()),
        loops=holes(ink),
        crossings=int(max(runs(ink).max(), runs(ink.T).max())),
        aspect=float((xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)),
        pixels=len(xs))


def holes(ink: np.ndarray) -> int:
    """Regions of paper (2 px or more) that the ink encloses: cut off from the image's edge."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - ink, connectivity=4)
    edge = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist())
    return sum(1 for label in range(1, count)
               if label not in edge and stats[label, cv2.CC_STAT_AREA] >= 2)


def runs(ink: np.ndarray) -> np.ndarray:
    """For each row, how many separate runs of ink it crosses."""
    return (np.diff(ink.astype(np.int8), axis=1, prepend=0) == 1).sum(axis=1)


def unlike_any_digit(shape: InkShape) -> str | None:
    """What the shape is (a few words) when no digit is shaped so, else None."""
    convex, long = CONVEX_STROKE
    straight = shape.spread < STRAIGHT or (shape.solidity >= convex and shape.elongation >= long)
    if shape.widest >= BLOT_WIDTH:
        return "a dot or a filled shape"
    if straight and shape.lean > MAX_LEAN:
        return "a dash"
    convex, thick, long = SHORT_STROKE
    if shape.solidity >= convex and shape.widest >= thick and shape.elongation < long:
        return "a short, thick stroke"
    thick, wide = FLAT_SMEAR
    if shape.widest >= thick and shape.aspect > wide:
        return "a thick smear lying flat"
    if shape.loops > MAX_LOOPS or shape.crossings > MAX_CROSSINGS:
        return "a scribble"
    return None


def unusual_for_a_digit(shape: InkShape) -> str | None:
    """What makes the shape unusual for a digit (a few words), else None."""
    convex, long = STUB
    if shape.solidity >= convex and shape.elongation < long:
        return "a blob or a short stroke"
    if shape.widest >= THICK:
        return "a smudge of thick strokes"
    if shape.loops >= ODD_LOOPS or shape.crossings >= ODD_CROSSINGS or shape.pixels > HEAVY:
        return "a scribble"
    if shape.aspect > WIDE:
        return "a shape wider than a digit"
    return None


def refusal(pixels: np.ndarray, probabilities: np.ndarray) -> str | None:
    """None when the 28x28 image `pixels` (MNIST form) holds a digit, else why not in a line
    ("not a digit: a dash"), from the model's `probabilities` for it."""
    shape = ink_shape(pixels)
    if shape is None:
        return "not a digit: the image is blank"
    unsure = uncertainty(probabilities)
    what = unlike_any_digit(shape) or (unsure > UNSURE_IF_ODD and unusual_for_a_digit(shape))
    if what:
        return f"not a digit: {what}"
    if unsure > UNSURE:
        return "not a digit: it looks like no digit in particular"
    return None
