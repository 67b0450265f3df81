"""The exported model as the app runs it (ONNX Runtime and the metadata inside the file,
app/metadata.py), and the answer for a picture, the same for `mnist-predict --json` and for
HTTP. A model that does not fit its metadata, or gives no probabilities, is refused at load in
one line (load_classifier); every answer is checked again: NaN is never served.
"""

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from app.metadata import METADATA_KEY, ModelInfo, uncertainty
from app.pictures.decode import read_grey
from app.pictures.digit import to_fashion_form, to_mnist_form
from app.pictures.fit import fit, resized
from app.pictures.refusal import refusal

# ONNX Runtime records an event with a device id under ~/.cache/Microsoft/ in every process that
# imports it, for an uploader; this, set before the import (in load_classifier), stops it.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

MODEL_FILE = Path("model/model.onnx")  # where the pipeline's export stage writes it
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
    info: ModelInfo
    path: Path
    one_at_a_time: bool  # the graph's batch size is fixed at 1
    sha256: str = ""  # of the very bytes loaded, whatever the file holds by now
    output_name: str = ""
    name: str = ""  # NAME@VERSION.onnx's, as app/server/registry.py fetches a version; else
    version: str = ""  # the file's name without .onnx, and no version

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities for N pictures in the model's input form; ModelError if
        the model gives anything else for any of them."""
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


def read_metadata(session: object, path: Path) -> ModelInfo:
    """What the model says of itself (app/metadata.py); else ModelError."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ModelError(f"{path}: the model carries no metadata (class names, input): export "
                         "it with `dvc repro`")
    try:
        return ModelInfo.model_validate_json(text)
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(map(str, error["loc"])) or "it"
        raise ModelError(f"{path}: its metadata's {where}: {error['msg'].lower()}; export it "
                         "with `dvc repro`") from None


def check_signature(session: object, model_file: Path, info: ModelInfo) -> bool:
    """Whether the graph takes one batch of pictures and gives one score per class; returns
    whether its batch size is fixed at 1."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{model_file}: the model has {len(inputs)} inputs and {len(outputs)} "
                         "outputs; expected one of each")
    shape, expected = inputs[0].shape, ["N", *info.input_shape]
    if shape[1:] != expected[1:] or inputs[0].type != "tensor(float)":
        raise ModelError(f"{model_file}: the model takes {inputs[0].type} of shape {shape}; its "
                         f"metadata says float pictures of {expected}")
    batch = shape[0]  # a name (or None) when free, a number when fixed
    if isinstance(batch, int) and batch != 1:
        raise ModelError(f"{model_file}: the model takes batches of exactly {batch} pictures; "
                         "export it with a free batch size, or a batch of 1")
    if len(outputs[0].shape) != 2:
        raise ModelError(f"{model_file}: the model gives outputs of shape {outputs[0].shape}; "
                         "expected one score per class for each picture, [N, classes]")
    if outputs[0].shape[-1] != len(info.class_names):
        raise ModelError(f"{model_file}: the model gives {outputs[0].shape[-1]} outputs but "
                         f"its metadata names {len(info.class_names)} classes")
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
    data = model_file.read_bytes()  # once: what is hashed is what runs
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except ort_errors() as e:
        raise ModelError(f"{model_file}: cannot load the model ({ort_cause(e)})") from e
    info = read_metadata(session, model_file)
    one_at_a_time = check_signature(session, model_file, info)
    classifier = Classifier(session, session.get_inputs()[0].name, info, model_file, one_at_a_time,
                            hashlib.sha256(data).hexdigest(), session.get_outputs()[0].name,
                            *model_file.stem.partition("@")[::2])
    noise = np.random.default_rng(0).uniform(0, 255, info.input_shape)
    out = classifier.outputs(np.stack([np.zeros_like(noise), np.full_like(noise, 255), noise]))
    bad = ~is_probabilities(out)
    if bad.any():
        raise ModelError(f"{model_file}: its outputs are not probabilities (for a "
                         f"{PROBES[int(np.argmax(bad))]} picture, "
                         f"{describe_outputs(out[bad][0])}): export it with its final softmax")
    return classifier


def model_input(picture: bytes, info: ModelInfo) -> np.ndarray:
    """A picture file's bytes as the model takes it, uint8 (H, W, C), made as its data were
    (`prepare`): a digit found and fitted as MNIST's were, a garment as Fashion-MNIST's, any
    other picture as download read a folder of them. What predict and the server run in a
    decode process (pictures/sandbox.py); an InputError says why it cannot be."""
    size, _, channels = info.input_shape
    if info.prepare == "picture":
        return fit(io.BytesIO(picture), size, channels)
    form = to_mnist_form if info.prepare == "digit" else to_fashion_form
    return resized(form(read_grey(picture)), size, channels)


def answer(pixels: np.ndarray, probs: np.ndarray, classifier: Classifier, k: int) -> dict:
    """{"label", "probability", "refusal", "top"} for the picture the model read as `probs`
    (`pixels`, its input): the best class and the k best, most likely first; or, when the
    picture is refused (app/metadata.py: what no digit looks like, or an answer less sure than
    the model's threshold), "refusal" says why and "label" and "probability" are None (`top`
    stays: what the model would have guessed)."""
    top = [{"label": classifier.info.class_names[i], "probability": round(float(probs[i]), 6)}
           for i in np.argsort(-probs, kind="stable")[:k]]
    check = classifier.info.refusal
    if check.kind == "digit":
        why = refusal(np.asarray(pixels).reshape(pixels.shape[:2]), probs)
    else:
        unsure = uncertainty(probs)
        why = (f"not recognised: unsure of every class ({unsure:.2f} nats of uncertainty, over "
               f"its {check.threshold:.2f})") if unsure > check.threshold else None
    if why:
        return {"label": None, "probability": None, "refusal": why, "top": top}
    return {**top[0], "refusal": None, "top": top}
