"""The exported model as the app runs it (ONNX Runtime and the metadata inside the file), and
the answer for a picture, the same for `mnist-predict --json` and for HTTP. A model is served
right or refused at load, in one line: its metadata must fit it, its input be [N, 28, 28]
floats (N free, or 1: run one picture at a time), its outputs probabilities on probe pictures
(not scores: "7 (1161.0%)"). Every answer is checked again: NaN is never served.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.pictures.digit import FIELD
from app.pictures.refusal import refusal

# ONNX Runtime records an event with a device id under ~/.cache/Microsoft/ in every process that
# imports it, for an uploader; this, set before the import (in load_classifier), stops it.
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

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities for N 28x28 pictures in MNIST form; ModelError if the
        model gives anything else for any of them."""
        out = self.outputs(pixels)
        bad = ~is_probabilities(out)
        if bad.any():
            raise ModelError(f"{self.path.name} gave no probabilities for {bad.sum()} of "
                             f"{len(out)} pictures ({describe_outputs(out[bad][0])})")
        return out

    def outputs(self, pixels: np.ndarray) -> np.ndarray:
        """What the graph gives for N pictures, run one at a time if its batch is fixed at 1."""
        x = np.asarray(pixels, dtype=np.float32)
        try:
            return np.concatenate([self.session.run(None, {self.input_name: batch})[0] for batch
                                   in (np.split(x, len(x)) if self.one_at_a_time else [x])])
        except ort_errors() as e:
            raise ModelError(f"{self.path.name}: cannot run the model ({ort_cause(e)})") from e


def is_probabilities(rows: np.ndarray) -> np.ndarray:
    """For each row: all finite, each within [0, 1], summing to 1."""
    rows = np.asarray(rows, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (np.isfinite(rows).all(axis=1) & (rows >= -1e-6).all(axis=1)
                & (rows <= 1 + 1e-6).all(axis=1) & (np.abs(rows.sum(axis=1) - 1) <= SUM_TOLERANCE))


def describe_outputs(row: np.ndarray) -> str:
    if not np.isfinite(row).all():
        return "NaN or infinity among its outputs"
    return f"outputs from {row.min():.3g} to {row.max():.3g}, summing to {row.sum():.4g}"


def read_metadata(session, path: Path) -> dict:
    """The metadata the model carries, as train writes it and export embeds it; else
    ModelError."""
    def bad(what: str) -> ModelError:
        return ModelError(f"{path}: its metadata's {what}; export it with `dvc repro`")

    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ModelError(f"{path}: the model carries no metadata (class names, "
                         "normalisation): export it with `dvc repro`")
    try:
        metadata = json.loads(text)
    except ValueError as e:
        raise ModelError(f"{path}: its metadata is not JSON ({e})") from e
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
    return metadata


def check_signature(session, model_file: Path, names: list) -> bool:
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


PROBES = ("blank", "white", "random")  # pictures any classifier answers with probabilities


def load_classifier(model_file: str | Path) -> Classifier:
    """The ONNX model and the metadata it carries, checked against each other and run once on
    the PROBES. Raises ModelError."""
    import onnxruntime

    model_file = Path(model_file)
    if not model_file.is_file():
        raise ModelError(f"{model_file}: model file not found (run `dvc repro`, or pass --model)")
    onnxruntime.disable_telemetry_events()  # in case the host imported it before we could
    options = onnxruntime.SessionOptions()
    # One image at a time is microseconds of arithmetic: a thread pool costs more than it saves.
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: its errors reach us as exceptions
    try:
        session = onnxruntime.InferenceSession(str(model_file), options,
                                               providers=["CPUExecutionProvider"])
    except ort_errors() as e:
        raise ModelError(f"{model_file}: cannot load the model ({ort_cause(e)})") from e
    metadata = read_metadata(session, model_file)
    one_at_a_time = check_signature(session, model_file, metadata["class_names"])
    classifier = Classifier(session, session.get_inputs()[0].name, metadata["class_names"],
                            metadata["dataset"], metadata["family"], model_file, one_at_a_time)
    noise = np.random.default_rng(0).uniform(0, 255, (FIELD, FIELD))
    out = classifier.outputs(np.stack([np.zeros_like(noise), np.full_like(noise, 255), noise]))
    bad = ~is_probabilities(out)
    if bad.any():
        raise ModelError(f"{model_file}: its outputs are not probabilities (for a "
                         f"{PROBES[int(np.argmax(bad))]} picture, "
                         f"{describe_outputs(out[bad][0])}): export it with its final softmax")
    return classifier


def answer(pixels: np.ndarray, probs: np.ndarray, classifier: Classifier, k: int) -> dict:
    """{"digit", "probability", "refusal", "top"} for the 28x28 `pixels` the model read as
    `probs`: the best class and the k best, most likely first; or, when the picture holds no
    digit (pictures/refusal.py), "refusal" says why, "digit" and "probability" None (`top`
    stays: what the model would have guessed)."""
    top = [{"digit": classifier.class_names[i], "probability": round(float(probs[i]), 6)}
           for i in np.argsort(-probs, kind="stable")[:k]]
    why = refusal(pixels, probs, classifier.dataset)
    if why:
        return {"digit": None, "probability": None, "refusal": why, "top": top}
    return {**top[0], "refusal": None, "top": top}
