"""Ray as the sweep's engine: an existing cluster by its address, or one started on this
machine for the sweep and stopped after it. Each trial is one Ray task; Ray places it where its
CPUs are free and, if its worker dies, runs it once more elsewhere. We schedule nothing.

Ray is imported only here, and only once it is known which cluster to use: its settings are
environment variables, which it reads when it is imported."""

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
from types import ModuleType

from sweep import SweepError, grid, trial

log = logging.getLogger("sweep")

# A cancelled trial stops its commands within trial.STOP_GRACE_S: the head waits that long,
# and a little more, before it stops Ray.
CANCEL_WAIT_S = trial.STOP_GRACE_S + 5
# A trial whose worker dies (a machine lost, the OOM killer) runs once more, elsewhere if Ray
# can; a trial that fails on its own (bad params) is reported, never retried.
RETRIES = 1
# How long the head waits for a cluster's address to answer.
CONNECT_TIMEOUT_S = 10
# How often the head, while it waits for trials, looks whether it has been told to stop.
STOP_CHECK_S = 0.5
# Ctrl-C, `kill` and a closed terminal: each stops the sweep, its trials cancelled, their
# clones removed, the local cluster stopped.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Set by a stop signal, and never cleared.
stopping = threading.Event()
# What the head (Ray's "driver") asks of Ray, wherever the cluster is: Ray's own INFO lines
# (which cluster, which dashboard) are noise here, and the trials print nothing of their own
# (what their commands print is in their logs). Ray's notices, such as a trial's retry after
# its node died, still come, on stdout, before the table.
DRIVER_OPTIONS = {"logging_level": logging.WARNING, "log_to_driver": False}


def on_stop_signal(signum: int, frame: object) -> None:
    """Record the stop, then raise KeyboardInterrupt. The record is what counts: Ray calls
    back into Python on the head's main thread, where a KeyboardInterrupt is printed as
    "Exception ignored" and lost (ray-project/ray#7734), and the wait for trials checks it."""
    stopping.set()
    raise KeyboardInterrupt


def take_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)


def raise_if_stopping() -> None:
    if stopping.is_set():
        raise KeyboardInterrupt


def local_cluster_env() -> dict[str, str]:
    """Settings of the cluster started on this machine, for every process of it:
    - RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (despite its name, on Linux too): Ray keeps
      127.0.0.1 as the node's address and listens there only, rather than on the machine's
      network address, where anyone who reaches it could run code on it;
    - token authentication, with a token made for this cluster alone and passed in the
      environment (Ray would otherwise write one to ~/.ray/auth_token);
    - no usage statistics sent to Ray's makers."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}


@contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray, connected to the cluster at `address`, or (address None) to a cluster of this
    machine's cores started for the sweep, with no dashboard, stopped with all its processes
    and files when the block ends."""
    temp = None
    if address:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        options = {"address": address}
    else:
        # Ray's folder for the cluster (RAY_TMPDIR: Ray's own setting), made here under where
        # Ray would put it, to be removed after. A short path: Ray's unix sockets live under
        # it, and a socket's path may not exceed 107 bytes.
        temp = tempfile.mkdtemp(prefix="ray-sweep-", dir=os.environ.get("RAY_TMPDIR") or "/tmp")
        os.environ.update(local_cluster_env(), RAY_TMPDIR=temp)
        options = {"address": "local", "include_dashboard": False}
    ray = import_ray()
    try:
        try:
            ray.init(**options, **DRIVER_OPTIONS)
        except ConnectionError as error:
            raise SweepError(f"no Ray cluster at {address}: {' '.join(str(error).split())}"
                             ) from error
        take_stop_signals()  # again: ray.init sets a SIGTERM handler of its own (sys.exit)
        yield
    finally:
        ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as error:
        raise SweepError("Ray is not installed: pip install -r requirements-sweep.txt "
                         "(`make sweep` does)") from error
    return ray


def check_reachable(address: str) -> None:
    """Ray waits for an address that never answers for minutes, retrying in silence: try the
    GCS's port first. ("auto" and ray:// addresses are left to Ray.)"""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise SweepError(f"no Ray cluster answers at {address}: "
                         f"{error.strerror or error}") from error


def run_trials(trials: list[grid.Trial], setup: trial.Setup,
               on_end: Callable[[trial.Outcome], None]) -> list[trial.Outcome]:
    """Run each trial as a Ray task asking for the CPUs its recipe trains with; call
    on_end(outcome) as each ends; return the outcomes in the order they ended. On Ctrl-C (or any
    error here), the trials still running are cancelled, and have stopped, before this returns."""
    import ray

    # The workers need not have this project: the trial's code travels with the task.
    ray.cloudpickle.register_pickle_by_value(trial)
    # SPREAD: trials on different machines where there are enough, rather than two trainings
    # sharing one machine's memory bandwidth while another machine idles.
    task = ray.remote(max_retries=RETRIES, scheduling_strategy="SPREAD")(trial.run_trial)
    node_cpus = max([int(node["Resources"].get("CPU", 0)) for node in ray.nodes()
                     if node["Alive"]] + [1])
    pending = {task.options(num_cpus=grid.cpus(t.params, node_cpus), name=t.name)
               .remote(t.name, t.files, setup): t for t in trials}
    outcomes = []
    try:
        while pending:
            raise_if_stopping()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=STOP_CHECK_S)
            for ref in ready:
                outcomes.append(result(ref, pending.pop(ref).name))
                on_end(outcomes[-1])
    finally:
        if pending:
            cancel(pending)
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


def cancel(pending: dict) -> None:
    """Cancel the trials: each running one gets a KeyboardInterrupt, on which it stops its
    commands and removes its clone; wait until they have."""
    import ray

    log.warning("stopping %d trial%s ...", len(pending), "s" * (len(pending) > 1))
    for ref in pending:
        ray.cancel(ref)
    ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
