"""The server under hostile uploads: `python -m app.server.main` (one worker, its real limits) on a
free port of 127.0.0.1.

1. Each of the dearest pictures there are (tests/hostile_pictures.py: built to cost more than
   their headers show, and the dearest that are read) sent twice at once: the answers, the time
   to answer, the CPU the server's processes spent on the two (the decode processes that were
   ended included), the CPU they spent in the 2 s after the answers, and the most memory the
   worker and its decode processes held together (the sum of their proportional set sizes,
   sampled every 10 ms; the sum of RSS counts the pages they share once per process).
2. A flood: `clients` threads send all of them in turn as fast as they are answered, while
   another thread asks `/health` every 50 ms: `/health`'s latency (p50, p99, max) before and
   under the flood, what the uploads got, and the memory, as above, at rest and at its peak.
"""

import itertools
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

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
from tests.serving import PeakMemory, cpu_seconds, free_port, memory_mb, process_tree

HEALTH_EVERY_S = 0.05
AFTER_S = 2  # how long the CPU is watched after the answers


def upload(port, data):
    return request(port, "POST", "/predict", multipart_body(data, filename="x"),
                   {"Content-Type": CONTENT_TYPE}, timeout=60)[0]


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


def two_at_once(server, port, picture):
    """What one picture sent twice at once costs the server (section 1)."""
    spent = cpu_seconds(process_tree(server.pid))
    started = time.monotonic()
    with PeakMemory(server.pid) as memory, ThreadPoolExecutor(2) as clients:
        statuses = list(clients.map(lambda _: upload(port, picture), range(2)))
    seconds = time.monotonic() - started
    tree = process_tree(server.pid)
    spent, answered = cpu_seconds(tree) - spent, cpu_seconds(tree)
    time.sleep(AFTER_S)
    return {"statuses": statuses, "seconds": seconds, "cpu_s": spent,
            "cpu_after_s": cpu_seconds(tree) - answered, "pss_mb": memory.pss,
            "rss_mb": memory.rss, "worker_mb": memory.top}


def measure(model, clients=4, seconds=30):
    pictures = {name: make() for name, make in WORST.items()}  # made before the clock starts
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="mnist-bench-hostile-", suffix=".log")
    server = start_server(model, port, 1, log)
    try:
        wait_ready(server, port, log.name)
        upload(port, pictures["dot grid, 400x400"])  # the decode processes have read one
        quiet = summary(health_latencies(port, threading.Event(), seconds=5))
        rest = {"pss_mb": sum(memory_mb(pid, "Pss") for pid in process_tree(server.pid)),
                "worker_mb": memory_mb(server.pid)}
        each = {name: two_at_once(server, port, picture) for name, picture in pictures.items()}
        stop, answers, times = threading.Event(), Counter(), defaultdict(list)

        def flood(offset):
            for name in itertools.islice(itertools.cycle(pictures), offset, None):
                if stop.is_set():
                    return
                started = time.monotonic()
                answers[(name, upload(port, pictures[name]))] += 1
                times[name].append(time.monotonic() - started)

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(clients)]
        with PeakMemory(server.pid) as memory:
            for thread in threads:
                thread.start()
            under_flood = health_latencies(port, stop, seconds)
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        stop_server(server)
        log.close()
    return {"clients": clients, "seconds": seconds, "quiet": quiet, "each": each,
            "flood": summary(under_flood), "rest": rest,
            "peak": {"pss_mb": memory.pss, "rss_mb": memory.rss, "worker_mb": memory.top},
            "answers": {name: {str(status): count for (n, status), count in answers.items()
                               if n == name} for name in pictures},
            "median_s": {name: percentile(t, 50) for name, t in times.items() if t}}


def table(result, model_label):
    lines = [
        "## The server under hostile uploads",
        "",
        f"`python -m app.server.main` (1 worker, the default limits) with {model_label}. Each "
        "picture is sent twice at once: the answers, the wall time until both came, the CPU the "
        "server's processes spent on them (decode processes ended at a bound included), the CPU "
        f"they spent in the {AFTER_S} s after the answers, and the most memory the worker and "
        "its decode processes held together (PSS: the pages they share counted once; RSS "
        "summed counts them in every process), sampled every 10 ms.",
        "",
        "| picture | answers | seconds | CPU (s) | CPU after (s) | memory, PSS (MB) | "
        "RSS summed (MB) | the worker (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["each"].items():
        lines.append(f"| {name} | {', '.join(map(str, r['statuses']))} | {r['seconds']:.2f} | "
                     f"{r['cpu_s']:.2f} | {r['cpu_after_s']:.2f} | {r['pss_mb']:.0f} | "
                     f"{r['rss_mb']:.0f} | {r['worker_mb']:.0f} |")
    rest, peak = result["rest"], result["peak"]
    lines += [
        "",
        f"Then a flood: {result['clients']} clients send all of them in turn, each as soon as "
        f"the last was answered, for {result['seconds']} s, while `/health` is asked every "
        f"{HEALTH_EVERY_S * 1000:.0f} ms.",
        "",
        "| /health | answers | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for when in ("quiet", "flood"):
        r = result[when]
        lines.append(f"| {'at rest' if when == 'quiet' else 'under the flood'} | {r['count']} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |")
    lines += ["", f"Memory: the worker and its decode processes {rest['pss_mb']:.0f} MB at rest "
                  f"(PSS; the worker alone {rest['worker_mb']:.0f} MB RSS), at most "
                  f"{peak['pss_mb']:.0f} MB under the flood ({peak['rss_mb']:.0f} MB of RSS "
                  f"summed; the worker's own peak {peak['worker_mb']:.0f} MB).", "",
              "| picture | answers (status: count) | median answer (s) |", "|---|---|---:|"]
    for name, statuses in result["answers"].items():
        shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        lines.append(f"| {name} | {shown} | {result['median_s'].get(name, float('nan')):.2f} |")
    return lines


if __name__ == "__main__":  # python -m bench.hostile MODEL
    import json
    import sys

    print(json.dumps(measure(sys.argv[1]), indent=2))
