"""The server under hostile uploads: `python -m app.server.main` (one worker, its real limits) on a
free port of 127.0.0.1, while `clients` threads send the dearest pictures there are
(bench/hostile_images.py: the refused ones, and the worst the limits let through) as fast as
they are answered, and another thread asks `/health` every 50 ms. Reports `/health`'s latency
(p50, p99, max) before and under the flood, what the uploads got, and the worker's memory: its
RSS at rest and its peak (VmHWM) under the flood."""

import itertools
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.load import (
    CONTENT_TYPE,
    multipart_body,
    percentile,
    request,
    start_server,
    stop_server,
    wait_ready,
)
from tests.hostile_pictures import WORST
from tests.serving import free_port

HEALTH_EVERY_S = 0.05


def upload(port, data):
    return request(port, "POST", "/predict", multipart_body(data, filename="x"),
                   {"Content-Type": CONTENT_TYPE}, timeout=60)[0]


def memory_mb(pid, field):
    """VmRSS (now) or VmHWM (the peak so far) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for process {pid}")


def health_latencies(port, stop, seconds=None):
    """/health's latency in seconds, asked every HEALTH_EVERY_S until `stop` is set (or for
    `seconds`)."""
    latencies, ends = [], time.monotonic() + (seconds or float("inf"))
    while not stop.is_set() and time.monotonic() < ends:
        started = time.monotonic()
        status, _ = request(port, "GET", "/health", timeout=60)
        assert status == 200, status
        latencies.append(time.monotonic() - started)
        time.sleep(max(0.0, HEALTH_EVERY_S - latencies[-1]))
    return latencies


def summary(latencies):
    return {"count": len(latencies), "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies) * 1000}


def measure(model, clients=4, seconds=30):
    pictures = {name: make() for name, make in WORST.items()}  # made before the clock starts
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="mnist-bench-hostile-", suffix=".log")
    server = start_server(model, port, 1, log)
    try:
        wait_ready(server, port, log.name)
        upload(port, pictures[next(iter(pictures))])  # the pool's threads started
        quiet = summary(health_latencies(port, threading.Event(), seconds=5))
        rest_mb = memory_mb(server.pid, "VmRSS")
        stop, answers, times = threading.Event(), Counter(), defaultdict(list)

        def flood(offset):
            for name in itertools.islice(itertools.cycle(pictures), offset, None):
                if stop.is_set():
                    return
                started = time.monotonic()
                answers[(name, upload(port, pictures[name]))] += 1
                times[name].append(time.monotonic() - started)

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        under_flood = health_latencies(port, stop, seconds)
        stop.set()
        for thread in threads:
            thread.join()
        peak_mb = memory_mb(server.pid, "VmHWM")
    finally:
        stop_server(server)
        log.close()
    return {"clients": clients, "seconds": seconds, "quiet": quiet,
            "flood": summary(under_flood), "rest_mb": rest_mb, "peak_mb": peak_mb,
            "answers": {name: {str(status): count for (n, status), count in answers.items()
                               if n == name} for name in pictures},
            "median_s": {name: percentile(t, 50) for name, t in times.items() if t}}


def table(result, model_label):
    lines = [
        "## The server under hostile uploads",
        "",
        f"`python -m app.server.main` (1 worker, the default limits) with {model_label}: "
        f"{result['clients']} clients send the pictures below in turn, each as soon as the last "
        f"was answered, for {result['seconds']} s, while `/health` is asked every "
        f"{HEALTH_EVERY_S * 1000:.0f} ms.",
        "",
        "| /health | answers | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for when in ("quiet", "flood"):
        r = result[when]
        lines.append(f"| {'at rest' if when == 'quiet' else 'under the flood'} | {r['count']} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |")
    lines += ["", f"The worker's memory: {result['rest_mb']:.0f} MB at rest, a peak of "
                  f"{result['peak_mb']:.0f} MB under the flood.", "",
              "| picture | answers (status: count) | median answer (s) |", "|---|---|---:|"]
    for name, statuses in result["answers"].items():
        shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        lines.append(f"| {name} | {shown} | {result['median_s'].get(name, float('nan')):.2f} |")
    return lines


if __name__ == "__main__":  # python -m bench.hostile MODEL
    import json
    import sys

    print(json.dumps(measure(sys.argv[1]), indent=2))
