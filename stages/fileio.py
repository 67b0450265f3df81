"""Reading and writing the stages' files: bounded reads, atomic and reproducible writes.

Every output is written under a temporary name beside its place, then renamed into it, so an
interrupted stage never leaves a plausible-looking half output. Temporary files and folders
have one form of name, `.NAME.PID.XXXX.tmp`: a stage removes those whose process is gone
(killed with SIGKILL, say) before it writes. Nothing written here carries a timestamp: the same
arrays give the same bytes, which is what lets `dvc repro -f` give the same md5s twice.

Reads are bounded: an array header or a compressed stream that declares more than the caller
allows is refused before anything that size is allocated.
"""

import contextlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from stages.layout import MAX_ARRAY_BYTES
from stages.runner import STOP_SIGNALS, StageError, exit_if_stopped, on_stop_signal

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip entries carry a time; a fixed one keeps them identical
MAX_SPLIT_BYTES = 4 * MAX_ARRAY_BYTES  # a preprocessed split: float32 pixels
TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .NAME.PID.XXXX.tmp

# mkstemp creates files readable by their owner alone; outputs get the usual mode instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(StageError):
    """An input file that is missing, unreadable or not what it should be; the message names it
    and says what to do, in one line."""


class TooLarge(ValueError):
    """Data that declares (or decompresses to) more bytes than the reader allows."""


# --- writing -------------------------------------------------------------------------------------

def temporary_name(target):
    return dict(dir=Path(target).parent, prefix=f".{Path(target).name}.{os.getpid()}.",
                suffix=".tmp")


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(**temporary_name(target))
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def temporary_dir(target):
    """A temporary folder beside `target`, for outputs that must appear together; removed on
    the way out unless it was moved into place (replace_dir, replace_files)."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(**temporary_name(target)))
    path.chmod(0o777 & ~_UMASK)  # it may become an output: the usual mode, not mkdtemp's
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_bytes(target, data):
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target, obj):
    """JSON with sorted keys and a trailing newline: stable bytes for stable content."""
    write_bytes(target, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_npz(target, **arrays):
    """Like np.savez, but byte-reproducible (fixed entry times, sorted names) and atomic:
    np.savez stamps each entry with the current time, so DVC would see a new output each run."""
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            # Streamed into the archive: no in-memory copy of an array that may be 200 MB.
            with zf.open(info, "w", force_zip64=array.nbytes > 2**30) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)


@contextlib.contextmanager
def no_stop_midway():
    """For moving finished outputs into place: a stop signal that arrived before is obeyed
    here (no swap starts), one that arrives during the block waits until it is done."""
    exit_if_stopped()
    caught = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, on_stop_signal)
        if caught:
            on_stop_signal(caught[0], None)


def replace_files(source, target, names):
    """Move the finished files `names` from folder `source` into folder `target`, all of them
    or none of them; other files in `target` are left alone."""
    Path(target).mkdir(parents=True, exist_ok=True)
    with no_stop_midway():
        for name in names:
            os.replace(Path(source) / name, Path(target) / name)


def replace_dir(source, target):
    """Move the finished folder `source` onto `target`, whatever `target` was: the old one is
    moved aside first and removed last, so a stop leaves the old folder or the new one."""
    target = Path(target)
    aside = target.with_name(f".{target.name}.{os.getpid()}.old.tmp")
    try:
        with no_stop_midway():
            if target.is_dir() and not target.is_symlink():
                os.replace(target, aside)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(source, target)
    finally:  # a stop that waited for the swap ends the stage here: the old folder goes too
        shutil.rmtree(aside, ignore_errors=True)


def remove_stale_temporaries(directory):
    """Delete the temporary files and folders an earlier, killed run left in `directory`:
    those whose writer is gone. A live writer's (another stage running now) are left alone."""
    directory = Path(directory)
    for entry in directory.iterdir() if directory.is_dir() else ():
        match = TEMPORARY.match(entry.name)
        if not match or process_alive(int(match.group(1))):
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


# --- reading -------------------------------------------------------------------------------------

def npy_header(stream):
    """(shape, dtype) from the header of an .npy stream, which is left just past the header."""
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    shape, _, dtype = readers[version](stream)
    return shape, dtype


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
                size = math.prod(shape) * dtype.itemsize  # Python ints: cannot wrap
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


def read_json(path, made_by, keys):
    """A JSON object another stage wrote, with at least `keys` in it (one InputError if not)."""
    def load(path):
        value = json.loads(Path(path).read_text())
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
