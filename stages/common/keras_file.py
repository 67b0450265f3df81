"""The trained model as a .keras file: saved so that the same weights always give the same
bytes, and loaded with one line for what cannot be.

A `.keras` file is a zip holding config.json, metadata.json and the weights. Keras stamps each
zip entry with the current time and writes `date_saved` into metadata.json, and config.json
numbers shared objects (the layers' common dtype policy) by their Python `id()`, which changes
from one process to the next: saving one model twice would give two md5s, and DVC would never
see two trainings as equal. We save normally, then rewrite the zip with the times fixed,
`date_saved` dropped and the shared-object ids renumbered 1, 2, ...; Keras loads it as usual.
"""

import json
import tempfile
import zipfile
from pathlib import Path

import keras

from stages.common.files import ZIP_EPOCH, InputError, atomic, read_input


def save_model_reproducibly(model: keras.Model, target: Path) -> None:
    """model.save, then the zip rewritten without timestamps, atomically into `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved.keras"  # Keras saves to a name ending in .keras only
        model.save(saved)
        with atomic(target) as out, zipfile.ZipFile(saved) as zin, \
                zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
            for name in sorted(zin.namelist()):
                data = zin.read(name)
                if name == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata, sort_keys=True).encode()
                elif name == "config.json":
                    data = renumbered(data)
                info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
                info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
                zout.writestr(info, data)


def renumbered(config: bytes) -> bytes:
    """config.json with each `shared_object_id` (a Python id()) replaced by 1, 2, ... in the
    order their objects end (json's object_hook): the same config, the same numbers."""
    numbers = {}

    def renumber(node: dict) -> dict:
        if "shared_object_id" in node:
            node["shared_object_id"] = numbers.setdefault(node["shared_object_id"],
                                                          len(numbers) + 1)
        return node
    return json.dumps(json.loads(config, object_hook=renumber)).encode()


def load_model(path: Path, input_shape: list, classes: int) -> keras.Model:
    """keras.saving.load_model with safe_mode on; a file that cannot be loaded, or a model that
    does not take `input_shape` pictures and give `classes` probabilities, is one InputError."""
    def load(path: Path) -> keras.Model:
        try:
            return keras.saving.load_model(path, safe_mode=True)
        except (TypeError, AttributeError, OSError) as error:  # a config it cannot rebuild
            raise ValueError(f"{type(error).__name__}: {error}") from error

    model = read_input(path, "train", load)
    if tuple(model.input_shape[1:]) != tuple(input_shape) or model.output_shape[-1] != classes:
        raise InputError(f"{path}: the model takes {model.input_shape[1:]} and gives "
                         f"{model.output_shape[-1]} outputs; the data are {tuple(input_shape)} "
                         f"pictures of {classes} classes. Run `dvc repro` to train it on them")
    return model
