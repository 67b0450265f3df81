"""A Ray cluster of several nodes on this one machine, on 127.0.0.1 only: each node a real
`ray start` process tree with a folder of its own, stopped (or killed, as a lost machine) by its
process ids, never by `ray stop`, which stops every Ray process of the machine. What the sweep's
tests and its benchmark (bench/sweep.py) run sweeps on, to exercise the cluster path without a
cluster.

Ray 2.60 replaces 127.0.0.1 by the machine's network address wherever it is given, unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; and with that setting, `ray start --address` refuses to
join a cluster ("not supported on Windows and OSX"). So every node runs with the setting, and a
joining node runs Ray's own `ray start` with that one refusal lifted (JOIN below): the one
private API of Ray the project uses, no public setting doing it, and pinned by
tests/sweep/test_ray_cluster.py, which fails on a Ray whose `ray start` no longer reads it. The
head (`sweep --address`) needs the setting too, to connect to 127.0.0.1 rather than the network
address, on which nothing listens."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sweep.cluster import LOCAL_CLUSTER_ENV

READY_LINE = "Ray runtime started"
# Every node and the head (`sweep --address`) run with the settings of the sweep's own local
# cluster, one token for them all. Without a token set, Ray turns token authentication on
# wherever ~/.ray/auth_token exists (any earlier `ray.init()` writes one), and the head would be
# refused by its own nodes.
LOOPBACK_ENV = LOCAL_CLUSTER_ENV
# `ray start`, with the refusal to join a cluster from "Windows or OSX" lifted (see above).
JOIN = ("import sys, types; from ray._private import ray_constants; "
        "import ray.scripts.scripts as scripts; "
        "scripts.ray_constants = types.SimpleNamespace("
        "**{**vars(ray_constants), 'ENABLE_RAY_CLUSTER': True}); "
        "sys.argv[0] = 'ray'; scripts.main()")
# The common options: no dashboard or usage statistics, and a small object store (trials pass
# a few bytes through it) rather than 30 % of the machine's memory per node.
COMMON_OPTIONS = ["--disable-usage-stats", "--object-store-memory=100000000", "--block"]
# How long a node's processes get to exit on SIGTERM before SIGKILL: Ray's exit cleanly in
# a second or two when they do at all (gcs_server and raylet often wait for each other).
STOP_GRACE_S = 2
# How long a node may take to start (seconds on a quiet machine, a minute on a busy one).
READY_TIMEOUT_S = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One node: `ray start --block` in a session of its own, so that every process it starts
    (Ray's, its workers', the trials') can be found by that session. Its files, and TMPDIR of
    everything run on it (clones, the trials' DVC cache), are under one folder, removed by stop().
    """

    def __init__(self, args, num_cpus, env):
        # Short: Ray's unix sockets live under --temp-dir (at most 107 bytes a path).
        self.folder = Path(tempfile.mkdtemp(prefix="ray-node-", dir="/tmp"))
        (self.folder / "tmp").mkdir()
        self.output = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [*args, f"--num-cpus={num_cpus}", f"--temp-dir={self.folder / 'ray'}",
             *COMMON_OPTIONS],
            env={**env, **LOOPBACK_ENV, "TMPDIR": str(self.folder / "tmp")},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read_output, daemon=True).start()

    def wait_ready(self, timeout_s=READY_TIMEOUT_S):
        if not self._ready.wait(timeout_s) or self.process.poll() is not None:
            raise RuntimeError("ray start did not come up:\n" + "".join(self.output[-30:]))

    def _read_output(self):
        for line in self.process.stdout:  # read to the end: a full pipe would block Ray
            self.output.append(line)
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()  # it exited

    @property
    def tmp(self):
        """TMPDIR of the node's processes: where its trials clone."""
        return self.folder / "tmp"

    def processes(self):
        """The ids of every process of the node, the trials' included."""
        session = self.process.pid
        found = []
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                if os.getsid(pid) == session:
                    found.append(pid)
            except ProcessLookupError:
                pass
        return found

    @property
    def node_id(self):
        """Ray's id of the node, from its raylet's command line."""
        for pid in self.processes():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in args:
                if arg.startswith(b"--node_id="):
                    return arg.split(b"=", 1)[1].decode()
        return None

    def kill(self):
        """SIGKILL to every process of the node at once: a machine lost."""
        self._signal(signal.SIGKILL)

    def stop(self):
        """SIGTERM to every process of the node, SIGKILL to what is left after STOP_GRACE_S;
        then its folder is removed."""
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal(signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _alive(self):
        """Whether any process of the node is still running (zombies do not count)."""
        for pid in self.processes():
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    return True
            except OSError:
                pass
        return False

    def _signal(self, signum):
        for pid in self.processes():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def start_cluster(cpus, env):
    """Nodes of cpus[0], cpus[1], ... CPUs, the first the head (its address: `.address`), all
    started and joined; on failure, those started are stopped. Each joins as soon as the head's
    GCS answers, rather than once the whole head is up."""
    port = free_port()
    nodes = [Node([str(Path(sys.executable).parent / "ray"), "start", "--head",
                   "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                   f"--ray-client-server-port={free_port()}"], cpus[0], env)]
    nodes[0].address = f"127.0.0.1:{port}"
    try:
        wait_for_port(port, nodes[0])
        nodes += [Node([sys.executable, "-c", JOIN, "start", f"--address=127.0.0.1:{port}"],
                       n, env) for n in cpus[1:]]
        for node in nodes:
            node.wait_ready()
    except RuntimeError:
        stop_cluster(nodes)
        raise
    return nodes


def wait_for_port(port, node, timeout_s=READY_TIMEOUT_S):
    """Until something accepts connections on 127.0.0.1:port (the head's GCS)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and node.process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the head's GCS did not come up:\n" + "".join(node.output[-30:]))


def stop_cluster(nodes):
    for node in reversed(nodes):
        node.stop()
