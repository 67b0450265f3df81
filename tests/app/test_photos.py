"""Digits in photos (tests/photos.py makes them): the transform finds each digit (its box and
whether the ink is dark or light), refuses honestly when there is none or several, reads clean
pictures as it always did, and the trained model reads the photos right and does not refuse
them as "not a digit"; nor real MNIST digits on lined or squared paper.

The trained_model tests need the model `dvc repro` trains on real MNIST (model/model.onnx), and
real MNIST for its digits: they are skipped where those are missing, and `.ci/run` runs them
after `make repro` with REQUIRE_TRAINED_MODEL=1.
"""

import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from app.classifier import load_classifier
from app.pictures.decode import InputError
from app.pictures.digit import find_digit, fit_and_centre, to_mnist_form
from app.pictures.refusal import refusal
from tests.conftest import REPO
from tests.digits import draw_digit, mnist_form_digits
from tests.photos import CONTROLS, KINDS, make_photo, mnist_on_paper, photo_set
from tests.readings import GOALS, MNIST, answers, mnist_available, mnist_test_digits, read_right

pytestmark = pytest.mark.slow

TRAINED_MODEL = REPO / "model/model.onnx"


@pytest.fixture(scope="module")
def photos():
    return photo_set(per_kind=20)


def overlap(a, b):
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("kind", KINDS)
def test_the_digit_is_found_where_it_is_with_its_polarity(photos, kind):
    for photo in (p for p in photos if p.kind == kind):
        found = find_digit(photo.image)
        assert found.polarity == photo.polarity, photo.name
        assert overlap(found.box, photo.box) >= 0.6, (photo.name, found.box, photo.box)


def old_to_mnist_form(grey):
    """The transform before photos were handled (one paper level for the whole picture, ink
    on the side the mean leans to): clean pictures must come out as they did."""
    grey = np.asarray(grey, dtype=np.float32)
    paper = np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))
    ink = np.clip(paper - grey if grey.mean() < paper else grey - paper, 0, None)
    ink = np.clip((ink / ink.max() - 0.1) / 0.9, 0, 1) * 255
    return fit_and_centre(ink)


def test_clean_pictures_come_out_as_they_did(photos):
    clean = [p for p in photos if p.kind in CONTROLS]
    drawn = [np.asarray(Image.fromarray(draw_digit(d, np.random.default_rng(d)))
                        .resize((140, 140), Image.Resampling.BICUBIC)) for d in range(10)]
    mnist_form, _ = mnist_form_digits(20, seed=9)
    for grey in [p.image for p in clean] + drawn + list(mnist_form):
        new, old = to_mnist_form(grey).astype(int), old_to_mnist_form(grey).astype(int)
        assert np.abs(new - old).mean() < 2, "a clean picture changed"


def paper_photo(seed, draw=None):
    """A photo of plain paper (light falling off, noise, JPEG); `draw(image)` may add ink."""
    photo = make_photo(0, "uneven-light", seed)
    rng = np.random.default_rng(seed)
    image = np.full_like(photo.image, 215).astype(np.float32) + rng.normal(0, 8, photo.image.shape)
    ramp = np.linspace(1.0, 0.55, image.shape[1])[None, :]
    image = np.clip(image * ramp, 0, 255).astype(np.uint8)
    if draw:
        draw(image)
    return image


def test_a_photo_of_blank_paper_has_no_digit():
    for seed in range(5):
        with pytest.raises(InputError, match="no digit found"):
            to_mnist_form(paper_photo(seed))


def test_two_digits_are_refused_rather_than_guessed():
    left, right = make_photo(3, "noise-jpeg", 1), make_photo(8, "noise-jpeg", 2)
    height = min(left.image.shape[0], right.image.shape[0])
    pair = np.hstack([left.image[:height], right.image[:height]])
    with pytest.raises(InputError, match="several"):
        to_mnist_form(pair)


def test_a_thin_faint_one_is_found():
    """A "1" in pencil is little ink, and faint: it must not be taken for a blank page."""
    for kind in ("noise-jpeg", "uneven-light"):
        for seed in range(100, 110):
            photo = make_photo(1, kind, seed)
            paper = np.median(photo.image)
            faint = (paper + 0.4 * (photo.image.astype(np.float32) - paper)).astype(np.uint8)
            found = find_digit(faint)
            assert found.polarity == "dark" and overlap(found.box, photo.box) >= 0.5, photo.name


def trained_model():
    if not TRAINED_MODEL.is_file():
        if os.environ.get("REQUIRE_TRAINED_MODEL"):
            pytest.fail(f"{TRAINED_MODEL} is missing: run `make repro` first")
        pytest.skip(f"needs the model trained on real MNIST: {TRAINED_MODEL} (make repro)")
    return load_classifier(TRAINED_MODEL)


def real_mnist_model():
    classifier = trained_model()
    if classifier.info.dataset != "mnist" or not mnist_available():
        reason = (f"needs real MNIST ({MNIST}, or MNIST_MIRROR) and an MNIST model "
                  "(make repro)")
        if os.environ.get("REQUIRE_TRAINED_MODEL"):
            pytest.fail(reason)
        pytest.skip(reason)
    return classifier


@pytest.mark.parametrize("squared", [False, True], ids=["lined", "squared"])
def test_the_trained_model_reads_real_digits_on_ruled_paper(squared):
    """300 real MNIST test digits written 150 px tall on a notebook's rules (grey 190-230,
    1-2 px, every 22-28 px): read right 95 % of the time or more, as on plain paper (98 %)."""
    classifier = real_mnist_model()
    pixels, labels = mnist_test_digits()
    pictures = [mnist_on_paper(pixels[i], i, squared) for i in range(300)]

    read = answers(classifier, pictures, to_mnist_form)

    right = read_right(read, [str(label) for label in labels[:300]])
    print(f"{'squared' if squared else 'lined'} paper: {right:.1%} read right")
    assert right >= GOALS["paper"]


def test_the_trained_model_reads_the_photos(photos):
    """Each kind read right at least 95 % of the time (the clean controls always), and at most
    2 % of the photos refused as "not a digit" (app/pictures/refusal.py)."""
    classifier = trained_model()
    right, refused, seen = Counter(), Counter(), Counter()
    for photo in photos:
        pixels = to_mnist_form(photo.image)
        probs = classifier.probabilities(pixels[np.newaxis, ..., np.newaxis])[0]
        seen[photo.kind] += 1
        label = classifier.info.class_names[int(probs.argmax())]
        right[photo.kind] += int(label == str(photo.digit))
        refused[photo.kind] += refusal(pixels, probs) is not None
    print({kind: f"{right[kind]}/{seen[kind]} read, {refused[kind]} refused" for kind in KINDS})
    assert all(right[kind] == seen[kind] for kind in CONTROLS), "every clean control read right"
    assert all(right[kind] >= 0.95 * seen[kind] for kind in KINDS)
    assert sum(refused.values()) <= 0.02 * len(photos)
