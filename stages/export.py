"""Export stage: the trained Keras model as model/model.onnx, which the app runs with ONNX Runtime
(no TensorFlow). The graph takes levels 0-255 and normalises them itself; the file carries
app/metadata.py's ModelInfo, with the refusal calibrated here. It is kept only if ONNX and Keras
agree on the validation split within TOLERANCE (the test split is evaluate's alone), and the same
model gives the same bytes (canonical). docs/pipeline.md says more.
"""

import json
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from app.metadata import METADATA_KEY, ModelInfo, uncertainty
from stages.common import layout, params
from stages.common.files import atomic, load_json, load_npz, write_json
from stages.common.runner import StageError, import_tensorflow, run

log = logging.getLogger("export")
logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO lines narrate the conversion

TOLERANCE = 1e-5
# A model of other pictures than digits refuses what it is less sure of than of all but this
# share of its validation pictures.
REFUSED_SHARE = 0.005


def refusal(prepare: str, input_shape: list, val_probs: np.ndarray) -> dict:
    """When the app refuses a picture: the digit checks for a digit model of MNIST's form
    (app/pictures/refusal.py, calibrated on MNIST's validation digits), else above this model's
    own uncertainty threshold."""
    if prepare == "digit" and list(input_shape) == [28, 28, 1]:
        return {"kind": "digit"}
    threshold = float(np.quantile(uncertainty(val_probs), 1 - REFUSED_SHARE))
    return {"kind": "uncertainty", "threshold": round(threshold, 6)}


def export_onnx(model: object, target: Path, metadata: dict) -> None:
    """Write `model` as ONNX to `target`, carrying `metadata` (a JSON object)."""
    import onnx

    model(np.zeros((1, *model.input_shape[1:]), np.float32))  # Keras exports called models only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx probes np.object
        model.export(str(target), format="onnx", verbose=False)
    proto = canonical(onnx.load(str(target)))
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata, sort_keys=True))
    onnx.save(proto, str(target))


def canonical(proto: object) -> object:
    """The graph with the names tf2onnx numbers from a counter (`Const__44`) renumbered in the
    order the nodes use them, and its constants sorted by name. tf2onnx merges equal constants
    keeping whichever of them it meets first, in an order that changes from run to run: the
    same model would otherwise give other bytes (names and order differ, never the arithmetic)."""
    graph, numbers = proto.graph, {}

    def renamed(name: str) -> str:
        if not re.search(r"__\d+(:\d+)?$", name):  # Const__44, Transpose__38:0
            return name
        return numbers.setdefault(name, f"tf2onnx_{len(numbers)}")

    for node in graph.node:
        node.name = renamed(node.name)
        node.input[:] = [renamed(name) for name in node.input]
        node.output[:] = [renamed(name) for name in node.output]
    for tensor in graph.initializer:
        tensor.name = renamed(tensor.name)
    constants = sorted(graph.initializer, key=lambda tensor: tensor.name)
    del graph.initializer[:]
    graph.initializer.extend(constants)
    return proto


def onnx_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # ONNX Runtime would record every session
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def check_parity(keras_probs: np.ndarray, onnx_probs: np.ndarray) -> dict:
    """The predictions that differ, and the largest difference of a probability; StageError
    when the export does not give Keras' classes within TOLERANCE."""
    mismatches = int(np.sum(keras_probs.argmax(1) != onnx_probs.argmax(1)))
    largest = float(np.abs(keras_probs - onnx_probs).max())
    log.info("ONNX vs Keras on %d validation pictures: %d predictions differ, probabilities by "
             "up to %.2g", len(keras_probs), mismatches, largest)
    if mismatches or largest > TOLERANCE:
        raise StageError(f"the ONNX export does not match Keras: {mismatches} of "
                         f"{len(keras_probs)} validation predictions differ, and probabilities "
                         f"by up to {largest:.2g} (allowed: {TOLERANCE:g}); {layout.ONNX_MODEL} "
                         "was not written")
    return {"onnx_mismatches": mismatches}


def main() -> None:
    params.load()  # a mistake anywhere in params.yaml stops every stage
    val = load_npz(layout.SPLITS["val"], "preprocess", ("x",))
    metadata = load_json(layout.MODEL_INFO, "train")

    import_tensorflow()
    from stages.common.keras_file import load_model

    model = load_model(layout.KERAS_MODEL, metadata["input_shape"], len(metadata["class_names"]))
    x_val = val["x"].astype(np.float32)
    keras_probs = model.predict(x_val, batch_size=layout.INFERENCE_BATCH, verbose=0)
    metadata["refusal"] = refusal(metadata["prepare"], metadata["input_shape"], keras_probs)
    ModelInfo.model_validate(metadata)  # what the app will check it carries
    log.info("refusal: %s", metadata["refusal"])

    layout.ONNX_MODEL.unlink(missing_ok=True)  # a failed check must not leave an older export
    with atomic(layout.ONNX_MODEL) as tmp:
        export_onnx(model, tmp, metadata)
        write_json(layout.EXPORT_METRICS, check_parity(keras_probs, onnx_probabilities(
            tmp, x_val)))


if __name__ == "__main__":
    run(main)
