"""File formats shared by the stages: IDX parsing, bounded reads, atomic reproducible writes.

Outputs are written to a temporary file beside the target and renamed into place, so an
interrupted stage never leaves a plausible-looking half output. Temporary names carry the
writer's process id: a stage removes the ones whose writer is gone (killed with SIGKILL, say)
before it writes. Nothing written here carries a timestamp: the same arrays always give the same
bytes, which is what lets `dvc repro -f` give the same md5s twice.

Reads are bounded: an array header or a compressed stream that declares more than the caller
allows is refused before anything that size is allocated.
"""

import json
import math
import os
import re
import shutil
import signal
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Zip entries carry a modification time; a fixed one keeps .npz (and .keras) files reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

IDX_UBYTE = 0x08

# MNIST and Fashion-MNIST hold at most 60,000 images of 28x28 bytes in one array or IDX file.
# Anything that declares or decompresses to more is refused before it is allocated.
MAX_ARRAY_BYTES = 60_000 * 28 * 28
MAX_IDX_BYTES = 16 + MAX_ARRAY_BYTES
MAX_SPLIT_BYTES = 4 * MAX_ARRAY_BYTES  # a preprocessed split: float32 pixels


def dataset_file(dataset):
    """Where download writes a dataset and preprocess reads it: data/mnist.npz, ..."""
    return Path("data") / f"{dataset}.npz"

# mkstemp creates files readable by their owner alone; outputs get the usual mode instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


class IdxError(ValueError):
    """Bytes that are not a well-formed IDX file of unsigned bytes."""


class InputError(ValueError):
    """An input file that is missing, unreadable or not what it should be; the message names it
    and says what to do, in one line."""


class TooLarge(ValueError):
    """Data that declares (or decompresses to) more bytes than the reader allows."""


def parse_idx(data, expected_ndim=None):
    """Parse an uncompressed IDX file (the format MNIST ships in) into a uint8 array.

    Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
    each dimension as a big-endian uint32. The magic number is those first four bytes read as one
    integer: 2051 for images (3 dimensions), 2049 for labels (1 dimension).
    """
    if len(data) < 4:
        raise IdxError(f"too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
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


@contextmanager
def atomic_path(target):
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(target, data):
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target, obj):
    """Write JSON with sorted keys and a trailing newline: stable bytes for stable content."""
    write_bytes(target, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path):
    return json.loads(Path(path).read_text())


def save_npz(target, **arrays):
    """Like np.savez, but byte-reproducible (fixed entry times, sorted names) and atomic.

    np.savez stamps each entry with the current time, so saving the same arrays twice gives
    different md5s and DVC would see a changed output on every run.
    """
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            # Streamed into the archive: no in-memory copy of an array that may be 200 MB.
            with zf.open(info, "w", force_zip64=array.nbytes > 2**30) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)


def npy_header(stream):
    """(shape, dtype) from the header of an .npy stream, which is left just past the header."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    return shape, dtype


def declared_bytes(shape, dtype):
    return math.prod(shape) * dtype.itemsize  # Python ints: cannot wrap


def load_npz(path, max_bytes):
    """Every array of an .npz, as a dict. Pickled objects are refused, and so is any member
    whose header declares more than `max_bytes` or more than the archive holds for it: a 1 KB
    file cannot make us allocate gigabytes. Raises ValueError (or a subclass), zipfile.BadZipFile
    or OSError for what is not a well-formed npz."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"holds {info.filename!r}, which is not an .npy array")
            with archive.open(info) as member:
                shape, dtype = npy_header(member)
                size = declared_bytes(shape, dtype)
                if dtype.hasobject:
                    raise ValueError(f"{info.filename} holds pickled Python objects, refused")
                if size > max_bytes:
                    raise TooLarge(f"{info.filename} declares {shape} {dtype}, "
                                   f"{size:,} bytes; at most {max_bytes:,} are expected")
                if size > info.file_size:
                    raise ValueError(f"{info.filename} declares {shape} {dtype} but holds "
                                     f"only {info.file_size:,} bytes")
            with archive.open(info) as member:
                arrays[info.filename[:-4]] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


def gunzip(data, max_bytes):
    """Decompress gzip bytes, refusing output past `max_bytes` (a gzip bomb) without producing
    it. Raises zlib.error or EOFError for what is not complete gzip data."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = inflater.decompress(data, max_bytes + 1)
    if len(out) > max_bytes:
        raise TooLarge(f"decompresses to more than {max_bytes:,} bytes")
    if not inflater.eof:
        raise EOFError("compressed data ends early (truncated file)")
    return out


# --- inputs of a stage, and the temporary files of earlier runs ---------------------------------

def read_input(path, made_by, reader):
    """`reader(path)` for an input another stage writes; what goes wrong becomes one InputError
    that names the file, the cause, and the stage to run."""
    path = Path(path)
    rerun = f"run `dvc repro` (the {made_by} stage writes it)"
    if not path.exists():
        raise InputError(f"{path}: not found; {rerun}")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; remove it and {rerun}")
    try:
        return reader(path)
    except InputError:  # the reader's own message already names the file and the cause
        raise
    except TooLarge as e:
        raise InputError(f"{path}: {e}; remove it and {rerun}") from e
    except (ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: damaged or not what {made_by} writes ({e}); remove it and "
                         f"{rerun}") from e


def read_json_with(path, made_by, keys):
    """A JSON object another stage wrote, with at least `keys` in it (one InputError if not)."""
    def load(path):
        value = read_json(path)
        missing = [key for key in keys if not isinstance(value, dict) or key not in value]
        if missing:
            raise ValueError(f"no {', '.join(missing)} in it")
        return value
    return read_input(path, made_by, load)


def read_split(path):
    """One split preprocess wrote (train, val or test): {'x': float32 (N, 28, 28), 'y': (N,)}."""
    def load(path):
        split = load_npz(path, MAX_SPLIT_BYTES)
        x, y = split.get("x"), split.get("y")
        if x is None or y is None or x.dtype != np.float32 or x.ndim != 3 or y.ndim != 1 \
                or len(x) != len(y) or len(y) == 0:
            raise ValueError("expected float32 images x (N, H, W) and N labels y")
        return split
    return read_input(path, "preprocess", load)


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$|^\.[a-z]+-(\d+)-[^/]+$")


def remove_stale_temporaries(directory):
    """Delete the temporary files and directories an earlier, killed run of ours left in
    `directory`: those named by atomic_path or temporary_dir whose process is gone. A live
    writer's files (another stage running right now) are left alone."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if not match or process_alive(int(match.group(1) or match.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextmanager
def temporary_dir(beside, prefix):
    """A temporary directory `.{prefix}-{pid}-XXXX` in `beside`, removed on the way out."""
    Path(beside).mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(dir=beside, prefix=f".{prefix}-{os.getpid()}-")
    os.chmod(path, 0o777 & ~_UMASK)  # it may become an output: the usual mode, not mkdtemp's
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def signals_deferred():
    """SIGTERM, SIGHUP and SIGINT wait until the block is done: one that arrives meanwhile is
    noted, and raised again at the end (where the stage's own handler unwinds it). Signal
    masks would not do: TensorFlow's threads, which do not block them, would take it."""
    caught = []
    signums = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in signums:
        signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


def replace_files(source, target, names):
    """Move the finished files `names` from folder `source` into folder `target`, all of them
    or none of them; other files in `target` are left alone."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        for name in names:
            os.replace(Path(source) / name, target / name)


def replace_dir(source, target):
    """Move the finished folder `source` onto `target`, whatever `target` was: the old one is
    moved aside first and removed last, so a stop leaves the old folder or the new one."""
    target = Path(target)
    aside = target.with_name(f".{target.name}-{os.getpid()}-old")
    with signals_deferred():
        if target.is_dir() and not target.is_symlink():
            os.replace(target, aside)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)
