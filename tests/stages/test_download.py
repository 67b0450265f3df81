"""The catalogue's road: MNIST and Fashion-MNIST fetched from real sources (HTTP servers on
127.0.0.1 answering as asked, local folders), every file checked against its known hash, by the
download stage as DVC runs it or by its fetcher."""

import gzip
import hashlib
import shutil
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from stages.common.catalogue import Entry, SourceFailed, fetch, parse_idx
from stages.common.runner import StageError
from tests.conftest import catalogue_entry, one_error_line, run_stage, stage_dir
from tests.digits import IDX_NAMES

FILES = list(IDX_NAMES.values())


class ScriptedHandler(SimpleHTTPRequestHandler):
    """Serves the server's folder; `server.script[path]` lists, one per request, an HTTP status
    to answer instead of the file ("404", "500"). When a path's list is used up, the file."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        plan = self.server.script.get(self.path, [])
        if plan:
            self.send_error(int(plan.pop(0)))
        else:
            super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    """start(folder, script=None) -> the base URL of a server on 127.0.0.1 serving `folder`."""
    servers = []

    def start(directory: Path, script: dict | None = None) -> str:
        handler = lambda *a, **kw: ScriptedHandler(*a, directory=str(directory), **kw)  # noqa
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.script, server.requests = {k: list(v) for k, v in (script or {}).items()}, []
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        start.last = server
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def entry(checksums: dict, urls: tuple = ()) -> Entry:
    return Entry.model_validate(catalogue_entry("mnist", checksums, urls))


def assert_tiny(arrays: dict, tiny_arrays: dict) -> None:
    for key, expected in tiny_arrays.items():
        got = arrays[key][..., 0] if key.startswith("x") else arrays[key]
        np.testing.assert_array_equal(got, expected, err_msg=key)


def test_the_stage_fetches_over_http_and_writes_the_dataset(tmp_path, tiny_mirror, tiny_arrays,
                                                             http_server):
    cwd = stage_dir(tmp_path / "stage", {"mnist": tiny_mirror[1]})
    status, _, err = run_stage("download", cwd, env={"MNIST_MIRROR": http_server(tiny_mirror[0])})
    assert status == 0, err
    with np.load(cwd / "data/raw.npz") as raw:
        assert_tiny(raw, tiny_arrays)
        assert raw["x_train"].shape == (600, 28, 28, 1)
        assert raw["class_names"].tolist() == [str(d) for d in range(10)]
        assert str(raw["prepare"]) == "digit"
    assert sorted(p.name for p in (cwd / "data").iterdir()) == ["raw.npz"]  # no leftovers


def test_a_local_folder_mirror_gives_the_same_bytes_as_http(tmp_path, tiny_mirror, http_server):
    outputs = []
    for name, mirror in (("local", str(tiny_mirror[0])), ("http", http_server(tiny_mirror[0]))):
        cwd = stage_dir(tmp_path / name, {"mnist": tiny_mirror[1]})
        assert run_stage("download", cwd, env={"MNIST_MIRROR": mirror})[0] == 0
        outputs.append((cwd / "data/raw.npz").read_bytes())
    assert outputs[0] == outputs[1]


def test_404_and_500_move_on_or_retry(tmp_path, tiny_mirror, tiny_arrays, http_server):
    """A 404 fails that source for that file; a 500 is retried (pooch); the first source that
    gives a file whole and verified is used, file by file."""
    missing = http_server(tiny_mirror[0], {f"/{FILES[0]}": ["404"] * 9})
    flaky = http_server(tiny_mirror[0], {f"/{FILES[0]}": ["500"]})
    arrays = fetch("mnist", entry(tiny_mirror[1], (missing, flaky)), {}, tmp_path)
    assert_tiny(arrays, tiny_arrays)
    assert http_server.last.requests.count(f"/{FILES[0]}") == 2  # the 500, then the file
    assert f"/{FILES[1]}" not in http_server.last.requests  # the first source had it


def test_a_file_that_does_not_match_its_hash_is_never_used(tmp_path, tiny_mirror, tiny_arrays,
                                                           http_server):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_mirror[0], bad)
    data = bytearray(gzip.decompress((bad / FILES[1]).read_bytes()))
    data[-1] ^= 1  # one label changed
    (bad / FILES[1]).write_bytes(gzip.compress(bytes(data)))
    good = http_server(tiny_mirror[0])
    arrays = fetch("mnist", entry(tiny_mirror[1], (http_server(bad), good)), {}, tmp_path / "w")
    assert_tiny(arrays, tiny_arrays)
    with pytest.raises(StageError) as error:
        fetch("mnist", entry(tiny_mirror[1]), {"MNIST_MIRROR": str(bad)}, tmp_path / "w2")
    expected = tiny_mirror[1][FILES[1]]
    got = hashlib.sha256(bytes(data)).hexdigest()
    assert str(error.value) == (
        f"no source gave {FILES[1]} of mnist whole and verified ({bad}/: its content's SHA-256 "
        f"is {got}, not {expected}). Offline? Point MNIST_MIRROR at a folder holding its four "
        ".gz files")


def test_a_recompressed_mirror_passes_by_its_content(tmp_path, fashion_mirror):
    """Debian's Fashion-MNIST was re-compressed: other .gz bytes, the same content."""
    folder, checksums, arrays = fashion_mirror
    got = fetch("fashion-mnist", Entry.model_validate(catalogue_entry("fashion-mnist", checksums)),
                {"FASHION_MNIST_MIRROR": str(folder)}, tmp_path)
    np.testing.assert_array_equal(got["y_test"], arrays["y_test"])


@pytest.mark.parametrize("content, why", [
    (b"not gzip at all", "not gzip data"),
    (gzip.compress(b"\0" * 1000, mtime=0)[:-20], "cut short"),
    (gzip.compress(b"\0" * (70_000 * 64 * 64 + 100), compresslevel=1, mtime=0),
     "decompresses to too much"),
], ids=["text", "truncated", "bomb"])
def test_damaged_or_hostile_files_fail_their_source(tmp_path, tiny_mirror, content, why):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_mirror[0], bad)
    (bad / FILES[0]).write_bytes(content)
    with pytest.raises(StageError, match=why):
        fetch("mnist", entry(tiny_mirror[1]), {"MNIST_MIRROR": str(bad)}, tmp_path / "w")


def test_no_source_at_all_says_what_to_set(tmp_path, tiny_mirror):
    cwd = stage_dir(tmp_path / "stage", {"mnist": tiny_mirror[1]})
    started = time.monotonic()
    status, _, err = run_stage("download", cwd, env={"MNIST_MIRROR": str(tmp_path / "none")})
    assert status == 1 and time.monotonic() - started < 30
    assert one_error_line(err) == (
        f"error: no source gave {FILES[0]} of mnist whole and verified ({tmp_path}/none/: no "
        "such file). Offline? Point MNIST_MIRROR at a folder holding its four .gz files")
    assert not (cwd / "data/raw.npz").exists()


def test_a_server_that_stops_answering_fails_in_bounded_time(tmp_path, tiny_mirror):
    """A server that accepts and never answers: pooch's timeout, retries, then the next."""
    import socket

    import stages.common.catalogue as catalogue

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        original = catalogue.TIMEOUT_S
        catalogue.TIMEOUT_S = 0.5
        started = time.monotonic()
        with pytest.raises(StageError, match="ReadTimeout"):
            fetch("mnist", entry(tiny_mirror[1], (url,)), {}, tmp_path)
        assert time.monotonic() - started < 15
    finally:
        catalogue.TIMEOUT_S = original
        silent.close()


def test_parse_idx_reads_the_header_and_refuses_what_does_not_fit():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    np.testing.assert_array_equal(parse_idx(header + images.tobytes(), 3), images)
    for data, ndim, why in ((header + images.tobytes()[:-1], 3, "needs 40"),
                            (header + images.tobytes(), 1, "in 1 dimensions"),
                            (b"\0\0\x09\3" + header[4:], 3, "unsigned bytes")):
        with pytest.raises(SourceFailed, match=why):
            parse_idx(data, ndim)


def test_the_catalogue_entries_are_valid():
    from stages.common.catalogue import IDX_FILES, load

    for name in ("mnist", "fashion-mnist"):
        entry = load(name)
        assert len(set(entry.classes)) == 10 and entry.urls
        assert sorted(entry.files) == sorted(file for file, _ in IDX_FILES.values())


def test_the_catalogue_at_another_size_and_in_colour_is_made_as_the_app_makes_it(tiny_arrays):
    from app.pictures.fit import resized
    from stages.download import refit

    x = tiny_arrays["x_train"][:20, ..., None]
    assert refit(x, "auto", "auto") is x and refit(x, 28, 1) is x
    bigger = refit(x, 32, 3)
    assert bigger.shape == (20, 32, 32, 3) and (bigger[..., 0] == bigger[..., 2]).all()
    np.testing.assert_array_equal(bigger[7], resized(x[7], 32, 3))
    assert bigger[:, 0, 0].max() == 0  # MNIST's black ground, padded with its edge's colour
