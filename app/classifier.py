"""The exported model as the app runs it (ONNX Runtime, and the metadata the file carries), and
the answer for a picture, the same for the command line (`--json`) and for HTTP.

Export puts train's metadata (class names, the input shape, the dataset and family) into the
ONNX file itself, so a model always comes with its own, and puts preprocess's normalisation
into the graph: the model takes 28x28 grey levels 0-255 as app/pictures/digit.py makes them.

Any model file is served right or refused when it is loaded, in one line: its metadata must
fit it, its input must be [N, 28, 28] floats (N free, or fixed at 1: such a model is run one
picture at a time), and its outputs must be probabilities. That is checked by running it on a
few probe pictures: a model that ends without its softmax, or that gives NaN, is refused,
since a score is not a probability and the page would show "7 (1161.0%)". Every answer is
checked again, so NaN is never served.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.pictures.digit import FIELD
from app.pictures.refusal import refusal

# ONNX Runtime records an event with a persistent device id in ~/.cache/Microsoft/ for every
# process that imports it, for an uploader to send; this stops it. It must be set before the
# import (in load_classifier), so it is set when this module is.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

MODEL_FILE = Path("model/model.onnx")  # where the pipeline's export stage writes it
METADATA_KEY = "pipeline_metadata"  # as stages/export.py writes it
PIXEL_RANGE = [0, 255]  # what the graph takes, as stages/export.py says in the metadata
DATASETS, FAMILIES = ("mnist", "fashion-mnist"), ("mlp", "cnn")
# How far a row of probabilities may stray from summing to 1: float32 softmax is within 1e-6.
SUM_TOLERANCE = 1e-3


class ModelError(Exception):
    """The model or its metadata cannot be used; the message says why, in one line."""


def ort_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a model it cannot load or run: classes of its C extension,
    with no common base but Exception and no public name. The one place the app reaches into
    another package's internals; tests/app/test_private_api.py pins it."""
    from onnxruntime.capi import onnxruntime_pybind11_state as extension

    return tuple(value for value in vars(extension).values()
                 if isinstance(value, type) and issubclass(value, Exception))


def ort_cause(error: Exception) -> str:
    """ONNX Runtime's reason, in a line: without its error code, or the C++ source and
    function it names."""
    text = re.sub(r"\S+\.(cc|cpp|h):\d+ \S+?\(.*?\) ", "", str(error).split(":", 3)[-1])
    return " ".join(text.split())[:200] or type(error).__name__


@dataclass
class Classifier:
    session: object
    input_name: str
    class_names: list
    dataset: str
    family: str
    path: Path
    one_at_a_time: bool  # the graph's batch size is fixed at 1

    def probabilities(self, pixels):
        """(N, classes) probabilities for N pictures of 28x28 grey levels 0-255 in MNIST form.
        Raises ModelError if the model gives anything but probabilities for any of them."""
        out = self.outputs(pixels)
        bad = ~is_probabilities(out)
        if bad.any():
            raise ModelError(f"{self.path.name} gave no probabilities for {bad.sum()} of "
                             f"{len(out)} pictures ({describe_outputs(out[bad][0])})")
        return out

    def outputs(self, pixels):
        """What the graph gives for N pictures, run one at a time if its batch is fixed at 1."""
        x = np.asarray(pixels, dtype=np.float32)
        if self.one_at_a_time:
            return np.concatenate([self.outputs_of_batch(x[i:i + 1]) for i in range(len(x))])
        return self.outputs_of_batch(x)

    def outputs_of_batch(self, x):
        try:
            return self.session.run(None, {self.input_name: x})[0]
        except ort_errors() as e:
            raise ModelError(f"{self.path.name}: cannot run the model ({ort_cause(e)})") from e


def is_probabilities(rows):
    """For each row: all finite, each within [0, 1], summing to 1."""
    rows = np.asarray(rows, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (np.isfinite(rows).all(axis=1) & (rows >= -1e-6).all(axis=1)
                & (rows <= 1 + 1e-6).all(axis=1) & (np.abs(rows.sum(axis=1) - 1) <= SUM_TOLERANCE))


def describe_outputs(row):
    if not np.isfinite(row).all():
        return "NaN or infinity among its outputs"
    return f"outputs from {row.min():.3g} to {row.max():.3g}, summing to {row.sum():.4g}"


def check_metadata(metadata, path):
    """Raise ModelError unless `metadata` is what train writes and export embeds."""
    def bad(what):
        return ModelError(f"{path}: its metadata's {what}; export it with `dvc repro`")

    if not isinstance(metadata, dict):
        raise ModelError(f"{path}: its metadata is not a JSON object; export it with "
                         "`dvc repro`")
    for key, allowed in (("dataset", DATASETS), ("family", FAMILIES)):
        if metadata.get(key) not in allowed:
            raise bad(f"{key} is {metadata.get(key)!r}, not one of {', '.join(allowed)}")
    names = metadata.get("class_names")
    if not (isinstance(names, list) and len(names) >= 2
            and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)):
        raise bad("class_names is not a list of two or more different names")
    if metadata.get("input_shape") != [FIELD, FIELD]:
        raise bad(f"input_shape is {metadata.get('input_shape')!r}, not [{FIELD}, {FIELD}]")
    if metadata.get("pixel_range") != PIXEL_RANGE:
        raise bad(f"pixel_range is {metadata.get('pixel_range')!r}, not {PIXEL_RANGE} (an "
                  "export from before the graph normalised its input)")


def open_session(model_file):
    import onnxruntime

    onnxruntime.disable_telemetry_events()  # in case the host imported it before we could
    options = onnxruntime.SessionOptions()
    # One image at a time is microseconds of arithmetic: a thread pool costs more than it saves.
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: its errors reach us as exceptions
    try:
        return onnxruntime.InferenceSession(str(model_file), options,
                                            providers=["CPUExecutionProvider"])
    except ort_errors() as e:
        raise ModelError(f"{model_file}: cannot load the model ({ort_cause(e)})") from e


def read_metadata(session, model_file):
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ModelError(f"{model_file}: the model carries no metadata (class names, "
                         "normalisation): export it with `dvc repro`")
    try:
        metadata = json.loads(text)
    except ValueError as e:
        raise ModelError(f"{model_file}: its metadata is not JSON ({e})") from e
    check_metadata(metadata, model_file)
    return metadata


def check_signature(session, model_file, names):
    """Whether the graph takes one batch of pictures and gives one score per class; returns
    whether its batch size is fixed at 1."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{model_file}: the model has {len(inputs)} inputs and {len(outputs)} "
                         "outputs; expected one of each")
    shape = inputs[0].shape
    if len(shape) != 3 or list(shape[1:]) != [FIELD, FIELD] or inputs[0].type != "tensor(float)":
        raise ModelError(f"{model_file}: the model takes {inputs[0].type} of shape "
                         f"{shape}; expected float images of [N, {FIELD}, {FIELD}]")
    batch = shape[0]  # a name (or None) when free, a number when fixed
    if isinstance(batch, int) and batch != 1:
        raise ModelError(f"{model_file}: the model takes batches of exactly {batch} pictures; "
                         "export it with a free batch size, or a batch of 1")
    if len(outputs[0].shape) != 2:
        raise ModelError(f"{model_file}: the model gives outputs of shape {outputs[0].shape}; "
                         "expected one score per class for each picture, [N, classes]")
    if outputs[0].shape[-1] != len(names):
        raise ModelError(f"{model_file}: the model gives {outputs[0].shape[-1]} outputs but "
                         f"its metadata names {len(names)} classes")
    return batch == 1


PROBES = ("blank", "white", "random")


def probe_pictures():
    """PROBES: pictures any classifier answers with probabilities."""
    noise = np.random.default_rng(0).uniform(0, 255, (FIELD, FIELD))
    return np.stack([np.zeros((FIELD, FIELD)), np.full((FIELD, FIELD), 255), noise]
                    ).astype(np.float32)


def load_classifier(model_file):
    """The ONNX model and the metadata it carries, checked against each other and run once on
    probe pictures. Raises ModelError."""
    model_file = Path(model_file)
    if not model_file.is_file():
        raise ModelError(f"{model_file}: model file not found (run `dvc repro`, or pass --model)")
    session = open_session(model_file)
    metadata = read_metadata(session, model_file)
    one_at_a_time = check_signature(session, model_file, metadata["class_names"])
    classifier = Classifier(session, session.get_inputs()[0].name, metadata["class_names"],
                            metadata["dataset"], metadata["family"], model_file, one_at_a_time)
    out = classifier.outputs(probe_pictures())
    bad = ~is_probabilities(out)
    if bad.any():
        raise ModelError(f"{model_file}: its outputs are not probabilities (for a "
                         f"{PROBES[int(np.argmax(bad))]} picture, {describe_outputs(out[bad][0])}"
                         "): export it with its final softmax")
    return classifier


# --- the answer for a picture ----------------------------------------------------------------

def ranked(probs, names, k):
    """The k most likely classes, most likely first: [{"digit", "probability"}]."""
    return [{"digit": names[i], "probability": round(float(probs[i]), 6)}
            for i in np.argsort(-probs, kind="stable")[:k]]


def answer(pixels, probs, classifier, k):
    """{"digit", "probability", "refusal", "top"} for the 28x28 `pixels` the model read as
    `probs`: the best class and the k best; or, when the picture holds no digit
    (pictures/refusal.py), "refusal" says why in a line, and "digit" and "probability" are
    None. `top` stays, for the curious: it is what the model would have guessed."""
    top = ranked(probs, classifier.class_names, k)
    why = refusal(pixels, probs, classifier.dataset)
    if why:
        return {"digit": None, "probability": None, "refusal": why, "top": top}
    return {**top[0], "refusal": None, "top": top}
