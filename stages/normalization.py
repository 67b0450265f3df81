"""The pixel transform of preprocess, as pure functions: preprocess applies it, train fills
augmented images with what a blank pixel became, and export builds it into the ONNX graph.

Pixels 0-255 become (pixels / 255 - mean) / std, with mean and std fitted on the training split
alone ('standardize') or fixed at 0 and 1 ('scale').
"""

import numpy as np


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
