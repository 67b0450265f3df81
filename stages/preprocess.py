"""Preprocess stage: hold out a validation split and normalise to float32.

The validation split is drawn from the training images only, seeded and stratified so every
digit keeps its share. Normalisation constants come from the training split alone and are saved
with the data, so train (and, through the model's metadata, predict) applies the same transform.
The test images are only transformed here; nothing is learnt from them.
"""

import logging
from pathlib import Path

import numpy as np

from stages import params as params_module
from stages.fileio import load_npz, save_npz, write_json

log = logging.getLogger("preprocess")

INPUT = Path("data/mnist.npz")
OUTPUT_DIR = Path("data/processed")
NORMALIZATION_FILE = OUTPUT_DIR / "normalization.json"


def stratified_split(labels, val_fraction, seed):
    """Return sorted (train_idx, val_idx): `val_fraction` of each class goes to validation."""
    rng = np.random.default_rng(seed)
    val = []
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        n_val = int(round(len(members) * val_fraction))
        val.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def fit_normalization(x_train, method):
    """Constants of the transform (pixels / 255 - mean) / std, fitted on training images only."""
    if method == "scale":
        return {"method": "scale", "mean": 0.0, "std": 1.0}
    scaled = x_train.astype(np.float64) / 255.0
    std = float(scaled.std()) or 1.0  # images all of one grey: centre them, nothing to scale
    return {"method": "standardize", "mean": float(scaled.mean()), "std": std}


def normalize(x, constants):
    """Apply the fitted transform; returns float32 whatever the input's dtype.

    Computed in place on one new array, which spares three temporary copies of it (the
    training split alone is 170 MB as float32).
    """
    out = x.astype(np.float32)
    out /= np.float32(255.0)
    out -= np.float32(constants["mean"])
    out /= np.float32(constants["std"])
    return out


def blank_pixel(constants):
    """What a blank (0) pixel becomes under the transform: the value of the background."""
    return float(normalize(np.zeros(1, np.uint8), constants)[0])


def main():
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = params_module.load("preprocess")
    mnist = load_npz(INPUT)

    train_idx, val_idx = stratified_split(mnist["y_train"], cfg["val_fraction"], cfg["seed"])
    x_train = mnist["x_train"][train_idx]
    constants = fit_normalization(x_train, cfg["normalization"])

    splits = {
        "train": (x_train, mnist["y_train"][train_idx]),
        "val": (mnist["x_train"][val_idx], mnist["y_train"][val_idx]),
        "test": (mnist["x_test"], mnist["y_test"]),
    }
    for name, (x, y) in splits.items():
        save_npz(OUTPUT_DIR / f"{name}.npz", x=normalize(x, constants), y=y)
        log.info("%s: %d images", name, len(y))
    write_json(NORMALIZATION_FILE, constants)
    log.info("normalization: %s", constants)


if __name__ == "__main__":
    main()
