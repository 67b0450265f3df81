"""Preprocess stage: data/raw.npz as the train, validation and test splits (data/processed), and
the normalisation constants fitted on the training split alone (the model applies them). Test:
the dataset's own pictures, or a seeded, stratified share when it has none, less any copy of a
training picture; only evaluate reads it. Validation: a seeded, stratified share of training.
Pictures stay uint8 (N, H, W, C); metrics/data.json counts what download skipped and the copies.
"""

import hashlib
import logging

import numpy as np

from stages.common import layout, params
from stages.common.files import atomic, load_npz, save_npz, write_json
from stages.common.runner import StageError, run

log = logging.getLogger("preprocess")
RAW_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names", "prepare", "files_train",
            "files_test", "skipped")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Sorted (kept, held_out) indices: `fraction` of each class is held out."""
    rng = np.random.default_rng(seed)
    held = [rng.permutation(members)[:int(round(len(members) * fraction))]
            for members in (np.flatnonzero(labels == label) for label in np.unique(labels))]
    held_out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def digests(x: np.ndarray, indices: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(x[i].tobytes(), digest_size=16).digest() for i in indices]


def copies_of_training(x_test: np.ndarray, test: np.ndarray, x_train: np.ndarray,
                       train: np.ndarray) -> np.ndarray:
    """For each of the pictures `test` of x_test, the index of a picture of `train` in x_train
    with the same pixels, or -1."""
    seen = dict(zip(digests(x_train, train), train))
    return np.array([seen.get(d, -1) for d in digests(x_test, test)], np.int64)


def normalization(x: np.ndarray, indices: np.ndarray, method: str) -> dict:
    """(pixels / 255 - mean) / std: 0 and 1, or fitted on the pictures `indices` of `x`, a batch
    at a time (a float copy of a large colour dataset would not fit in memory)."""
    if method == "scale":
        return {"method": "scale", "mean": 0.0, "std": 1.0}
    total = squares = 0.0
    for start in range(0, len(indices), 4096):
        batch = x[indices[start:start + 4096]].astype(np.float64) / 255
        total, squares = total + batch.sum(), squares + np.square(batch).sum()
    size = len(indices) * np.prod(x.shape[1:])
    mean = total / size
    std = float(np.sqrt(max(squares / size - mean**2, 0))) or 1.0  # one grey: nothing to scale
    return {"method": "standardize", "mean": float(mean), "std": std}


def check(counts: dict[str, int], cfg: params.Preprocess) -> None:
    for split, key in (("val", "val_fraction"), ("test", "test_fraction")):
        if counts[split] == 0:
            raise StageError(f"preprocess.{key} = {getattr(cfg, key)} holds out no picture of "
                             f"the {counts['train'] + counts[split]}; raise it, or add pictures")
    if counts["train"] == 0:
        raise StageError("no pictures left to train on: lower preprocess.val_fraction")


def main() -> None:
    cfg = params.load()
    raw = load_npz(layout.RAW, "download", RAW_KEYS)
    seed = cfg.preprocess.seed
    # Each split is a list of indices into one of raw's two arrays until it is written, one at a
    # time: the pictures are held once, and each split's copy only while it is written.
    x, y, names = raw["x_train"], raw["y_train"], raw["files_train"]
    if len(raw["y_test"]):
        pool, test = np.arange(len(y)), np.arange(len(raw["y_test"]))
        x_test, y_test, test_names = raw["x_test"], raw["y_test"], raw["files_test"]
    else:
        pool, test = stratified_split(y, cfg.preprocess.test_fraction, seed)
        x_test, y_test, test_names = x, y, names
    copies = copies_of_training(x_test, test, x, pool)
    for i in np.flatnonzero(copies >= 0)[:5]:
        where = (f"{test_names[test[i]]} = {names[copies[i]]}" if len(names)
                 else f"test picture {test[i]}")
        log.warning("a test picture is a copy of a training one: %s", where)
    if (copies >= 0).any():
        log.warning("%d test pictures are copies of training ones: the test set leaves them out",
                    (copies >= 0).sum())
    kept, held = stratified_split(y[pool], cfg.preprocess.val_fraction, seed)
    splits = {"train": (x, y, pool[kept]), "val": (x, y, pool[held]),
              "test": (x_test, y_test, test[copies < 0])}
    counts = {name: len(indices) for name, (_, _, indices) in splits.items()}
    check(counts, cfg.preprocess)
    info = {"name": cfg.data.dataset, "class_names": raw["class_names"].tolist(),
            "prepare": str(raw["prepare"]), "input_shape": list(x.shape[1:]),
            "normalization": normalization(x, pool[kept], cfg.preprocess.normalization)}

    with atomic(layout.PROCESSED, folder=True) as tmp:
        for name, (pictures, labels, indices) in splits.items():
            save_npz(tmp / layout.SPLITS[name].name, x=pictures[indices], y=labels[indices])
        write_json(tmp / layout.DATASET_INFO.name, info)
    write_json(layout.DATA_METRICS, {"skipped_files": len(raw["skipped"]),
                                     "test_copies": int((copies >= 0).sum())})
    log.info("%s; normalization: %s", ", ".join(f"{n}: {c}" for n, c in counts.items()),
             info["normalization"])


if __name__ == "__main__":
    run(main)
