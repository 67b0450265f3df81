"""Ray as the sweep's engine: an existing cluster by its address, or one started on this
machine for the sweep and stopped after it. Each trial is one Ray task; Ray places it where its
CPUs are free and, if its worker dies, runs it once more elsewhere. We schedule nothing.

Ray is imported only here, and only once it is known which cluster to use: its settings for a
local cluster are environment variables that it reads when it is imported."""

import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager

from sweep import grid, trial

log = logging.getLogger("sweep")

# Where Ray's temporary folder for a local cluster is made (and removed after the sweep): where
# Ray's own setting puts it, else /tmp. Short: Ray's unix sockets live under it, and a
# socket's path may not exceed 107 bytes.
def local_temp_parent():
    return os.environ.get("RAY_TMPDIR") or "/tmp"

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
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Set by a stop signal (Ctrl-C, `kill`, a closed terminal), and never cleared.
stopping = threading.Event()


def on_stop_signal(signum, frame):
    """Record the stop, then raise KeyboardInterrupt. The record is what counts: Ray calls
    back into Python on the head's main thread, where a KeyboardInterrupt is printed as
    "Exception ignored" and lost (ray-project/ray#7734), and the wait for trials checks it."""
    stopping.set()
    raise KeyboardInterrupt


def take_stop_signals():
    """Ctrl-C, SIGTERM and SIGHUP stop the sweep alike; again after ray.init, which sets a
    SIGTERM handler of its own (sys.exit)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)


def raise_if_stopping():
    if stopping.is_set():
        raise KeyboardInterrupt


class ClusterError(RuntimeError):
    """No Ray cluster to run on; the message says why, in one line."""


def local_cluster_env():
    """Settings of the cluster started on this machine, for every process of it:
    - RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (despite its name, on Linux too): Ray keeps
      127.0.0.1 as the node's address and listens there only, rather than on the machine's
      network address, where anyone who reaches it could run code on it;
    - token authentication, with a token made for this cluster alone and passed in the
      environment (Ray would otherwise write one to ~/.ray/auth_token);
    - no usage statistics sent to Ray's makers."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}


# What the head (Ray's "driver") asks of Ray, wherever the cluster is: Ray's own INFO lines
# (which cluster, which dashboard) are noise here, and the trials print nothing of their own
# (what their commands print is in their logs). Ray's notices, such as a trial's retry after
# its node died, still come, on stdout, before the table.
DRIVER_OPTIONS = {"logging_level": logging.WARNING, "log_to_driver": False}


@contextmanager
def connected(address):
    """Ray, connected to the cluster at `address`, or (address None) to a cluster of this
    machine's cores started for the sweep."""
    with existing_cluster(address) if address else local_cluster():
        take_stop_signals()  # again: ray.init sets a SIGTERM handler of its own (sys.exit)
        yield


@contextmanager
def existing_cluster(address):
    check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = import_ray()
    try:
        ray.init(address=address, **DRIVER_OPTIONS)
    except ConnectionError as error:
        raise ClusterError(f"no Ray cluster at {address}: {grid.one_line(error)}") from error
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def local_cluster():
    """A cluster of this machine's cores, with no dashboard, stopped with all its processes and
    files when the block ends."""
    os.environ.update(local_cluster_env())  # before Ray is imported: it reads them then
    ray = import_ray()
    temp = tempfile.mkdtemp(prefix="ray-sweep-", dir=local_temp_parent())
    try:
        ray.init(address="local", include_dashboard=False, _temp_dir=temp, **DRIVER_OPTIONS)
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def import_ray():
    try:
        import ray
    except ImportError as error:
        raise ClusterError("Ray is not installed: pip install -r requirements-sweep.txt "
                           "(`make sweep` does)") from error
    return ray


def check_reachable(address):
    """Ray waits for an address that never answers for minutes, retrying in silence: try the
    GCS's port first. ("auto" and ray:// addresses are left to Ray.)"""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterError(f"no Ray cluster answers at {address}: "
                           f"{error.strerror or error}") from error


def largest_node_cpus():
    import ray

    return max([int(node["Resources"].get("CPU", 0)) for node in ray.nodes()
                if node["Alive"]] + [1])


def run_trials(trials, setup, on_end):
    """Run each trial as a Ray task asking for the CPUs its recipe trains with; call
    on_end(outcome) as each ends; return the outcomes in the order they ended. On Ctrl-C (or any
    error here), the trials still running are cancelled, and have stopped, before this returns."""
    import ray

    # The workers need not have this project: the trial's code travels with the task.
    ray.cloudpickle.register_pickle_by_value(trial)
    # SPREAD: trials on different machines where there are enough, rather than two trainings
    # sharing one machine's memory bandwidth while another machine idles.
    task = ray.remote(max_retries=RETRIES, scheduling_strategy="SPREAD")(trial.run_trial)
    node_cpus = largest_node_cpus()
    pending = {task.options(num_cpus=grid.cpus(t, node_cpus), name=t.name)
               .remote(t.name, t.set_args, setup): t for t in trials}
    outcomes = []
    try:
        while pending:
            raise_if_stopping()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=STOP_CHECK_S)
            for ref in ready:
                outcome = result(ref, pending.pop(ref))
                outcomes.append(outcome)
                on_end(outcome)
    finally:
        if pending:
            cancel(pending)
    return outcomes


def result(ref, planned):
    """The trial's Outcome; a failed one if Ray could not run it (its worker died twice)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # the trial's own code raised: a bug
        return trial.Outcome(planned.name, "", f"{type(error.cause).__name__}: {error.cause}")
    except ray.exceptions.RayError as error:
        return trial.Outcome(planned.name, "", grid.one_line(error).split(". ")[0])


def cancel(pending):
    """Cancel the trials: each running one gets a KeyboardInterrupt, on which it stops its
    commands and removes its clone; wait until they have."""
    import ray

    log.warning("stopping %d trial%s ...", len(pending), "s" * (len(pending) > 1))
    for ref in pending:
        ray.cancel(ref)
    ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
