"""How often "not a digit" is answered, on both sides: real digits wrongly refused, and taps,
dashes, scribbles and filled shapes rightly refused (app/pictures/refusal.py).

    python -m bench.refusal               # the table: needs `make repro` (model/, data/)
    python -m bench.refusal --calibrate   # where app/pictures/refusal.py's thresholds come from

The table reads the real MNIST test digits as they are (28x28, as a `.npy` would give them), and
the project's own pictures through the transform, as predict and the API read them: the photo
set (tests/photos.py) and drawings made the way the page makes them (tests/drawings.py). A
picture the transform refuses ("several candidate digits") is not read as a digit: it counts as
refused. The calibration reads the validation split only.
"""

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.classifier import load_classifier
from app.pictures import refusal as rules
from app.pictures.digit import to_mnist_form
from stages.common.files import load_npz
from tests.drawings import page_digits, scrawls
from tests.photos import mnist_on_paper, photo_set
from tests.readings import (
    AT_LEAST,
    GOALS,
    MODEL,
    REPO,
    answers,
    from_png,
    mnist_test_digits,
    read_right,
    share,
)

VALIDATION = REPO / "data" / "processed" / "val.npz"  # uint8 (N, 28, 28, 1), as preprocess keeps it


def digit_model(classifier):
    """Whether the model is judged by the digit checks (an MNIST-form digit model, as export
    decides): what this benchmark measures. Any other refuses on its own uncertainty."""
    return classifier.info.refusal.kind == "digit"


def goal_met(key, refused):
    return refused >= GOALS[key] if key in AT_LEAST else refused <= GOALS[key]


def goal_text(key, at_least="at least", at_most="at most"):
    """GOALS[key] in words: "at most 0.5 %"."""
    return f"{at_least if key in AT_LEAST else at_most} {GOALS[key] * 100:g} %"


@dataclass
class Sample:
    name: str       # what the pictures are, in a few words
    kinds: list     # each picture's kind (one name for all when there is no kind)
    truths: list    # each picture's class name, or None for what is no digit
    answers: list


def measure(classifier, per_kind=100, scrawl_seeds=5, on_paper=300):
    """The five Samples: MNIST's test digits, the first `on_paper` of them written 150 px tall on
    lined and on squared paper, the photo set (`per_kind` of each kind), digits drawn as the
    page draws them (as many), and scrawls: the test's 30 of each kind (seed 0), and as many
    again from each further seed, up to `scrawl_seeds`."""
    pixels, labels = mnist_test_digits()
    ruled = [("lined", False), ("squared", True)]
    photos = photo_set(per_kind)
    digits = page_digits(per_kind)
    drawings = [d for seed in range(scrawl_seeds) for d in scrawls(per_kind=30, seed=seed)]
    return {
        "mnist": Sample("real MNIST test digits (28x28, as a .npy gives them)",
                        ["test"] * len(labels), [str(y) for y in labels],
                        answers(classifier, pixels, lambda x: x)),
        "paper": Sample(f"the first {on_paper} real MNIST test digits, 150 px tall on ruled "
                        "paper (tests/photos.py)", [k for k, _ in ruled for _ in range(on_paper)],
                        [str(y) for _ in ruled for y in labels[:on_paper]],
                        answers(classifier, [mnist_on_paper(pixels[i], i, squared)
                                             for _, squared in ruled for i in range(on_paper)],
                                to_mnist_form)),
        "photos": Sample("the photo set (tests/photos.py)", [p.kind for p in photos],
                         [str(p.digit) for p in photos],
                         answers(classifier, [p.image for p in photos], to_mnist_form)),
        "page digits": Sample("digits drawn as the page draws (tests/drawings.py)",
                              ["digit"] * len(digits), [str(d.digit) for d in digits],
                              answers(classifier, digits, from_png)),
        "scrawls": Sample("taps, dashes, scribbles, shapes coloured in, drawn as the page draws",
                          [d.kind for d in drawings], [None] * len(drawings),
                          answers(classifier, drawings, from_png)),
    }


def table(results):
    """A markdown table: for each sample (and each kind of photo and scrawl), how many, how
    many read right (digits), how many refused."""
    rows = ["| pictures | how many | read right | refused | goal |", "|---|---:|---:|---:|---|"]
    goals = {key: f"{'read right' if key == 'paper' else 'refused'}: {goal_text(key)}"
             for key in GOALS}

    def row(name, picked, goal=""):
        truths = [truth for truth, _ in picked]
        right = (f"{sum(t == a.read for t, a in picked) / len(picked):.1%}"
                 if truths[0] is not None else "")
        refused = sum(a.refusal is not None for _, a in picked)
        return (f"| {name} | {len(picked):,} | {right} | {refused} ({refused / len(picked):.1%}) "
                f"| {goal} |")

    for key, sample in results.items():
        pairs = list(zip(sample.truths, sample.answers))
        rows.append(row(sample.name, pairs, goals.get(key, "")))
        kinds = list(dict.fromkeys(sample.kinds))
        if len(kinds) > 1:
            rows += [row(f"&nbsp; {kind}", [p for k, p in zip(sample.kinds, pairs) if k == kind])
                     for kind in kinds]
    rows.append("")
    for sample in results.values():
        why = Counter(a.refusal for a in sample.answers if a.refusal)
        if why:
            rows.append(f"Refused of {sample.name}: "
                        + "; ".join(f"{r} ({n})" for r, n in why.most_common()) + ".")
    return "\n".join(rows)


def goals(results):
    """(goal, measured, met) for the three figures of issue 18 and the two of issue 30."""
    rows = []
    for key, what in (("mnist", "real MNIST test digits"),
                      ("photos", "photos of digits (tests/photos.py)"),
                      ("scrawls", "taps, dashes, scribbles, filled shapes")):
        sample = results[key].answers
        refused = share(sample)
        rows.append((f"{what} refused {goal_text(key, '>=', '<=')}",
                     f"{refused:.2%} of {len(sample):,}", goal_met(key, refused)))
    paper = results["paper"]
    for kind in ("lined", "squared"):
        picked = [(t, a) for k, t, a in zip(paper.kinds, paper.truths, paper.answers) if k == kind]
        right = read_right([a for _, a in picked], [t for t, _ in picked])
        rows.append((f"real MNIST digits on {kind} paper read right {goal_text('paper', '>=')}",
                     f"{right:.1%} of {len(picked)}", goal_met("paper", right)))
    return rows


def calibration(classifier):
    """Where app/pictures/refusal.py's thresholds come from: what the validation digits look
    like, and how many of them each rule refuses."""
    data = load_npz(VALIDATION, "preprocess", ("x", "y"))
    pictures, labels = data["x"].astype(np.float32), data["y"]  # as the model takes them
    probabilities = classifier.probabilities(pictures)
    pixels = pictures[..., 0]  # the rules read a grey digit, (28, 28)
    shapes = [rules.ink_shape(p) for p in pixels]
    n = len(shapes)
    f = {name: np.array([getattr(s, name) for s in shapes]) for name in (
        "widest", "spread", "lean", "elongation", "solidity", "loops", "crossings", "aspect",
        "pixels")}
    unsure = np.array([rules.uncertainty(p) for p in probabilities])
    straight = f["spread"] < rules.STRAIGHT
    convex, long = rules.CONVEX_STROKE
    straight_or_convex = straight | ((f["solidity"] >= convex) & (f["elongation"] >= long))
    stub_convex, stub_long = rules.STUB

    def part(mask):
        return f"{mask.sum()} ({mask.mean():.2%})"

    lines = [
        f"{n:,} validation digits, read by {classifier.path}",
        f"thickest ink (px): 99 % at most {np.percentile(f['widest'], 99):.1f}, 99.9 % at most "
        f"{np.percentile(f['widest'], 99.9):.1f}, the thickest {f['widest'].max():.1f}",
        f"straight (spread < STRAIGHT): {straight.sum()}, 1s {(labels[straight] == 1).sum()}; "
        f"straight or convex strokes lean at most {f['lean'][straight_or_convex].max():.0f} deg",
        f"loops at most {f['loops'].max()}, crossings at most {f['crossings'].max()}",
        "unusual shapes: stub " + part((f["solidity"] >= stub_convex)
                                       & (f["elongation"] < stub_long))
        + f", thick {part(f['widest'] >= rules.THICK)}, loops {part(f['loops'] >= rules.ODD_LOOPS)}"
        f", crossings {part(f['crossings'] >= rules.ODD_CROSSINGS)}, wide "
        f"{part(f['aspect'] > rules.WIDE)}, heavy {part(f['pixels'] > rules.HEAVY)}",
        f"uncertainty (nats) above which the 0.1 % least sure lie: {np.quantile(unsure, 0.999):.3f}"
        f" (UNSURE is {rules.UNSURE})"]
    # UNSURE_IF_ODD: of the unusual shapes the other rules leave, 0.1 % of all lie above it.
    unlike = np.array([bool(rules.unlike_any_digit(s)) for s in shapes])
    unusual = np.array([bool(rules.unusual_for_a_digit(s)) for s in shapes])
    left = np.sort(unsure[unusual & ~unlike & (unsure <= rules.UNSURE)])[::-1]
    k = round(n / 1000)
    lines.append(f"uncertainty above which 0.1 % ({k}) are unusual shapes the other rules leave: "
                 f"{left[k]:.3f} (UNSURE_IF_ODD is {rules.UNSURE_IF_ODD})")
    reasons = Counter(rules.refusal(p, q) for p, q in zip(pixels, probabilities))
    refused = n - reasons.pop(None, 0)
    lines.append(f"refused with the thresholds as they are: {refused} ({refused / n:.2%}): "
                 + "; ".join(f"{r} ({c})" for r, c in reasons.most_common()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.refusal", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--calibrate", action="store_true",
                        help="print where the thresholds come from (validation split)")
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args(argv)
    classifier = load_classifier(args.model)
    if not digit_model(classifier):
        parser.error(f"{args.model} is a model of {classifier.info.dataset}, which refuses on "
                     "its own uncertainty: the digit checks measured here are not its")
    print(calibration(classifier) if args.calibrate else table(measure(classifier)))


if __name__ == "__main__":
    main()
