"""The server against hostile clients, over real sockets on 127.0.0.1 (app/server/main.py and
limits.py): every connection, upload and answer ends within its limits, with a JSON answer when
one can be given, and `/health` keeps answering while costly pictures decode. (What the
operating system bounds, pictures and processes, is in test_bounds.py.)

The servers here run with short timeouts (a second or less instead of ten), so that each case
takes about as long as its limit; docs/serving.md has the real values.
"""

import io
import json
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from app.server.settings import Limits
from tests.hostile_pictures import png, progressive_jpeg
from tests.serving import (
    ServedApp,
    cpu_seconds,
    multipart,
    post_file,
    process_tree,
    request,
)
from tests.serving import until_closed as closed_after

# An upload that drags on sends a byte every 0.2 s: its body_progress_s leaves a margin of five.
QUICK = Limits(head_timeout_s=0.5, keep_alive_s=0.5, body_progress_s=1, upload_deadline_s=2,
               send_timeout_s=1, decode_deadline_s=0.1)
CAPPED = Limits(max_connections=8, max_uploads=2)
WAIT_S = 10  # for what must happen within about a second; generous for a busy machine
# The server's clock for a limit may start a moment before the client's: after the connect,
# while the client is still sending.
SLACK_S = 0.1


@pytest.fixture(scope="module")
def quick(model_dir):
    with ServedApp(model_dir / "model.onnx", QUICK) as url:
        yield url


@pytest.fixture(scope="module")
def capped(model_dir):
    with ServedApp(model_dir / "model.onnx", CAPPED) as url:
        yield url


def connect(url):
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=WAIT_S)


def until_closed(sock, drip=None):
    """(seconds until the server closed the connection, all it sent); see tests/serving.py."""
    seconds, received = closed_after(sock, drip, limit_s=WAIT_S)
    assert seconds is not None, f"still open after {WAIT_S} s"
    return seconds, received


def status_and_detail(response):
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["detail"]


def upload_head(length, boundary="b"):
    return (b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n"
            b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % (length, boundary.encode())
            + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
              f'filename="x.png"\r\nContent-Type: image/png\r\n\r\n'.encode())


def test_a_connection_that_sends_nothing_is_closed(quick):
    with connect(quick) as sock:
        seconds, received = until_closed(sock)

    assert received == b""
    assert QUICK.head_timeout_s - SLACK_S <= seconds < WAIT_S


def test_a_head_sent_a_line_at_a_time_is_cut_off(quick):
    """Slowloris: a header line every 0.2 s would hold the connection forever if the clock
    restarted with every byte."""
    with connect(quick) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        seconds, received = until_closed(sock, drip=b"X-Slow: 1\r\n")

    assert status_and_detail(received) == (408, "the request's head did not arrive within 0.5 s")
    assert QUICK.head_timeout_s - SLACK_S <= seconds < WAIT_S


def test_an_idle_connection_is_closed_after_its_answer(quick):
    with connect(quick) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        seconds, received = until_closed(sock)

    assert received.startswith(b"HTTP/1.1 200 ")
    assert QUICK.keep_alive_s - SLACK_S <= seconds < WAIT_S


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "unfinished"])
def test_a_head_over_16_kb_gets_431(quick, whole):
    """Whole, the app sees it and refuses it; unfinished past the limit, the server does."""
    head = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 17_000
    with connect(quick) as sock:
        sock.sendall(head + (b"\r\n\r\n" if whole else b""))
        received = sock.recv(65536)

    assert status_and_detail(received) == (431, "the request's headers are over the 16 KB limit")
    assert request(f"{quick}/health").status == 200


def test_an_upload_that_stalls_gets_408(quick):
    """It declares 100 KB and sends 1 KB: the issue's 9 MB declared, 1 KB sent."""
    with connect(quick) as sock:
        sock.sendall(upload_head(100_000) + b"\0" * 1000)
        seconds, received = until_closed(sock)

    assert status_and_detail(received) == (408, "the upload stalled: nothing came for 1 s")
    assert QUICK.body_progress_s - SLACK_S <= seconds < WAIT_S


def test_an_upload_that_drags_on_gets_408(quick):
    """A byte every 0.2 s keeps it moving, not arriving."""
    with connect(quick) as sock:
        sock.sendall(upload_head(100_000))
        seconds, received = until_closed(sock, drip=b"\0")

    assert status_and_detail(received) == (408, "the upload did not arrive within 2 s")
    assert QUICK.upload_deadline_s - SLACK_S <= seconds < WAIT_S


def open_temporary_files():
    """The unlinked temporary files this process holds open (where the server in its thread
    spools an upload over 1 MB)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
            found.add(target)
    return found


def wait_for(condition, what):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_an_aborted_upload_leaves_no_temporary_file(quick):
    before = open_temporary_files()
    with connect(quick) as sock:
        sock.sendall(upload_head(5 * 2**20) + b"\0" * 3 * 2**20)
        wait_for(lambda: open_temporary_files() - before, "the upload was never spooled")
    # The client has gone: its temporary file goes with it.
    wait_for(lambda: not open_temporary_files() - before, "the temporary file is still open")


def spent_after(seconds):
    """CPU seconds this process's children (the decode processes) spend in the next `seconds`."""
    children = process_tree(os.getpid())[1:]
    before = cpu_seconds(children)
    time.sleep(seconds)
    return cpu_seconds(children) - before


def test_a_picture_past_its_deadline_gets_503_and_costs_nothing_after(quick):
    costly = png(6300, 6300, 0, 8)  # a third of a second of decoding: past the 0.1 s given

    answer = post_file(quick, costly)

    assert answer.status == 503
    assert answer.json()["detail"] == ("the picture was not read within 0.1 s: the server is "
                                       "busy; try again in a few seconds")
    assert spent_after(0.5) < 0.05  # its decode process was killed, not left to finish
    digit = io.BytesIO()
    Image.new("L", (28, 28), 0).save(digit, "PNG")
    # A new process reads the next (on a busy machine, maybe not within the 0.1 s at once).
    wait_for(lambda: post_file(quick, digit.getvalue()).status == 422, "no new decode process")


def test_connections_past_the_cap_get_503(capped):
    idle = [connect(capped) for _ in range(CAPPED.max_connections)]
    try:
        with connect(capped) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            _, received = until_closed(sock)
    finally:
        for sock in idle:
            sock.close()

    assert status_and_detail(received) == (503, "the server has too many connections open; "
                                                 "try again in a few seconds")
    wait_for(lambda: request(f"{capped}/health").status == 200, "the cap was not lifted")


def test_uploads_past_the_cap_get_503(capped):
    held = [connect(capped) for _ in range(CAPPED.max_uploads)]
    try:
        for sock in held:  # started, and held short of their end
            sock.sendall(upload_head(100_000) + b"\0" * 1000)
        body, form_type = multipart({"file": ("x.png", "image/png", b"\x89PNG")})
        wait_for(lambda: request(f"{capped}/predict", body, {"Content-Type": form_type},
                                 "POST").status == 503, "a third upload was taken")
        answer = request(f"{capped}/predict", body, {"Content-Type": form_type}, "POST")
        assert request(f"{capped}/health").status == 200
    finally:
        for sock in held:
            sock.close()

    assert answer.json()["detail"] == ("the server is busy with 2 other uploads; try again in a "
                                       "few seconds")
    wait_for(lambda: request(f"{capped}/predict", body, {"Content-Type": form_type},
                             "POST").status == 400, "the uploads' places were not freed")


def test_health_answers_while_costly_pictures_decode(capped):
    """Two of the dearest pictures the bounds let through, decoding in their processes, while
    /health is asked again and again: each answer within a second (under a millisecond when
    idle). bench/hostile.py measures the p99 under a flood."""
    pictures = [progressive_jpeg(5600, 10), png(6300, 6300, 0, 8)]
    latencies, done = [], threading.Event()

    def ask_health():
        while not done.is_set():
            started = time.monotonic()
            assert request(f"{capped}/health").status == 200
            latencies.append(time.monotonic() - started)

    with ThreadPoolExecutor(3) as clients:
        asking = clients.submit(ask_health)
        answers = list(clients.map(lambda picture: post_file(capped, picture), pictures))
        done.set()
        asking.result()

    assert [a.status for a in answers] == [422, 422], [a.body for a in answers]  # blank
    assert latencies and max(latencies) < 1, latencies


def test_answers_never_read_are_dropped(quick):
    """Clients that ask for ReDoc's bundle (1 MB) eight times over and read nothing: each
    connection is closed once its answer has not moved for send_timeout_s (1 s here), and the
    others are served meanwhile."""
    ask = b"GET /redoc.js HTTP/1.1\r\nHost: test\r\n\r\n" * 8
    held = [connect(quick) for _ in range(20)]
    try:
        for sock in held:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(ask)
        assert request(f"{quick}/health").status == 200
        time.sleep(QUICK.send_timeout_s + 1)
        for sock in held:  # read now: what was sent before the close, then its end
            sock.settimeout(WAIT_S)
            received, chunk = 0, b"x"
            try:
                while chunk:
                    chunk = sock.recv(2**20)
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < 8 * 2**20, "all eight answers came: the connection was held"
    finally:
        for sock in held:
            sock.close()


def test_held_answers_count_against_the_cap_until_they_are_dropped(model_dir):
    """Eight connections holding answers they do not read fill a cap of eight: the next gets a
    503, until the held ones are dropped (send_timeout_s, 1 s here)."""
    limits = Limits(max_connections=8, send_timeout_s=1)
    ask = b"GET /redoc.js HTTP/1.1\r\nHost: test\r\n\r\n" * 8
    with ServedApp(model_dir / "model.onnx", limits) as url:
        held = [connect(url) for _ in range(limits.max_connections)]
        try:
            for sock in held:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(ask)
            with connect(url) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
                _, received = until_closed(sock)
            assert status_and_detail(received)[0] == 503
            wait_for(lambda: request(f"{url}/health").status == 200, "the held were kept")
        finally:
            for sock in held:
                sock.close()
