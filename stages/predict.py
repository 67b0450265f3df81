"""Predict: which digit is in each image, according to the trained model.

    python -m stages.predict digit.png [more.png ...] [--top K] [--json] [--model PATH]

Images (PNG, JPEG or BMP, any size and colour mode) are brought to MNIST form the way the
dataset itself was made: grey levels, white ink on black, cropped to the ink, scaled to fit a
20x20 box keeping the aspect ratio, then placed in a 28x28 field with the ink's centre of mass at
the centre. `.npy` arrays of shape (28, 28) or (N, 28, 28) are taken as already in that form,
white digits on black, uint8 0-255 or float 0-255 (or 0-1); they are neither cropped nor moved.
The model's own normalisation, from the metadata.json that train writes beside the model, is
applied last, exactly as in training.

One line per image on stdout. A file that cannot be used gets one line on stderr and the others
are still predicted. Exit status: 0 if every image was predicted, 1 if any was not (or the model
could not be loaded), 2 for a usage error.
"""

import argparse
import json
import os
import sys
import tokenize
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.fileio import read_json
from stages.preprocess import normalize

# Hide the INFO lines TensorFlow prints at import (CPU features); warnings stay. TF 2.21
# still announces oneDNN on stderr whatever this says.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

MODEL_FILE = Path("model/model.keras")
FORMATS = ("PNG", "JPEG", "BMP")
MAX_PIXELS = 40_000_000  # larger images are refused from their header, before decoding
FIELD, BOX = 28, 20      # MNIST digits fit a 20x20 box, centred by mass in a 28x28 field
MIN_CONTRAST = 32        # grey levels between paper and darkest ink; less is a blank image
INK_LEVEL = 0.1          # of the darkest ink; fainter pixels are paper (noise, texture, JPEG)

# What reading one bad file raises: ours, Pillow's and numpy's. Beyond OSError and ValueError,
# Pillow raises SyntaxError on some broken PNG chunks and its bomb error (or warning, made an
# error below) on huge images; numpy raises EOFError on an empty .npy and lets tokenize's error
# out of some cut headers.
INPUT_ERRORS = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError,
                Image.DecompressionBombError, Image.DecompressionBombWarning)


class InputError(ValueError):
    """An input that cannot be predicted; the message says why."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description="Predict the digit in each image with the trained MNIST model.")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                        help="PNG, JPEG or BMP image, or .npy array of shape (28, 28) or "
                             "(N, 28, 28) already in MNIST form (white on black)")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="show the K most likely digits (default: 1)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    parser.add_argument("--model", type=Path, default=MODEL_FILE,
                        help=f"Keras model, with its metadata.json beside it (default: {MODEL_FILE})")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be at least 1")
    return args


# --- reading inputs -----------------------------------------------------------------------------

def read_image(path):
    """Decode an image file into 2-D float32 grey levels 0-255, refusing huge ones unread."""
    with warnings.catch_warnings():
        # Pillow only warns between its own limit and twice that; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Pillow warns of damaged EXIF data; that costs us the orientation only.
        warnings.simplefilter("ignore", UserWarning)
        with Image.open(path, formats=FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"{image.width}x{image.height} pixels is over the "
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


def read_array(path, shape):
    """An .npy file -> float32 grey levels 0-255 of `shape` or (N, *shape), as they are."""
    with open(path, "rb") as f:
        array = np.load(f, allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise InputError("is an .npz archive, not an .npy array")
    if array.ndim not in (2, 3) or array.shape[-2:] != shape or array.size == 0:
        raise InputError(f"array of shape {array.shape}; expected {shape} or (N, {shape[0]}, "
                         f"{shape[1]}) in MNIST form")
    if array.dtype.kind not in "uif":
        raise InputError(f"array of {array.dtype}; expected integer or float pixels")
    if not (np.isfinite(array).all() and 0 <= array.min() and array.max() <= 255):
        raise InputError("pixel values outside 0-255")
    pixels = array.astype(np.float32)
    return pixels * 255 if array.dtype.kind == "f" and pixels.max() <= 1 else pixels


def read_input(path, shape):
    """One file -> [(name, pixels in MNIST form)]: an (N, 28, 28) array gives N named file[i]."""
    if path.suffix.lower() == ".npy":
        pixels = read_array(path, shape)
        if pixels.shape == shape:
            return [(str(path), pixels)]
        return [(f"{path}[{i}]", p) for i, p in enumerate(pixels)]
    return [(str(path), to_mnist_form(read_image(path)))]


def problem(error):
    """What went wrong, in a few words, without repeating the file name."""
    if isinstance(error, UnidentifiedImageError):
        return f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


# --- the transform ------------------------------------------------------------------------------

def to_mnist_form(grey):
    """2-D grey levels (0-255, any size) -> 28x28 uint8 white digit on black, as MNIST was made.

    The paper's level is the median of the border pixels; ink is what differs from it, on the
    side the image leans to (dark ink pulls the mean below light paper, so that is inverted).
    """
    grey = np.asarray(grey, dtype=np.float32)
    paper = np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))
    ink = np.clip(paper - grey if grey.mean() < paper else grey - paper, 0, None)
    if ink.max() < MIN_CONTRAST:
        raise InputError("no digit found: the image is blank")
    # Darkest ink -> 255; anything fainter than INK_LEVEL of it is paper -> 0.
    ink = np.clip((ink / ink.max() - INK_LEVEL) / (1 - INK_LEVEL), 0, 1) * 255
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]

    scale = BOX / max(ink.shape)  # longer side -> 20 pixels; Lanczos antialiases both ways
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS)).clip(0, 255)

    # Centre of mass on pixel (14, 14), as in MNIST, keeping the whole digit inside the field.
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


# --- the model ----------------------------------------------------------------------------------

def read_metadata(model_file):
    """(class_names, input_shape, normalization) from the metadata.json train wrote."""
    path = model_file.parent / "metadata.json"
    try:
        metadata = read_json(path)
        names, shape = metadata["class_names"], tuple(metadata["input_shape"])
        normalization = metadata["normalization"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"error: {path}: cannot read the model's metadata ({problem(error)})")
    if shape != (FIELD, FIELD):
        sys.exit(f"error: {path}: the model takes inputs of shape {shape}, not MNIST's "
                 f"{FIELD}x{FIELD}")
    return names, shape, normalization


def predict(model_file, pixels, normalization):
    """Probabilities, one row per image, from the model on normalised 28x28 pixels."""
    # TF 2.21 announces oneDNN on stderr whatever the log level says. A few images do not need
    # oneDNN, and without it stderr holds only our one line per bad input.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import keras

    try:
        model = keras.saving.load_model(model_file, safe_mode=True)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {model_file}: cannot load the model ({error})")
    return model.predict(normalize(np.stack(pixels), normalization), verbose=0)


# --- output -------------------------------------------------------------------------------------

def ranked(probs, names, k):
    return [{"digit": names[i], "probability": round(float(probs[i]), 6)}
            for i in np.argsort(-probs, kind="stable")[:k]]


def text_line(result):
    best = ", ".join(f"{t['digit']} ({t['probability']:.1%})" for t in result["top"])
    return f"{result['file']}: {best}"


def main(argv=None):
    args = parse_args(argv)
    if not args.model.is_file():
        sys.exit(f"error: {args.model}: model file not found (run `dvc repro`, or pass --model)")
    names, shape, normalization = read_metadata(args.model)

    results, pixels = [], []  # results in the order given; pixels of those that can be predicted
    for path in args.images:
        try:
            inputs = read_input(path, shape)
        except INPUT_ERRORS as error:
            print(f"error: {path}: {problem(error)}", file=sys.stderr)
            results.append({"file": str(path), "error": problem(error)})
            continue
        for name, image in inputs:
            results.append({"file": name})
            pixels.append(image)

    good = [r for r in results if "error" not in r]
    if good:
        for result, probs in zip(good, predict(args.model, pixels, normalization)):
            top = ranked(probs, names, args.top)
            result.update(top[0], top=top)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in good:
            print(text_line(result))
    return 0 if len(good) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
