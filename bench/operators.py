"""Serving for operators (issue 31): what the Prometheus metrics cost, and what a reload loses.

`wrk` (POST /predict of a small PNG, 16 connections, on this machine) against mnist-serve with
its metrics on and off, in turns within the same run (medians of `rounds`), with the CPU its
processes spend per request, and the middleware that counts timed alone, in one process (steady
where the machine is shared); then, under the same load, the model switched every two seconds:
SIGHUP to mnist-serve (each worker loads and checks the new model, then answers with it from its
next request) against SIGHUP to uvicorn's own supervisor (which replaces each worker).

    python -m bench.operators [--model model/model.onnx] [--seconds 10] [--rounds 5]

main() prints a Markdown section and returns the figures. Needs wrk (apt-get install wrk) and
onnx (a second model: the same one with a metadata entry more, so that its SHA-256 differs).
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from app.server.settings import Settings
from bench.coldstart import digit_png
from bench.load import REPO, multipart_body, run_wrk, stop_server, wait_ready
from bench.servers import cpu_seconds
from tests.serving import free_port

GOAL = 0.05  # the most the metrics may cost of the throughput
RELOAD_EVERY_S = 2
SWITCHED = "serving model.onnx (SHA-256 "  # what a worker of mnist-serve logs once it switched


@contextmanager
def serving(command, model, tmp, **environ):
    """`command` (given the port) serving `model` on a free port, its output in a log; stopped
    after. Yields (its process, its port, the log's path)."""
    port, log = free_port(), Path(tmp) / f"server-{time.monotonic_ns()}.log"
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "MODEL": str(model), **environ}
    with open(log, "wb") as output:
        server = subprocess.Popen(command(port), cwd=REPO, env=env, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(server, port, log)
        yield server, port, log
    finally:
        stop_server(server)


def mnist_serve(port):
    return [sys.executable, "-m", "app.server.main"]


def uvicorn_supervisor(port):
    return [sys.executable, "-m", "uvicorn", "app.server.api:create_app", "--factory",
            "--workers", str(Settings().workers), "--port", str(port), "--log-level", "info"]


def throughput(model, body, tmp, seconds, rounds):
    """{"on": [wrk results], "off": [...]}, the two taken in turns; each result with the CPU
    the server's processes spent per request (ms), steadier than requests/s on a busy machine."""
    runs = {"on": [], "off": []}
    for _ in range(rounds):
        for metrics in runs:
            with serving(mnist_serve, model, tmp, METRICS=str(metrics == "on")) as (server, port,
                                                                                   _):
                run_wrk(port, body, tmp, 16, 2)  # warm-up: every worker
                cpu = cpu_seconds(server.pid)
                result = run_wrk(port, body, tmp, 16, seconds)
                result["cpu_ms"] = (cpu_seconds(server.pid) - cpu) / result["requests"] * 1000
                runs[metrics].append(result)
    return runs


def middleware_us(metrics_on, requests=20000):
    """Microseconds the request middleware (app/server/metrics.py) takes per request, its metrics
    on or off, around an app that answers at once: in this process, without the network or the
    rest of a request, so steady on a busy machine. Run it where PROMETHEUS_MULTIPROC_DIR is set,
    as mnist-serve runs."""
    import asyncio

    from starlette.routing import Route

    from app.server import metrics

    route = Route("/predict", lambda request: None)

    async def app(scope, receive, send):
        scope["route"], scope["state"]["classes"] = route, ["7"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def ignore(message=None):
        return {}

    observed = metrics.observed(app, [route], Settings(metrics=metrics_on))

    async def run(count):
        for _ in range(count):
            await observed({"type": "http", "method": "POST", "state": {}, "headers": [
                (b"host", b"b"), (b"content-length", b"300")]}, ignore, ignore)

    asyncio.run(run(requests // 10))  # warm-up: the labels' values made
    started = time.perf_counter()
    asyncio.run(run(requests))
    return (time.perf_counter() - started) / requests * 1e6


def middleware_cost(tmp):
    """(µs without metrics, µs with), measured in a process of its own in multiprocess mode."""
    counts = Path(tmp) / "middleware-metrics"
    counts.mkdir()
    done = subprocess.run([sys.executable, "-c", "from bench.operators import middleware_us as m;"
                           " print(m(False), m(True))"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(counts)}, check=True)
    return tuple(map(float, done.stdout.split()))


def another_model(model, tmp):
    """`model` with one more metadata entry: the same answers, another SHA-256."""
    import onnx

    proto = onnx.load(str(model))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        "bench": "another copy"})
    path = Path(tmp) / "another.onnx"
    onnx.save(proto, str(path))
    return path


def reloads_under_load(command, model, body, tmp, seconds):
    """wrk for `seconds` while MODEL is replaced and the server sent SIGHUP every
    RELOAD_EVERY_S: wrk's results, with `reloads` sent and `switched` (workers' lines)."""
    served, versions = Path(tmp) / "model.onnx", [model, another_model(model, tmp)]
    shutil.copy(model, served)
    with serving(command, served, tmp) as (server, port, log):
        run_wrk(port, body, tmp, 16, 2)  # warm-up
        before, sent, done = log.read_text().count(SWITCHED), 0, threading.Event()

        def reload():
            nonlocal sent
            while not done.wait(RELOAD_EVERY_S):
                sent += 1
                shutil.copy(versions[sent % 2], served.with_suffix(".new"))
                served.with_suffix(".new").replace(served)
                server.send_signal(signal.SIGHUP)

        reloader = threading.Thread(target=reload)
        reloader.start()
        try:
            result = run_wrk(port, body, tmp, 16, seconds)
        finally:
            done.set()
            reloader.join()
        time.sleep(1)  # the last switch, logged
        return {**result, "reloads": sent, "switched": log.read_text().count(SWITCHED) - before}


def median(runs, key):
    return statistics.median(run[key] for run in runs)


def section(model_label, seconds, rounds, runs, middleware, reloads):
    on, off = median(runs["on"], "rps"), median(runs["off"], "rps")
    cost = 1 - on / off
    share = (middleware[1] - middleware[0]) / (median(runs["off"], "cpu_ms") * 1000)
    lines = [
        "## Serving for operators: metrics and reloads", "",
        f"`python -m app.server.main` with {model_label}, {Settings().workers} workers, on "
        "127.0.0.1; POST /predict of a 28x28 PNG from 16 keep-alive connections by `wrk` on the "
        f"same machine. Metrics on and off in turns, {rounds} runs of {seconds} s each (medians).",
        "", "| metrics | requests/s | each run | server CPU per request (ms) | p50 (ms) | p99 (ms) "
        "| non-2xx | socket errors |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, runs_of in runs.items():
        lines.append(f"| {name} | {median(runs_of, 'rps'):.0f} | "
                     f"{', '.join(str(round(r['rps'])) for r in runs_of)} | "
                     f"{median(runs_of, 'cpu_ms'):.2f} | "
                     f"{median(runs_of, 'p50_ms'):.1f} | {median(runs_of, 'p99_ms'):.1f} | "
                     f"{sum(r['non_2xx'] for r in runs_of)} | "
                     f"{sum(r['socket_errors'] for r in runs_of)} |")
    lines += ["", f"Throughput with the metrics on: {-cost:+.1%} (goal: a cost of at most "
              f"{GOAL:.0%}). On a machine shared with other work the runs of one setting differ "
              "by more than that, so the middleware that counts was timed alone too (in one "
              "process, multiprocess mode, an app that answers at once): "
              f"{middleware[0]:.1f} µs per request without the metrics, {middleware[1]:.1f} µs "
              f"with them, {middleware[1] - middleware[0]:.1f} µs more: {share:.1%} of the "
              f"server's CPU per request without them: **{'met' if share <= GOAL else 'missed'}**.",
              "",
              f"The model replaced and the server sent SIGHUP every {RELOAD_EVERY_S} s under the "
              "same load, for the same time:", "",
              "| SIGHUP to | requests | failed (non-2xx, socket errors) | reloads | workers "
              "switched | requests/s |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in reloads.items():
        lines.append(f"| {name} | {r['requests']} | {r['non_2xx'] + r['socket_errors']} | "
                     f"{r['reloads']} | {r['switched']} | {r['rps']:.0f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.operators", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "model" / "model.onnx")
    parser.add_argument("--seconds", type=int, default=10, help="of load, each run")
    parser.add_argument("--rounds", type=int, default=5, help="runs with metrics on, and off")
    args = parser.parse_args(argv)
    model = args.model.resolve()
    with tempfile.TemporaryDirectory(prefix="mnist-bench-operators-") as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(multipart_body(digit_png(Path(tmp) / "one.png").read_bytes()))
        runs = throughput(model, body, tmp, args.seconds, args.rounds)
        middleware = middleware_cost(tmp)
        reloads = {
            "mnist-serve (each worker switches between requests)":
                reloads_under_load(mnist_serve, model, body, tmp, args.seconds),
            "uvicorn's supervisor (each worker replaced; not what mnist-serve does)":
                reloads_under_load(uvicorn_supervisor, model, body, tmp, args.seconds)}
    lines = section(model.name, args.seconds, args.rounds, runs, middleware, reloads)
    print("\n".join(lines))
    on, off = median(runs["on"], "rps"), median(runs["off"], "rps")
    mnist_serve_reloads = next(iter(reloads.values()))
    return {"rps_metrics_on": on, "rps_metrics_off": off, "metrics_cost": 1 - on / off,
            "cpu_ms_metrics_on": median(runs["on"], "cpu_ms"),
            "cpu_ms_metrics_off": median(runs["off"], "cpu_ms"),
            "middleware_us_metrics_off": middleware[0], "middleware_us_metrics_on": middleware[1],
            "runs": runs, "reloads": reloads,
            "failed_during_reload": mnist_serve_reloads["non_2xx"]
            + mnist_serve_reloads["socket_errors"], "markdown": "\n".join(lines)}


if __name__ == "__main__":
    main()
