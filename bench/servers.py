"""How the server was chosen: each candidate that is installed serves the same app (app.server.api's
create_app, the same model), and is measured the same way: requests/s and latency under `wrk`
(POST /predict of a small PNG, 16 connections, on this machine), the CPU its processes spend per
request, and what it does with hostile connections: one that sends nothing, one that sends a
header line every 0.2 s (slowloris), a 100 KB head that never ends, an upload that stops after
1 KB, and one connection more than 256 idle ones.

    pip install granian==2.8.9 hypercorn==0.18.0 gunicorn==27.0.1   # the other candidates
    python -m bench.servers MODEL [--seconds 10] [--rounds 3]

Prints a Markdown table (docs/serving.md has the last one): the medians of `rounds` runs of each
candidate, taken in turn; candidates not installed are skipped. The app's own limits
(app/server/limits.py: 413, 408 for a stalled body, ...) run under every candidate; what differs is
what each server does before the app sees a request.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench.coldstart import digit_png
from bench.load import REPO, multipart_body, run_wrk, stop_server, wait_ready
from tests.serving import free_port, until_closed

BIN = Path(sys.executable).parent
FACTORY = "app.server.api:create_app"
CANDIDATES = {  # name: (the command, given the port; the program that must be installed)
    "uvicorn + h11 + app/server/main.py (chosen)": (
        lambda port: [sys.executable, "-m", "app.server.main"], None),
    "uvicorn + h11": (lambda port: [BIN / "uvicorn", FACTORY, "--factory", "--http", "h11",
                                    "--port", port, "--log-level", "warning"], "uvicorn"),
    "uvicorn + httptools": (lambda port: [BIN / "uvicorn", FACTORY, "--factory", "--http",
                                          "httptools", "--port", port, "--log-level",
                                          "warning"], "uvicorn"),
    "gunicorn + uvicorn worker": (lambda port: [
        BIN / "gunicorn", "-k", "uvicorn.workers.UvicornH11Worker", "--bind",
        f"127.0.0.1:{port}", "--log-level", "warning", f"{FACTORY}()"], "gunicorn"),
    "granian": (lambda port: [BIN / "granian", "--interface", "asgi", "--factory", FACTORY,
                              "--port", port, "--http", "1", "--no-ws",
                              "--http1-header-read-timeout", "10000",
                              "--http1-buffer-size", "16384", "--log-level", "warning"],
                "granian"),
    "hypercorn": (lambda port: [BIN / "hypercorn", f"{FACTORY}()", "--bind",
                                f"127.0.0.1:{port}", "--keep-alive", "5", "--read-timeout",
                                "10", "--log-level", "warning"], "hypercorn"),
}
PROBE_LIMIT_S = 15  # a probe that is still open after this is reported as open


def cpu_seconds(session):
    """user + system CPU seconds of every process in a session (a server and its workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == session:  # the process group: start_new_session made it the pid
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def probe(port, send=b"", drip=None):
    """(seconds until closed or None, the status answered or None) for a connection that
    sends `send`, then `drip` every 0.2 s."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(send)
        seconds, received = until_closed(sock, drip)
    return seconds, status_of(received)


def status_of(response):
    return int(response.split()[1]) if response.startswith(b"HTTP/") else None


def past_the_cap(port, idle=256):
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
    try:
        time.sleep(0.5)  # accepted
        return probe(port, b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
    finally:
        for sock in sockets:
            sock.close()


def probes(port):
    upload = (b"POST /predict HTTP/1.1\r\nHost: b\r\nContent-Length: 100000\r\n"
              b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
              b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
              + b"\0" * 1000)
    return {
        "sends nothing": probe(port),
        "slowloris": probe(port, b"GET /health HTTP/1.1\r\nHost: b\r\n", b"X-A: b\r\n"),
        "100 KB head, unfinished": probe(port, b"GET /health HTTP/1.1\r\nHost: b\r\n"
                                         + b"X-Big: " + b"a" * 100_000),
        "stalled upload": probe(port, upload),
        "257th connection": past_the_cap(port),
    }


@contextmanager
def serving(name, model, tmp):
    """The candidate `name` serving the app on a free port, stopped afterwards; yields
    (port, its process)."""
    command, _ = CANDIDATES[name]
    port = free_port()
    log = Path(tmp) / "server.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen([str(c) for c in command(str(port))], cwd=REPO,
                                  # one worker each, as the others run by default
                                  env={**os.environ, "MODEL": str(model), "PORT": str(port),
                                       "WORKERS": "1"},
                                  stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_ready(server, port, log)
        yield port, server
    finally:
        stop_server(server)


def load(name, model, body_file, tmp, seconds):
    with serving(name, model, tmp) as (port, server):
        run_wrk(port, body_file, tmp, 16, 2)  # warm-up
        cpu = cpu_seconds(server.pid)
        result = run_wrk(port, body_file, tmp, 16, seconds)
        result["cpu_ms"] = (cpu_seconds(server.pid) - cpu) / result["requests"] * 1000
        return result


def shown(probe):
    """'408 in 10 s': the status answered (if any), and when the connection was closed."""
    seconds, status = probe
    closed = f"closed in {seconds:.0f} s" if seconds is not None else \
        f"open after {PROBE_LIMIT_S} s"
    return f"{status}, {closed}" if status else closed


def table(loads, probed):
    names = list(next(iter(probed.values())))
    lines = ["| server | requests/s | p99 (ms) | CPU per request (ms) | "
             + " | ".join(names) + " |", "|---|" + "---:|" * 3 + "---|" * len(names)]
    for name, runs in loads.items():
        median = {key: statistics.median(run[key] for run in runs)
                  for key in ("rps", "p99_ms", "cpu_ms")}
        lines.append(f"| {name} | {median['rps']:.0f} | {median['p99_ms']:.0f} | "
                     f"{median['cpu_ms']:.2f} | "
                     + " | ".join(shown(probed[name][probe]) for probe in names) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=int, default=10, help="of load, each run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each candidate, taken in turn; the table gives medians")
    args = parser.parse_args()
    model = args.model.resolve()
    installed = [name for name, (_, program) in CANDIDATES.items()
                 if not program or shutil.which(BIN / program)]
    loads, probed = {name: [] for name in installed}, {}
    with tempfile.TemporaryDirectory(prefix="mnist-bench-servers-") as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(multipart_body(digit_png(Path(tmp) / "one.png").read_bytes()))
        for _ in range(args.rounds):  # in turn, so that a busy spell hits them all
            for name in installed:
                loads[name].append(load(name, model, body_file, tmp, args.seconds))
                print(name, json.dumps(loads[name][-1]), file=sys.stderr, flush=True)
        for name in installed:
            with serving(name, model, tmp) as (port, _):
                probed[name] = probes(port)
            print(name, json.dumps(probed[name]), file=sys.stderr, flush=True)
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n")
    print(table(loads, probed))


if __name__ == "__main__":
    main()
