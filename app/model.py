"""The exported model as the app runs it: ONNX Runtime, and the metadata the file carries.

Export puts train's metadata (class names, the input shape, the dataset and family) into the
ONNX file itself, so a model always comes with its own, and puts preprocess's normalisation
into the graph: the model takes 28x28 grey levels 0-255 as app/transform.py makes them. It is
checked against the model once, when it is loaded: what does not fit is refused in one line
rather than producing wrong answers later.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = Path("model/model.onnx")
METADATA_KEY = "pipeline_metadata"  # as stages/export.py writes it
PIXEL_RANGE = [0, 255]  # what the graph takes, as stages/export.py says in the metadata
FIELD = 28  # MNIST's images are 28x28
DATASETS, FAMILIES = ("mnist", "fashion-mnist"), ("mlp", "cnn")


class ModelError(Exception):
    """The model or its metadata cannot be used; the message says why, in one line."""


def ort_errors():
    """What ONNX Runtime raises for a file it cannot load or run (no common base class)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, name) for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "NotImplemented", "InvalidGraph", "EPFail") if hasattr(state, name))


@dataclass
class Classifier:
    session: object
    input_name: str
    class_names: list
    dataset: str
    family: str
    path: Path

    def probabilities(self, pixels):
        """(N, classes) probabilities for N images of 28x28 grey levels 0-255 in MNIST form."""
        x = np.asarray(pixels, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]


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


def load_classifier(model_file=MODEL_FILE):
    """The ONNX model and the metadata it carries, checked against each other. Raises
    ModelError."""
    import onnxruntime

    model_file = Path(model_file)
    if not model_file.is_file():
        raise ModelError(f"{model_file}: model file not found (run `dvc repro`, or pass --model)")

    options = onnxruntime.SessionOptions()
    # One image at a time is microseconds of arithmetic: a thread pool costs more than it saves.
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(str(model_file), options,
                                               providers=["CPUExecutionProvider"])
    except ort_errors() as e:
        cause = str(e).split(":", 3)[-1].strip() or type(e).__name__
        raise ModelError(f"{model_file}: cannot load the model ({cause[:200]})") from e
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ModelError(f"{model_file}: the model carries no metadata (class names, "
                         "normalisation): export it with `dvc repro`")
    try:
        metadata = json.loads(text)
    except ValueError as e:
        raise ModelError(f"{model_file}: its metadata is not JSON ({e})") from e
    check_metadata(metadata, model_file)

    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = metadata["class_names"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{model_file}: the model has {len(inputs)} inputs and {len(outputs)} "
                         "outputs; expected one of each")
    if list(inputs[0].shape[1:]) != [FIELD, FIELD] or inputs[0].type != "tensor(float)":
        raise ModelError(f"{model_file}: the model takes {inputs[0].type} of shape "
                         f"{inputs[0].shape}; expected float images of [N, {FIELD}, {FIELD}]")
    if outputs[0].shape[-1] != len(names):
        raise ModelError(f"{model_file}: the model gives {outputs[0].shape[-1]} outputs but "
                         f"its metadata names {len(names)} classes")
    return Classifier(session, inputs[0].name, names, metadata["dataset"], metadata["family"],
                      model_file)
