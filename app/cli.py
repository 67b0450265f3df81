"""Predict the class of each picture with the exported model (ONNX Runtime, no TensorFlow).

    mnist-predict digit.png [more.png ...] [--top K] [--json] [--debug DIR] [--model PATH]

Pictures (PNG, JPEG, BMP, GIF, WebP or TIFF, up to 10 MB) are read within the server's bounds
(sandbox.py) and made as the model's data were (app/metadata.py); `.npy` arrays already in the
model's input form, (H, W, C) or (N, H, W, C) (or without C for a grey model), are taken as they
are. A line per picture: its class, or why it was refused ("not a digit (a dash)"), on stdout,
or what is wrong on stderr. Exit status 0 if every picture was predicted, 1 if any was not (or
the model failed), 2 for a usage error.
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

from app.classifier import MODEL_FILE, Classifier, ModelError, answer, load_classifier, model_input
from app.pictures.debug_view import debug_png
from app.pictures.decode import MAX_FILE_BYTES, InputError
from app.pictures.sandbox import Sandbox

MAX_NPY_BYTES = 64 * 2**20  # 20,000 MNIST-form pictures of float32

# What one bad file raises: OSError (the file system, a decoder that crashed); InputError (a
# ValueError); for a damaged .npy, NumPy's errors and those of the literal parser it reads with.
INPUT_ERRORS = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError)

# The first bytes of files people may name .npy by mistake.
MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"BM": "a BMP image",
         b"PK\x03\x04": "a zip archive (an .npz?)", b"\x80": "a Python pickle"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    installed = Path(sys.argv[0]).name == "mnist-predict"  # the command pip installs
    parser = argparse.ArgumentParser(
        prog="mnist-predict" if installed else "python -m app.cli",
        description="Predict the class of each picture with the trained model (ONNX Runtime).")
    parser.add_argument("images", nargs="+", type=Path, metavar="PICTURE",
                        help="a picture (PNG, JPEG, BMP, GIF, WebP, TIFF), or an .npy array "
                             "already in the model's input form, (H, W, C) or (N, H, W, C)")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="show the K most likely classes (default: 1)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    parser.add_argument("--debug", type=Path, metavar="DIR",
                        help="write into DIR what the model saw of each input, and for a picture "
                             "a view of it (for a digit, what was taken as the page and the ink)")
    parser.add_argument("--model", type=Path, default=MODEL_FILE,
                        help=f"ONNX model exported by the pipeline (default: {MODEL_FILE})")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be at least 1")
    return args


def read_array(path: Path, input_shape: tuple) -> np.ndarray:
    """An .npy file of pictures in the input form (H, W, C), one or N of them, without C
    when it is 1 -> float32 levels 0-255 of (N, H, W, C), as they are. The header is checked
    against the file's size before anything is allocated."""
    with open(path, "rb") as f:
        head = f.read(6)
        if head != b"\x93NUMPY":
            kind = next((k for magic, k in MAGIC.items() if head.startswith(magic)), None)
            raise InputError(f"is {kind}, not an .npy array" if kind else
                             "not an .npy array" + ("" if head else " (empty)"))
        f.seek(0)
        version = np.lib.format.read_magic(f)  # then NumPy's reader of its header, by version
        if version not in ((1, 0), (2, 0)):
            raise InputError(f".npy format version {version[0]}.{version[1]} is not supported")
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                           np.lib.format.read_array_header_2_0)(f)  # and f is past the header
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
    forms = [tuple(input_shape)] + [tuple(input_shape[:2])] * (input_shape[2] == 1)  # C if 1
    form = next((f for f in forms if array.shape[-len(f):] == f and array.ndim - len(f) in (0, 1)),
                None)
    if form is None or array.size == 0:
        raise InputError(f"array of shape {array.shape}; the model takes "
                         f"{tuple(input_shape)}, one or N of them")
    if array.dtype.kind not in "uif":
        raise InputError(f"array of {array.dtype}; expected integer or float pixels")
    if not (np.isfinite(array).all() and 0 <= array.min() and array.max() <= 255):
        raise InputError("pixel values outside 0-255")
    pixels = array.astype(np.float32).reshape(-1, *input_shape)
    return pixels * 255 if array.dtype.kind == "f" and pixels.max() <= 1 else pixels


def read_input(path: Path, classifier: Classifier, sandbox: Sandbox) -> list[tuple]:
    """One file -> [(name, pixels in the model's input form)]: an array of N gives N named
    file[i]; a picture is made as the model's data were, in a decode process."""
    if path.suffix.lower() != ".npy":
        return [(str(path), sandbox.call(model_input, picture_bytes(path), classifier.info))]
    size_of(path)
    pixels = read_array(path, classifier.info.input_shape)
    return [(str(path), pixels[0])] if len(pixels) == 1 else \
        [(f"{path}[{i}]", p) for i, p in enumerate(pixels)]


def size_of(path: Path) -> int:
    """The size of `path`, a regular file (FileNotFoundError for a missing one, as open's)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise InputError("not a regular file" + (" (a folder)" if stat.S_ISDIR(status.st_mode)
                                                 else ""))
    return status.st_size


def picture_bytes(path: Path) -> bytes:
    """A picture file's bytes, refused by its size before it is read."""
    if (size := size_of(path)) > MAX_FILE_BYTES:
        raise InputError(f"{size / 2**20:,.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB "
                         "limit for a picture")
    return path.read_bytes()


def reason(error: Exception) -> str:
    """What went wrong, in a few words, without repeating the file name."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def printable(name: str) -> str:
    """A file name on one line of output: newlines and other control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in name)


def debug_name(directory: Path, number: int, name: str, kind: str) -> Path:
    """NNN-NAME.KIND.png, NNN the input's place among those given: two may share a name."""
    stem = Path(name).name.replace("[", "-").replace("]", "")
    return directory / f"{number:03d}-{stem}.{kind}.png"


def text_line(result: dict) -> str:
    if result["refusal"]:  # "not a digit: a dash" -> "not a digit (a dash)"
        what, _, why = result["refusal"].partition(": ")
        return f"{printable(result['file'])}: {what} ({why})"
    best = ", ".join(f"{t['label']} ({t['probability']:.1%})" for t in result["top"])
    return f"{printable(result['file'])}: {best}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sandbox = Sandbox(start="fork")  # before ONNX Runtime starts any thread
    try:
        return predict(args, sandbox)
    finally:
        sandbox.close()


def say(error: str) -> None:
    print(f"error: {printable(error)}", file=sys.stderr)


def predict(args: argparse.Namespace, sandbox: Sandbox) -> int:
    try:
        classifier = load_classifier(args.model)
    except ModelError as error:
        say(str(error))
        return 1
    if args.debug:
        try:
            args.debug.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            say(f"--debug {args.debug}: {reason(error)}")
            return 2

    results, pixels = [], []  # results in the order given; pixels of those that can be predicted
    for number, path in enumerate(args.images, 1):
        try:
            inputs = read_input(path, classifier, sandbox)
        except INPUT_ERRORS as error:
            say(f"{path}: {reason(error)}")
            results.append({"file": str(path), "error": reason(error)})
            continue
        for name, image in inputs:
            results.append({"file": name})
            pixels.append(image)
            if args.debug:  # the input as the model saw it, before normalisation
                seen = np.asarray(image).round().clip(0, 255).astype(np.uint8)
                Image.fromarray(seen.squeeze(axis=2) if seen.shape[2] == 1 else seen).save(
                    debug_name(args.debug, number, name, "input"))

    good = [r for r in results if "error" not in r]
    if good:
        try:
            probabilities = classifier.probabilities(np.stack(pixels))
        except ModelError as error:  # NaN, say: nothing is printed as if it were an answer
            say(str(error))
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
                try:  # the picture with what was taken as the page and the ink (debug_view.py)
                    view = sandbox.call(debug_png, picture_bytes(path), classifier.info, caption)
                except INPUT_ERRORS:  # no picture to draw: the error line already says why
                    continue
                debug_name(args.debug, number, str(path), "debug").write_bytes(view)
    return 0 if len(good) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
