"""A folder of labelled pictures as a dataset: datasets/NAME/<class>/<picture>, or with train/
and test/ folders each holding the same class folders (torchvision's ImageFolder layout). A
class's name is its folder's; classes are sorted. Every picture is read by the app's own reader
(app/pictures/fit.py), in worker processes, one per core, each under a memory cap as the app's
decode processes are, and made one size and channel count (params, or chosen from the data). A
bad entry (not a picture, a damaged one, a README beside the class folders, a folder in a class
folder, a broken link) stops the stage in one line, or with `data.on_bad_file: skip` is counted.
"""

import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from app.pictures import fit
from app.pictures.decode import InputError, limit_memory
from stages.common.params import Data
from stages.common.runner import StageError

log = logging.getLogger("download")

MAX_CLASSES = 1000
AUTO_SIDES = (8, 64)  # image_size "auto": the pictures' median longer side, kept within these
# What each worker may allocate on top of what it starts with, for one picture: a 40-megapixel
# picture decoded as RGBA is 160 MB, and scaling it takes a few copies of the result.
WORKER_MEMORY = 2**30
PROGRESS_EVERY_S = 10


@dataclass
class Listing:
    classes: list[str]
    pictures: dict[str, list[tuple[Path, int]]]  # "train", "test": (path, label)
    bad: list[tuple[Path, str]] = field(default_factory=list)  # (path, what is wrong)


def visible(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def class_folders(folder: Path, listing: Listing) -> list[Path]:
    """The class folders in `folder`; what else is there is a bad entry."""
    entries = visible(folder)
    listing.bad += [(entry, "a file beside the class folders: every picture goes in its "
                            "class's folder") for entry in entries if not entry.is_dir()]
    return [entry for entry in entries if entry.is_dir()]


def pictures_in(folder: Path, label: int, listing: Listing) -> list[tuple[Path, int]]:
    found = []
    for entry in visible(folder):
        try:
            os.stat(entry)  # follows a link: a broken one or a loop fails here
        except OSError as error:
            listing.bad.append((entry, error.strerror.lower()))
            continue
        if entry.is_dir():
            listing.bad.append((entry, "a folder inside a class folder: pictures go directly "
                                       "in their class's folder"))
        elif entry.suffix.lower() not in fit.EXTENSIONS:
            listing.bad.append((entry, f"not a picture's name ({' '.join(fit.EXTENSIONS)})"))
        else:
            found.append((entry, label))
    if not found and not any(bad.parent == folder for bad, _ in listing.bad):
        raise StageError(f"{folder}: no pictures in this class's folder")
    return found


def list_folder(root: Path) -> Listing:
    """The classes and pictures of the folder at `root`, and its bad entries."""
    if not root.is_dir():
        raise StageError(f"{root}: no such folder; put your pictures in {root}/<class>/ and "
                         f"track them with `dvc add {root}`")
    listing, top = Listing([], {"train": [], "test": []}), visible(root)
    if {"train", "test"} <= {entry.name for entry in top if entry.is_dir()}:
        splits = {"train": root / "train", "test": root / "test"}
        listing.bad += [(entry, "beside train/ and test/: pictures go in train/<class>/ or "
                                "test/<class>/") for entry in top if entry.name not in splits]
    else:
        splits = {"train": root}
    per_split = {split: class_folders(folder, listing) for split, folder in splits.items()}
    classes = [folder.name for folder in per_split["train"]]
    if "test" in per_split:
        test = [folder.name for folder in per_split["test"]]
        for split, other, names in (("test", "train", set(test) - set(classes)),
                                    ("train", "test", set(classes) - set(test))):
            if names:
                raise StageError(f"{root / split / min(names)}: a class {other}/ lacks; train/ "
                                 "and test/ must hold the same class folders")
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise StageError(f"{root}: {len(classes)} class folder{'s' * (len(classes) != 1)} "
                         f"({', '.join(classes) or 'none'}); a classifier needs 2 to "
                         f"{MAX_CLASSES:,}, each a folder of pictures")
    listing.classes = classes
    for split, folders in per_split.items():
        for label, folder in enumerate(folders):
            listing.pictures[split] += pictures_in(folder, label, listing)
    return listing


def attempt(job: Callable, path: Path, *args: int) -> object:
    """job(path, *args) in a worker (fit.probe or fit.fit), or what is wrong with the picture."""
    try:
        return job(path, *args)
    except MemoryError:
        return f"needs more than {WORKER_MEMORY // 2**20} MB to decode"
    except (InputError, OSError) as error:
        return str(error) if isinstance(error, InputError) else (error.strerror or str(error))


def choose(probes: list[tuple[int, bool]], cfg: Data) -> tuple[int, int]:
    """data.image_size and data.channels, or what the pictures suggest for "auto"."""
    size, channels = cfg.image_size, cfg.channels
    if size == "auto":
        median = int(np.median([side for side, _ in probes]))
        size = int(np.clip(median, *AUTO_SIDES))
        log.info("image_size auto: %d (the pictures' median longer side is %d px; at most %d "
                 "unless data.image_size says otherwise)", size, median, AUTO_SIDES[1])
    if channels == "auto":
        colour = sum(not grey for _, grey in probes)
        channels = 3 if colour else 1
        log.info("channels auto: %d (%d of %d pictures in colour)", channels, colour, len(probes))
    return size, channels


def each(pool: ProcessPoolExecutor, job: Callable, paths: list[Path],
         *args: int) -> Iterator[object]:
    """attempt(job, path, *args) for every path in the pool's workers, in order, with progress."""
    last, count = time.monotonic(), len(paths)
    results = pool.map(attempt, [job] * count, paths, *([a] * count for a in args), chunksize=64)
    for done, result in enumerate(results, 1):
        yield result
        if time.monotonic() - last > PROGRESS_EVERY_S:
            last = time.monotonic()
            log.info("%s: %d of %d pictures", job.__name__, done, count)


def read_folder(root: Path, cfg: Data) -> dict[str, np.ndarray]:
    """The dataset in the folder at `root`: train and test arrays (test empty when the folder
    has no test/), class names, the files' names and those skipped. Raises StageError."""
    listing = list_folder(root)
    entries = [(path, label, split == "test") for split in ("train", "test")  # training first
               for path, label in listing.pictures[split]]
    bad = listing.bad
    stop_on_bad(bad, cfg)
    workers = len(os.sched_getaffinity(0))
    # Each worker under a memory cap, so that a picture that lies about its size fails alone
    # (MemoryError) rather than taking the machine's memory, as the app's decoding does.
    with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=limit_memory,
                             initargs=(WORKER_MEMORY,)) as pool:
        probes: list = []  # what choose() reads for "auto" only
        if "auto" in (cfg.image_size, cfg.channels):
            probes = list(each(pool, fit.probe, [path for path, _, _ in entries]))
            bad = bad + [(e[0], p) for e, p in zip(entries, probes) if isinstance(p, str)]
            stop_on_bad(bad, cfg)
            entries = [e for e, p in zip(entries, probes) if not isinstance(p, str)]
            probes = [p for p in probes if not isinstance(p, str)]
        if not entries:
            raise StageError(f"{root}: not one picture could be read")
        size, channels = choose(probes, cfg)
        # Each picture lands in its row as it arrives: the pictures are held once, not twice.
        x, good = np.empty((len(entries), size, size, channels), np.uint8), []
        for i, picture in enumerate(each(pool, fit.fit, [p for p, _, _ in entries], size,
                                         channels)):
            if isinstance(picture, str):
                bad.append((entries[i][0], picture))
            else:
                x[len(good)] = picture
                good.append(i)
    stop_on_bad(bad, cfg)
    x = x[:len(good)]
    y = np.array([entries[i][1] for i in good], np.uint16)
    names = np.array([str(entries[i][0].relative_to(root)) for i in good], dtype=str)
    n = sum(not entries[i][2] for i in good)
    for path, why in bad:
        log.warning("skipped %s: %s", path, why)
    log.info("%s: %d classes, %d pictures (%d for testing), %dx%d, %d channel%s; %d skipped",
             root, len(listing.classes), len(good), len(good) - n, size, size, channels,
             "s" * (channels > 1), len(bad))
    # The two splits are views of one array: training pictures come first.
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:],
            "class_names": np.array(listing.classes), "files_train": names[:n],
            "files_test": names[n:],
            "skipped": np.array([f"{path}: {why}" for path, why in bad], dtype=str)}


def stop_on_bad(bad: list[tuple[Path, str]], cfg: Data) -> None:
    if bad and cfg.on_bad_file == "error":
        (path, why), more = bad[0], len(bad) - 1
        others = f" and {more} more bad entr{'ies' if more > 1 else 'y'}" if more else ""
        raise StageError(f"{path}: {why} (data.on_bad_file: skip leaves it{others} out)")
