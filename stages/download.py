"""Download stage: the dataset params.yaml names (`data.dataset`, a folder of datasets/) as
data/raw.npz: a catalogue entry fetched and checked (common/catalogue.py), or your labelled
pictures read and made one size (common/folder.py). Both give the same arrays: uint8 pictures
(N, H, W, C) and labels for training and testing, class names, files' names, those skipped, and
how the app prepares a picture for a model of this data (`prepare`).
"""

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from app.pictures.fit import resized
from stages.common import catalogue, layout, params
from stages.common.files import save_npz
from stages.common.folder import read_folder
from stages.common.runner import run

log = logging.getLogger("download")


def refit(x: np.ndarray, size: int | str, channels: int | str) -> np.ndarray:
    """Catalogue pictures (N, 28, 28, 1) at another size or in colour, when params ask for it,
    as the app makes a picture for such a model."""
    size = x.shape[1] if size == "auto" else size
    channels = x.shape[3] if channels == "auto" else channels
    if (size, channels) == (x.shape[1], x.shape[3]):
        return x
    return np.stack([resized(picture, size, channels) for picture in x])


def from_catalogue(name: str, cfg: params.Data) -> dict[str, np.ndarray]:
    entry = catalogue.load(name)
    layout.DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=layout.DATA, prefix=".download.",
                                     suffix=".tmp") as workdir:
        arrays = catalogue.fetch(name, entry, dict(os.environ), Path(workdir))
    none = np.array([], dtype=str)
    return {**arrays, "x_train": refit(arrays["x_train"], cfg.image_size, cfg.channels),
            "x_test": refit(arrays["x_test"], cfg.image_size, cfg.channels),
            "class_names": np.array(entry.classes), "prepare": np.array(entry.prepare),
            "files_train": none, "files_test": none, "skipped": none}


def main() -> None:
    cfg = params.load().data
    layout.RAW.unlink(missing_ok=True)  # a failed run must not leave an older file current
    folder = layout.DATASETS / cfg.dataset
    if (folder / layout.CATALOGUE_ENTRY).is_file():
        arrays = from_catalogue(cfg.dataset, cfg)
    else:
        arrays = {**read_folder(folder, cfg), "prepare": np.array("picture")}
    save_npz(layout.RAW, **arrays)
    log.info("wrote %s: %d pictures for training, %d for testing, %d classes", layout.RAW,
             len(arrays["y_train"]), len(arrays["y_test"]), len(arrays["class_names"]))


if __name__ == "__main__":
    run(main)
