"""Save a Keras model so the same weights always give the same bytes.

A `.keras` file is a zip holding config.json, metadata.json and the weights. Keras stamps each
zip entry with the current time and writes `date_saved` into metadata.json, so saving one model
twice gives two md5s and DVC would never see two trainings as equal. config.json also numbers
shared objects (the layers' common dtype policy) by their Python `id()`, which changes from one
process to the next. We save normally, then rewrite the zip with the times fixed, `date_saved`
dropped and the shared-object ids renumbered in order; Keras loads the result as usual.
"""

import json
import tempfile
import zipfile
import zlib
from pathlib import Path

from stages.fileio import ZIP_EPOCH, InputError, atomic_path, read_input
from stages.runner import import_tensorflow


def save_model_reproducibly(model, target):
    """model.save, then rewrite the zip without timestamps, atomically into `target`."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / Path(target).name  # Keras saves to a name ending in .keras only
        model.save(raw)
        with atomic_path(target) as out:
            normalize_zip(raw, out)


def normalize_zip(source, target):
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in sorted(zin.namelist()):
            data = zin.read(name)
            if name == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif name == "config.json":
                data = json.dumps(renumber_shared_objects(json.loads(data))).encode()
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zout.writestr(info, data)


def renumber_shared_objects(config):
    """Replace each `shared_object_id` (a Python id()) by 1, 2, ... in order of appearance."""
    numbers = {}

    def walk(node):
        if isinstance(node, dict):
            if "shared_object_id" in node:
                old = node["shared_object_id"]
                node["shared_object_id"] = numbers.setdefault(old, len(numbers) + 1)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return config


# What loading a damaged or foreign .keras file raises: Keras reports a zip it cannot read as
# ValueError (even "file not found" for one that exists), a config it cannot rebuild as
# TypeError, KeyError or AttributeError, a Lambda or unknown function under safe_mode as
# ValueError; h5py and zipfile add their own.
LOAD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OSError, EOFError,
               zipfile.BadZipFile)


# What a .keras zip must hold for Keras to load it.
KERAS_ENTRIES = ("config.json", "model.weights.h5")


def cannot_load(path, error):
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return InputError(f"{path}: cannot load the model ({type(error).__name__}: "
                      f"{first_line[:200]}); run `dvc repro` (the train stage writes it)")


def check_keras_file(path):
    """Without TensorFlow: `path` is a zip holding a readable config.json and the weights, or
    it is the InputError load_model_checked would give, seconds sooner (before the import)."""
    def check(path):
        try:
            with zipfile.ZipFile(path) as archive:
                missing = [name for name in KERAS_ENTRIES if name not in archive.namelist()]
                if missing:
                    raise ValueError(f"not a Keras model: no {' or '.join(missing)} in the zip")
                json.loads(archive.read("config.json"))
        except (*LOAD_ERRORS, zlib.error) as e:
            raise cannot_load(path, e) from e

    read_input(path, "train", check)


def load_model_checked(path, input_shape, num_classes):
    """keras.saving.load_model with safe_mode on; a file that cannot be loaded, or a model
    that does not take `input_shape` images and give `num_classes` probabilities, is one
    InputError naming the file and the cause. A file that is no Keras zip is refused before
    TensorFlow is imported, seconds sooner (check_keras_file)."""
    check_keras_file(path)
    import_tensorflow()
    import keras

    def load(path):
        try:
            return keras.saving.load_model(path, safe_mode=True)
        except LOAD_ERRORS as e:
            raise cannot_load(path, e) from e

    model = read_input(path, "train", load)
    got_in, got_out = tuple(model.input_shape[1:]), model.output_shape[-1]
    if got_in != tuple(input_shape) or got_out != num_classes:
        raise InputError(f"{path}: the model takes {got_in} and gives {got_out} outputs; the data "
                         f"are {tuple(input_shape)} images of {num_classes} classes. Run "
                         "`dvc repro` to train it on them")
    return model
