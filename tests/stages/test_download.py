"""The download stage against real sources: HTTP servers on 127.0.0.1, local directories and
file:// URLs, each serving the tiny dataset (whole, partly, corrupted, slowly or not at all).

Most tests call `download.download()` directly; the end-to-end ones run `python -m
stages.download` in a temporary directory, as DVC would, to check exit codes and what is left
in data/.
"""

import gzip
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from stages import download
from stages.catalogue import Catalogue
from stages.download import IdxError, candidate_sources, parse_idx
from stages.fileio import load_npz
from stages.params import checked, save
from stages.runner import StageError
from tests.conftest import REPO, repo_catalogue
from tests.digits import IDX_NAMES, idx_bytes, synthetic_mnist, write_mirror

IDX_FILES = list(IDX_NAMES.values())  # the order the stage fetches them in
NPZ_PATH = ["/mnist.npz"]
IDX_PATHS = ["/" + name for name in IDX_FILES]
DIGITS = [str(d) for d in range(10)]


# --- helpers -----------------------------------------------------------------------------------

def catalogue(checksums, mirrors=(), **settings):
    """The repo's catalogue, for quick, offline tests of MNIST: `checksums`, `mirrors`, no
    public sources, quick retries, and download `settings`; checked like the real one."""
    values = repo_catalogue()
    values["download"].update({"public_sources": False, "timeout_s": 0.5, "deadline_s": 30,
                               "retries": 1, "backoff_s": 0.01, **settings})
    values["datasets"]["mnist"].update({"mirrors": list(mirrors), "checksums": dict(checksums)})
    return checked(Catalogue, values, "datasets.yaml")


def assert_tiny(arrays, tiny_arrays):
    assert set(arrays) == set(tiny_arrays) | {"class_names"}
    assert arrays["class_names"].tolist() == DIGITS
    for key, expected in tiny_arrays.items():
        assert arrays[key].dtype == np.uint8, key
        np.testing.assert_array_equal(arrays[key], expected, err_msg=key)


def copy_files(source_dir, target_dir, names):
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source_dir / name, target_dir / name)
    return target_dir


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def idx_only(tmp_path, tiny_mirror):
    """A directory with the four IDX .gz files of the tiny dataset and no mnist.npz."""
    mirror_dir, _ = tiny_mirror
    return copy_files(mirror_dir, tmp_path / "idx-only", IDX_FILES)


@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "work"
    path.mkdir()
    return path


def stage_dir(path, catalogue):
    """A directory to run `python -m stages.download` in: the stage code, the repo's
    params.yaml, and `catalogue` as datasets.yaml."""
    path.mkdir()
    (path / "stages").symlink_to(REPO / "stages", target_is_directory=True)
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    save(catalogue.model_dump(exclude_none=True), path / "datasets.yaml")
    return path


def stage_env(mirror=None):
    env = {k: v for k, v in os.environ.items() if k != "MNIST_MIRROR"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if mirror:
        env["MNIST_MIRROR"] = mirror
    return env


def run_stage(cwd, mirror=None):
    return subprocess.run([sys.executable, "-m", "stages.download"], cwd=cwd, env=stage_env(mirror),
                          capture_output=True, text=True, timeout=60)


def data_contents(cwd):
    """Everything inside data/, hidden files included."""
    return sorted(p.name for p in (cwd / "data").iterdir())


# --- the order of sources (no network) --------------------------------------------------------

def repo_catalogue_with(public_sources=True, **mirrors):
    values = repo_catalogue()
    values["download"]["public_sources"] = public_sources
    for dataset, locations in mirrors.items():
        values["datasets"][dataset]["mirrors"] = locations
    return checked(Catalogue, values, "datasets.yaml")


def test_candidate_sources_order_env_then_mirrors_then_public():
    data = repo_catalogue_with(mnist=["/srv/one", "http://two.invalid/mnist/"])
    sources = candidate_sources("mnist", data, {"MNIST_MIRROR": "file:///env"})
    idx = tuple(IDX_FILES)
    assert sources[:6] == [
        ("file:///env", ("mnist.npz",)), ("file:///env", idx),
        ("/srv/one", ("mnist.npz",)), ("/srv/one", idx),
        ("http://two.invalid/mnist/", ("mnist.npz",)), ("http://two.invalid/mnist/", idx),
    ]
    # Then Keras' npz, then each public IDX mirror, as the catalogue lists them.
    public = data.datasets["mnist"]
    assert sources[6:] == ([(b, ("mnist.npz",)) for b in public.npz_sources]
                           + [(b, idx) for b in public.idx_sources])
    assert all(base.startswith(("https://", "http://")) for base, _ in sources[6:])


def test_candidate_sources_without_public_or_env():
    data = repo_catalogue_with(public_sources=False, mnist=["/srv/one"])
    assert candidate_sources("mnist", data, {}) == [("/srv/one", ("mnist.npz",)),
                                                    ("/srv/one", tuple(IDX_FILES))]
    # An empty MNIST_MIRROR (as CI might export) is no source.
    assert candidate_sources("mnist", data, {"MNIST_MIRROR": ""}) == candidate_sources(
        "mnist", data, {})
    assert candidate_sources("mnist", repo_catalogue_with(public_sources=False), {}) == []


def test_each_dataset_has_its_own_mirror_variable_and_sources():
    data = repo_catalogue_with(public_sources=False)
    environ = {"MNIST_MIRROR": "/srv/mnist", "FASHION_MNIST_MIRROR": "/srv/fashion"}
    # Fashion-MNIST has no npz: only the IDX files are asked for.
    assert candidate_sources("fashion-mnist", data, environ) == [
        ("/srv/fashion", tuple(IDX_FILES))]


def test_no_sources_at_all_is_an_error_that_says_what_to_set(tiny_mirror, workdir):
    _, checksums = tiny_mirror
    with pytest.raises(StageError, match="no sources to try for mnist: set MNIST_MIRROR"):
        download.download("mnist", catalogue(checksums), {}, workdir)


# --- where the bytes come from -----------------------------------------------------------------

def test_http_mirror_with_npz(tiny_mirror, tiny_arrays, http_server, workdir):
    mirror_dir, checksums = tiny_mirror
    url = http_server(mirror_dir)
    arrays = download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    assert http_server.last.requests == NPZ_PATH


def test_http_mirror_with_only_idx_files(tiny_mirror, tiny_arrays, idx_only, http_server,
                                         workdir):
    _, checksums = tiny_mirror
    url = http_server(idx_only)
    arrays = download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    # mnist.npz 404s once (no retry for a 404), then each IDX file is fetched once.
    assert http_server.last.requests == NPZ_PATH + IDX_PATHS


def test_stage_output_does_not_depend_on_the_source(tiny_mirror, tiny_arrays, idx_only,
                                                    http_server, tmp_path):
    mirror_dir, checksums = tiny_mirror
    outputs = {}
    for label, directory in (("npz", mirror_dir), ("idx", idx_only)):
        cwd = stage_dir(tmp_path / label, catalogue(checksums))
        result = run_stage(cwd, mirror=http_server(directory))
        assert result.returncode == 0, result.stderr
        assert data_contents(cwd) == ["raw.npz"], "no temporary files left beside the output"
        outputs[label] = (cwd / "data/raw.npz").read_bytes()
        assert_tiny(load_npz(cwd / "data/raw.npz", 2**30), tiny_arrays)
    assert outputs["npz"] == outputs["idx"]


@pytest.mark.parametrize("form", ["directory", "file-url"])
@pytest.mark.parametrize("content", ["npz", "idx-only"])
def test_local_mirror(form, content, tiny_mirror, tiny_arrays, idx_only, workdir):
    mirror_dir, checksums = tiny_mirror
    directory = mirror_dir if content == "npz" else idx_only
    location = str(directory) if form == "directory" else directory.as_uri()
    arrays = download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": location}, workdir)
    assert_tiny(arrays, tiny_arrays)


def test_local_mirror_that_does_not_exist_is_named_in_the_error(tiny_mirror, tmp_path, workdir):
    _, checksums = tiny_mirror
    missing = tmp_path / "no-such-dir"
    with pytest.raises(StageError) as error:
        download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": str(missing)}, workdir)
    assert f"{missing}/mnist.npz: no such file" in str(error.value)
    assert f"{missing}/train-images-idx3-ubyte.gz: no such file" in str(error.value)


# --- failures that move on to the next source --------------------------------------------------

def test_404_everywhere_falls_through_to_the_next_mirror(tiny_mirror, tiny_arrays, http_server,
                                                         tmp_path, workdir):
    mirror_dir, checksums = tiny_mirror
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_url = http_server(empty)
    bad = http_server.last
    good_url = http_server(mirror_dir)
    good = http_server.last
    arrays = download.download("mnist", catalogue(checksums, mirrors=[good_url]),
                               {"MNIST_MIRROR": bad_url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    # A 404 is final for that file: no retry; the IDX source stops at its first missing file.
    assert bad.requests == NPZ_PATH + IDX_PATHS[:1]
    assert good.requests == NPZ_PATH


def test_scripted_404_on_npz_uses_idx_files_of_the_same_mirror(tiny_mirror, tiny_arrays,
                                                               http_server, workdir):
    mirror_dir, checksums = tiny_mirror
    url = http_server(mirror_dir, script={"/mnist.npz": ["404"]})
    arrays = download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    assert http_server.last.requests == NPZ_PATH + IDX_PATHS


def test_500_then_success_is_retried(tiny_mirror, tiny_arrays, http_server, workdir):
    mirror_dir, checksums = tiny_mirror
    url = http_server(mirror_dir, script={"/mnist.npz": ["500"]})
    arrays = download.download("mnist", catalogue(checksums, retries=1),
                                        {"MNIST_MIRROR": url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    assert http_server.last.requests == NPZ_PATH * 2


def test_500_more_often_than_retries_gives_up_on_that_file(tiny_mirror, tiny_arrays,
                                                           http_server, workdir):
    mirror_dir, checksums = tiny_mirror
    url = http_server(mirror_dir, script={"/mnist.npz": ["500", "500", "500"]})
    arrays = download.download("mnist", catalogue(checksums, retries=2),
                                        {"MNIST_MIRROR": url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    assert http_server.last.requests == NPZ_PATH * 3 + IDX_PATHS


def test_corrupted_file_moves_on_to_the_next_source(tiny_mirror, tiny_arrays, http_server,
                                                    tmp_path, workdir):
    mirror_dir, checksums = tiny_mirror
    corrupt = copy_files(mirror_dir, tmp_path / "corrupt", ["mnist.npz"])
    body = bytearray((corrupt / "mnist.npz").read_bytes())
    body[len(body) // 2] ^= 0xFF  # one flipped byte deep inside an array
    (corrupt / "mnist.npz").write_bytes(bytes(body))
    bad_url = http_server(corrupt)
    bad = http_server.last
    good_url = http_server(mirror_dir)
    good = http_server.last
    arrays = download.download("mnist", catalogue(checksums, mirrors=[good_url]),
                               {"MNIST_MIRROR": bad_url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    assert bad.requests == NPZ_PATH + IDX_PATHS[:1]  # a bad hash is not retried
    assert good.requests == NPZ_PATH


def test_hash_mismatch_on_the_only_source_names_file_and_both_hashes(tiny_mirror, http_server,
                                                                     tmp_path, workdir):
    mirror_dir, checksums = tiny_mirror
    only_npz = copy_files(mirror_dir, tmp_path / "only-npz", ["mnist.npz"])
    actual = checksums["mnist.npz"]["sha256"]
    wrong = "0" * 64
    url = http_server(only_npz)
    with pytest.raises(StageError) as error:
        download.download("mnist", catalogue({**checksums, "mnist.npz": {"sha256": wrong}}),
                          {"MNIST_MIRROR": url}, workdir)
    message = str(error.value)
    assert (f"checksum mismatch for mnist.npz: expected sha256:{wrong}, got sha256:{actual}"
            in message)
    assert list(workdir.iterdir()) == [], "a rejected file is not kept"


def test_idx_hash_mismatch_names_that_file_and_its_hashes(tiny_mirror, idx_only, workdir):
    _, checksums = tiny_mirror
    name = "t10k-labels-idx1-ubyte.gz"
    wrong = {"gz_md5": "f" * 32, "sha256": "f" * 64}
    with pytest.raises(StageError) as error:
        download.download("mnist", catalogue({**checksums, name: wrong}),
                          {"MNIST_MIRROR": str(idx_only)}, workdir)
    content = hashlib.sha256(gzip.decompress((idx_only / name).read_bytes())).hexdigest()
    assert (f"checksum mismatch for {name}: expected md5:{'f' * 32} of the .gz or sha256:"
            f"{'f' * 64} of its content, got md5:{md5(idx_only / name)} and sha256:{content}"
            in str(error.value))
    assert name not in {p.name for p in workdir.iterdir()}


def test_a_mirror_that_recompressed_the_files_is_accepted_by_content(tiny_mirror, tiny_arrays,
                                                                    idx_only, workdir):
    """Debian re-gzipped Fashion-MNIST: other .gz bytes, the same data inside."""
    _, checksums = tiny_mirror
    for name in IDX_FILES:
        data = gzip.decompress((idx_only / name).read_bytes())
        (idx_only / name).write_bytes(gzip.compress(data, compresslevel=1, mtime=12345))
        assert md5(idx_only / name) != checksums[name]["gz_md5"]
    arrays = download.download("mnist", catalogue(checksums),
                                        {"MNIST_MIRROR": str(idx_only)}, workdir)
    assert_tiny(arrays, tiny_arrays)


def test_a_recompressed_file_with_other_content_is_refused(tiny_mirror, idx_only, workdir):
    _, checksums = tiny_mirror
    name = "t10k-labels-idx1-ubyte.gz"
    labels = bytearray(gzip.decompress((idx_only / name).read_bytes()))
    labels[-1] = (labels[-1] + 1) % 10  # one label changed
    (idx_only / name).write_bytes(gzip.compress(bytes(labels), mtime=0))
    with pytest.raises(StageError, match=f"checksum mismatch for {name}"):
        download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": str(idx_only)}, workdir)


@pytest.mark.parametrize("content", [b"this is not a zip archive\n", b"PK\x03\x04" + bytes(100)],
                         ids=["not-zip", "broken-zip"])
def test_verified_but_unreadable_npz_falls_back_to_idx_files(content, tiny_mirror, tiny_arrays,
                                                             idx_only, workdir):
    """The hash matches (the params trust this file) but it is no npz: use the IDX files."""
    _, checksums = tiny_mirror
    (idx_only / "mnist.npz").write_bytes(content)
    data = catalogue({**checksums, "mnist.npz": {"sha256": sha256(idx_only / "mnist.npz")}})
    arrays = download.download("mnist", data, {"MNIST_MIRROR": str(idx_only)}, workdir)
    assert_tiny(arrays, tiny_arrays)


GZIP_HEADER = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF])


@pytest.mark.parametrize("content", [
    b"plain text, not gzip",
    GZIP_HEADER + b"\xff" * 40,  # a gzip header, then no valid deflate stream
    gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)), mtime=0),  # images, not labels
], ids=["not-gzip", "bad-deflate", "wrong-ndim"])
def test_verified_but_malformed_idx_file_is_named(content, tiny_mirror, idx_only, workdir):
    """A file can match its (configured) hash and still not be a labels file: a clean error."""
    _, checksums = tiny_mirror
    name = "t10k-labels-idx1-ubyte.gz"
    (idx_only / name).write_bytes(content)
    data = catalogue({**checksums, name: {"gz_md5": md5(idx_only / name), "sha256": "0" * 64}})
    with pytest.raises(StageError, match=f"{name}: "):
        download.download("mnist", data, {"MNIST_MIRROR": str(idx_only)}, workdir)


def test_truncated_body_is_retried(tiny_mirror, tiny_arrays, http_server, workdir):
    mirror_dir, checksums = tiny_mirror
    url = http_server(mirror_dir, script={"/mnist.npz": ["truncate"]})
    arrays = download.download("mnist", catalogue(checksums, retries=1),
                                        {"MNIST_MIRROR": url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    assert http_server.last.requests == NPZ_PATH * 2


def test_truncated_body_every_time_is_never_accepted(tiny_mirror, tiny_arrays, http_server,
                                                     workdir):
    mirror_dir, checksums = tiny_mirror
    url = http_server(mirror_dir, script={"/mnist.npz": ["truncate"] * 2})
    arrays = download.download("mnist", catalogue(checksums, retries=1),
                                        {"MNIST_MIRROR": url}, workdir)
    assert_tiny(arrays, tiny_arrays)  # from the IDX files: the half npz was refused
    assert http_server.last.requests == NPZ_PATH * 2 + IDX_PATHS


def test_truncated_body_only_source_says_truncated(tiny_mirror, http_server, tmp_path, workdir):
    mirror_dir, checksums = tiny_mirror
    only_npz = copy_files(mirror_dir, tmp_path / "only-npz", ["mnist.npz"])
    url = http_server(only_npz, script={"/mnist.npz": ["truncate"] * 3})
    with pytest.raises(StageError, match=r"truncated body: \d+ of \d+ bytes.*gave up after 3"):
        download.download("mnist", catalogue(checksums, retries=2), {"MNIST_MIRROR": url}, workdir)
    assert list(workdir.iterdir()) == []


def test_slow_server_times_out_and_the_next_source_is_used(tiny_mirror, tiny_arrays, http_server,
                                                           workdir):
    mirror_dir, checksums = tiny_mirror
    stall = {path: ["slow"] * 5 for path in NPZ_PATH + IDX_PATHS}
    slow_url = http_server(mirror_dir, script=stall, slow_s=3.0)
    slow = http_server.last
    good_url = http_server(mirror_dir)
    good = http_server.last
    started = time.monotonic()
    arrays = download.download("mnist", catalogue(checksums, mirrors=[good_url], timeout_s=0.5,
                                           retries=1),
                               {"MNIST_MIRROR": slow_url}, workdir)
    elapsed = time.monotonic() - started
    assert_tiny(arrays, tiny_arrays)
    # Two attempts (1 + retries) at the npz, two at the first IDX file, then the next mirror.
    assert slow.requests == NPZ_PATH * 2 + IDX_PATHS[:1] * 2
    assert good.requests == NPZ_PATH
    assert elapsed < 6, f"4 timeouts of 0.5 s took {elapsed:.1f} s"


def test_slow_only_source_gives_up_in_bounded_time(tiny_mirror, http_server, workdir):
    mirror_dir, checksums = tiny_mirror
    stall = {path: ["slow"] * 5 for path in NPZ_PATH + IDX_PATHS}
    url = http_server(mirror_dir, script=stall, slow_s=3.0)
    started = time.monotonic()
    with pytest.raises(StageError, match="gave up after 3 attempts"):
        download.download("mnist", catalogue(checksums, timeout_s=0.5, retries=2),
                          {"MNIST_MIRROR": url}, workdir)
    elapsed = time.monotonic() - started
    assert http_server.last.requests == NPZ_PATH * 3 + IDX_PATHS[:1] * 3
    assert elapsed < 10, f"6 timeouts of 0.5 s took {elapsed:.1f} s"


def test_one_mirror_supplies_the_idx_files_another_lacks(tiny_mirror, tiny_arrays, http_server,
                                                         tmp_path, workdir):
    mirror_dir, checksums = tiny_mirror
    train_only = copy_files(mirror_dir, tmp_path / "train", IDX_FILES[:2])
    test_only = copy_files(mirror_dir, tmp_path / "test", IDX_FILES[2:])
    first_url = http_server(train_only)
    first = http_server.last
    second_url = http_server(test_only)
    second = http_server.last
    arrays = download.download("mnist", catalogue(checksums, mirrors=[second_url]),
                               {"MNIST_MIRROR": first_url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    assert first.requests == NPZ_PATH + IDX_PATHS[:3]  # the third (t10k-images) is missing
    assert second.requests == NPZ_PATH + IDX_PATHS[2:]  # fetches only what is still missing


# --- the stage as a process: exit code, and nothing left behind --------------------------------

@pytest.mark.parametrize("old_output", [False, True], ids=["fresh", "old-output"])
@pytest.mark.parametrize("failure", ["missing", "corrupt"])
def test_failed_stage_exits_nonzero_and_leaves_nothing(failure, old_output, tiny_mirror,
                                                       http_server, tmp_path):
    mirror_dir, checksums = tiny_mirror
    if failure == "missing":  # every file 404s
        served = tmp_path / "empty"
        served.mkdir()
    else:  # every file is there and downloads fine, but none matches its checksum
        served = mirror_dir
        checksums = {name: {algo: "0" * len(d) for algo, d in digests.items()}
                     for name, digests in checksums.items()}
    cwd = stage_dir(tmp_path / "stage", catalogue(checksums))
    if old_output:
        (cwd / "data").mkdir()
        (cwd / "data/raw.npz").write_bytes(b"an older download")
    result = run_stage(cwd, mirror=http_server(served))
    assert result.returncode != 0
    assert "error: no source gave a complete, verified mnist" in result.stderr
    assert len(result.stderr.splitlines()[-1]) > 0 and "Traceback" not in result.stderr
    assert data_contents(cwd) == [], "no output, no temporary file or directory"
    if failure == "corrupt":
        assert "checksum mismatch for mnist.npz" in result.stderr
        assert "checksum mismatch for train-images-idx3-ubyte.gz" in result.stderr
        assert http_server.last.requests == NPZ_PATH + IDX_PATHS[:1]


def test_sigterm_mid_download_leaves_nothing(tiny_mirror, idx_only, http_server, tmp_path):
    """Killed while it waits on the third IDX file, with two verified files already on disk."""
    _, checksums = tiny_mirror
    stalled = IDX_PATHS[2]
    url = http_server(idx_only, script={stalled: ["slow"]}, slow_s=5.0)
    server = http_server.last
    cwd = stage_dir(tmp_path / "stage", catalogue(checksums, timeout_s=10))
    (cwd / "data").mkdir()
    (cwd / "data/raw.npz").write_bytes(b"an older download")
    proc = subprocess.Popen([sys.executable, "-m", "stages.download"], cwd=cwd,
                            env=stage_env(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 20
        while stalled not in server.requests:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the stage never asked for the stalled file"
            time.sleep(0.02)
        # Mid-download: the stage's working directory holds the two files it has verified.
        [workdir] = (cwd / "data").glob(".raw.npz.*.tmp")
        assert sorted(p.name for p in workdir.iterdir()) == sorted(IDX_FILES[:2])
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert data_contents(cwd) == []


# --- hostile sources: a failed source each, never a crash or a hang -----------------------------

def test_malformed_content_length_fails_that_source_only(tiny_mirror, tiny_arrays, http_server,
                                                        workdir):
    mirror_dir, checksums = tiny_mirror
    url = http_server(mirror_dir, script={"/mnist.npz": ["bad-length"]})
    arrays = download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": url}, workdir)
    assert_tiny(arrays, tiny_arrays)  # from the same mirror's IDX files
    assert http_server.last.requests == NPZ_PATH + IDX_PATHS


def test_a_trickling_server_is_abandoned_at_the_deadline(tiny_mirror, tiny_arrays, http_server,
                                                         workdir):
    """One byte every 0.1 s, no Content-Length: each read succeeds, so only a deadline ends it."""
    mirror_dir, checksums = tiny_mirror
    slow_url = http_server(mirror_dir, script={path: ["trickle"] for path in NPZ_PATH + IDX_PATHS})
    good_url = http_server(mirror_dir)
    started = time.monotonic()
    arrays = download.download("mnist", catalogue(checksums, mirrors=[good_url], timeout_s=3,
                                           deadline_s=1.0), {"MNIST_MIRROR": slow_url}, workdir)
    assert_tiny(arrays, tiny_arrays)
    assert time.monotonic() - started < 8, "two files abandoned after about 1 s each"


def test_a_trickling_only_source_says_it_missed_the_deadline(tiny_mirror, http_server, tmp_path,
                                                             workdir):
    mirror_dir, checksums = tiny_mirror
    only_npz = copy_files(mirror_dir, tmp_path / "only-npz", ["mnist.npz"])
    url = http_server(only_npz, script={"/mnist.npz": ["trickle"]})
    with pytest.raises(StageError, match=r"not complete after 1 s \(download.deadline_s\)"):
        download.download("mnist", catalogue(checksums, deadline_s=1),
                                   {"MNIST_MIRROR": url}, workdir)


@pytest.mark.parametrize("mirror, problem", [
    ("http://[::1", "a malformed URL"),
    ("http://a..b/", "has an empty or overlong part"),
    ("ftp://mirror.example/", "scheme 'ftp'"),
])
def test_a_bad_mirror_variable_is_a_failed_source_with_its_reason(tiny_mirror, tiny_arrays, mirror,
                                                                  problem, workdir):
    mirror_dir, checksums = tiny_mirror
    arrays = download.download("mnist", catalogue(checksums, mirrors=[str(mirror_dir)]),
                               {"MNIST_MIRROR": mirror}, workdir)
    assert_tiny(arrays, tiny_arrays)
    with pytest.raises(StageError, match=problem):
        download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": mirror}, workdir)


def write_dataset_mirror(directory, arrays):
    """A mirror holding `arrays` as npz and IDX files, and the checksums that trust them."""
    return directory, write_mirror(directory, arrays)


@pytest.mark.parametrize("n_train, n_test, expected", [
    (0, 0, "train split has 0 images of class 0 (0 in all)"),
    (3, 3, "train split has 0 images of class 3 (3 in all)"),
    (100, 20, "train split has 9 images of class 0"),  # 9 or 10 per class: too few
    (200, 5, "test split has 0 images of class 5 (5 in all)"),
])
def test_implausible_datasets_are_refused_by_download(tmp_path, workdir, n_train, n_test,
                                                      expected):
    arrays = synthetic_mnist(n_train=n_train, n_test=n_test, seed=1)
    if n_train == 100:  # one class short of ten images
        keep = np.flatnonzero(arrays["y_train"] != 0)
        keep = np.concatenate([keep, np.flatnonzero(arrays["y_train"] == 0)[:9]])
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][keep], arrays["y_train"][keep]
    directory, checksums = write_dataset_mirror(tmp_path / "mirror", arrays)
    with pytest.raises(StageError, match=re.escape(expected)):
        download.download("mnist", catalogue(checksums), {"MNIST_MIRROR": str(directory)}, workdir)


def npy_header_only(shape):
    """An .npy that declares `shape` of uint8 and holds no data: a few hundred bytes."""
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    import io
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def test_npz_member_declaring_a_huge_array_is_refused_unallocated(tiny_mirror, tiny_arrays,
                                                                  tmp_path, workdir):
    import zipfile

    mirror_dir, checksums = tiny_mirror
    bomb = copy_files(mirror_dir, tmp_path / "bomb", IDX_FILES)
    with zipfile.ZipFile(bomb / "mnist.npz", "w") as archive:
        archive.writestr("x_train.npy", npy_header_only((2**31, 28, 28)))
    data = catalogue({**checksums, "mnist.npz": {"sha256": sha256(bomb / "mnist.npz")}})
    started = time.monotonic()
    arrays = download.download("mnist", data, {"MNIST_MIRROR": str(bomb)}, workdir)
    assert_tiny(arrays, tiny_arrays)  # from the IDX files beside it
    assert time.monotonic() - started < 5


def test_npz_member_declaring_more_than_it_holds_is_named(tiny_mirror, tmp_path, workdir):
    import zipfile

    _, checksums = tiny_mirror
    (tmp_path / "m").mkdir()
    with zipfile.ZipFile(tmp_path / "m/mnist.npz", "w") as archive:
        archive.writestr("x_train.npy", npy_header_only((1000, 28, 28)))
    data = catalogue({**checksums, "mnist.npz": {"sha256": sha256(tmp_path / "m/mnist.npz")}})
    with pytest.raises(StageError, match=r"x_train.npy declares \(1000, 28, 28\) uint8 but holds"):
        download.download("mnist", data, {"MNIST_MIRROR": str(tmp_path / "m")}, workdir)


def test_gzip_bomb_is_refused_without_decompressing_it_all(tiny_mirror, idx_only, workdir):
    """64 MB of zeros compress to 64 KB: more than any MNIST file holds, refused at the cap."""
    _, checksums = tiny_mirror
    name = "train-images-idx3-ubyte.gz"
    bomb = gzip.compress(idx_bytes(np.zeros((85_000, 28, 28), np.uint8)), mtime=0)
    assert len(bomb) < 200_000
    (idx_only / name).write_bytes(bomb)
    data = catalogue({**checksums, name: {"gz_md5": md5(idx_only / name), "sha256": "0" * 64}})
    with pytest.raises(StageError, match=f"{name}: decompresses to more than 47,040,016 bytes"):
        download.download("mnist", data, {"MNIST_MIRROR": str(idx_only)}, workdir)


# --- the stage as a process under signals and bad folders ----------------------------------------

def start_stalled_download(tiny_mirror, idx_only, http_server, tmp_path):
    """The stage process, waiting on the third IDX file with two verified files on disk."""
    _, checksums = tiny_mirror
    stalled = IDX_PATHS[2]
    url = http_server(idx_only, script={stalled: ["slow"]}, slow_s=5.0)
    server = http_server.last
    cwd = stage_dir(tmp_path / "stage", catalogue(checksums, timeout_s=10))
    proc = subprocess.Popen([sys.executable, "-m", "stages.download"], cwd=cwd,
                            env=stage_env(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 20
    while stalled not in server.requests:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the stage never asked for the stalled file"
        time.sleep(0.02)
    return proc, cwd


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT])
def test_sighup_or_ctrl_c_mid_download_leaves_nothing(signum, tiny_mirror, idx_only, http_server,
                                                      tmp_path):
    proc, cwd = start_stalled_download(tiny_mirror, idx_only, http_server, tmp_path)
    try:
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert data_contents(cwd) == []
    assert "Traceback" not in stderr


def test_what_sigkill_leaves_is_removed_by_the_next_run(tiny_mirror, idx_only, http_server,
                                                        tmp_path):
    proc, cwd = start_stalled_download(tiny_mirror, idx_only, http_server, tmp_path)
    proc.kill()
    proc.communicate()
    [leftover] = (cwd / "data").glob(".raw.npz.*.tmp")  # SIGKILL cannot be caught
    assert sorted(p.name for p in leftover.iterdir()) == sorted(IDX_FILES[:2])
    result = run_stage(cwd, mirror=str(idx_only))
    assert result.returncode == 0, result.stderr
    assert data_contents(cwd) == ["raw.npz"]


def test_a_live_writers_temporary_files_are_left_alone(tiny_mirror, tmp_path):
    """Two downloads at once outside DVC: the second must not delete the first's work."""
    mirror_dir, checksums = tiny_mirror
    cwd = stage_dir(tmp_path / "stage", catalogue(checksums))
    other = subprocess.Popen(["sleep", "30"])
    try:
        (cwd / "data").mkdir()
        live = cwd / "data" / f".raw.npz.{other.pid}.abc.tmp"
        live.mkdir()
        dead = cwd / "data" / ".raw.npz.999999999.x1y2.tmp"  # no such process
        dead.write_bytes(b"half")
        result = run_stage(cwd, mirror=str(mirror_dir))
        assert result.returncode == 0, result.stderr
        assert data_contents(cwd) == sorted([live.name, "raw.npz"])
    finally:
        other.kill()
        other.wait()


def test_an_output_path_that_is_a_folder_is_one_line(tiny_mirror, tmp_path):
    mirror_dir, checksums = tiny_mirror
    cwd = stage_dir(tmp_path / "stage", catalogue(checksums))
    (cwd / "data/raw.npz").mkdir(parents=True)
    result = run_stage(cwd, mirror=str(mirror_dir))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "error: data/raw.npz: Is a directory"


@contextmanager
def read_only_folder(path):
    """`path` as a folder nothing can be written into; yields the error a write meets. File
    modes do not stop root, so as root it is a read-only mount, as on a read-only volume."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield "Permission denied"
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only folder here: {mounted.stderr.strip()}")
    try:
        yield "Read-only file system"
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_data_folder_is_one_line(tiny_mirror, tmp_path):
    mirror_dir, checksums = tiny_mirror
    cwd = stage_dir(tmp_path / "stage", catalogue(checksums))
    with read_only_folder(cwd / "data") as cause:
        result = run_stage(cwd, mirror=str(mirror_dir))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1].startswith("error: data")
        assert result.stderr.splitlines()[-1].endswith(cause)
        assert data_contents(cwd) == []


def test_a_write_that_fails_midway_is_one_line_and_leaves_nothing(tiny_mirror, tmp_path):
    """A full disk, as near as a test gets: files may not grow past 1 MB (RLIMIT_FSIZE)."""
    import resource

    mirror_dir, checksums = tiny_mirror
    arrays = synthetic_mnist(n_train=2000, n_test=100, seed=2)  # a 1.6 MB npz
    directory, checksums = write_dataset_mirror(tmp_path / "mirror", arrays)
    cwd = stage_dir(tmp_path / "stage", catalogue(checksums))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    result = subprocess.run([sys.executable, "-m", "stages.download"], cwd=cwd,
                            env=stage_env(str(directory)), capture_output=True, text=True,
                            timeout=60, preexec_fn=limit_file_size)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert "File too large" in result.stderr and "Traceback" not in result.stderr
    assert data_contents(cwd) == []


# --- the IDX format ------------------------------------------------------------------------

def u32(n):
    return n.to_bytes(4, "big")


# Written out by hand rather than with an encoder, so parse_idx is checked against the format.
IMAGES = bytes([0, 0, 0x08, 3]) + u32(2) + u32(2) + u32(3) + bytes(range(12))
LABELS = bytes([0, 0, 0x08, 1]) + u32(4) + bytes([7, 0, 9, 255])


def test_parse_idx_images():
    assert int.from_bytes(IMAGES[:4], "big") == 2051  # MNIST's magic number for images
    array = parse_idx(IMAGES, expected_ndim=3)
    assert array.dtype == np.uint8 and array.shape == (2, 2, 3)
    np.testing.assert_array_equal(array, np.arange(12).reshape(2, 2, 3))


def test_parse_idx_labels():
    assert int.from_bytes(LABELS[:4], "big") == 2049  # and for labels
    array = parse_idx(LABELS, expected_ndim=1)
    assert array.dtype == np.uint8
    assert array.tolist() == [7, 0, 9, 255]
    assert parse_idx(LABELS).tolist() == [7, 0, 9, 255]  # without an expectation too


def test_parse_idx_empty_dimension_is_valid():
    assert parse_idx(bytes([0, 0, 8, 1]) + u32(0), 1).shape == (0,)


@pytest.mark.parametrize("header", [
    bytes([0, 0, 0x0B, 1]),  # 0x0B: int16 elements, not unsigned bytes
    bytes([0, 0, 0x0D, 1]),  # float32
    bytes([1, 0, 0x08, 1]),  # first two bytes must be zero
    bytes([0x1F, 0x8B, 0x08, 0x00]),  # still gzip-compressed
])
def test_parse_idx_wrong_magic(header):
    with pytest.raises(IdxError, match=f"bad magic number {int.from_bytes(header, 'big'):#010x}"):
        parse_idx(header + u32(4) + bytes(4), 1)


def test_parse_idx_wrong_number_of_dimensions():
    with pytest.raises(IdxError, match="has 1 dimensions; expected 3 .magic 2049"):
        parse_idx(LABELS, expected_ndim=3)
    with pytest.raises(IdxError, match="has 3 dimensions; expected 1 .magic 2051"):
        parse_idx(IMAGES, expected_ndim=1)


@pytest.mark.parametrize("length", [0, 1, 3])
def test_parse_idx_too_short_for_magic(length):
    with pytest.raises(IdxError, match=f"too short for an IDX header .{length} bytes"):
        parse_idx(IMAGES[:length])


@pytest.mark.parametrize("length", [4, 8, 15])
def test_parse_idx_truncated_header(length):
    with pytest.raises(IdxError, match=f"truncated header: {length} bytes, need 16"):
        parse_idx(IMAGES[:length], 3)


def test_parse_idx_truncated_data():
    with pytest.raises(IdxError, match=r"truncated: 27 bytes, header \(2, 2, 3\) needs 28"):
        parse_idx(IMAGES[:-1], 3)
    with pytest.raises(IdxError, match="truncated: 8 bytes"):
        parse_idx(LABELS[:8], 1)  # a header and no data at all


def test_parse_idx_trailing_bytes():
    with pytest.raises(IdxError,
                       match=r"has trailing bytes: 29 bytes, header \(2, 2, 3\) needs 28"):
        parse_idx(IMAGES + b"\0", 3)


def test_parse_idx_dimensions_too_large_to_multiply_in_int64():
    """2**31 * 2**31 * 4 = 2**64: in int64 that wraps to 0 and an empty body would 'fit'."""
    header = bytes([0, 0, 8, 3]) + u32(2**31) + u32(2**31) + u32(4)
    with pytest.raises(IdxError, match=f"truncated: 16 bytes.*needs {16 + 2**64}"):
        parse_idx(header, 3)
