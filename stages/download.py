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

import hashlib
import http.client
import logging
import math
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, Field, StringConstraints, model_validator

from stages import layout, params
from stages.fileio import (
    TooLarge,
    gunzip,
    load_npz,
    remove_stale_temporaries,
    save_npz,
    temporary_dir,
)
from stages.runner import StageError, run
from stages.yaml12 import read_yaml, shown

log = logging.getLogger("download")

IDX_NAMES = tuple(name for name, _ in layout.IDX_FILES.values())
MAX_IDX_BYTES = 16 + layout.MAX_ARRAY_BYTES  # the header, then the bytes
MAX_DOWNLOAD_BYTES = 64 * 2**20  # on the wire; the largest real file is 26 MB (Fashion's)
MIN_TRAIN_PER_CLASS = 10  # fewer, and the validation split of some class would be empty
CHUNK = 2**16
PROGRESS_EVERY_S = 2.0


class IdxError(ValueError):
    """Bytes that are not a well-formed IDX file of unsigned bytes."""


class SourceFailed(RuntimeError):
    """This source cannot provide this file (missing, corrupt, unreachable): try the next one."""


class Transient(RuntimeError):
    """A failure worth retrying: a timeout, a dropped connection, a 5xx."""


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


def join(base, name):
    return base.rstrip("/") + "/" + name


def local_path(location):
    """The filesystem path of a plain path or file:// URL; None for a network URL."""
    url = urllib.parse.urlsplit(location)
    if url.scheme == "file":
        return Path(urllib.request.url2pathname(url.path))
    if url.scheme in ("http", "https"):
        return None
    return Path(location)


# --- the catalogue: datasets.yaml ---------------------------------------------------------------

def location_problem(location):
    """Why `location` is no usable mirror (a directory, or a file:// or http(s):// URL), or None.

    Checked before any connection, so that `http://[::1` or `http://a..b/` is a clear error
    rather than a traceback from deep inside urllib."""
    if not isinstance(location, str) or not location.strip():
        return "an empty location"
    if "\n" in location or "\0" in location:
        return "a location with a newline or NUL in it"
    if "://" not in location:
        return None  # a directory path
    try:
        url = urllib.parse.urlsplit(location)
        host, _ = url.hostname, url.port  # .port raises ValueError for a bad port
    except ValueError as e:
        return f"a malformed URL ({e})"
    if url.scheme == "file":
        return None if url.netloc in ("", "localhost") else \
            "a file:// URL with a host; use file:///absolute/path"
    if url.scheme not in ("http", "https"):
        return f"a URL with scheme '{url.scheme}'; expected file, http or https"
    if not host:
        return "an http(s) URL without a host"
    if ":" not in host and not all(0 < len(label) <= 63 for label in host.split(".")):
        return f"a URL whose host name '{host}' has an empty or overlong part"
    try:
        host.encode("idna")
    except UnicodeError as e:
        return f"a URL whose host name '{host}' is not valid ({e})"
    return None


def usable_location(location):
    problem = location_problem(location)
    if problem:
        raise ValueError(f"not a directory or a file://, http:// or https:// URL: {problem}")
    return location


Locations = list[Annotated[str, AfterValidator(usable_location)]]
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ClassName = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class Digests(params.Section):
    """An IDX .gz: sha256 of what it decompresses to, and the published md5 of the .gz itself
    (optional). An npz: the sha256 or md5 of the file."""
    sha256: Hex64 | None = None
    gz_md5: Hex32 | None = None
    md5: Hex32 | None = None


class Dataset(params.Section):
    mirrors: Locations
    npz_sources: Locations
    idx_sources: Locations
    class_names: list[ClassName] = Field(min_length=2, max_length=100)
    checksums: dict[str, Digests]

    @model_validator(mode="after")
    def complete(self):
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names holds the same name twice")
        npz = [name for name in self.checksums if name.endswith(".npz")]
        if set(self.checksums) - set(npz) != set(IDX_NAMES) or len(npz) > 1:
            raise ValueError(f"checksums must name {', '.join(IDX_NAMES)} and at most one .npz")
        for name, digests in self.checksums.items():
            given = {k for k, v in digests.model_dump().items() if v}
            if given not in (({"sha256"}, {"md5"}) if name in npz else
                             ({"sha256"}, {"sha256", "gz_md5"})):
                raise ValueError(f"checksums of {name}: {sorted(given)} is not sha256 (and "
                                 "gz_md5 for an IDX .gz), or one of sha256 and md5 for an npz")
        return self


class DownloadSettings(params.Section):
    public_sources: bool
    timeout_s: float = Field(gt=0, le=600)
    deadline_s: float = Field(gt=0, le=86_400)
    retries: int = Field(ge=0, le=10)
    backoff_s: float = Field(ge=0, le=60)


class Catalogue(params.Section):
    download: DownloadSettings
    datasets: dict[str, Dataset]

    @model_validator(mode="after")
    def every_dataset(self):
        wanted = set(params.Data.model_fields["dataset"].annotation.__args__)
        if set(self.datasets) != wanted:
            raise ValueError(f"datasets must be exactly {', '.join(sorted(wanted))}")
        return self


# --- fetching one file --------------------------------------------------------------------------

def copy_stream(stream, out, hashers, total, label, deadline=None):
    """Copy `stream` to `out`, hashing as it goes; log progress for a long transfer.

    Reads return whatever has arrived (read1), so a server that trickles a byte at a time
    cannot hold a read open past the deadline."""
    done, last_report = 0, time.monotonic()
    read = getattr(stream, "read1", stream.read)
    while chunk := read(CHUNK):
        done += len(chunk)
        if done > MAX_DOWNLOAD_BYTES:
            raise SourceFailed(f"{label}: larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB, refusing")
        for hasher in hashers:
            hasher.update(chunk)
        out.write(chunk)
        now = time.monotonic()
        if deadline and now > deadline[0]:
            raise SourceFailed(f"{label}: not complete after {deadline[1]:g} s "
                               f"(download.deadline_s); {done / 1e6:.1f} MB had arrived")
        if now - last_report >= PROGRESS_EVERY_S:
            last_report = now
            share = f"{100 * done / total:.0f}% of {total / 1e6:.1f} MB" if total else ""
            log.info("%s: %.1f MB %s", label, done / 1e6, share)
    return done


def declared_length(response, url):
    """The Content-Length as an int, None if absent; a malformed one fails the source."""
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise SourceFailed(f"{url}: malformed Content-Length {shown(value)}")
    total = int(value)
    if total > MAX_DOWNLOAD_BYTES:
        raise SourceFailed(f"{url}: {total} bytes is larger than expected, refusing")
    return total


def fetch_http(url, dest, hashers, cfg, deadline):
    """One HTTP GET into `dest`. Raises Transient for what a retry may fix."""
    try:
        with urllib.request.urlopen(url, timeout=cfg.timeout_s) as response:
            total = declared_length(response, url)
            with open(dest, "wb") as out:
                got = copy_stream(response, out, hashers, total, url, deadline)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise Transient(f"HTTP {e.code}") from e
        raise SourceFailed(f"{url}: HTTP {e.code} {e.reason}") from e
    except http.client.InvalidURL as e:
        raise SourceFailed(f"{url}: not a valid URL ({e})") from e
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise Transient(f"{type(e).__name__}: {e}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, socket.gaierror):  # the host name does not resolve: offline?
            raise SourceFailed(f"{url}: cannot resolve host ({e.reason})") from e
        raise Transient(f"{e.reason}") from e
    except OSError as e:  # TLS errors and other failures of the connection midway
        raise Transient(f"{type(e).__name__}: {e}") from e
    if total is not None and got != total:
        # http.client returns a short body without complaint when the server hangs up early.
        raise Transient(f"truncated body: {got} of {total} bytes")


def fetch(location, dest, cfg):
    """Copy the file at `location` into `dest`; return the hashers fed with its bytes."""
    hashers = lambda: [hashlib.md5(), hashlib.sha256()]  # noqa: E731 - every digest we accept
    path = local_path(location)
    if path is not None:
        if not path.is_file():
            raise SourceFailed(f"{location}: no such file")
        fed = hashers()
        try:
            with open(path, "rb") as src, open(dest, "wb") as out:
                copy_stream(src, out, fed, path.stat().st_size, str(path))
        except OSError as e:  # unreadable: permissions, a failing disk
            raise SourceFailed(f"{location}: {e.strerror or e}") from e
        return fed

    deadline = (time.monotonic() + cfg.deadline_s, cfg.deadline_s)
    for attempt in range(cfg.retries + 1):
        fed = hashers()
        try:
            fetch_http(location, dest, fed, cfg, deadline)
            return fed
        except Transient as e:
            wait = cfg.backoff_s * 2**attempt
            if attempt == cfg.retries or time.monotonic() + wait > deadline[0]:
                raise SourceFailed(f"{location}: {e} (gave up after {attempt + 1} attempts)") \
                    from e
            log.warning("%s: %s; retrying in %.1fs", location, e, wait)
            time.sleep(wait)


# --- verifying it -------------------------------------------------------------------------------

def hexdigest(hashers, algo):
    return next(h.hexdigest() for h in hashers if h.name == algo)


def verify(name, path, hashers, expected):
    """Check a fetched file against its Digests in the catalogue: an npz by its own hash; an IDX
    `.gz` by the published MD5 of the .gz (gz_md5), or else by the SHA-256 of what it
    decompresses to.
    Raises SourceFailed naming the file, the expected and the actual hash."""
    if name.endswith(".npz"):
        [(algo, want)] = ((k, v) for k, v in expected.model_dump().items() if v)
        got = hexdigest(hashers, algo)
        if got != want:
            raise SourceFailed(f"checksum mismatch for {name}: expected {algo}:{want}, "
                               f"got {algo}:{got}")
        return
    if expected.gz_md5 and hexdigest(hashers, "md5") == expected.gz_md5:
        return
    try:
        content = hashlib.sha256(gunzip(path.read_bytes(), MAX_IDX_BYTES)).hexdigest()
    except (zlib.error, EOFError, TooLarge) as e:
        content = f"none (not gzip data: {e})"
    if content != expected.sha256:
        published = (f"md5:{expected.gz_md5} of the .gz or " if expected.gz_md5
                     else "")
        raise SourceFailed(f"checksum mismatch for {name}: expected {published}sha256:"
                           f"{expected.sha256} of its content, got md5:"
                           f"{hexdigest(hashers, 'md5')} and sha256:{content}")


def validate_dataset(arrays, class_names):
    """Shapes, dtypes, label range and enough images of every class; the Keras layout back."""
    num_classes = len(class_names)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
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
    catalogue = params.checked(Catalogue, read_yaml(layout.CATALOGUE), layout.CATALOGUE)
    output = layout.RAW
    output.unlink(missing_ok=True)  # a failed run must not leave an older file looking current
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output.parent)
    with temporary_dir(output) as workdir:
        arrays = download(cfg.data.dataset, catalogue, os.environ, workdir)
        save_npz(output, **arrays)
    log.info("wrote %s: %d train, %d test images of %d classes of %s", output,
             len(arrays["x_train"]), len(arrays["x_test"]), len(arrays["class_names"]),
             cfg.data.dataset)


if __name__ == "__main__":
    run(main)
