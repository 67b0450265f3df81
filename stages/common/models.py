"""The two model families train builds, each from its own section of params.yaml: mlp (Flatten,
Dense layers, softmax) and cnn (convolutions with 2x2 max-pooling, in the style of keras-io's
`mnist_convnet`). Both take levels 0-255 (N, H, W, C) of any size and channels and normalise them
first with the constants preprocess fitted: the exported model carries its normalisation.
"""

import re

import keras

from stages.common.params import CNN, MLP


def normalizer(constants: dict) -> keras.layers.Layer:
    """(x / 255 - mean) / std, as one multiply-add."""
    std = constants["std"]
    return keras.layers.Rescaling(1 / (255 * std), offset=-constants["mean"] / std)


def build_mlp(cfg: MLP, seed: int, input_shape: tuple) -> list:
    """Flatten -> [Dense(units, activation) -> Dropout] per hidden layer -> Dense softmax."""
    layers = [keras.layers.Flatten()]
    for i, units in enumerate(cfg.hidden_units):
        layers.append(keras.layers.Dense(units, activation=cfg.activation))
        if cfg.dropout > 0:
            # A seed per layer: two layers of one width would otherwise drop the same units.
            layers.append(keras.layers.Dropout(cfg.dropout, seed=seed + i))
    return layers


def build_cnn(cfg: CNN, seed: int, input_shape: tuple) -> list:
    """[Conv (ReLU, `padding`) -> MaxPool 2x2] per entry of `filters` -> [Conv (same, ReLU)] per
    entry of `final_filters` -> Flatten -> [Dense(dense_units, ReLU)] -> Dropout.

    Valid padding and pooling after each of the first convolutions keep the arithmetic small.
    On small pictures, a convolution that valid padding would shrink below 2 pixels pads
    instead, and a map of 1 pixel is not pooled: every size trains."""
    layers, side, k = [], min(input_shape[:2]), cfg.kernel_size
    for filters in cfg.filters:
        padding = cfg.padding if side - (k - 1) >= 2 else "same"
        side -= (k - 1) if padding == "valid" else 0
        layers.append(keras.layers.Conv2D(filters, k, padding=padding, activation="relu"))
        if side >= 2:
            layers.append(keras.layers.MaxPooling2D())
            side //= 2
    for filters in cfg.final_filters:
        layers.append(keras.layers.Conv2D(filters, k, padding="same", activation="relu"))
    layers.append(keras.layers.Flatten())
    if cfg.dense_units:
        layers.append(keras.layers.Dense(cfg.dense_units, activation="relu"))
    if cfg.dropout > 0:
        layers.append(keras.layers.Dropout(cfg.dropout, seed=seed))
    return layers


def build_model(family: str, cfg: MLP | CNN, seed: int, input_shape: tuple, classes: int,
                normalization: dict, dataset: str) -> keras.Sequential:
    """The model of `family` ('mlp' or 'cnn') from its params section, normalising its input,
    named after its family and the data it learns (`fashion_mnist_cnn`)."""
    body = {"mlp": build_mlp, "cnn": build_cnn}[family](cfg, seed, tuple(input_shape))
    name = re.sub(r"[^a-z0-9]+", "_", f"{dataset}_{family}".lower())
    return keras.Sequential([keras.Input(shape=tuple(input_shape)), normalizer(normalization),
                             *body, keras.layers.Dense(classes, activation="softmax")], name=name)
