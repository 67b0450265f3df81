"""Download stage: fetch MNIST into data/mnist.npz, every byte verified before it is used.

Sources are tried in order, and the first that yields a complete, verified dataset wins:
  1. $MNIST_MIRROR, then each of params `data.mirrors`: a directory, file:// or http(s):// URL
     holding either `mnist.npz` or the four IDX `.gz` files;
  2. unless `data.public_sources` is false: Keras' `mnist.npz`, then the IDX files from public
     mirrors.
HTTP timeouts, dropped connections and 5xx answers are retried with exponential backoff; a 404,
a bad checksum or a malformed file moves on to the next source. Verified files are kept across
sources, so one mirror can supply what another lacks. Whatever the source, the output is the same
canonical npz (Keras layout), so its md5 does not depend on where the bytes came from.
"""

import gzip
import hashlib
import http.client
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from stages import params as params_module
from stages.fileio import IdxError, load_npz, parse_idx, save_npz

log = logging.getLogger("download")

OUTPUT = Path("data/mnist.npz")
KERAS_BASE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
IDX_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
NPZ_FILES = ("mnist.npz",)
# Output array name -> IDX file that holds it, and how many dimensions that file must have.
IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte.gz", 3),
    "y_train": ("train-labels-idx1-ubyte.gz", 1),
    "x_test": ("t10k-images-idx3-ubyte.gz", 3),
    "y_test": ("t10k-labels-idx1-ubyte.gz", 1),
}
MAX_FILE_BYTES = 64 * 2**20  # MNIST's largest file is 11 MB; refuse anything absurd
CHUNK = 2**16
PROGRESS_EVERY_S = 2.0


class DownloadError(RuntimeError):
    """No source could provide a complete, verified dataset."""


class SourceFailed(RuntimeError):
    """This source cannot provide this file (missing, corrupt, unreachable): try the next one."""


class Transient(RuntimeError):
    """A failure worth retrying: a timeout, a dropped connection, a 5xx."""


def candidate_sources(data_params, environ):
    """The (base, file names) pairs to try, in order."""
    bases = [environ["MNIST_MIRROR"]] if environ.get("MNIST_MIRROR") else []
    bases += data_params["mirrors"]
    sources = []
    for base in bases:
        sources += [(base, NPZ_FILES), (base, tuple(f for f, _ in IDX_FILES.values()))]
    if data_params["public_sources"]:
        sources.append((KERAS_BASE, NPZ_FILES))
        sources += [(m, tuple(f for f, _ in IDX_FILES.values())) for m in IDX_MIRRORS]
    return sources


def join(base, name):
    return base.rstrip("/") + "/" + name


def local_path(location):
    """The filesystem path of a plain path or file:// URL; None for a network URL."""
    scheme = urllib.parse.urlparse(location).scheme
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path))
    if scheme in ("http", "https"):
        return None
    return Path(location)


def check_digest(name, expected, actual_hasher):
    actual = f"{actual_hasher.name}:{actual_hasher.hexdigest()}"
    if actual != expected:
        raise SourceFailed(f"checksum mismatch for {name}: expected {expected}, got {actual}")


def copy_stream(stream, out, hasher, total, label):
    """Copy `stream` to `out`, hashing as it goes; log progress for a long transfer."""
    done, last_report = 0, time.monotonic()
    while chunk := stream.read(CHUNK):
        done += len(chunk)
        if done > MAX_FILE_BYTES:
            raise SourceFailed(f"{label}: larger than {MAX_FILE_BYTES // 2**20} MiB, refusing")
        hasher.update(chunk)
        out.write(chunk)
        if time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            share = f"{100 * done / total:.0f}% of {total / 1e6:.1f} MB" if total else ""
            log.info("%s: %.1f MB %s", label, done / 1e6, share)
    return done


def fetch_http(url, dest, hasher, cfg):
    """One HTTP GET into `dest`. Raises Transient for what a retry may fix."""
    try:
        with urllib.request.urlopen(url, timeout=cfg["timeout_s"]) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total and total > MAX_FILE_BYTES:
                raise SourceFailed(f"{url}: {total} bytes is larger than expected, refusing")
            with open(dest, "wb") as out:
                got = copy_stream(response, out, hasher, total, url)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise Transient(f"HTTP {e.code}") from e
        raise SourceFailed(f"{url}: HTTP {e.code} {e.reason}") from e
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise Transient(f"{type(e).__name__}: {e}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, socket.gaierror):  # the host name does not resolve: offline?
            raise SourceFailed(f"{url}: cannot resolve host ({e.reason})") from e
        raise Transient(f"{e.reason}") from e
    if total and got != total:
        # http.client returns a short body without complaint when the server hangs up early.
        raise Transient(f"truncated body: {got} of {total} bytes")


def fetch(location, expected, dest, cfg):
    """Copy the file at `location` into `dest` and verify it against `expected` ('algo:hex')."""
    name = dest.name
    algo = expected.split(":", 1)[0]
    path = local_path(location)
    if path is not None:
        if not path.is_file():
            raise SourceFailed(f"{location}: no such file")
        hasher = hashlib.new(algo)
        with open(path, "rb") as src, open(dest, "wb") as out:
            copy_stream(src, out, hasher, path.stat().st_size, str(path))
        check_digest(name, expected, hasher)
        return

    for attempt in range(cfg["retries"] + 1):
        hasher = hashlib.new(algo)
        try:
            fetch_http(location, dest, hasher, cfg)
            break
        except Transient as e:
            if attempt == cfg["retries"]:
                raise SourceFailed(f"{location}: {e} (gave up after {attempt + 1} attempts)")
            wait = cfg["backoff_s"] * 2**attempt
            log.warning("%s: %s; retrying in %.1fs", location, e, wait)
            time.sleep(wait)
    check_digest(name, expected, hasher)


def validate_dataset(arrays):
    """Check shapes, dtypes and label range; return the arrays in the Keras layout."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise SourceFailed(f"x_{split} is {x.dtype} {x.shape}; expected uint8 (N, 28, 28)")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise SourceFailed(f"y_{split} is {y.dtype} {y.shape}; expected {len(x)} labels")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise SourceFailed(f"y_{split} holds labels outside 0-9")
    return {k: np.asarray(v, dtype=np.uint8) for k, v in arrays.items()}


def read_dataset(names, files):
    """Turn verified files into the four arrays."""
    if names == NPZ_FILES:
        try:
            arrays = load_npz(files["mnist.npz"])
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise SourceFailed(f"mnist.npz is not a readable npz: {e}") from e
        missing = set(IDX_FILES) - set(arrays)
        if missing:
            raise SourceFailed(f"mnist.npz lacks {', '.join(sorted(missing))}")
        return validate_dataset({k: arrays[k] for k in IDX_FILES})
    arrays = {}
    for key, (name, ndim) in IDX_FILES.items():
        try:
            arrays[key] = parse_idx(gzip.decompress(files[name].read_bytes()), ndim)
        except (OSError, EOFError, zlib.error, IdxError) as e:
            raise SourceFailed(f"{name}: {e}") from e
    return validate_dataset(arrays)


def download(data_params, environ, workdir):
    """Try each source in turn; return the four arrays from the first that works."""
    cfg = {k: data_params[k] for k in ("timeout_s", "retries", "backoff_s")}
    checksums = data_params["checksums"]
    verified = {}  # file name -> path of a verified copy, shared by all sources
    failures = []
    for base, names in candidate_sources(data_params, environ):
        try:
            for name in names:
                if name not in verified:
                    log.info("fetching %s", join(base, name))
                    dest = Path(workdir) / name
                    try:
                        fetch(join(base, name), checksums[name], dest, cfg)
                    except SourceFailed:
                        dest.unlink(missing_ok=True)
                        raise
                    verified[name] = dest
            arrays = read_dataset(names, verified)
            log.info("got MNIST from %s", base)
            return arrays
        except SourceFailed as e:
            log.warning("%s", e)
            what = "mnist.npz" if names == NPZ_FILES else "IDX files"
            failures.append(f"{base} ({what}): {e}")
    if not failures:
        raise DownloadError("no sources to try: set MNIST_MIRROR, add data.mirrors, "
                            "or set data.public_sources: true")
    raise DownloadError("no source gave a complete, verified MNIST:\n  "
                        + "\n  ".join(failures)
                        + "\nOffline? Point MNIST_MIRROR at a directory holding mnist.npz "
                          "or the four IDX .gz files.")


def _exit_on_sigterm(signum, frame):
    # Turn `kill` into an exception so the temporary directory is cleaned up on the way out.
    sys.exit(128 + signum)


def main():
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    data_params = params_module.load("data")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    OUTPUT.unlink(missing_ok=True)  # a failed run must not leave an older file looking current
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUTPUT.parent, prefix=".download-") as workdir:
        try:
            arrays = download(data_params, os.environ, workdir)
        except DownloadError as e:
            sys.exit(f"error: {e}")
        save_npz(OUTPUT, **arrays)
    log.info("wrote %s: %d train, %d test images", OUTPUT, len(arrays["x_train"]),
             len(arrays["x_test"]))


if __name__ == "__main__":
    main()
