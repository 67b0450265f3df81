"""The export: the same bytes for the same model, and the parity check that guards it."""

import subprocess
import sys

import numpy as np
import pytest

from stages.export import METADATA_KEY, TOLERANCE, check_parity, onnx_probabilities, parity
from stages.runner import StageError
from tests.conftest import REPO
from tests.digits import mnist_form_digits


def test_parity_counts_differences_in_classes_and_probabilities():
    keras = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    onnx = np.array([[0.9, 0.1], [0.2, 0.8 + 3e-6], [0.4, 0.6]])
    result = parity(keras, onnx)
    assert result == {"max_abs_diff": pytest.approx(0.2), "mismatched_predictions": 1,
                      "test_images": 3, "tolerance": TOLERANCE}


@pytest.mark.parametrize("mismatched, diff", [(0, 2e-5), (1, 0.0)])
def test_a_mismatch_fails_the_stage_in_one_line(mismatched, diff):
    result = {"max_abs_diff": diff, "mismatched_predictions": mismatched, "test_images": 10,
              "tolerance": TOLERANCE}
    with pytest.raises(StageError, match="the ONNX export does not match Keras") as error:
        check_parity(result)
    assert "\n" not in str(error.value)
    check_parity({**result, "max_abs_diff": TOLERANCE, "mismatched_predictions": 0})


EXPORT = """
import sys
import keras, numpy as np
from stages.export import export_onnx
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
export_onnx(model, sys.argv[2], np.zeros((1, 28, 28), np.float32), {"class_names": ["a"]})
"""


def test_export_is_byte_reproducible_and_matches_keras(model_dir, tmp_path):
    """As the stage runs it, in a process of its own: the same model gives the same bytes.
    (Within one process Keras numbers its graphs, so a second export there differs.)"""
    import keras

    for name in ("a.onnx", "b.onnx"):
        subprocess.run([sys.executable, "-c", EXPORT, model_dir / "model.keras", tmp_path / name],
                       cwd=REPO, check=True, capture_output=True, timeout=120)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "a.onnx"))
    assert session.get_modelmeta().custom_metadata_map == {
        METADATA_KEY: '{"class_names": ["a"]}'}, "the metadata travels inside the model"
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    x = mnist_form_digits(50, seed=3)[0].astype(np.float32) / 255
    result = parity(model.predict(x, verbose=0), onnx_probabilities(tmp_path / "a.onnx", x))
    assert result["mismatched_predictions"] == 0 and result["max_abs_diff"] <= TOLERANCE
