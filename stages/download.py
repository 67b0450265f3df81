"""Download stage: fetch the dataset into data/<dataset>.npz, every byte verified before use.

The dataset (`data.dataset`: MNIST or Fashion-MNIST) has its own section in params.yaml with
its sources and hashes. Sources are tried in order, and the first that yields a complete,
verified dataset wins:
  1. $MNIST_MIRROR (or $FASHION_MNIST_MIRROR), then the section's `mirrors`: directories,
     file:// or http(s):// URLs holding the npz (MNIST only) or the four IDX `.gz` files;
  2. unless `data.public_sources` is false: the section's `npz_sources`, then `idx_sources`.
A `.gz` file is accepted when its own hash matches the published one, or when what it
decompresses to matches the content hash: a mirror that re-compresses the files (Debian does)
serves the same data. HTTP timeouts, dropped connections and 5xx answers are retried with
exponential backoff; a 404, a bad hash, a malformed file or answer, or a transfer slower than
`data.deadline_s` moves on to the next source. Verified files are kept across sources, so one
mirror can supply what another lacks. Whatever the source, the output is the same canonical
npz (Keras layout plus the class names), so its md5 does not depend on where the bytes came from.
"""

import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from stages import params as params_module
from stages.fileio import (
    MAX_ARRAY_BYTES,
    MAX_IDX_BYTES,
    IdxError,
    TooLarge,
    dataset_file,
    gunzip,
    load_npz,
    parse_idx,
    remove_stale_temporaries,
    save_npz,
    temporary_dir,
)
from stages.runner import StageError, run

log = logging.getLogger("download")

# Output array name -> IDX file that holds it, and how many dimensions that file must have.
IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte.gz", 3),
    "y_train": ("train-labels-idx1-ubyte.gz", 1),
    "x_test": ("t10k-images-idx3-ubyte.gz", 3),
    "y_test": ("t10k-labels-idx1-ubyte.gz", 1),
}
IDX_NAMES = tuple(name for name, _ in IDX_FILES.values())
MAX_FILE_BYTES = 64 * 2**20  # on the wire; the largest real file is 26 MB (Fashion's images)
MIN_TRAIN_PER_CLASS = 10  # fewer, and the validation split of some class would be empty
CHUNK = 2**16
PROGRESS_EVERY_S = 2.0


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


def candidate_sources(data_params, environ):
    """The (base, file names) pairs to try, in order."""
    dataset = data_params[data_params["dataset"]]
    npz = npz_name(dataset["checksums"])
    env_mirror = environ.get(mirror_variable(data_params["dataset"]))
    sources = []
    for base in ([env_mirror] if env_mirror else []) + dataset["mirrors"]:
        sources += [(base, (npz,))] if npz else []
        sources.append((base, IDX_NAMES))
    if data_params["public_sources"]:
        sources += [(base, (npz,)) for base in dataset["npz_sources"] if npz]
        sources += [(base, IDX_NAMES) for base in dataset["idx_sources"]]
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


# --- fetching one file --------------------------------------------------------------------------

def copy_stream(stream, out, hashers, total, label, deadline=None):
    """Copy `stream` to `out`, hashing as it goes; log progress for a long transfer.

    Reads return whatever has arrived (read1), so a server that trickles a byte at a time
    cannot hold a read open past the deadline."""
    done, last_report = 0, time.monotonic()
    read = getattr(stream, "read1", stream.read)
    while chunk := read(CHUNK):
        done += len(chunk)
        if done > MAX_FILE_BYTES:
            raise SourceFailed(f"{label}: larger than {MAX_FILE_BYTES // 2**20} MiB, refusing")
        for hasher in hashers:
            hasher.update(chunk)
        out.write(chunk)
        now = time.monotonic()
        if deadline and now > deadline[0]:
            raise SourceFailed(f"{label}: not complete after {deadline[1]:g} s "
                               f"(data.deadline_s); {done / 1e6:.1f} MB had arrived")
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
        raise SourceFailed(f"{url}: malformed Content-Length {params_module.shown(value)}")
    total = int(value)
    if total > MAX_FILE_BYTES:
        raise SourceFailed(f"{url}: {total} bytes is larger than expected, refusing")
    return total


def fetch_http(url, dest, hashers, cfg, deadline):
    """One HTTP GET into `dest`. Raises Transient for what a retry may fix."""
    try:
        with urllib.request.urlopen(url, timeout=cfg["timeout_s"]) as response:
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

    deadline = (time.monotonic() + cfg["deadline_s"], cfg["deadline_s"])
    for attempt in range(cfg["retries"] + 1):
        fed = hashers()
        try:
            fetch_http(location, dest, fed, cfg, deadline)
            return fed
        except Transient as e:
            wait = cfg["backoff_s"] * 2**attempt
            if attempt == cfg["retries"] or time.monotonic() + wait > deadline[0]:
                raise SourceFailed(f"{location}: {e} (gave up after {attempt + 1} attempts)") \
                    from e
            log.warning("%s: %s; retrying in %.1fs", location, e, wait)
            time.sleep(wait)


# --- verifying it -------------------------------------------------------------------------------

def hexdigest(hashers, algo):
    return next(h.hexdigest() for h in hashers if h.name == algo)


def verify(name, path, hashers, expected):
    """Check a fetched file against params' checksums: an npz by its own hash; an IDX `.gz` by
    the published MD5 of the .gz (gz_md5), or else by the SHA-256 of what it decompresses to.
    Raises SourceFailed naming the file, the expected and the actual hash."""
    if name.endswith(".npz"):
        [(algo, want)] = expected.items()
        got = hexdigest(hashers, algo)
        if got != want:
            raise SourceFailed(f"checksum mismatch for {name}: expected {algo}:{want}, "
                               f"got {algo}:{got}")
        return
    if "gz_md5" in expected and hexdigest(hashers, "md5") == expected["gz_md5"]:
        return
    try:
        content = hashlib.sha256(gunzip(path.read_bytes(), MAX_IDX_BYTES)).hexdigest()
    except (zlib.error, EOFError, TooLarge) as e:
        content = f"none (not gzip data: {e})"
    if content != expected["sha256"]:
        published = (f"md5:{expected['gz_md5']} of the .gz or " if "gz_md5" in expected
                     else "")
        raise SourceFailed(f"checksum mismatch for {name}: expected {published}sha256:"
                           f"{expected['sha256']} of its content, got md5:"
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


def read_dataset(names, files, class_names):
    """Turn verified files into the four arrays."""
    if len(names) == 1:  # the npz
        try:
            arrays = load_npz(files[names[0]], MAX_ARRAY_BYTES)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise SourceFailed(f"{names[0]} is not a readable npz: {e}") from e
        missing = set(IDX_FILES) - set(arrays)
        if missing:
            raise SourceFailed(f"{names[0]} lacks {', '.join(sorted(missing))}")
        return validate_dataset({k: arrays[k] for k in IDX_FILES}, class_names)
    arrays = {}
    for key, (name, ndim) in IDX_FILES.items():
        try:
            arrays[key] = parse_idx(gunzip(files[name].read_bytes(), MAX_IDX_BYTES), ndim)
        except (OSError, EOFError, zlib.error, IdxError, TooLarge) as e:
            raise SourceFailed(f"{name}: {e}") from e
    return validate_dataset(arrays, class_names)


def download(data_params, environ, workdir):
    """Try each source in turn; return the arrays from the first that works."""
    name = data_params["dataset"]
    dataset = data_params[name]
    cfg = {k: data_params[k] for k in ("timeout_s", "deadline_s", "retries", "backoff_s")}
    verified = {}  # file name -> path of a verified copy, shared by all sources
    failures = []
    for base, names in candidate_sources(data_params, environ):
        what = names[0] if len(names) == 1 else "IDX files"
        problem = params_module.location_problem(base)
        if problem:  # a bad $MNIST_MIRROR; those in params.yaml were checked already
            failures.append(f"{params_module.shown(base)} ({what}): {problem}")
            log.warning("%s", failures[-1])
            continue
        try:
            for file in names:
                if file not in verified:
                    log.info("fetching %s", join(base, file))
                    dest = Path(workdir) / file
                    try:
                        verify(file, dest, fetch(join(base, file), dest, cfg),
                               dataset["checksums"][file])
                    except SourceFailed:
                        dest.unlink(missing_ok=True)
                        raise
                    verified[file] = dest
            arrays = read_dataset(names, verified, dataset["class_names"])
            log.info("got %s from %s", name, base)
            return arrays
        except SourceFailed as e:
            log.warning("%s", e)
            failures.append(f"{base} ({what}): {e}")
    variable = mirror_variable(name)
    if not failures:
        raise StageError(f"no sources to try for {name}: set {variable}, add "
                         f"data.{name}.mirrors, or set data.public_sources: true")
    raise StageError(f"no source gave a complete, verified {name}: "
                     + "; ".join(failures)
                     + f". Offline? Point {variable} at a directory holding the four IDX "
                       ".gz files" + (" or mnist.npz" if npz_name(dataset["checksums"]) else ""))


def main():
    data_params = params_module.load("data")
    output = dataset_file(data_params["dataset"])
    output.unlink(missing_ok=True)  # a failed run must not leave an older file looking current
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output.parent)
    with temporary_dir(output.parent, "download") as workdir:
        arrays = download(data_params, os.environ, workdir)
        save_npz(output, **arrays)
    log.info("wrote %s: %d train, %d test images of %d classes", output, len(arrays["x_train"]),
             len(arrays["x_test"]), len(arrays["class_names"]))


if __name__ == "__main__":
    run(main)
