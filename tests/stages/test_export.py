"""The export: the same bytes for the same model, the metadata the app follows, the parity
check that guards it, and the refusal threshold calibrated on the model's own data."""

import json
import subprocess
import sys

import numpy as np
import pytest

from app.metadata import METADATA_KEY, uncertainty
from stages.common.runner import StageError
from stages.export import TOLERANCE, check_parity, onnx_probabilities, refusal
from tests.conftest import REPO
from tests.digits import mnist_form_digits


@pytest.mark.parametrize("onnx, why", [
    ([[0.9, 0.1], [0.2, 0.8 + 2e-5]], "probabilities by up to 2e-05"),
    ([[0.9, 0.1], [0.8, 0.2]], "1 of 2 validation predictions differ"),
])
def test_a_mismatch_fails_the_stage_in_one_line(onnx, why):
    keras = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(StageError, match="the ONNX export does not match Keras") as error:
        check_parity(keras, np.array(onnx))
    assert why in str(error.value) and "\n" not in str(error.value)
    within = check_parity(keras, keras + TOLERANCE / 2)
    assert within == {"onnx_mismatches": 0}  # the same for any model: no column in exp show


def test_a_digit_model_refuses_by_the_digit_checks_any_other_by_its_own_uncertainty():
    assert refusal("digit", [28, 28, 1], np.eye(3)) == {"kind": "digit"}
    rng = np.random.default_rng(0)
    sure = rng.dirichlet([0.05] * 5, size=2000)  # a model mostly sure of its pictures
    threshold = refusal("picture", [28, 28, 1], sure)["threshold"]
    assert refusal("digit", [32, 32, 1], sure) == refusal("picture", [8, 8, 3], sure) == {
        "kind": "uncertainty", "threshold": threshold}  # MNIST's numbers are for its form
    assert np.mean(uncertainty(sure) > threshold) == pytest.approx(0.005, abs=0.001)
    assert threshold < np.log(5)  # a model that cannot choose among its classes is refused
    assert uncertainty(np.array([[1.0, 0, 0], [1 / 3] * 3])) == pytest.approx([0, np.log(3)],
                                                                             abs=1e-9)


EXPORT = """
import json, sys
from stages.common.runner import import_tensorflow
import_tensorflow()
import keras
from stages.export import export_onnx
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
export_onnx(model, sys.argv[2], {"class_names": ["a"]})
"""


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    """A small CNN of colour pictures, as train saves it (untrained: export reads weights)."""
    from stages.common.keras_file import save_model_reproducibly
    from stages.common.models import build_model
    from stages.common.params import CNN
    from tests.conftest import repo_params

    cfg = CNN.model_validate({**repo_params()["train"]["cnn"], "filters": [8, 16],
                              "final_filters": [16]})
    model = build_model("cnn", cfg, 0, (24, 24, 3), 3, {"mean": 0.4, "std": 0.2}, "shapes")
    path = tmp_path_factory.mktemp("cnn") / "model.keras"
    save_model_reproducibly(model, path)
    return path


def exported_twice(model_file, tmp_path):
    """The model exported by two processes at once, as the stage exports it: both files."""
    exports = [subprocess.Popen([sys.executable, "-c", EXPORT, model_file, tmp_path / name],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name in ("a.onnx", "b.onnx")]
    for export in exports:
        _, err = export.communicate(timeout=120)
        assert export.returncode == 0, err.decode()
    return tmp_path / "a.onnx", tmp_path / "b.onnx"


def test_export_is_byte_reproducible_and_matches_keras(model_dir, tmp_path):
    """In a process of its own, as the stage runs it: the same model gives the same bytes.
    (Within one process Keras numbers its graphs, so a second export there differs.) The
    export takes levels 0-255 and normalises them inside, as the Keras model does."""
    import keras

    first, second = exported_twice(model_dir / "model.keras", tmp_path)
    assert first.read_bytes() == second.read_bytes()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(first))
    assert json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY]) == {
        "class_names": ["a"]}, "the metadata travels inside the model"
    assert session.get_inputs()[0].shape[1:] == [28, 28, 1]
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    pixels = mnist_form_digits(50, seed=3)[0][..., None].astype(np.float32)
    keras_probs = model.predict(pixels, verbose=0)
    onnx_probs = onnx_probabilities(first, pixels)
    check_parity(keras_probs, onnx_probs)
    assert (keras_probs.argmax(1) == mnist_form_digits(50, seed=3)[1]).mean() > 0.8


@pytest.mark.slow
def test_a_cnn_of_colour_pictures_exports_the_same_bytes_every_time(cnn_file, tmp_path):
    """tf2onnx merges equal constants in an order that changes from run to run: the export
    renumbers what it named, so the bytes do not."""
    import keras

    first, second = exported_twice(cnn_file, tmp_path)
    assert first.read_bytes() == second.read_bytes()
    pictures = np.random.default_rng(0).integers(0, 256, (20, 24, 24, 3)).astype(np.float32)
    model = keras.saving.load_model(cnn_file, safe_mode=True)
    check_parity(model.predict(pictures, verbose=0), onnx_probabilities(first, pictures))
