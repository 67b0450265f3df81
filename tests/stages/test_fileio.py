"""Reading and writing the stages' files: reproducible, atomic writes, one form of temporary
name, bounded reads, and finished outputs moved into place whole even when a stop arrives."""

import gzip
import os
import subprocess
import zipfile

import numpy as np
import pytest

from stages.fileio import (
    TEMPORARY,
    ZIP_EPOCH,
    TooLarge,
    atomic_path,
    gunzip,
    load_npz,
    read_json,
    remove_stale_temporaries,
    replace_dir,
    save_npz,
    temporary_dir,
    write_json,
)

# --- reproducible, atomic writes -------------------------------------------------------

def sample_arrays():
    rng = np.random.default_rng(1)
    return {"x": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
            "y": np.arange(5, dtype=np.uint8),
            "f": rng.standard_normal((3, 4)).astype(np.float32),
            "i": np.arange(6, dtype=np.int64).reshape(2, 3).T}  # not C-contiguous


def test_save_npz_loads_back_equal(tmp_path):
    arrays = sample_arrays()
    save_npz(tmp_path / "a.npz", **arrays)
    loaded = load_npz(tmp_path / "a.npz", 2**20)
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)
    assert os.listdir(tmp_path) == ["a.npz"], "no temporary file left beside it"


def test_save_npz_is_byte_identical_whenever_it_is_written(tmp_path):
    save_npz(tmp_path / "a.npz", **sample_arrays())
    arrays = sample_arrays()
    save_npz(tmp_path / "b.npz", **dict(reversed(list(arrays.items()))))  # order of kwargs too
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        assert [i.filename for i in zf.infolist()] == ["f.npy", "i.npy", "x.npy", "y.npy"]
        assert {i.date_time for i in zf.infolist()} == {ZIP_EPOCH}
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]


def test_save_npz_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.npz"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):  # object arrays would need pickle, which is refused
        save_npz(target, x=np.arange(3), y=np.array([{"a": 1}], dtype=object))
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.npz"]


def test_save_npz_gives_the_usual_file_mode(tmp_path):
    save_npz(tmp_path / "a.npz", x=np.zeros(1))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.npz").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_json_stable_bytes(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2], "c": {"z": 0.5, "y": None}})
    write_json(tmp_path / "b.json", {"c": {"y": None, "z": 0.5}, "a": [1, 2], "b": 1})
    data = (tmp_path / "a.json").read_bytes()
    assert data == (tmp_path / "b.json").read_bytes()
    assert data.endswith(b"}\n") and data.index(b'"a"') < data.index(b'"b"') < data.index(b'"c"')
    assert read_json(tmp_path / "a.json", "a test", ["a"]) == {"a": [1, 2], "b": 1,
                                                              "c": {"y": None, "z": 0.5}}
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json"]


# --- bounded reads: a small file cannot make us allocate gigabytes -------------------------------

def test_load_npz_refuses_a_member_over_the_limit_from_its_header(tmp_path):
    save_npz(tmp_path / "a.npz", x=np.zeros((100, 28, 28), np.uint8))
    assert load_npz(tmp_path / "a.npz", 78_400)["x"].shape == (100, 28, 28)
    with pytest.raises(TooLarge, match=r"x.npy declares \(100, 28, 28\) uint8, 78,400 bytes"):
        load_npz(tmp_path / "a.npz", 78_399)


def test_load_npz_refuses_pickles_and_foreign_members(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match="not an .npy array"):
        load_npz(tmp_path / "a.npz", 2**20)
    np.savez(tmp_path / "b.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_npz(tmp_path / "b.npz", 2**20)


def test_gunzip_stops_at_its_limit():
    data = gzip.compress(bytes(1000))
    assert gunzip(data, 1000) == bytes(1000)
    with pytest.raises(TooLarge, match="more than 999 bytes"):
        gunzip(data, 999)
    with pytest.raises(EOFError, match="truncated"):
        gunzip(data[:-12], 1000)


def test_replace_dir_swaps_whole_folders_and_leaves_nothing_aside(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/old.txt").write_text("old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new/new.txt").write_text("new")
    replace_dir(tmp_path / "new", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]


# --- temporary files: one form of name, removed when their writer is gone -----------------------

def test_temporary_files_and_folders_share_one_form_of_name(tmp_path):
    with atomic_path(tmp_path / "raw.npz") as file, temporary_dir(tmp_path / "processed") as dir:
        assert TEMPORARY.match(file.name) and TEMPORARY.match(dir.name)
        assert {int(TEMPORARY.match(p.name).group(1)) for p in (file, dir)} == {os.getpid()}
        file.write_bytes(b"done")
    assert [p.name for p in tmp_path.iterdir()] == ["raw.npz"], "the folder removed"


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path):
    live = subprocess.Popen(["sleep", "30"])
    try:
        dead = tmp_path / ".raw.npz.999999999.x1y2.tmp"  # no such process
        dead.write_bytes(b"half")
        (tmp_path / ".processed.999999999.a1b2.tmp").mkdir()
        alive = tmp_path / f".processed.{live.pid}.c3d4.tmp"
        alive.mkdir()
        (tmp_path / "raw.npz").write_bytes(b"an output")
        (tmp_path / ".gitignore").write_text("/raw.npz\n")
        remove_stale_temporaries(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [alive.name, "raw.npz", ".gitignore"])
    finally:
        live.kill()
        live.wait()
