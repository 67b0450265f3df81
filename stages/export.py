"""Export stage: the trained Keras model as ONNX, checked against Keras on the whole test set.

The app (predict, the API) runs model/model.onnx with ONNX Runtime, which starts in a fraction
of a second where TensorFlow takes seconds. The exported graph takes the pictures as the app
makes them, 28x28 grey levels 0-255 (white on black), and applies preprocess's normalisation
itself: the app needs no constants and no code from the pipeline.

Before the export is kept, both score every test image: Keras on the normalised test set
preprocess wrote, ONNX on the same images as raw pixels. The predicted classes must be the
same and no probability may differ by more than TOLERANCE. The numbers go to
metrics/export.json; a mismatch fails the stage and keeps no model.onnx. The export (Keras'
own `model.export(format="onnx")`, which uses tf2onnx) holds no timestamp: the same model gives
the same bytes.

The ONNX file carries train's metadata (class names, dataset, family, input shape) in its own
metadata, under layout.ONNX_METADATA_KEY, so an export can never be paired with another training's.
"""

import json
import logging
import math
import os
import warnings

import numpy as np

from stages import layout, params
from stages.fileio import read_json, read_split, remove_stale_temporaries, temporary_dir, write_json
from stages.keras_file import load_model_checked
from stages.runner import StageError, run

log = logging.getLogger("export")
logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO lines narrate the conversion

TOLERANCE = 1e-5


# What the app checks before it trusts an export: the graph takes grey levels 0-255.
PIXEL_RANGE = [0, 255]


def with_normalization(model, constants):
    """`model` behind a layer that applies preprocess's transform, (x / 255 - mean) / std, as
    one multiply-add: the whole model then takes grey levels 0-255."""
    import keras

    std = constants["std"]
    rescale = keras.layers.Rescaling(1 / (255 * std), offset=-constants["mean"] / std)
    return keras.Sequential([keras.Input(model.input_shape[1:]), rescale, model],
                            name=model.name)


def export_onnx(model, normalization, target, metadata):
    """Write `model`, with `normalization` inside the graph, as ONNX to `target`, carrying
    `metadata` (and PIXEL_RANGE, which tells the app the graph normalises)."""
    whole = with_normalization(model, normalization)
    whole(np.zeros((1, *model.input_shape[1:]), np.float32))  # Keras exports called models only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx probes np.object
        whole.export(str(target), format="onnx", verbose=False)
    embed_metadata(target, {**metadata, "pixel_range": PIXEL_RANGE})


def embed_metadata(path, metadata):
    """Put `metadata` (a JSON object) into the ONNX file at `path`, replacing any before it."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != layout.ONNX_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=layout.ONNX_METADATA_KEY,
                             value=json.dumps(metadata, sort_keys=True))
    onnx.save(proto, str(path))


def onnx_probabilities(path, x):
    # ONNX Runtime's telemetry records each session (with a device id) unless told not to.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def raw_pixels(normalized, constants):
    """The grey levels 0-255 that preprocess's transform turned into `normalized`: whole
    numbers, which rounding recovers exactly (the float error is a millionth of a level)."""
    levels = (normalized * np.float32(constants["std"]) + np.float32(constants["mean"])) * 255
    return np.round(levels).astype(np.float32)


def parity(keras_probs, onnx_probs):
    """How far apart the two models' answers are: the predictions that differ, and the largest
    difference of a probability."""
    return {"mismatches": int(np.sum(keras_probs.argmax(1) != onnx_probs.argmax(1))),
            "max_abs_diff": float(np.abs(keras_probs - onnx_probs).max())}


def parity_metrics(result):
    """What metrics/export.json records, in a form `dvc metrics` shows as it is: the decimals
    to which every probability agrees (6 for a difference of 6.6e-7, which DVC's rounding to 5
    decimals would show as 0.0), not the difference itself, which moves on every training."""
    decimals = 15 if result["max_abs_diff"] == 0 else math.floor(-math.log10(
        result["max_abs_diff"]))
    return {"onnx_mismatches": result["mismatches"], "onnx_matching_decimals": decimals}


def check_parity(result, images):
    """Raise StageError unless the export gives Keras' classes within TOLERANCE."""
    if result["mismatches"] or result["max_abs_diff"] > TOLERANCE:
        raise StageError(f"the ONNX export does not match Keras: {result['mismatches']} of "
                         f"{images} test predictions differ, and probabilities by up to "
                         f"{result['max_abs_diff']:.2g} (allowed: {TOLERANCE:g}); "
                         f"{layout.ONNX_MODEL} was not written")


def main():
    params.load()  # a mistake anywhere in params.yaml stops every stage
    remove_stale_temporaries(layout.METRICS)
    test = read_split(layout.SPLITS["test"])
    metadata = read_json(layout.MODEL_INFO, "train", ["class_names", "normalization"])

    # Loaded (TensorFlow imported) after the inputs: a missing or damaged one is reported at once.
    model = load_model_checked(layout.KERAS_MODEL, test["x"].shape[1:],
                               len(metadata["class_names"]))
    keras_probs = model.predict(test["x"], batch_size=layout.INFERENCE_BATCH, verbose=0)
    pixels = raw_pixels(test["x"], metadata["normalization"])

    # A failed check must not leave an older export behind.
    layout.ONNX_MODEL.unlink(missing_ok=True)
    remove_stale_temporaries(layout.MODEL)
    with temporary_dir(layout.ONNX_MODEL) as tmp:
        onnx_file = tmp / layout.ONNX_MODEL.name
        export_onnx(model, metadata.pop("normalization"), onnx_file, metadata)
        result = parity(keras_probs, onnx_probabilities(onnx_file, pixels))
        log.info("ONNX vs Keras on %d test images: max |difference| %.2g, %d predictions differ",
                 len(pixels), result["max_abs_diff"], result["mismatches"])
        write_json(layout.EXPORT_METRICS, parity_metrics(result))
        check_parity(result, len(pixels))
        os.replace(onnx_file, layout.ONNX_MODEL)


if __name__ == "__main__":
    run(main)
