"""The project's models and recipe in plain PyTorch: the twin that bench/trainers.py races.

Each model is stages/common/models.py's, layer for layer: it takes pictures as the pipeline
holds them, uint8 (N, H, W, C) cast to floats, and normalises them itself first, with the
constants preprocess wrote in dataset.json (Keras' Rescaling: one multiply-add); then the same
layers, shapes and parameter count, and Keras' initialisation (Glorot-uniform weights, zero
biases), so that accuracies compare the trainers rather than two initialisations. The output
layer gives logits (CrossEntropyLoss applies the softmax): the same arithmetic as Keras'
softmax + cross-entropy. Augmentation works on the levels 0-255 before the model, black coming
in, as stages/train.py's does.

    python -m bench.torch_twin DATA_DIR [--family cnn]   # the twin checked against the pipeline

The check prints, as JSON: the largest difference between the two augmentations under the same
random moves, the two parameter counts, and the largest difference between the two models'
probabilities once the Keras model's initial weights are copied into the twin.
"""

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "elu": nn.ELU, "selu": nn.SELU, "swish": nn.SiLU}


class Rescaling(nn.Module):
    """(x / 255 - mean) / std as one multiply-add: stages.common.models.normalizer."""

    def __init__(self, constants):
        super().__init__()
        self.scale = 1 / (255 * constants["std"])
        self.offset = -constants["mean"] / constants["std"]

    def forward(self, x):
        return x * self.scale + self.offset


class ChannelsFirst(nn.Module):
    """(N, H, W, C) -> (N, C, H, W): torch's convolutions take channels first."""

    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def build_mlp(cfg, input_shape, classes):
    layers, width = [nn.Flatten()], math.prod(input_shape)
    for units in cfg["hidden_units"]:
        layers += [nn.Linear(width, units), ACTIVATIONS[cfg["activation"]]()]
        if cfg["dropout"] > 0:
            layers.append(nn.Dropout(cfg["dropout"]))
        width = units
    return [*layers, nn.Linear(width, classes)]


def build_cnn(cfg, input_shape, classes):
    """As stages/common/models.py's build_cnn: Conv (`padding`) + ReLU + MaxPool per `filters`,
    a convolution that valid padding would shrink below 2 pixels padding instead and a map of 1
    pixel not pooled; Conv (same) + ReLU per `final_filters`; flatten, optional Dense + ReLU,
    dropout, linear."""
    height, width, channels = input_shape
    side, k = min(height, width), cfg["kernel_size"]
    layers = [ChannelsFirst()]
    for filters in cfg["filters"]:
        padding = cfg["padding"] if side - (k - 1) >= 2 else "same"
        trim = k - 1 if padding == "valid" else 0
        side, height, width = side - trim, height - trim, width - trim
        layers += [nn.Conv2d(channels, filters, k, padding=padding), nn.ReLU()]
        if side >= 2:
            layers.append(nn.MaxPool2d(2))
            side, height, width = side // 2, height // 2, width // 2
        channels = filters
    for filters in cfg["final_filters"]:
        layers += [nn.Conv2d(channels, filters, k, padding="same"), nn.ReLU()]
        channels = filters
    layers.append(nn.Flatten())
    units = channels * height * width
    if cfg["dense_units"]:
        layers += [nn.Linear(units, cfg["dense_units"]), nn.ReLU()]
        units = cfg["dense_units"]
    if cfg["dropout"] > 0:
        layers.append(nn.Dropout(cfg["dropout"]))
    return [*layers, nn.Linear(units, classes)]


def build_model(family, cfg, input_shape, classes, normalization):
    """The twin of build_model(family, ...) for pictures of `input_shape` (H, W, C)."""
    body = {"mlp": build_mlp, "cnn": build_cnn}[family](cfg, tuple(input_shape), classes)
    model = nn.Sequential(Rescaling(normalization), *body)
    for layer in model.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):  # Keras' defaults
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return model


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def build_optimizer(cfg, model):
    """Keras' optimizers with their defaults (Adam's epsilon is 1e-7 there, 1e-8 in torch)."""
    params, lr = model.parameters(), cfg["learning_rate"]
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, eps=1e-7, weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.Adam(params, lr=lr, eps=1e-7)


def schedule_factor(cfg, steps_per_epoch):
    """The multiplier of the peak rate at each step: stages.train.learning_rate_schedule's
    linear warm-up from 0, then cosine decay to 0 (or a constant rate)."""
    total = cfg["epochs"] * steps_per_epoch
    warmup = min(int(round(cfg["warmup_epochs"] * steps_per_epoch)), total - 1)

    def factor(step):
        if step < warmup:
            return step / warmup
        if cfg["schedule"] == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup)
                                   / (total - warmup)))
    return factor


def shift_images(images, top, left, shift):
    """A batch (N, H, W, C) moved by shift - top, shift - left pixels, black coming in:
    stages.train.shift_images."""
    height, width = images.shape[1:3]
    padded = nn.functional.pad(images, (0, 0, shift, shift, shift, shift))
    return padded[:, top:top + height, left:left + width]


def affine_thetas(transforms, height, width):
    """stages.train.affine_transforms' rows (output pixel -> input pixel, in pixels, pixel
    centres at 0 .. side-1) as affine_grid's thetas (the same map in coordinates normalised to
    -1 .. 1 with align_corners=True). With x = s (u + 1): u_in = S^-1 A S u_out + S^-1 A S 1
    + S^-1 c - 1, for A the 2x2 part, c the offset and S = diag(sx, sy)."""
    t = np.asarray(transforms, np.float64)
    if np.any(t[:, 6:8]):
        raise ValueError("projective transforms have no affine_grid equivalent")
    sx, sy = (width - 1) / 2, (height - 1) / 2
    a0, a1, a2, b0, b1, b2 = t[:, :6].T
    m00, m01, m10, m11 = a0, a1 * sy / sx, b0 * sx / sy, b1
    theta = np.stack([
        np.stack([m00, m01, m00 + m01 + a2 / sx - 1], axis=1),
        np.stack([m10, m11, m10 + m11 + b2 / sy - 1], axis=1)], axis=1)
    return torch.from_numpy(theta.astype(np.float32))


def transform_images(images, thetas):
    """A batch (N, H, W, C) under one affine map per picture, bilinear, black coming in:
    TensorFlow reads each neighbour outside the picture as the fill value, 0, which is what
    grid_sample's zero padding does."""
    n, height, width, channels = images.shape
    grid = nn.functional.affine_grid(thetas, (n, channels, height, width), align_corners=True)
    moved = nn.functional.grid_sample(images.permute(0, 3, 1, 2), grid, mode="bilinear",
                                      padding_mode="zeros", align_corners=True)
    return moved.permute(0, 2, 3, 1)


def augmentation_difference(images, cfg, seed=0):
    """The largest difference, in levels 0-255, between TensorFlow's and torch's augmentation
    (the recipe's: shift or affine) of `images` under the same random moves."""
    from stages import train

    rng = np.random.default_rng(seed)
    x = images.astype(np.float32)
    if cfg["augment"] == "affine":
        transforms = train.affine_transforms(rng, len(x), SimpleNamespace(**cfg),
                                             side=x.shape[1])
        ours = train.transform_images(x, transforms)
        twin = transform_images(torch.from_numpy(x), affine_thetas(transforms, *x.shape[1:3]))
    elif cfg["augment"] == "shift":
        shift = cfg["augment_shift"]
        top, left = (int(v) for v in rng.integers(0, 2 * shift + 1, 2))
        ours = train.shift_images(x, (top, left), shift)
        twin = shift_images(torch.from_numpy(x), top, left, shift)
    else:
        return 0.0
    return float(np.abs(np.asarray(ours) - twin.numpy()).max())


def copy_weights(keras_model, model):
    """The Keras model's weights into its twin, layer by layer: Dense kernels transposed,
    convolution kernels from (k, k, in, out) to (out, in, k, k), and, after convolutions, the
    rows of the first Dense reordered from Keras' (H, W, C) flattening to torch's (C, H, W)."""
    import keras

    twins = iter(layer for layer in model if isinstance(layer, (nn.Linear, nn.Conv2d)))
    flattened, after_convolutions = None, False
    with torch.no_grad():
        for layer in keras_model.layers:
            if isinstance(layer, keras.layers.Flatten):
                flattened = tuple(layer.input.shape[1:])
            if not layer.get_weights():
                continue
            kernel, bias = layer.get_weights()
            twin = next(twins)
            if isinstance(twin, nn.Conv2d):
                kernel, after_convolutions = kernel.transpose(3, 2, 0, 1), True
            else:
                if after_convolutions and flattened:
                    kernel = kernel.reshape(*flattened, -1).transpose(2, 0, 1, 3) \
                        .reshape(kernel.shape)
                    flattened = None
                kernel = kernel.T
            twin.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            twin.bias.copy_(torch.from_numpy(bias))


def model_difference(family, cfg, seed, images, normalization, classes):
    """(Keras' parameter count, the twin's, the largest difference of a probability) for the
    two models with the same weights, on `images` (uint8, N, H, W, C)."""
    from stages.common.models import build_model as build_keras_model
    from stages.common.runner import import_tensorflow

    import_tensorflow()
    keras_model = build_keras_model(family, SimpleNamespace(**cfg), seed, images.shape[1:],
                                    classes, normalization, "twin")
    model = build_model(family, cfg, images.shape[1:], classes, normalization).eval()
    copy_weights(keras_model, model)
    x = images.astype(np.float32)
    theirs = np.asarray(keras_model(x, training=False))
    with torch.no_grad():
        ours = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    return (keras_model.count_params(), parameter_count(model),
            float(np.abs(theirs - ours).max()))


def check(family, data_dir, count=64):
    """The twin against the pipeline on the first `count` test pictures of `data_dir`."""
    from bench.trainers import read_data, recipe

    data = read_data(data_dir, ("test",))
    cfg = recipe(family, data["name"])
    images = data["test"]["x"][:count]
    keras_count, twin_count, probabilities = model_difference(
        family, cfg, cfg["seed"], images, data["normalization"], data["classes"])
    return {"images": len(images), "augment": cfg["augment"],
            "augmentation_difference": augmentation_difference(images, cfg),
            "keras_parameters": keras_count, "torch_parameters": twin_count,
            "probability_difference": probabilities}


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.torch_twin",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="preprocess' output (data/processed)")
    parser.add_argument("--family", default="cnn", choices=("mlp", "cnn"))
    args = parser.parse_args()
    print(json.dumps(check(args.family, args.data_dir)))


if __name__ == "__main__":
    main()
