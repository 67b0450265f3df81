"""Preprocess stage: the splits, and the normalisation fitted on the training split alone.

- Test: the dataset's own test pictures, or, when it has none (a folder without test/), a seeded,
  stratified share of its pictures (`preprocess.test_fraction`). A test picture that is a copy
  of a training picture (the same pixels) is left out of the test set and reported: the model
  has seen it. Only evaluate reads the test split.
- Validation: a seeded, stratified share of the training pictures (`val_fraction`), held out
  of training.
- Normalisation: pixels / 255 ('scale'), then the training split's mean and standard deviation
  ('standardize'). The constants go with the data; the model applies them itself.
Pictures stay uint8 (N, H, W, C). Everything lands in data/processed at once; metrics/data.json
counts the files download skipped and the test copies left out.
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


def copies_of_training(x_test: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    """For each test picture, the index of a training picture with the same pixels, or -1."""
    def digest(picture: np.ndarray) -> bytes:
        return hashlib.blake2b(picture.tobytes(), digest_size=16).digest()
    seen = {digest(picture): i for i, picture in enumerate(x_train)}
    return np.array([seen.get(digest(picture), -1) for picture in x_test], np.int64)


def normalization(x: np.ndarray, method: str) -> dict:
    """(pixels / 255 - mean) / std: 0 and 1, or fitted on `x`, a batch at a time (a float copy
    of a large colour dataset would not fit in memory)."""
    if method == "scale":
        return {"method": "scale", "mean": 0.0, "std": 1.0}
    total = squares = 0.0
    for start in range(0, len(x), 4096):
        batch = x[start:start + 4096].astype(np.float64) / 255
        total, squares = total + batch.sum(), squares + np.square(batch).sum()
    mean = total / x.size
    std = float(np.sqrt(max(squares / x.size - mean**2, 0))) or 1.0  # one grey: nothing to scale
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
    x, y, names = raw["x_train"], raw["y_train"], raw["files_train"]
    if len(raw["y_test"]):
        test = {"x": raw["x_test"], "y": raw["y_test"]}
        test_names = raw["files_test"]
    else:
        kept, held = stratified_split(y, cfg.preprocess.test_fraction, cfg.preprocess.seed)
        test = {"x": x[held], "y": y[held]}
        test_names = names[held] if len(names) else names
        x, y, names = x[kept], y[kept], names[kept] if len(names) else names
    copies = copies_of_training(test["x"], x)
    for i in np.flatnonzero(copies >= 0)[:5]:
        where = f"{test_names[i]} = {names[copies[i]]}" if len(names) else f"test picture {i}"
        log.warning("a test picture is a copy of a training one: %s", where)
    if (copies >= 0).any():
        log.warning("%d test pictures are copies of training ones: the test set leaves them out",
                    (copies >= 0).sum())
        test = {key: value[copies < 0] for key, value in test.items()}
    train_idx, val_idx = stratified_split(y, cfg.preprocess.val_fraction, cfg.preprocess.seed)
    splits = {"train": {"x": x[train_idx], "y": y[train_idx]},
              "val": {"x": x[val_idx], "y": y[val_idx]}, "test": test}
    counts = {name: len(split["y"]) for name, split in splits.items()}
    check(counts, cfg.preprocess)
    info = {"name": cfg.data.dataset, "class_names": raw["class_names"].tolist(),
            "prepare": str(raw["prepare"]), "input_shape": list(x.shape[1:]),
            "normalization": normalization(splits["train"]["x"], cfg.preprocess.normalization)}

    with atomic(layout.PROCESSED, folder=True) as tmp:
        for name, split in splits.items():
            save_npz(tmp / layout.SPLITS[name].name, **split)
        write_json(tmp / layout.DATASET_INFO.name, info)
    write_json(layout.DATA_METRICS, {"skipped_files": len(raw["skipped"]),
                                     "test_copies": int((copies >= 0).sum())})
    log.info("%s; normalization: %s", ", ".join(f"{n}: {c}" for n, c in counts.items()),
             info["normalization"])


if __name__ == "__main__":
    run(main)
