"""Predict the class of each picture with the exported model (ONNX Runtime, no TensorFlow).

    mnist-predict digit.png [more.png ...] [--top K] [--json] [--model PATH]

Pictures (PNG, JPEG, BMP, GIF, WebP or TIFF, up to 10 MB) are read within the server's bounds
(sandbox.py) and made as the model's data were (app/metadata.py). (Arrays already in the model's
input form go to the server's Open Inference Protocol `infer` endpoint.) A line per picture: its
class, or why it was refused ("not a digit (a dash)"), on stdout, or what is wrong on stderr.
Exit status 0 if every picture was predicted, 1 if any was not (or the model failed), 2 for a
usage error.
"""

import argparse
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np

from app.classifier import MODEL_FILE, ModelError, answer, load_classifier, model_input
from app.pictures.decode import MAX_FILE_BYTES, InputError
from app.pictures.sandbox import Sandbox


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    installed = Path(sys.argv[0]).name == "mnist-predict"  # the command pip installs
    parser = argparse.ArgumentParser(
        prog="mnist-predict" if installed else "python -m app.cli",
        description="Predict the class of each picture with the trained model (ONNX Runtime).")
    parser.add_argument("images", nargs="+", type=Path, metavar="PICTURE",
                        help="a picture: PNG, JPEG, BMP, GIF, WebP or TIFF")
    parser.add_argument("--top", type=int, default=1, metavar="K",
                        help="show the K most likely classes (default: 1)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    parser.add_argument("--model", type=Path, default=MODEL_FILE,
                        help=f"ONNX model exported by the pipeline (default: {MODEL_FILE})")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be at least 1")
    return args


def picture_bytes(path: Path) -> bytes:
    """A picture file's bytes, refused by its kind and size before it is read
    (FileNotFoundError for a missing one, as open's)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise InputError("not a regular file" + (" (a folder)" if stat.S_ISDIR(status.st_mode)
                                                 else ""))
    if status.st_size > MAX_FILE_BYTES:
        raise InputError(f"{status.st_size / 2**20:,.0f} MB is over the "
                         f"{MAX_FILE_BYTES // 2**20} MB limit for a picture")
    return path.read_bytes()


def reason(error: Exception) -> str:
    """What went wrong, in a few words, without repeating the file name."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def printable(name: str) -> str:
    """A file name on one line of output: newlines and other control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in name)


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

    results, pixels = [], []  # results in the order given; pixels of those that can be predicted
    for path in args.images:
        try:  # made as the model's data were, in a decode process
            image = sandbox.call(model_input, picture_bytes(path), classifier.info)
        except (OSError, InputError) as error:  # the file system, a crashed decoder; the file
            say(f"{path}: {reason(error)}")
            results.append({"file": str(path), "error": reason(error)})
            continue
        results.append({"file": str(path)})
        pixels.append(image)

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
    return 0 if len(good) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
