"""How often "not a digit" is answered, on both sides: real digits wrongly refused, and taps,
dashes, scribbles and filled shapes rightly refused (app/refusal.py).

    python -m bench.refusal               # the table: needs `make repro` (model/, data/)
    python -m bench.refusal --calibrate   # where app/refusal.py's thresholds come from

The table reads the real MNIST test digits as they are (28x28, as a `.npy` would give them), and
the project's own pictures through the transform, as predict and the API read them: the photo
set (tests/photos.py) and drawings made the way the page makes them (tests/drawings.py). A
picture the transform refuses ("several candidate digits") is not read as a digit: it counts as
refused. The calibration reads the validation split only.
"""

import argparse
import io
from collections import Counter
from pathlib import Path

import numpy as np

from app import refusal as rules
from app.model import load_classifier
from app.transform import InputError, read_image, to_mnist_form
from tests.drawings import SCRAWLS, page_digits, scrawls
from tests.photos import KINDS, photo_set

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "model" / "model.onnx"
MNIST = REPO / "data" / "mnist.npz"
VALIDATION = REPO / "data" / "processed" / "val.npz"  # scaled to [0, 1] (params: scale)
GOALS = {"mnist": 0.005, "photos": 0.02, "scrawls": 0.9}  # issue 18: at most, at most, at least


def answers(classifier, pictures, transform):
    """For each picture, None when it is read as a digit, else why not: the refusal, or the
    transform's own reason. `transform(picture)` brings it to MNIST form."""
    reasons, seen = [], []
    for picture in pictures:
        try:
            seen.append(transform(picture))
            reasons.append(None)
        except InputError as error:
            reasons.append(str(error))
    probabilities = iter(classifier.probabilities(np.stack(seen)) if seen else [])
    pixels = iter(seen)
    return [reason or rules.refusal(next(pixels), next(probabilities), classifier.dataset)
            for reason in reasons]


def from_png(drawing):
    return to_mnist_form(read_image(io.BytesIO(drawing.png)))


def mnist_test_digits():
    with np.load(MNIST) as data:
        return data["x_test"].astype(np.float32)


def measure(classifier, per_kind=100, count=None):
    """{set: (pictures, reasons)} for the four sets; `count` limits the MNIST test digits."""
    photos = photo_set(per_kind)
    drawings = scrawls(per_kind=max(25, per_kind * 3 // 10))
    return {
        "mnist": (None, answers(classifier, mnist_test_digits()[:count], lambda x: x)),
        "photos": (photos, answers(classifier, [p.image for p in photos], to_mnist_form)),
        "page digits": (None, answers(classifier, page_digits(per_kind), from_png)),
        "scrawls": (drawings, answers(classifier, drawings, from_png)),
    }


def share(reasons):
    return sum(r is not None for r in reasons) / len(reasons)


def table(results):
    rows = ["| pictures | how many | refused | goal |", "|---|---:|---:|---|"]
    names = {"mnist": "real MNIST test digits (28x28, as a .npy)",
             "photos": "the photo set (tests/photos.py), through the transform",
             "page digits": "digits drawn as the page draws (tests/drawings.py)",
             "scrawls": "taps, dashes, scribbles, shapes coloured in, as the page draws"}
    goals = {"mnist": "at most 0.5 %", "photos": "at most 2 %", "page digits": "",
             "scrawls": "at least 90 %"}
    for key, (_, reasons) in results.items():
        refused = sum(r is not None for r in reasons)
        rows.append(f"| {names[key]} | {len(reasons):,} | {refused} ({refused / len(reasons):.1%})"
                    f" | {goals[key]} |")
    photos, reasons = results["photos"]
    for kind in KINDS:
        kind_reasons = [r for p, r in zip(photos, reasons) if p.kind == kind]
        rows.append(f"| &nbsp; photos: {kind} | {len(kind_reasons)} | "
                    f"{sum(r is not None for r in kind_reasons)} | |")
    drawings, reasons = results["scrawls"]
    for kind in SCRAWLS:
        kind_reasons = [r for d, r in zip(drawings, reasons) if d.kind == kind]
        rows.append(f"| &nbsp; drawn: {kind} | {len(kind_reasons)} | "
                    f"{sum(r is not None for r in kind_reasons)} | |")
    why = Counter(r for _, reasons in results.values() for r in reasons if r)
    rows += ["", "Reasons given: " + "; ".join(f"{r} ({n})" for r, n in why.most_common())]
    return "\n".join(rows)


def calibration(classifier):
    """Where the thresholds come from: each rule's share of the validation digits."""
    with np.load(VALIDATION) as data:
        pixels = data["x"] * 255
    probabilities = classifier.probabilities(pixels)
    shapes = [rules.ink_shape(p) for p in pixels]
    unsure = np.array([rules.uncertainty(p) for p in probabilities])
    unlike = np.array([bool(rules.unlike_any_digit(s)) for s in shapes])
    unusual = np.array([bool(rules.unusual_for_a_digit(s)) for s in shapes])
    n = len(pixels)
    widest = np.array([s.widest for s in shapes])
    lines = [f"{n:,} validation digits, read by {classifier.path}",
             f"thickest ink (px): 99 % at most {np.percentile(widest, 99):.1f}, "
             f"99.9 % at most {np.percentile(widest, 99.9):.1f}, the widest {widest.max():.1f}",
             f"refused by shape alone (unlike any digit): {unlike.sum()} ({unlike.mean():.2%})",
             f"of an unusual shape: {unusual.sum()} ({unusual.mean():.2%})",
             f"uncertainty (nats) above which the 0.1 % least sure lie: "
             f"{np.quantile(unsure, 0.999):.3f} (UNSURE is {rules.UNSURE})"]
    # UNSURE_IF_ODD: of the unusual shapes the other rules leave, 0.1 % of all lie above it.
    left = np.sort(unsure[unusual & ~unlike & (unsure <= rules.UNSURE)])[::-1]
    k = round(n / 1000)
    lines.append(f"uncertainty above which 0.1 % ({k}) are unusual shapes the other rules leave: "
                 f"{left[k]:.3f} (UNSURE_IF_ODD is {rules.UNSURE_IF_ODD})")
    reasons = [rules.refusal(p, q) for p, q in zip(pixels, probabilities)]
    refused = sum(r is not None for r in reasons)
    lines.append(f"refused with the thresholds as they are: {refused} ({refused / n:.2%})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.refusal", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--calibrate", action="store_true",
                        help="print where the thresholds come from (validation split)")
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args(argv)
    classifier = load_classifier(args.model)
    print(calibration(classifier) if args.calibrate else table(measure(classifier)))


if __name__ == "__main__":
    main()
