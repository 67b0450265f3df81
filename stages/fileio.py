"""File formats shared by the stages: IDX parsing, and atomic, byte-reproducible writes.

Outputs are written to a temporary file beside the target and renamed into place, so an
interrupted stage never leaves a plausible-looking half file. Nothing written here carries a
timestamp: the same arrays always give the same bytes, which is what lets `dvc repro -f` give
the same md5s twice.
"""

import json
import math
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Zip entries carry a modification time; a fixed one keeps .npz (and .keras) files reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

IDX_UBYTE = 0x08

# mkstemp creates files readable by their owner alone; outputs get the usual mode instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


class IdxError(ValueError):
    """Bytes that are not a well-formed IDX file of unsigned bytes."""


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
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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


def load_npz(path):
    """Load every array of an .npz into a dict (pickled objects are refused)."""
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
