"""app/ uses other packages' public APIs only: no `_name` of uvicorn, h11, ONNX Runtime, Pillow or
the standard library, imported or reached as an attribute. The one exception, ONNX Runtime's
exception classes (they have no public name), lives in one function, and is pinned here to the
installed version's behaviour: if a release moves them, this fails.
"""

import ast

import numpy as np
import onnxruntime
import pytest

from app.classifier import ort_errors
from tests.conftest import REPO

# Modules of other packages that are private though their names do not say so, and the one
# place each may be named.
PRIVATE_MODULES = {"onnxruntime.capi.onnxruntime_pybind11_state": ("app/classifier.py",
                                                                    "ort_errors")}


def private_names(path):
    """(line, what) of each private name of another package that `path` uses."""
    tree = ast.parse(path.read_text(), str(path))
    function_of = {id(inner): outer.name for outer in ast.walk(tree)
                   if isinstance(outer, ast.FunctionDef) for inner in ast.walk(outer)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if any(part.startswith("_") and not part.startswith("__") for part in name.split(".")):
                yield node.lineno, name
            place = (str(path.relative_to(REPO)), function_of.get(id(node)))
            if name in PRIVATE_MODULES and PRIVATE_MODULES[name] != place:
                yield node.lineno, name


def test_the_app_uses_no_private_api_of_another_package():
    found = [f"{path.relative_to(REPO)}:{line}: {what}"
             for path in sorted((REPO / "app").rglob("*.py"))
             for line, what in private_names(path)]

    assert found == []


def test_the_one_workaround_catches_what_onnx_runtime_raises(tmp_path, model_dir):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes((model_dir / "model.onnx").read_bytes()[:2000])
    with pytest.raises(ort_errors()):
        onnxruntime.InferenceSession(str(damaged))

    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"))
    with pytest.raises(ort_errors()):
        session.run(None, {session.get_inputs()[0].name: np.zeros((1, 28, 29), np.float32)})
