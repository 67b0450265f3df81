"""Reading and writing the stages' files: atomic, reproducible writes, and one-line errors for
an input that is missing or damaged.

Every output is written under a temporary name beside its place (`.NAME.XXXX.tmp`), then
renamed into it, so an interrupted stage never leaves a plausible-looking half output; a stage
killed outright (SIGKILL) leaves its temporary file, which the next run of a stage writing
there removes. Nothing written carries a timestamp: the same arrays give the same bytes, which
is what lets `dvc repro -f` give the same md5s twice.
"""

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.runner import StageError, exit_if_stopped

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip entries carry a time; a fixed one keeps them identical


class InputError(StageError):
    """An input that is missing, unreadable or not what it should be; the message names it and
    says what to do."""


@contextlib.contextmanager
def atomic(target: Path, folder: bool = False) -> Iterator[Path]:
    """A temporary path (a file, or a folder) beside `target`, renamed onto it if the block
    succeeds, removed if it does not."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # What a stage killed outright left here: DVC runs one stage of a workspace at a time, so
    # any temporary file here is a dead run's.
    for entry in target.parent.glob(".*.tmp"):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    # A free name; what is made there gets the usual mode (mkdtemp's is owner-only).
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    tmp.rmdir()
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        exit_if_stopped()
        if folder and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: Path, value: Any) -> None:
    """JSON with sorted keys and a trailing newline: stable bytes for stable content."""
    write_bytes(target, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def save_npz(target: Path, **arrays: np.ndarray) -> None:
    """np.savez, but atomic and byte-reproducible (fixed entry times, sorted names): np.savez
    stamps each entry with the current time, so DVC would see a new output on every run."""
    with atomic(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            array = np.asarray(arrays[name])
            with archive.open(info, "w", force_zip64=array.nbytes > 2**30) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)


def read_input(path: Path, made_by: str, reader: Callable[[Path], Any]) -> Any:
    """`reader(path)` for an input another stage writes; what goes wrong is one InputError that
    names the file, the cause, and the stage to run."""
    rerun = f"run `dvc repro` (the {made_by} stage writes it)"
    if not Path(path).is_file():
        raise InputError(f"{path}: not found; {rerun}")
    try:
        return reader(Path(path))
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(f"{path}: damaged or not what {made_by} writes ({error}); {rerun}") \
            from error


def load_npz(path: Path, made_by: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz another stage wrote (no pickles)."""
    def load(path: Path) -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    return read_input(path, made_by, load)


def load_json(path: Path, made_by: str) -> dict:
    return read_input(path, made_by, lambda path: json.loads(path.read_text()))
