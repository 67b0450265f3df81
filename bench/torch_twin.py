"""The project's models and recipe in plain PyTorch: the twin that bench/trainers.py races.

Each model has the layers, shapes and parameter count `stages/models.py` gives the Keras one,
and Keras' initialisation (Glorot-uniform weights, zero biases), so that accuracies compare the
trainers rather than two initialisations. The output layer gives logits (CrossEntropyLoss
applies the softmax), which is the same arithmetic as Keras' softmax + cross-entropy.

    python -m bench.torch_twin DATA_DIR     # checks the affine augmentation against TensorFlow
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


def build_mlp(cfg, side, classes):
    layers, width = [nn.Flatten()], side * side
    for units in cfg["hidden_units"]:
        layers += [nn.Linear(width, units), ACTIVATIONS[cfg["activation"]]()]
        if cfg["dropout"] > 0:
            layers.append(nn.Dropout(cfg["dropout"]))
        width = units
    return nn.Sequential(*layers, nn.Linear(width, classes))


def build_cnn(cfg, side, classes):
    """Conv (`padding`) + ReLU + MaxPool per `filters`, Conv (same) + ReLU per
    `final_filters`, flatten, optional Dense + ReLU, dropout, linear: as stages/models.py's
    build_cnn."""
    # (N, H, W) -> (N, 1, H, W): Keras' Reshape, channels first.
    size, channels, layers = cfg["kernel_size"], 1, [nn.Unflatten(1, (1, side))]
    trim = size - 1 if cfg["padding"] == "valid" else 0
    for filters in cfg["filters"]:
        layers += [nn.Conv2d(channels, filters, size, padding=cfg["padding"]), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels, side = filters, (side - trim) // 2
    for filters in cfg["final_filters"]:
        layers += [nn.Conv2d(channels, filters, size, padding="same"), nn.ReLU()]
        channels = filters
    layers.append(nn.Flatten())
    width = channels * side * side
    if cfg["dense_units"]:
        layers += [nn.Linear(width, cfg["dense_units"]), nn.ReLU()]
        width = cfg["dense_units"]
    if cfg["dropout"] > 0:
        layers.append(nn.Dropout(cfg["dropout"]))
    return nn.Sequential(*layers, nn.Linear(width, classes))


def build_model(family, cfg, side=28, classes=10):
    model = {"mlp": build_mlp, "cnn": build_cnn}[family](cfg, side, classes)
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


def transform_images(images, thetas, background):
    """Bilinear, filling with `background`: TensorFlow reads each neighbour outside the image
    as the fill value, which is what sampling (images - background) with zero padding and
    adding the background back gives."""
    height, width = images.shape[1:]
    grid = nn.functional.affine_grid(thetas, (len(images), 1, height, width),
                                     align_corners=True)
    moved = nn.functional.grid_sample((images - background).unsqueeze(1), grid,
                                      mode="bilinear", padding_mode="zeros", align_corners=True)
    return moved[:, 0] + background


def parity(images, cfg, background, seed=0):
    """The largest difference between TensorFlow's and torch's transform of `images` under the
    same random transforms: what the two augmentations disagree on, in pixel values."""
    from stages import train

    transforms = train.affine_transforms(np.random.default_rng(seed), len(images),
                                         SimpleNamespace(**cfg), side=images.shape[1])
    tf_moved = np.asarray(train.transform_images(images, transforms, background))
    torch_moved = transform_images(torch.from_numpy(images),
                                   affine_thetas(transforms, *images.shape[1:]), background)
    return float(np.abs(tf_moved - torch_moved.numpy()).max())


def main():
    from bench.trainers import recipe
    from stages.fileio import read_json, read_split
    from stages.normalization import blank_pixel

    parser = argparse.ArgumentParser(prog="python -m bench.torch_twin")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--family", default="cnn", choices=("mlp", "cnn"))
    args = parser.parse_args()
    cfg = recipe(args.family)
    images = read_split(args.data_dir / "test.npz")["x"][:64]
    background = blank_pixel(read_json(args.data_dir / "normalization.json", "preprocess",
                                       ["mean", "std"]))
    spread = float(images.max() - images.min())
    print(json.dumps({"images": len(images), "max_difference": parity(images, cfg, background),
                      "pixel_range": spread}))


if __name__ == "__main__":
    main()
