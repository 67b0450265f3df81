"""Fetching one file from one source (a directory, a file:// or an http(s):// URL), and checking
it against the catalogue's hashes.

Reads return whatever has arrived, so a server that trickles a byte at a time cannot hold a
read open past the deadline; HTTP timeouts, dropped connections, 5xx and 429 answers are retried
with exponential backoff (Transient); anything else fails the source (SourceFailed), and
download moves on to the next.
"""

import hashlib
import http.client
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from stages.fileio import TooLarge, gunzip
from stages.layout import MAX_ARRAY_BYTES
from stages.yaml12 import shown

log = logging.getLogger("download")

MAX_IDX_BYTES = 16 + MAX_ARRAY_BYTES  # the header, then the bytes
MAX_DOWNLOAD_BYTES = 64 * 2**20  # on the wire; the largest real file is 26 MB (Fashion's)
CHUNK = 2**16
PROGRESS_EVERY_S = 2.0


class SourceFailed(RuntimeError):
    """This source cannot provide this file (missing, corrupt, unreachable): try the next one."""


class Transient(RuntimeError):
    """A failure worth retrying: a timeout, a dropped connection, a 5xx."""


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
