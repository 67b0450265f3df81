"""Predict: which digit is in each image, according to the trained model.

    mnist-predict digit.png [more.png ...] [--top K] [--json] [--debug DIR] [--model PATH]
    python -m app.cli ...               # the same, from a checkout

Runs the exported ONNX model (model/model.onnx, which carries its class names and
normalisation) with ONNX Runtime: no TensorFlow, so a cold start takes a fraction of a second.

Images (PNG, JPEG or BMP, any size and colour mode, up to 10 MB) are decoded within the same
bounds as the server's (pictures/sandbox.py) and brought to MNIST form by pictures/digit.py.
`.npy` arrays of shape (28, 28) or (N, 28, 28) are taken as already in that form, white digits
on black, uint8 0-255 or float 0-255 (or 0-1); they are neither cropped nor moved. The model's
graph normalises them as training did.

One line per image on stdout: its class, or "not a digit (a dash)" when it holds none
(pictures/refusal.py; `--json` gives `refusal` and no `digit`). A file that cannot be used gets one
line on stderr and the others are still predicted. Exit status: 0 if every image was
predicted, 1 if any was not (or the model could not be loaded, or gave no probabilities), 2 for
a usage error.
"""

import argparse
import json
import os
import stat
import sys
import tokenize
from pathlib import Path

import numpy as np
from PIL import Image

from app.classifier import MODEL_FILE, ModelError, answer, load_classifier
from app.pictures.debug_view import debug_png
from app.pictures.decode import MAX_FILE_BYTES, InputError
from app.pictures.digit import FIELD, model_form
from app.pictures.sandbox import Sandbox

MAX_NPY_BYTES = 64 * 2**20  # an (N, 28, 28) batch: 80,000 images of float32 at most
# numpy's own readers of an .npy header, by format version: shape and dtype, before any data.
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}

# What reading one bad file raises: OSError from the file system; InputError (a ValueError)
# for every picture app/pictures cannot use; for a damaged .npy, numpy's ValueError and
# EOFError, and the SyntaxError and tokenize.TokenError of the Python literal parser it reads
# the header with.
INPUT_ERRORS = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError)

# The first bytes of files people may name .npy by mistake.
MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"BM": "a BMP image",
         b"PK\x03\x04": "a zip archive (an .npz?)", b"\x80": "a Python pickle"}


def parse_args(argv=None):
    installed = Path(sys.argv[0]).name == "mnist-predict"  # the command pip installs
    parser = argparse.ArgumentParser(
        prog="mnist-predict" if installed else "python -m app.cli",
        description="Predict the class of each image with the trained model (ONNX Runtime).")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                        help="PNG, JPEG or BMP image, or .npy array of shape (28, 28) or "
                             "(N, 28, 28) already in MNIST form (white on black)")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="show the K most likely classes (default: 1)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    parser.add_argument("--debug", type=Path, metavar="DIR",
                        help="write into DIR, for each input, the 28x28 image the model saw "
                             "(NNN-NAME.28x28.png) and, for a picture, what the transform took "
                             "as the page and as the ink, with the answer (NNN-NAME.debug.png): "
                             "to see why a picture was refused or misread")
    parser.add_argument("--model", type=Path, default=MODEL_FILE,
                        help=f"ONNX model exported by the pipeline (default: {MODEL_FILE})")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be at least 1")
    return args


# --- reading inputs -----------------------------------------------------------------------------

def what_it_is(head):
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return "not an .npy array" if head else "empty"


def read_array(path):
    """An .npy file -> float32 grey levels 0-255 of (28, 28) or (N, 28, 28), as they are.
    The header is checked against the file's size before anything is allocated."""
    with open(path, "rb") as f:
        head = f.read(6)
        if head != b"\x93NUMPY":
            kind = what_it_is(head)
            raise InputError(f"is {kind}, not an .npy array" if kind[0] == "a" else
                             f"not an .npy array ({kind})")
        f.seek(0)
        version = np.lib.format.read_magic(f)
        if version not in NPY_HEADER_READERS:
            raise InputError(f".npy format version {version[0]}.{version[1]} is not supported")
        shape, _, dtype = NPY_HEADER_READERS[version](f)  # the file is left past the header
        if dtype.hasobject:
            raise InputError("holds pickled Python objects (refused: allow_pickle is off)")
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
        available = os.fstat(f.fileno()).st_size - f.tell()
        if declared > available:
            raise InputError(f"declares shape {shape} ({declared:,} bytes) but holds only "
                             f"{available:,} bytes")
        if declared > MAX_NPY_BYTES:
            raise InputError(f"shape {shape} is over the {MAX_NPY_BYTES // 2**20} MiB limit")
        f.seek(0)
        array = np.load(f, allow_pickle=False)
    if array.ndim not in (2, 3) or array.shape[-2:] != (FIELD, FIELD) or array.size == 0:
        raise InputError(f"array of shape {array.shape}; expected ({FIELD}, {FIELD}) or "
                         f"(N, {FIELD}, {FIELD}) in MNIST form")
    if array.dtype.kind not in "uif":
        raise InputError(f"array of {array.dtype}; expected integer or float pixels")
    if not (np.isfinite(array).all() and 0 <= array.min() and array.max() <= 255):
        raise InputError("pixel values outside 0-255")
    pixels = array.astype(np.float32)
    return pixels * 255 if array.dtype.kind == "f" and pixels.max() <= 1 else pixels


def read_input(path: Path, dataset: str, sandbox: Sandbox) -> list[tuple[str, np.ndarray]]:
    """One file -> [(name, pixels in MNIST form)]: an (N, 28, 28) array gives N named file[i].
    A picture is brought to the form of `dataset`'s images in a decode process."""
    if path.suffix.lower() == ".npy":
        regular_file(path)
        pixels = read_array(path)
        if pixels.ndim == 2:
            return [(str(path), pixels)]
        return [(f"{path}[{i}]", p) for i, p in enumerate(pixels)]
    return [(str(path), sandbox.call(model_form, picture_bytes(path), dataset))]


def regular_file(path: Path) -> int:
    """The size of `path`, a regular file (FileNotFoundError for a missing one, as open's)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise InputError("not a regular file" + (" (a folder)" if stat.S_ISDIR(status.st_mode)
                                                 else ""))
    return status.st_size


def picture_bytes(path: Path) -> bytes:
    """A picture file's bytes, refused by its size before it is read."""
    size = regular_file(path)
    if size > MAX_FILE_BYTES:
        raise InputError(f"{size / 2**20:,.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB "
                         "limit for a picture")
    return path.read_bytes()


def problem(error):
    """What went wrong, in a few words, without repeating the file name."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def printable(name):
    """A file name on one line of output: newlines and other control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in name)


# --- output -------------------------------------------------------------------------------------

def debug_name(directory, number, name, kind):
    """NNN-NAME.KIND.png, NNN the input's place among those given: two may share a name."""
    stem = Path(name).name.replace("[", "-").replace("]", "")
    return directory / f"{number:03d}-{stem}.{kind}.png"


def save_debug_image(directory, number, name, pixels):
    """The input as the model saw it: 28x28, white on black, before normalisation."""
    Image.fromarray(np.asarray(pixels).round().clip(0, 255).astype(np.uint8)).save(
        debug_name(directory, number, name, "28x28"))


def save_debug_view(directory, number, path, caption, dataset, sandbox):
    """A picture (not an .npy) with what the transform took as the page and as the ink, the
    28x28 the model saw, and `caption` (its answer, or why it has none): debug_view.py."""
    try:
        view = sandbox.call(debug_png, picture_bytes(path), dataset, caption)
    except INPUT_ERRORS:  # no picture to draw: the error line already says why
        return
    debug_name(directory, number, str(path), "debug").write_bytes(view)


def text_line(result):
    if result["refusal"]:  # "not a digit: a dash" -> "not a digit (a dash)"
        what, _, why = result["refusal"].partition(": ")
        return f"{printable(result['file'])}: {what} ({why})"
    best = ", ".join(f"{t['digit']} ({t['probability']:.1%})" for t in result["top"])
    return f"{printable(result['file'])}: {best}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sandbox = Sandbox(start="fork")  # before ONNX Runtime starts any thread
    try:
        return predict(args, sandbox)
    finally:
        sandbox.close()


def predict(args: argparse.Namespace, sandbox: Sandbox) -> int:
    try:
        classifier = load_classifier(args.model)
    except ModelError as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        return 1
    if args.debug:
        try:
            args.debug.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"error: --debug {printable(str(args.debug))}: {problem(error)}",
                  file=sys.stderr)
            return 2

    results, pixels = [], []  # results in the order given; pixels of those that can be predicted
    for number, path in enumerate(args.images, 1):
        try:
            inputs = read_input(path, classifier.dataset, sandbox)
        except INPUT_ERRORS as error:
            print(f"error: {printable(str(path))}: {problem(error)}", file=sys.stderr)
            results.append({"file": str(path), "error": problem(error)})
            continue
        for name, image in inputs:
            results.append({"file": name})
            pixels.append(image)
            if args.debug:
                save_debug_image(args.debug, number, name, image)

    good = [r for r in results if "error" not in r]
    if good:
        try:
            probabilities = classifier.probabilities(np.stack(pixels))
        except ModelError as error:  # NaN, say: nothing is printed as if it were an answer
            print(f"error: {printable(str(error))}", file=sys.stderr)
            return 1
        for result, image, probs in zip(good, pixels, probabilities):
            result.update(answer(image, probs, classifier, args.top))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in good:
            print(text_line(result))
    if args.debug:
        for number, path in enumerate(args.images, 1):
            if path.suffix.lower() != ".npy":  # an array has no page and no ink to show
                result = next(r for r in results if r["file"] == str(path))
                caption = f"error: {result['error']}" if "error" in result else text_line(result)
                save_debug_view(args.debug, number, path, caption, classifier.dataset, sandbox)
    return 0 if len(good) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
