"""Ray as the sweep's engine, on a cluster by its address or on one started on this machine for
the sweep. Each trial is one Ray task; Ray places it where its CPUs are free and, if its worker
dies, runs it once more elsewhere. We schedule nothing. Ray is imported only once it is known
which cluster to use: it reads its settings, environment variables, when it is imported."""

import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sweep import SweepError, grid, trial

log = logging.getLogger("sweep")

CANCEL_WAIT_S = trial.STOP_GRACE_S + 5  # a cancelled trial's commands stop within the grace
# A trial whose worker dies (a machine lost, the OOM killer) runs once more, elsewhere if Ray
# can; a trial that fails on its own (bad params) is reported, never retried.
RETRIES = 1
CONNECT_TIMEOUT_S = 10  # how long the head waits for a cluster's address to answer
STOP_CHECK_S = 0.5  # how often the head, waiting for trials, looks whether it must stop
# Ctrl-C, `kill` and a closed terminal alike: trials cancelled, clones removed, Ray stopped.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
stopping = threading.Event()  # set by a stop signal, never cleared
# Ray's INFO lines (which cluster, which dashboard) are noise here, and what the trials'
# commands print is in their logs. Ray's notices (a retry after a node died) still come.
DRIVER_OPTIONS = {"logging_level": logging.WARNING, "log_to_driver": False}
# Ray's settings for the cluster started on this machine: it listens on 127.0.0.1 alone
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, on Linux too), not where anyone on the network could run
# code on it; a token of its own (not one written to ~/.ray/auth_token); no usage statistics.
LOCAL_CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                     "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}


def on_stop_signal(signum: int, frame: object) -> None:
    """Record the stop, then raise KeyboardInterrupt. The record is what the wait for trials
    checks: in Ray's callbacks a KeyboardInterrupt is lost (ray-project/ray#7734)."""
    stopping.set()
    raise KeyboardInterrupt


def take_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)


def raise_if_stopping() -> None:
    if stopping.is_set():
        raise KeyboardInterrupt


@contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray, connected to the cluster at `address`, or (None) to a cluster of this machine's
    cores with no dashboard, started here and stopped with its processes and files after."""
    options = {"address": address}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        # Ray's folder (RAY_TMPDIR, Ray's own setting) made new, where Ray would put it: a
        # short path, as Ray's unix sockets live under it (at most 107 bytes a path).
        temp = tempfile.mkdtemp(prefix="ray-sweep-", dir=os.environ.get("RAY_TMPDIR") or "/tmp")
        os.environ.update(LOCAL_CLUSTER_ENV, RAY_TMPDIR=temp)
        options = {"address": "local", "include_dashboard": False}
    import ray

    try:
        ray.init(**options, **DRIVER_OPTIONS)
        take_stop_signals()  # again: ray.init sets a SIGTERM handler of its own (sys.exit)
        yield
    except ConnectionError as error:  # ray.init's: no cluster there (Ray's calls raise RayError)
        raise SweepError(f"no Ray cluster at {address}: {' '.join(str(error).split())}") from error
    finally:
        ray.shutdown()
        if not address:
            shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


def check_reachable(address: str) -> None:
    """Ray waits minutes, in silence, for an address that never answers: try the GCS's port
    first. ("auto" and ray:// addresses are left to Ray.)"""
    host, _, port = address.rpartition(":")
    if host and "://" not in address and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as error:
            raise SweepError(f"no Ray cluster answers at {address}: "
                             f"{error.strerror or error}") from error


def run_trials(trials: list[grid.Trial], setup: trial.Setup,
               on_end: Callable[[trial.Outcome], None]) -> list[trial.Outcome]:
    """Run each trial as a Ray task, calling on_end(outcome) as each ends; the outcomes, in that
    order. On Ctrl-C (or any error) the trials still running are stopped before this returns."""
    import ray

    # The workers need not have this project: the trial's code travels with the task.
    ray.cloudpickle.register_pickle_by_value(trial)
    # SPREAD: trials on different machines where there are enough, rather than two trainings
    # sharing one machine's memory bandwidth while another machine idles.
    task = ray.remote(max_retries=RETRIES, scheduling_strategy="SPREAD")(trial.run_trial)
    node_cpus = max([int(node["Resources"].get("CPU", 0)) for node in ray.nodes()
                     if node["Alive"]] + [1])
    pending = {task.options(num_cpus=grid.cpus(t.params, node_cpus), name=t.name)
               .remote(t.name, t.files, setup): t.name for t in trials}
    outcomes = []
    try:
        while pending:
            raise_if_stopping()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=STOP_CHECK_S)
            for ref in ready:
                outcomes.append(result(ref, pending.pop(ref)))
                on_end(outcomes[-1])
    finally:
        if pending:  # each running trial gets a KeyboardInterrupt: it stops and cleans up
            log.warning("stopping %d trial%s ...", len(pending), "s" * (len(pending) > 1))
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
    return outcomes


def result(ref: object, name: str) -> trial.Outcome:
    """The trial's Outcome; a failed one if Ray could not run it (its worker died twice)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # the trial's own code raised: a bug
        return trial.Outcome(name, "", f"{type(error.cause).__name__}: {error.cause}")
    except ray.exceptions.RayError as error:
        return trial.Outcome(name, "", " ".join(str(error).split()).split(". ")[0])
