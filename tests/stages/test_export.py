"""The export: the same bytes for the same model, and the parity check that guards it."""

import json
import subprocess
import sys

import numpy as np
import pytest

from stages.export import (
    TOLERANCE,
    check_parity,
    onnx_probabilities,
    parity,
    parity_metrics,
    raw_pixels,
)
from stages.layout import ONNX_METADATA_KEY
from stages.normalization import normalize
from stages.runner import StageError
from tests.conftest import REPO
from tests.digits import mnist_form_digits


def test_parity_counts_differences_in_classes_and_probabilities():
    keras = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    onnx = np.array([[0.9, 0.1], [0.2, 0.8 + 3e-6], [0.4, 0.6]])
    assert parity(keras, onnx) == {"max_abs_diff": pytest.approx(0.2), "mismatches": 1}


@pytest.mark.parametrize("diff, decimals", [(6.6e-7, 6), (1.1e-6, 5), (9.9e-6, 5), (0.0, 15)])
def test_the_recorded_parity_survives_dvcs_rounding(diff, decimals):
    """`dvc metrics` rounds to 5 decimals: 6.6e-7 would show as 0.0, and change on every run.
    The decimals to which every probability agrees show as they are, and rarely move."""
    assert parity_metrics({"max_abs_diff": diff, "mismatches": 0}) == {
        "onnx_mismatches": 0, "onnx_matching_decimals": decimals}


@pytest.mark.parametrize("mismatches, diff", [(0, 2e-5), (1, 0.0)])
def test_a_mismatch_fails_the_stage_in_one_line(mismatches, diff):
    result = {"max_abs_diff": diff, "mismatches": mismatches}
    with pytest.raises(StageError, match="the ONNX export does not match Keras") as error:
        check_parity(result, 10)
    assert "\n" not in str(error.value)
    check_parity({"max_abs_diff": TOLERANCE, "mismatches": 0}, 10)


# The process imports TensorFlow and ends as the stage does (stages/runner.py).
EXPORT = """
import json, sys
from stages.runner import end, import_tensorflow
import_tensorflow()
import keras
from stages.export import export_onnx
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
export_onnx(model, json.loads(sys.argv[3]), sys.argv[2], {"class_names": ["a"]})
end(0)
"""


def test_export_is_byte_reproducible_and_matches_keras(model_dir, tmp_path):
    """As the stage runs it, in a process of its own: the same model gives the same bytes.
    (Within one process Keras numbers its graphs, so a second export there differs.) The
    export takes raw grey levels and normalises them as preprocess did before Keras saw them."""
    import keras

    constants = json.loads((model_dir / "metadata.json").read_text())["normalization"]
    assert constants["method"] == "standardize" and constants["mean"] > 0
    exports = [subprocess.Popen([sys.executable, "-c", EXPORT, model_dir / "model.keras",
                                 tmp_path / name, json.dumps(constants)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name in ("a.onnx", "b.onnx")]  # two processes at once: nothing shared
    for export in exports:
        _, err = export.communicate(timeout=120)
        assert export.returncode == 0, err.decode()
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "a.onnx"))
    assert json.loads(session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY]) == {
        "class_names": ["a"], "pixel_range": [0, 255]}, "the metadata travels inside the model"
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    pixels = mnist_form_digits(50, seed=3)[0]
    keras_probs = model.predict(normalize(pixels, constants), verbose=0)
    onnx_probs = onnx_probabilities(tmp_path / "a.onnx", pixels.astype(np.float32))
    result = parity(keras_probs, onnx_probs)
    assert result["mismatches"] == 0 and result["max_abs_diff"] <= TOLERANCE


def test_raw_pixels_are_recovered_exactly_from_the_normalised_set():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for constants in ({"mean": 0.0, "std": 1.0}, {"mean": 0.1307, "std": 0.3081}):
        assert np.array_equal(raw_pixels(normalize(pixels, constants), constants), pixels)
