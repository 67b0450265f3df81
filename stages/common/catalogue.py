"""The catalogue: MNIST and Fashion-MNIST, each a folder of datasets/ whose dataset.yaml says where
its four IDX files come from and the SHA-256 of what each decompresses to. A file comes from the
first source that gives it whole and verified: $MNIST_MIRROR ($FASHION_MNIST_MIRROR), a folder or
a URL, then the entry's `urls`, downloaded by pooch (timeouts, retries, a file moved into place
when complete). The hash is of the content: a re-compressed mirror serves, and nothing else.
"""

import gzip
import hashlib
import logging
import struct
import sys
import zlib
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StringConstraints

from stages.common import layout
from stages.common.params import Section, checked, read_yaml
from stages.common.runner import StageError

log = logging.getLogger("download")

# The four files of MNIST's layout, each an array: its name, and its number of dimensions.
IDX_FILES = {"x_train": ("train-images-idx3-ubyte.gz", 3),
             "y_train": ("train-labels-idx1-ubyte.gz", 1),
             "x_test": ("t10k-images-idx3-ubyte.gz", 3),
             "y_test": ("t10k-labels-idx1-ubyte.gz", 1)}
TIMEOUT_S = 30  # to connect, and for each read
RETRIES = 2  # of a failed download (a timeout, a dropped connection, a 5xx), from one source
# What one file may decompress to: 70,000 pictures of 64x64 and a header. A gzip bomb stops here.
MAX_CONTENT_BYTES = 70_000 * 64 * 64 + 16

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
IdxFile = Literal[tuple(file for file, _ in IDX_FILES.values())]
ClassName = Annotated[str, StringConstraints(min_length=1, max_length=60)]


class Entry(Section):
    """A catalogue entry, the project's own file: its fields' types, and the four files named."""
    prepare: Literal["digit", "clothing"]  # how the app brings a picture to this data's form
    urls: list[Annotated[str, StringConstraints(pattern=r"^https?://\S+/$")]]
    classes: list[ClassName] = Field(min_length=2, max_length=1000)
    files: dict[IdxFile, Hex64] = Field(min_length=4)  # each content's SHA-256, decompressed


class SourceFailed(Exception):
    """This source cannot give this file, whole and verified: try the next one."""


def entry_path(name: str) -> Path:
    return layout.DATASETS / name / layout.CATALOGUE_ENTRY


def load(name: str) -> Entry:
    return checked(Entry, read_yaml(entry_path(name)), entry_path(name))


def mirror_variable(name: str) -> str:
    """MNIST_MIRROR for mnist, FASHION_MNIST_MIRROR for fashion-mnist."""
    return name.upper().replace("-", "_").replace("/", "_") + "_MIRROR"


def fetch(name: str, entry: Entry, environ: dict, workdir: Path) -> dict[str, np.ndarray]:
    """The four arrays of dataset `name`, each file from the first source that verifies."""
    mirror = environ.get(mirror_variable(name))
    sources = ([mirror.rstrip("/") + "/"] if mirror else []) + entry.urls
    arrays = {}
    for key, (file, ndim) in IDX_FILES.items():
        failures = []
        for source in sources:
            try:
                arrays[key] = parse_idx(content(source, file, entry.files[file], workdir), ndim)
                break
            except SourceFailed as why:
                log.warning("%s%s: %s", source, file, why)
                failures.append(f"{source}: {why}")
        else:
            raise StageError(f"no source gave {file} of {name} whole and verified ("
                             + "; ".join(failures or ["no sources"]) + "). Offline? Point "
                             f"{mirror_variable(name)} at a folder holding its four .gz files")
    return {key: value[..., np.newaxis] if key.startswith("x") else value  # (N, H, W, 1)
            for key, value in arrays.items()}


def content(source: str, file: str, sha256: str, workdir: Path) -> bytes:
    """What `file` of `source` (a folder or a URL) decompresses to, checked against `sha256`."""
    if "://" in source:
        path = download(source, file, workdir)
    else:
        path = Path(source) / file
        if not path.is_file():
            raise SourceFailed("no such file")
    try:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        data = inflater.decompress(path.read_bytes(), MAX_CONTENT_BYTES + 1)
        if len(data) > MAX_CONTENT_BYTES or not inflater.eof:
            raise SourceFailed("decompresses to too much" if len(data) > MAX_CONTENT_BYTES
                               else "cut short (the compressed data end early)")
    except (OSError, zlib.error, gzip.BadGzipFile) as error:
        raise SourceFailed(f"not gzip data ({error})") from error
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise SourceFailed(f"its content's SHA-256 is {got}, not {sha256}")
    return data


def download(base: str, file: str, workdir: Path) -> Path:
    import pooch
    import requests

    folder = workdir / hashlib.sha256(base.encode()).hexdigest()[:16]  # one per source
    fetcher = pooch.create(path=folder, base_url=base, registry={file: None},
                           retry_if_failed=RETRIES)
    try:
        return Path(fetcher.fetch(file, downloader=pooch.HTTPDownloader(
            timeout=TIMEOUT_S, progressbar=sys.stderr.isatty())))
    except requests.RequestException as error:
        response = getattr(error, "response", None)
        reason = f"HTTP {response.status_code}" if response is not None else type(error).__name__
        raise SourceFailed(f"{reason} (after {RETRIES + 1} tries)") from error


def parse_idx(data: bytes, ndim: int) -> np.ndarray:
    """An uncompressed IDX file of unsigned bytes: 0, 0, 0x08, the number of dimensions, each
    dimension as a big-endian uint32, then the bytes."""
    start = 4 + 4 * ndim
    if len(data) < start or data[:4] != bytes([0, 0, 8, ndim]):
        raise SourceFailed(f"not an IDX file of unsigned bytes in {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", data[4:start])
    if len(data) != start + int(np.prod(shape, dtype=object)):
        raise SourceFailed(f"{len(data)} bytes, where its header {shape} needs "
                           f"{start + int(np.prod(shape, dtype=object))}")
    return np.frombuffer(data, np.uint8, offset=start).reshape(shape)
