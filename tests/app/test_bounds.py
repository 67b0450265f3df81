"""What the operating system bounds, tried on `python -m app.server.main` as it runs for real, on
127.0.0.1: a picture built to cost more than its header shows is stopped at its bound of memory
or CPU time and answered 413, two at once leave the server's processes under 500 MB, and no CPU
is spent on a picture once it is answered; the workers end with their server, even killed, and
with a stop signal whatever their clients do; no other program can take a share of the port.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.pictures.sandbox import CPU_S
from tests.conftest import REPO
from tests.hostile_pictures import WORST
from tests.serving import (
    PeakMemory,
    cpu_seconds,
    free_port,
    post_file,
    process_tree,
    request,
    wait_until_answering,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

MAX_MB = 500  # the server's processes together, with two costly uploads at once
PICTURE_CPU_S = CPU_S + 0.5  # a picture stopped at its bound, with the request's own work


def serve(model_dir, port, workers, **environ):
    """`python -m app.server.main` with the fixture model on 127.0.0.1:`port`."""
    env = {**os.environ, "MODEL": str(model_dir / "model.onnx"), "PORT": str(port),
           "WORKERS": str(workers), **environ}
    return subprocess.Popen([sys.executable, "-m", "app.server.main"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def server(model_dir):
    """A function starting `python -m app.server.main` with `workers` on `port` (a free one by
    default), once it answers: (its process, its URL, its port). Each is killed after the test."""
    started = []

    def start(workers, port=None):
        port = port or free_port()
        process = serve(model_dir, port, workers)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(url, workers)
        return process, url, port

    yield start
    for process in started:
        process.kill()
        output, _ = process.communicate(timeout=30)
        assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def one_worker(model_dir):
    port = free_port()
    process = serve(model_dir, port, 1)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url)
        yield process, url
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert "Traceback" not in output, output


HOSTILE = [name for name in WORST if not name.startswith(("10-scan", "grey PNG, 6300",
                                                          "baseline", "dot grid"))]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_costly_picture_is_stopped_at_its_bound_whatever_its_header_says(one_worker, name):
    """Two at once: each answered 413 for at most its bound of CPU time (the dearest take 7 to
    32 s unbounded), the server's processes under 500 MB all the while, and no CPU spent on
    either once they are answered."""
    process, url = one_worker
    picture = WORST[name]()
    spent = cpu_seconds(process_tree(process.pid))
    with PeakMemory(process.pid) as memory, ThreadPoolExecutor(2) as clients:
        answers = list(clients.map(lambda _: post_file(url, picture), range(2)))
    tree = process_tree(process.pid)
    spent = cpu_seconds(tree) - spent

    assert [a.status for a in answers] == [413, 413], [a.body for a in answers]
    assert spent < 2 * PICTURE_CPU_S
    assert memory.pss < MAX_MB and memory.top < MAX_MB
    spent = cpu_seconds(tree)
    time.sleep(1)
    assert cpu_seconds(tree) - spent < 0.1


@pytest.mark.parametrize("name", ["10-scan progressive grey JPEG, 5600x5600",
                                  "grey PNG, 6300x6300", "baseline colour JPEG, 6300x6300"])
def test_the_dearest_pictures_within_the_bounds_are_read(one_worker, name):
    process, url = one_worker
    with PeakMemory(process.pid) as memory, ThreadPoolExecutor(2) as clients:
        answers = list(clients.map(lambda _: post_file(url, WORST[name]()), range(2)))

    assert {a.status for a in answers} <= {200, 422}, [a.body for a in answers]
    assert all("no digit" in a.json()["detail"] for a in answers if a.status == 422)
    assert memory.pss < MAX_MB


def listening_on(port):
    """Whether a socket listens on `port` (IPv4, /proc/net/tcp; state 0A is LISTEN)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(int(line.split()[1].split(":")[1], 16) == port and line.split()[3] == "0A"
               for line in lines)


def alive(pids):
    """Those of `pids` still running (a zombie has ended)."""
    def running(pid):
        try:
            return " Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
        except OSError:
            return False
    return [pid for pid in pids if running(pid)]


def wait_for(condition, what, timeout_s=15):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_workers_end_with_their_server_even_killed(server):
    """SIGKILL to the server: its workers and their decode processes end, and the port is free
    for the next start."""
    process, url, port = server(2)
    assert post_file(url, WORST["dot grid, 400x400"]()).status == 422  # a decode process
    tree = process_tree(process.pid)
    assert len(tree) >= 7, tree  # the server, two workers, their fork servers and decoders

    process.kill()
    process.wait()

    wait_for(lambda: not alive(tree), f"still running: {alive(tree)}")
    assert not listening_on(port)
    _, url, _ = server(1, port)
    assert request(f"{url}/health").status == 200


def test_no_other_program_can_take_a_share_of_the_port(server, model_dir):
    """The workers share one socket that only they hold: a program that binds the port with
    SO_REUSEPORT, to be given some of its connections, is refused; so is a second server."""
    _, url, port = server(2)
    intruder = socket.socket()
    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with intruder, pytest.raises(OSError, match="Address already in use"):
        intruder.bind(("127.0.0.1", port))

    second = subprocess.run([sys.executable, "-m", "app.server.main"], cwd=REPO,
                            env={**os.environ, "PORT": str(port),
                                 "MODEL": str(model_dir / "model.onnx")},
                            capture_output=True, text=True, timeout=120)
    assert second.returncode != 0
    assert second.stderr.splitlines()[-1] == (f"error: cannot listen on 127.0.0.1:{port}: "
                                              "Address already in use")
    assert request(f"{url}/health").status == 200


def test_a_stop_signal_ends_the_server_whatever_its_clients_do(server):
    """SIGTERM while clients hold answers they never read, an upload half sent and a head
    that never ends: the server and its workers are gone within the grace period (5 s)."""
    process, url, port = server(2)
    tree = process_tree(process.pid)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    try:
        for sock in clients[:10]:
            sock.sendall(b"GET /redoc.js HTTP/1.1\r\nHost: t\r\n\r\n" * 8)
        clients[10].sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\n"
                            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        clients[11].sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        seconds = time.monotonic() - started
    finally:
        for sock in clients:
            sock.close()

    assert seconds < 5 + 2, seconds
    wait_for(lambda: not alive(tree), f"still running: {alive(tree)}", timeout_s=5)


def test_answers_never_read_cost_nothing_for_long(one_worker):
    """100 clients that ask for ReDoc's bundle (1 MB) eight times and read nothing: the server's
    memory stays bounded, others are served, and each of them is dropped within the send
    timeout (5 s) of its answer stalling."""
    process, url = one_worker
    port = int(url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        with PeakMemory(process.pid) as memory:
            for sock in held:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /redoc.js HTTP/1.1\r\nHost: t\r\n\r\n" * 8)
            assert request(f"{url}/health").status == 200
            time.sleep(5 + 2)
        for sock in held:  # what came before the reset, then the reset
            sock.settimeout(10)
            with pytest.raises(ConnectionResetError):
                while sock.recv(2**20):
                    pass
    finally:
        for sock in held:
            sock.close()

    assert memory.pss < MAX_MB and memory.top < 300, (memory.pss, memory.top)
