"""Preprocess stage: hold out a validation split and normalise to float32.

The validation split is drawn from the training images only, seeded and stratified so every
class keeps its share. Normalisation constants come from the training split alone and are saved
with the data, so train (and, through the model's metadata, predict) applies the same transform.
The test images are only transformed here; nothing is learnt from them.

The three splits are written into a temporary folder that replaces data/processed only once all
of it is written: an interrupted run leaves the old outputs or none, never a mix of the two.
"""

import logging

import numpy as np

from stages import layout, params
from stages.fileio import (
    load_npz,
    read_input,
    remove_stale_temporaries,
    replace_dir,
    save_npz,
    temporary_dir,
    write_json,
)
from stages.normalization import fit_normalization, normalize
from stages.runner import StageError, run

log = logging.getLogger("preprocess")


def load_dataset(path):
    """The arrays download wrote: the Keras layout plus the class names."""
    data = load_npz(path, layout.MAX_ARRAY_BYTES)
    missing = {*layout.IDX_FILES, "class_names"} - set(data)
    if missing:
        raise ValueError(f"lacks {', '.join(sorted(missing))}")
    return data


def stratified_split(labels, val_fraction, seed):
    """Return sorted (train_idx, val_idx): `val_fraction` of each class goes to validation."""
    rng = np.random.default_rng(seed)
    val = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_val = int(round(len(members) * val_fraction))
        val.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def check_split(labels, train_idx, val_idx, val_fraction):
    """Refuse a split that would leave training or validation empty, or a class untrained."""
    if len(val_idx) == 0:
        raise StageError(f"preprocess.val_fraction = {val_fraction} holds out no validation "
                         f"image of the {len(labels)} training images; raise it")
    missing = np.setdiff1d(np.unique(labels), labels[train_idx])
    if len(missing):
        raise StageError(f"preprocess.val_fraction = {val_fraction} leaves no training image of "
                         f"class {missing[0]}; lower it")


def main():
    cfg = params.load()
    data = read_input(layout.RAW, "download", load_dataset)

    fraction = cfg.preprocess.val_fraction
    train_idx, val_idx = stratified_split(data["y_train"], fraction, cfg.preprocess.seed)
    check_split(data["y_train"], train_idx, val_idx, fraction)
    x_train = data["x_train"][train_idx]
    constants = fit_normalization(x_train, cfg.preprocess.normalization)

    splits = {
        "train": (x_train, data["y_train"][train_idx]),
        "val": (data["x_train"][val_idx], data["y_train"][val_idx]),
        "test": (data["x_test"], data["y_test"]),
    }
    remove_stale_temporaries(layout.PROCESSED.parent)
    with temporary_dir(layout.PROCESSED) as tmp:
        for name, (x, y) in splits.items():
            save_npz(tmp / layout.SPLITS[name].name, x=normalize(x, constants), y=y)
            log.info("%s: %d images", name, len(y))
        write_json(tmp / layout.NORMALIZATION.name, constants)
        write_json(tmp / layout.DATASET_INFO.name, {
            "name": cfg.data.dataset, "class_names": [str(c) for c in data["class_names"]]})
        replace_dir(tmp, layout.PROCESSED)
    log.info("normalization: %s", constants)


if __name__ == "__main__":
    run(main)
