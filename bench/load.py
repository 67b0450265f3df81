"""The API under load: `python -m app.server.main` on a free port of 127.0.0.1, then POST
/predict with a small PNG digit from many concurrent clients, with `wrk` if it is installed
(apt-get install wrk), else with a threaded Python client (which itself takes CPU from the server
on a small machine). The server is always stopped afterwards."""

import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.serving import free_port

REPO = Path(__file__).resolve().parent.parent
BOUNDARY = "bench-boundary-5f1e0c2a"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
# wrk: the method and the body from files, and one JSON line of results at the end (in µs).
WRK_SCRIPT = """\
local f = assert(io.open(%s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %%d, "duration_us": %%d, "status_errors": %%d, '
    .. '"socket_errors": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def multipart_body(png, field="file", filename="digit.png"):
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n").encode() + png + \
        f"\r\n--{BOUNDARY}--\r\n".encode()


def start_server(model, port, workers, log_file):
    """`python -m app.server.main` in a session of its own, so that stopping it stops its
    workers."""
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": str(workers),
           "MODEL": str(model)}
    return subprocess.Popen([sys.executable, "-m", "app.server.main"], cwd=REPO, env=env,
                            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc):
    """SIGTERM to the server's process group (the server and its workers), SIGKILL if that
    has not ended it in 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def request(port, method, path, body=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(proc, port, log_path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited {proc.returncode}:\n"
                               f"{Path(log_path).read_text()[-3000:]}")
        try:
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not answer /health within {timeout} s")


def percentile(values, q):
    """The q-th percentile (0-100) of `values`, interpolated linearly between ranks as numpy's
    default does."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def wrk_result(stdout):
    """wrk's summary from the script's BENCH line, in requests/s and milliseconds."""
    line = next(x for x in stdout.splitlines() if x.startswith("BENCH "))
    raw = json.loads(line[len("BENCH "):])
    seconds = raw["duration_us"] / 1e6
    return {"requests": raw["requests"], "seconds": seconds,
            "rps": raw["requests"] / seconds, "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000,
            "non_2xx": raw["status_errors"], "socket_errors": raw["socket_errors"]}


def run_wrk(port, body_file, tmp, clients, seconds):
    script = Path(tmp) / "post.lua"
    script.write_text(WRK_SCRIPT % json.dumps(str(body_file)))
    cmd = ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script),
           "-H", f"Content-Type: {CONTENT_TYPE}", f"http://127.0.0.1:{port}/predict"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk exited {result.returncode}:\n{result.stderr[-2000:]}")
    return wrk_result(result.stdout)


def run_python_client(port, body, clients, total):
    """`total` requests from `clients` threads, each on its own keep-alive connection."""
    latencies, statuses, errors, lock = [], [], [0], threading.Lock()
    left = [total]

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            started = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": CONTENT_TYPE})
                response = conn.getresponse()
                response.read()
                status = response.status
            except OSError:
                conn.close()
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses.append(status)
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    return summarise_client(latencies, statuses, errors[0], seconds)


def summarise_client(latencies, statuses, socket_errors, seconds):
    return {"requests": len(latencies), "seconds": seconds, "rps": len(latencies) / seconds,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies) * 1000,
            "non_2xx": sum(not 200 <= s < 300 for s in statuses), "socket_errors": socket_errors}


def measure(model, png, workers=(1, 2), clients=16, seconds=10, total=3000):
    """{workers: result} for each worker count; `seconds` for wrk, `total` requests for the
    Python client."""
    use_wrk = shutil.which("wrk") is not None
    results = {}
    with tempfile.TemporaryDirectory(prefix="mnist-bench-api-") as tmp:
        body = multipart_body(Path(png).read_bytes())
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        for count in workers:
            port, log_path = free_port(), Path(tmp) / f"api-{count}.log"
            with open(log_path, "wb") as log_file:
                proc = start_server(model, port, count, log_file)
                try:
                    wait_ready(proc, port, log_path)
                    status, answer = request(port, "POST", "/predict", body,
                                             {"Content-Type": CONTENT_TYPE})
                    if status != 200:
                        raise RuntimeError(f"POST /predict answered {status}: {answer[:300]}")
                    if use_wrk:
                        run_wrk(port, body_file, tmp, clients, 2)  # warm-up: every worker
                        result = run_wrk(port, body_file, tmp, clients, seconds)
                    else:
                        run_python_client(port, body, clients, 200)
                        result = run_python_client(port, body, clients, total)
                finally:
                    stop_server(proc)
            results[count] = {**result, "answer": json.loads(answer)["label"]}
    return {"tool": "wrk" if use_wrk else "python", "clients": clients, "runs": results}


def table(load, model_label):
    tool = ("`wrk` (2 threads)" if load["tool"] == "wrk" else
            "a threaded Python client (it competes with the server for the CPU)")
    lines = [
        "## API under load",
        "",
        f"`python -m app.server.main` with {model_label} on 127.0.0.1, POST /predict of a 28x28 "
        f"PNG digit from {load['clients']} concurrent keep-alive connections by {tool}, on the "
        "same machine as the server, after a warm-up.",
        "",
        "| workers | requests | seconds | requests/s | p50 (ms) | p99 (ms) | max (ms) | non-2xx "
        "| socket errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers, r in load["runs"].items():
        lines.append(f"| {workers} | {r['requests']} | {r['seconds']:.1f} | {r['rps']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['non_2xx']} | {r['socket_errors']} |")
    return lines
