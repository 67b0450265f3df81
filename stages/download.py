"""Download stage: fetch the dataset into data/raw.npz, every byte verified before use.

params.yaml picks the dataset (`data.dataset`: MNIST or Fashion-MNIST); the catalogue,
datasets.yaml, says where each comes from and how it is checked. Sources are tried in order, and
the first that yields a complete, verified dataset wins:
  1. $MNIST_MIRROR (or $FASHION_MNIST_MIRROR), then the dataset's `mirrors`: directories,
     file:// or http(s):// URLs holding the npz (MNIST only) or the four IDX `.gz` files;
  2. unless `download.public_sources` is false: its `npz_sources`, then its `idx_sources`.
A `.gz` file is accepted when its own hash matches the published one, or when what it
decompresses to matches the content hash: a mirror that re-compresses the files (Debian does)
serves the same data. HTTP timeouts, dropped connections and 5xx answers are retried with
exponential backoff; a 404, a bad hash, a malformed file or answer, or a transfer slower than
`download.deadline_s` moves on to the next source. Verified files are kept across sources, so one
mirror can supply what another lacks. Whatever the source, the output is the same canonical
npz (Keras layout plus the class names), so its md5 does not depend on where the bytes came from.
"""

import logging
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from stages import layout, params
from stages.catalogue import IDX_NAMES, location_problem
from stages.catalogue import load as load_catalogue
from stages.fetch import MAX_IDX_BYTES, SourceFailed, fetch, join, verify
from stages.fileio import (
    TooLarge,
    gunzip,
    load_npz,
    remove_stale_temporaries,
    save_npz,
    temporary_dir,
)
from stages.runner import StageError, run
from stages.yaml12 import shown

log = logging.getLogger("download")

MIN_TRAIN_PER_CLASS = 10  # fewer, and the validation split of some class would be empty


class IdxError(ValueError):
    """Bytes that are not a well-formed IDX file of unsigned bytes."""


def mirror_variable(dataset):
    """MNIST_MIRROR for mnist, FASHION_MNIST_MIRROR for fashion-mnist."""
    return dataset.upper().replace("-", "_") + "_MIRROR"


def npz_name(checksums):
    """The one .npz the dataset's checksums name (Keras' mnist.npz), or None."""
    return next((name for name in checksums if name.endswith(".npz")), None)


def candidate_sources(name, catalogue, environ):
    """The (base, file names) pairs to try for dataset `name`, in order."""
    dataset = catalogue.datasets[name]
    npz = npz_name(dataset.checksums)
    env_mirror = environ.get(mirror_variable(name))
    sources = []
    for base in ([env_mirror] if env_mirror else []) + dataset.mirrors:
        sources += [(base, (npz,))] if npz else []
        sources.append((base, IDX_NAMES))
    if catalogue.download.public_sources:
        sources += [(base, (npz,)) for base in dataset.npz_sources if npz]
        sources += [(base, IDX_NAMES) for base in dataset.idx_sources]
    return sources


def validate_dataset(arrays, class_names):
    """Shapes, dtypes, label range and enough images of every class; the Keras layout back."""
    num_classes = len(class_names)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (layout.IMAGE_SIDE,) * 2:
            raise SourceFailed(f"x_{split} is {x.dtype} {x.shape}; expected uint8 (N, 28, 28)")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise SourceFailed(f"y_{split} is {y.dtype} {y.shape}; expected {len(x)} labels")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise SourceFailed(f"y_{split} holds labels outside 0-{num_classes - 1}")
        counts = np.bincount(y.astype(np.int64), minlength=num_classes)
        least = MIN_TRAIN_PER_CLASS if split == "train" else 1
        if counts.min() < least:
            raise SourceFailed(f"{split} split has {counts.min()} images of class "
                               f"{class_names[counts.argmin()]} ({len(y)} in all); "
                               f"expected at least {least} of every class")
    return {**{k: np.asarray(v, dtype=np.uint8) for k, v in arrays.items()},
            "class_names": np.array(class_names)}


def parse_idx(data, expected_ndim=None):
    """Parse an uncompressed IDX file (the format MNIST ships in) into a uint8 array.

    Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
    each dimension as a big-endian uint32. The magic number is those first four bytes read as one
    integer: 2051 for images (3 dimensions), 2049 for labels (1 dimension).
    """
    if len(data) < 4:
        raise IdxError(f"too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        magic = int.from_bytes(data[:4], "big")
        raise IdxError(f"bad magic number {magic:#010x}; expected 0x0000080N (unsigned bytes)")
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise IdxError(f"has {ndim} dimensions; expected {expected_ndim} "
                       f"(magic {int.from_bytes(data[:4], 'big')})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxError(f"truncated header: {len(data)} bytes, need {header_len}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + math.prod(shape)  # Python ints: np.prod would wrap past 2**63
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(f"{state}: {len(data)} bytes, header {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def read_dataset(names, files, class_names):
    """Turn verified files into the four arrays."""
    if len(names) == 1:  # the npz
        try:
            arrays = load_npz(files[names[0]], layout.MAX_ARRAY_BYTES)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise SourceFailed(f"{names[0]} is not a readable npz: {e}") from e
        missing = set(layout.IDX_FILES) - set(arrays)
        if missing:
            raise SourceFailed(f"{names[0]} lacks {', '.join(sorted(missing))}")
        return validate_dataset({k: arrays[k] for k in layout.IDX_FILES}, class_names)
    arrays = {}
    for key, (name, ndim) in layout.IDX_FILES.items():
        try:
            arrays[key] = parse_idx(gunzip(files[name].read_bytes(), MAX_IDX_BYTES), ndim)
        except (OSError, EOFError, zlib.error, IdxError, TooLarge) as e:
            raise SourceFailed(f"{name}: {e}") from e
    return validate_dataset(arrays, class_names)


def download(name, catalogue, environ, workdir):
    """Try each source of dataset `name` in turn; return the arrays from the first that works."""
    dataset, cfg = catalogue.datasets[name], catalogue.download
    verified = {}  # file name -> path of a verified copy, shared by all sources
    failures = []
    for base, names in candidate_sources(name, catalogue, environ):
        what = names[0] if len(names) == 1 else "IDX files"
        problem = location_problem(base)
        if problem:  # a bad $MNIST_MIRROR; those in the catalogue were checked already
            failures.append(f"{shown(base)} ({what}): {problem}")
            log.warning("%s", failures[-1])
            continue
        try:
            for file in names:
                if file not in verified:
                    log.info("fetching %s", join(base, file))
                    dest = Path(workdir) / file
                    try:
                        verify(file, dest, fetch(join(base, file), dest, cfg),
                               dataset.checksums[file])
                    except SourceFailed:
                        dest.unlink(missing_ok=True)
                        raise
                    verified[file] = dest
            arrays = read_dataset(names, verified, dataset.class_names)
            log.info("got %s from %s", name, base)
            return arrays
        except SourceFailed as e:
            log.warning("%s", e)
            failures.append(f"{base} ({what}): {e}")
    variable = mirror_variable(name)
    if not failures:
        raise StageError(f"no sources to try for {name}: set {variable}, add "
                         f"datasets.{name}.mirrors or set download.public_sources: true in "
                         f"{layout.CATALOGUE}")
    raise StageError(f"no source gave a complete, verified {name}: "
                     + "; ".join(failures)
                     + f". Offline? Point {variable} at a directory holding the four IDX "
                       ".gz files" + (" or mnist.npz" if npz_name(dataset.checksums) else ""))


def main():
    cfg = params.load()
    datasets = load_catalogue()
    output = layout.RAW
    output.unlink(missing_ok=True)  # a failed run must not leave an older file looking current
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output.parent)
    with temporary_dir(output) as workdir:
        arrays = download(cfg.data.dataset, datasets, os.environ, workdir)
        save_npz(output, **arrays)
    log.info("wrote %s: %d train, %d test images of %d classes of %s", output,
             len(arrays["x_train"]), len(arrays["x_test"]), len(arrays["class_names"]),
             cfg.data.dataset)


if __name__ == "__main__":
    run(main)
