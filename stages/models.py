"""The two model families train can build, each from its own section of params.yaml.

- mlp: the classic beginner model, Flatten -> Dense hidden layers -> softmax.
- cnn: a small convnet in the style of keras-io's `mnist_convnet`: convolutions each followed
  by 2x2 max-pooling, more convolutions on the last (small) map, an optional hidden Dense
  layer, and the softmax.

Both take (28, 28) images, as preprocess writes them, and output class probabilities.
"""

import keras


def build_mlp(cfg, seed, input_shape, num_classes, name):
    """Flatten -> [Dense(units, activation) -> Dropout] per hidden layer -> Dense softmax."""
    layers = [keras.Input(shape=input_shape), keras.layers.Flatten()]
    for i, units in enumerate(cfg.hidden_units):
        layers.append(keras.layers.Dense(units, activation=cfg.activation))
        if cfg.dropout > 0:
            # A seed per layer: two layers of one width would otherwise drop the same units.
            layers.append(keras.layers.Dropout(cfg.dropout, seed=seed + i))
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(layers, name=name)


def build_cnn(cfg, seed, input_shape, num_classes, name):
    """[Conv (ReLU, `padding`) -> MaxPool 2x2] per entry of `filters` -> [Conv (same, ReLU)]
    per entry of `final_filters` -> Flatten -> [Dense(dense_units, ReLU)] -> Dropout -> softmax.

    Valid padding and pooling after each of the first convolutions keep the arithmetic small:
    on a 2-core CPU the convolutions' backward pass is where the time goes, and a convolution
    on the last 5x5 map costs a fraction of one on the 13x13 map before it. Batch
    normalisation was tried and dropped: it cost 60 % more time per epoch here.
    """
    size = cfg.kernel_size
    layers = [keras.Input(shape=input_shape), keras.layers.Reshape((*input_shape, 1))]
    for filters in cfg.filters:
        layers += [keras.layers.Conv2D(filters, size, padding=cfg.padding, activation="relu"),
                   keras.layers.MaxPooling2D()]
    for filters in cfg.final_filters:
        layers.append(keras.layers.Conv2D(filters, size, padding="same", activation="relu"))
    layers.append(keras.layers.Flatten())
    if cfg.dense_units:
        layers.append(keras.layers.Dense(cfg.dense_units, activation="relu"))
    if cfg.dropout > 0:
        layers.append(keras.layers.Dropout(cfg.dropout, seed=seed))
    layers.append(keras.layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(layers, name=name)


def cnn_feature_size(cfg, size):
    """The side of the CNN's last feature map for `size` x `size` images; < 1 if it vanishes."""
    for _ in cfg.filters:
        size = (size - (cfg.kernel_size - 1 if cfg.padding == "valid" else 0)) // 2
    return size


def build_model(family, cfg, seed, input_shape=(28, 28), num_classes=10, dataset="mnist"):
    """The model of `family` ('mlp' or 'cnn') from its params section, named after its family
    and the data it learns (`fashion_mnist_cnn`). Raises ValueError for a CNN whose
    convolutions would shrink the images to nothing."""
    if family == "cnn" and cnn_feature_size(cfg, min(input_shape)) < 1:
        raise ValueError(f"train.cnn: {len(cfg.filters)} convolutions of "
                         f"{cfg.kernel_size}x{cfg.kernel_size}, each followed by 2x2 "
                         f"pooling, shrink {input_shape[0]}x{input_shape[1]} images to nothing; "
                         "use fewer filters entries or a smaller kernel_size")
    builders = {"mlp": build_mlp, "cnn": build_cnn}
    name = f"{dataset}_{family}".replace("-", "_")  # fashion_mnist_cnn
    return builders[family](cfg, seed, tuple(input_shape), num_classes, name)
